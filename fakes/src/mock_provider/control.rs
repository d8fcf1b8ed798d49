//! Per-request behaviour controls: the `x-mock-*` request headers and the
//! `mock-error-<code>` model names, resolved against the [`MockOptions`] defaults.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::MockOptions;

/// Stream this many chunks (overrides [`MockOptions::chunks`]).
pub(crate) const CHUNKS: &str = "x-mock-chunks";
/// Milliseconds between chunks (overrides [`MockOptions::chunk_delay`]).
pub(crate) const CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
/// Milliseconds before the first chunk / non-streaming answer (overrides [`MockOptions::ttft`]).
pub(crate) const TTFT_MS: &str = "x-mock-ttft-ms";
/// Answer this HTTP status (400..=599) with a provider-format error body.
pub(crate) const STATUS: &str = "x-mock-status";
/// Send this many content chunks, then drop the connection mid-body.
pub(crate) const ABORT_AFTER: &str = "x-mock-abort-after";
/// Milliseconds to wait before sending the response headers.
pub(crate) const HEADER_DELAY_MS: &str = "x-mock-header-delay-ms";
/// `1`/`true`: report no usage at all.
pub(crate) const NO_USAGE: &str = "x-mock-no-usage";
/// `1`/`true`: report every token class the format has (cache reads and
/// writes, reasoning; see [`super::classes`]).
pub(crate) const USAGE_CLASSES: &str = "x-mock-usage-classes";
/// `1`/`true`: answer 401 echoing the credential received, in the body (as
/// OpenAI's "Incorrect API key provided: ..." does, but whole) and in an
/// `x-echo-credential` header, like a careless self-hosted server.
pub(crate) const ECHO_KEY: &str = "x-mock-echo-key";

/// Model names of this form (e.g. `mock-error-429`) answer that status, so
/// config-driven fallbacks can be tested without custom headers.
pub(crate) const ERROR_MODEL_PREFIX: &str = "mock-error-";

/// Upper bound on `x-mock-chunks`: every chunk of a stream is rendered up
/// front, so an unbounded count would let one request exhaust memory.
pub(crate) const MAX_CHUNKS: usize = 100_000;

/// A control header or model name the mock cannot act on; answered with 400
/// so a typo in a test fails loudly instead of silently using defaults.
#[derive(Debug, thiserror::Error)]
#[error("invalid mock control {name}: {reason}")]
pub(crate) struct ControlError {
    name: String,
    reason: String,
}

impl ControlError {
    fn new(name: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// How one request is to be answered.
#[derive(Debug, Clone)]
pub(crate) struct Controls {
    pub(crate) chunks: usize,
    pub(crate) chunk_delay: Duration,
    pub(crate) ttft: Duration,
    pub(crate) header_delay: Duration,
    /// Status forced by `x-mock-status`; see [`Controls::injected_status`] for the model form.
    pub(crate) status: Option<StatusCode>,
    pub(crate) abort_after: Option<usize>,
    pub(crate) no_usage: bool,
    pub(crate) echo_key: bool,
    pub(crate) usage_classes: bool,
}

impl Controls {
    /// Reads the `x-mock-*` headers, falling back to `defaults` for absent ones.
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        defaults: &MockOptions,
    ) -> Result<Self, ControlError> {
        let chunks = number(headers, CHUNKS)?.map_or(Ok(defaults.chunks), |n| {
            usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CHUNKS)
                .ok_or_else(|| ControlError::new(CHUNKS, format!("at most {MAX_CHUNKS}")))
        })?;
        let millis = |name: &str| -> Result<Option<Duration>, ControlError> {
            Ok(number(headers, name)?.map(Duration::from_millis))
        };
        Ok(Self {
            chunks,
            chunk_delay: millis(CHUNK_DELAY_MS)?.unwrap_or(defaults.chunk_delay),
            ttft: millis(TTFT_MS)?.unwrap_or(defaults.ttft),
            header_delay: millis(HEADER_DELAY_MS)?.unwrap_or_default(),
            status: number(headers, STATUS)?
                .map(|code| error_status(STATUS, code))
                .transpose()?,
            abort_after: number(headers, ABORT_AFTER)?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            no_usage: flag(headers, NO_USAGE)?,
            echo_key: flag(headers, ECHO_KEY)?,
            usage_classes: flag(headers, USAGE_CLASSES)?,
        })
    }

    /// The error status to answer instead of a normal reply, if any:
    /// `x-mock-status` wins over a `mock-error-<code>` model name.
    pub(crate) fn injected_status(
        &self,
        model: Option<&str>,
    ) -> Result<Option<StatusCode>, ControlError> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(code) = model.and_then(|model| model.strip_prefix(ERROR_MODEL_PREFIX)) else {
            return Ok(None);
        };
        let code = code
            .parse::<u64>()
            .map_err(|_| ControlError::new("model", "mock-error-<code> needs a numeric code"))?;
        error_status("model", code).map(Some)
    }
}

/// Parses an optional non-negative integer header.
fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ControlError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ControlError::new(name, "expected a non-negative integer"))
}

/// Parses an optional boolean header (`1`/`true`/`0`/`false`); absent is false.
fn flag(headers: &HeaderMap, name: &str) -> Result<bool, ControlError> {
    let Some(value) = headers.get(name) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok("1") | Ok("true") => Ok(true),
        Ok("0") | Ok("false") => Ok(false),
        _ => Err(ControlError::new(name, "expected 1, true, 0 or false")),
    }
}

/// Only 4xx/5xx make sense as an injected provider error.
fn error_status(name: &str, code: u64) -> Result<StatusCode, ControlError> {
    u16::try_from(code)
        .ok()
        .filter(|code| (400..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| ControlError::new(name, "status must be within 400..=599"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn defaults_apply_without_headers() {
        let defaults = MockOptions {
            chunks: 3,
            chunk_delay: Duration::from_millis(5),
            ttft: Duration::from_millis(7),
        };
        let controls = Controls::from_headers(&HeaderMap::new(), &defaults).unwrap();
        assert_eq!(controls.chunks, 3);
        assert_eq!(controls.chunk_delay, Duration::from_millis(5));
        assert_eq!(controls.ttft, Duration::from_millis(7));
        assert_eq!(controls.header_delay, Duration::ZERO);
        assert!(controls.status.is_none() && controls.abort_after.is_none() && !controls.no_usage);
    }

    #[test]
    fn headers_override_defaults() {
        let controls = Controls::from_headers(
            &headers(&[
                (CHUNKS, "2"),
                (CHUNK_DELAY_MS, "10"),
                (TTFT_MS, "20"),
                (HEADER_DELAY_MS, "30"),
                (STATUS, "503"),
                (ABORT_AFTER, "1"),
                (NO_USAGE, "1"),
            ]),
            &MockOptions::default(),
        )
        .unwrap();
        assert_eq!(controls.chunks, 2);
        assert_eq!(controls.chunk_delay, Duration::from_millis(10));
        assert_eq!(controls.ttft, Duration::from_millis(20));
        assert_eq!(controls.header_delay, Duration::from_millis(30));
        assert_eq!(controls.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(controls.abort_after, Some(1));
        assert!(controls.no_usage);
    }

    #[test]
    fn bad_values_are_rejected() {
        for pairs in [
            [(CHUNKS, "many")],
            [(STATUS, "200")],
            [(STATUS, "1000")],
            [(NO_USAGE, "yes")],
            [(CHUNKS, "100001")],
        ] {
            assert!(Controls::from_headers(&headers(&pairs), &MockOptions::default()).is_err());
        }
    }

    #[test]
    fn error_models_inject_a_status_unless_the_header_does() {
        let plain = Controls::from_headers(&HeaderMap::new(), &MockOptions::default()).unwrap();
        assert_eq!(
            plain.injected_status(Some("mock-error-429")).unwrap(),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        assert_eq!(plain.injected_status(Some("gpt-4o-mini")).unwrap(), None);
        assert!(plain.injected_status(Some("mock-error-x")).is_err());
        let forced =
            Controls::from_headers(&headers(&[(STATUS, "500")]), &MockOptions::default()).unwrap();
        assert_eq!(
            forced.injected_status(Some("mock-error-429")).unwrap(),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
    }
}
