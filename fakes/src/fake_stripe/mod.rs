//! A fake Stripe API for the parts Molt uses, faithful enough that the
//! control plane's real Stripe client runs against it unchanged (used
//! in-process by tests and as `molt fake-stripe --listen ADDR`).
//!
//! What it follows from the real API:
//! - `POST /v1/billing/meter_events`, form-encoded (`event_name`,
//!   `payload[stripe_customer_id]`, `payload[value]`, optional
//!   `identifier` and `timestamp`): missing or bad parameters, a timestamp
//!   older than 35 days or more than 5 minutes ahead are 400
//!   `invalid_request_error` with the offending `param`; an `identifier`
//!   already stored is 400 "An event already exists with identifier …" with
//!   `Stripe-Should-Retry: false`;
//! - a missing or wrong `Authorization: Bearer` key is 401;
//! - `Idempotency-Key`: the first response of a request that reached the
//!   endpoint is saved (500s included) and replayed with
//!   `Idempotent-Replayed: true`; the same key with other parameters is 400
//!   `idempotency_error`; requests that fail validation save nothing;
//! - errors are `{"error":{"type","code","message","param","doc_url"}}`;
//! - rate limiting: more than `rate_limit_per_sec` calls in one second are
//!   429 `rate_limit` with `Stripe-Should-Retry: true`.
//!
//! Test hooks (not Stripe's): [`Fault`]s (fail the next N calls with 500
//! before acting; record the event and then drop the response, as a lost
//! connection would; or record it and hold the answer, so a client can be
//! killed while Stripe has acted), injected with [`FakeStripe::inject`] or
//! `POST /_fake/faults` (a JSON [`Fault`]); [`FakeStripe::events`] /
//! `GET /_fake/meter_events` to inspect what was stored (with the call
//! count); [`FakeStripe::forget_idempotency_keys`] (as Stripe's pruning
//! after 24 h); and [`sign_webhook`] which signs a payload exactly as
//! Stripe signs webhook deliveries.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Stripe's window for meter event timestamps: 35 days back.
const MAX_AGE_SECS: i64 = 35 * 24 * 3600;
/// ... and 5 minutes ahead (clock drift).
const MAX_AHEAD_SECS: i64 = 300;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeStripeOptions {
    /// The secret key it demands (`sk_test_...`).
    pub api_key: String,
    /// Calls per wall-clock second before 429 (0: unlimited).
    pub rate_limit_per_sec: u32,
}

impl Default for FakeStripeOptions {
    fn default() -> Self {
        Self {
            api_key: "sk_test_fake".to_owned(),
            rate_limit_per_sec: 100,
        }
    }
}

/// A fault for the next `times` meter event calls. As JSON (for
/// `POST /_fake/faults`): `{"kind": "fail", "times": 1}`, `"fail_saved"`,
/// `"record_then_drop"`, or `{"kind": "slow", "times": 1, "delay_ms": 5000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer 500 `api_error` without acting, before the endpoint runs
    /// (so, as on Stripe for such failures, nothing is saved under the
    /// Idempotency-Key).
    Fail { times: u32 },
    /// Answer 500 `api_error` without acting, from inside the endpoint:
    /// the 500 is saved under the Idempotency-Key and replayed.
    FailSaved { times: u32 },
    /// Store the event (and the idempotent response), then drop the
    /// connection instead of answering.
    RecordThenDrop { times: u32 },
    /// Act as usual (store the event and the idempotent response), then
    /// hold the answer for `delay_ms`: a client killed meanwhile never
    /// learns that Stripe acted.
    Slow { times: u32, delay_ms: u64 },
}

impl Fault {
    fn times(self) -> u32 {
        match self {
            Self::Fail { times }
            | Self::FailSaved { times }
            | Self::RecordThenDrop { times }
            | Self::Slow { times, .. } => times,
        }
    }

    fn with_times(self, times: u32) -> Self {
        match self {
            Self::Fail { .. } => Self::Fail { times },
            Self::FailSaved { .. } => Self::FailSaved { times },
            Self::RecordThenDrop { .. } => Self::RecordThenDrop { times },
            Self::Slow { delay_ms, .. } => Self::Slow { times, delay_ms },
        }
    }
}

/// What a meter event call comes to.
enum Answer {
    Now(Response),
    /// Answer after a delay (a [`Fault::Slow`]).
    Later(std::time::Duration, Response),
    /// Drop the connection.
    Drop,
}

/// A stored meter event, as Stripe returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterEvent {
    pub identifier: String,
    pub event_name: String,
    pub stripe_customer_id: String,
    pub value: String,
    pub timestamp: i64,
    pub created: i64,
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<MeterEvent>,
    /// Idempotency-Key → (parameters, status, body).
    idempotent: HashMap<String, (BTreeMap<String, String>, u16, Value)>,
    faults: Vec<Fault>,
    /// (second, calls in it).
    window: (i64, u32),
    calls: u64,
}

/// The fake server; cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeStripe {
    opts: Arc<FakeStripeOptions>,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeStripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeStripe").finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A Stripe error response.
fn stripe_error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> (StatusCode, Value) {
    let mut error = json!({"type": kind, "message": message});
    if let Some(code) = code {
        error["code"] = json!(code);
        error["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{code}"));
    }
    if let Some(param) = param {
        error["param"] = json!(param);
    }
    (status, json!({ "error": error }))
}

fn respond(status: u16, body: Value, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert("request-id", HeaderValue::from_static("req_fake"));
    // Stripe says whether a retry can help; clients (async-stripe) obey it.
    let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    h.insert(
        "stripe-should-retry",
        HeaderValue::from_static(if retry { "true" } else { "false" }),
    );
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

impl FakeStripe {
    pub fn new(opts: FakeStripeOptions) -> Self {
        Self {
            opts: Arc::new(opts),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bind `127.0.0.1:0`, serve in the background and return the base URL
    /// (`http://127.0.0.1:PORT`, without `/v1`).
    pub async fn spawn(&self) -> std::io::Result<String> {
        crate::serve::spawn(self.router(), "fake stripe").await
    }

    /// Serve on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/billing/meter_events", post(create_meter_event))
            .route("/_fake/meter_events", get(inspect))
            .route("/_fake/faults", post(add_fault))
            .fallback(|| async {
                let (s, b) = stripe_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    None,
                    "Unrecognized request URL (not implemented by the fake).",
                    None,
                );
                respond(s.as_u16(), b, false)
            })
            .with_state(self.clone())
    }

    /// Queue a fault for the next calls (faults apply in order; one with
    /// `times: 0` does nothing).
    pub fn inject(&self, fault: Fault) {
        if fault.times() > 0 {
            self.lock().faults.push(fault);
        }
    }

    /// Every stored meter event, oldest first.
    pub fn events(&self) -> Vec<MeterEvent> {
        self.lock().events.clone()
    }

    /// Meter event calls that reached the endpoint (replays and faults
    /// included).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Forget saved idempotent responses, as Stripe does after 24 h: only
    /// `identifier` uniqueness then stops a duplicate.
    pub fn forget_idempotency_keys(&self) {
        self.lock().idempotent.clear();
    }

    /// Store an event directly, as if an earlier call had done so (e.g. to
    /// test the "already exists" answer).
    pub fn preload(&self, event: MeterEvent) {
        self.lock().events.push(event);
    }

    /// Handle one call.
    fn meter_event(&self, headers: &HeaderMap, body: &[u8]) -> Answer {
        let mut st = self.lock();
        st.calls += 1;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if auth != Some(self.opts.api_key.as_str()) {
            let (s, b) = stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                "Invalid API Key provided.",
                None,
            );
            return Answer::Now(respond(s.as_u16(), b, false));
        }
        let now = now_secs();
        if self.opts.rate_limit_per_sec > 0 {
            if st.window.0 != now {
                st.window = (now, 0);
            }
            st.window.1 += 1;
            if st.window.1 > self.opts.rate_limit_per_sec {
                let (s, b) = stripe_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "invalid_request_error",
                    Some("rate_limit"),
                    "Request rate limit exceeded.",
                    None,
                );
                return Answer::Now(respond(s.as_u16(), b, false));
            }
        }
        // `form_urlencoded::parse` never fails: junk decodes to odd pairs,
        // which the parameter checks below then reject as Stripe would.
        let params: BTreeMap<String, String> = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(key) = &key {
            if let Some((saved, status, body)) = st.idempotent.get(key) {
                if *saved != params {
                    let (s, b) = stripe_error(
                        StatusCode::BAD_REQUEST,
                        "idempotency_error",
                        None,
                        &format!(
                            "Keys for idempotent requests can only be used with the same \
                             parameters they were first used with. Try using a key other \
                             than '{key}' if you meant to execute a different request."
                        ),
                        None,
                    );
                    return Answer::Now(respond(s.as_u16(), b, false));
                }
                return Answer::Now(respond(*status, body.clone(), true));
            }
        }
        let event = match validate(&params, now) {
            Ok(e) => e,
            // Validation failures save nothing under the key (as Stripe).
            Err((s, b)) => return Answer::Now(respond(s.as_u16(), b, false)),
        };
        let fault = st.faults.first().copied();
        if let Some(f) = fault {
            match f.times().saturating_sub(1) {
                0 => {
                    st.faults.remove(0);
                }
                n => st.faults[0] = f.with_times(n),
            }
        }
        if matches!(fault, Some(Fault::Fail { .. })) {
            let (s, b) = stripe_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                None,
                "An unknown error occurred (injected by the fake).",
                None,
            );
            return Answer::Now(respond(s.as_u16(), b, false));
        }
        let (status, body) = if matches!(fault, Some(Fault::FailSaved { .. })) {
            stripe_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                None,
                "An unknown error occurred (injected by the fake).",
                None,
            )
        } else if st.events.iter().any(|e| e.identifier == event.identifier) {
            stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                &format!(
                    "An event already exists with identifier {}.",
                    event.identifier
                ),
                Some("identifier"),
            )
        } else {
            let body = json!({
                "object": "billing.meter_event",
                "created": event.created,
                "event_name": event.event_name,
                "identifier": event.identifier,
                "livemode": false,
                "payload": {"stripe_customer_id": event.stripe_customer_id, "value": event.value},
                "timestamp": event.timestamp,
            });
            st.events.push(event);
            (StatusCode::OK, body)
        };
        if let Some(key) = key {
            st.idempotent
                .insert(key, (params, status.as_u16(), body.clone()));
        }
        let resp = respond(status.as_u16(), body, false);
        match fault {
            Some(Fault::RecordThenDrop { .. }) => Answer::Drop,
            Some(Fault::Slow { delay_ms, .. }) => {
                Answer::Later(std::time::Duration::from_millis(delay_ms), resp)
            }
            _ => Answer::Now(resp),
        }
    }
}

/// Check the parameters as Stripe does and build the event to store.
fn validate(p: &BTreeMap<String, String>, now: i64) -> Result<MeterEvent, (StatusCode, Value)> {
    let bad = |param: &str, message: String| {
        stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_invalid"),
            &message,
            Some(param),
        )
    };
    let missing = |param: &str| {
        stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            &format!("Missing required param: {param}."),
            Some(param),
        )
    };
    let known = [
        "event_name",
        "identifier",
        "timestamp",
        "payload[stripe_customer_id]",
        "payload[value]",
    ];
    if let Some(k) = p.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_unknown"),
            &format!("Received unknown parameter: {k}"),
            Some(k),
        ));
    }
    let event_name = p.get("event_name").ok_or_else(|| missing("event_name"))?;
    if event_name.is_empty() || event_name.len() > 100 {
        return Err(bad(
            "event_name",
            "event_name must be 1 to 100 characters.".into(),
        ));
    }
    let customer = p
        .get("payload[stripe_customer_id]")
        .ok_or_else(|| missing("payload[stripe_customer_id]"))?;
    let value = p
        .get("payload[value]")
        .ok_or_else(|| missing("payload[value]"))?;
    if value.parse::<u64>().is_err() {
        return Err(bad(
            "payload[value]",
            "payload[value] must be a whole number.".into(),
        ));
    }
    let identifier = match p.get("identifier") {
        Some(i) if i.is_empty() || i.len() > 100 => {
            return Err(bad(
                "identifier",
                "identifier must be 1 to 100 characters.".into(),
            ))
        }
        Some(i) => i.clone(),
        None => format!("fake_{}", uuid::Uuid::now_v7().simple()),
    };
    let timestamp = match p.get("timestamp") {
        None => now,
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| bad("timestamp", "timestamp must be an integer.".into()))?,
    };
    if timestamp < now - MAX_AGE_SECS {
        return Err(bad(
            "timestamp",
            "The timestamp must be within the past 35 calendar days.".into(),
        ));
    }
    if timestamp > now + MAX_AHEAD_SECS {
        return Err(bad(
            "timestamp",
            "The timestamp must not be more than 5 minutes in the future.".into(),
        ));
    }
    Ok(MeterEvent {
        identifier,
        event_name: event_name.clone(),
        stripe_customer_id: customer.clone(),
        value: value.clone(),
        timestamp,
        created: now,
    })
}

async fn create_meter_event(
    State(fake): State<FakeStripe>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match fake.meter_event(&headers, &body) {
        Answer::Now(resp) => resp,
        Answer::Later(delay, resp) => {
            tokio::time::sleep(delay).await;
            resp
        }
        Answer::Drop => {
            // "Lose" the answer: announce a body, then fail its stream, so
            // hyper aborts the connection mid-response and the client sees
            // a transport error after Stripe has acted.
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("dropped by the fake"))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-length", "1000")
                .body(axum::body::Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

async fn inspect(State(fake): State<FakeStripe>) -> Json<Value> {
    Json(json!({ "data": fake.events(), "calls": fake.calls() }))
}

async fn add_fault(State(fake): State<FakeStripe>, Json(fault): Json<Fault>) -> StatusCode {
    fake.inject(fault);
    StatusCode::NO_CONTENT
}

/// The `Stripe-Signature` header Stripe would send with `payload` at
/// `timestamp` (Unix seconds), signed with the endpoint secret as-is
/// (`whsec_...` included): `t=…,v1=hex(HMAC-SHA256("{t}.{payload}"))`.
pub fn sign_webhook(payload: &[u8], secret: &str, timestamp: i64) -> String {
    format!(
        "t={timestamp},v1={}",
        webhook_signature(payload, secret, timestamp)
    )
}

/// The hex `v1` signature alone (to build rotation headers with several).
pub fn webhook_signature(payload: &[u8], secret: &str, timestamp: i64) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

/// The current Unix time in seconds, for [`sign_webhook`].
pub fn unix_now() -> i64 {
    now_secs()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail by panicking")]
    use super::*;

    fn call(fake: &FakeStripe, key: Option<&str>, body: &str) -> Response {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer sk_test_fake"),
        );
        if let Some(k) = key {
            h.insert("idempotency-key", HeaderValue::from_str(k).unwrap());
        }
        match fake.meter_event(&h, body.as_bytes()) {
            Answer::Now(resp) | Answer::Later(_, resp) => resp,
            Answer::Drop => panic!("the fake dropped the answer"),
        }
    }

    fn body(identifier: &str, value: u32) -> String {
        format!(
            "event_name=ai_tokens&payload%5Bstripe_customer_id%5D=cus_1&payload%5Bvalue%5D={value}&identifier={identifier}"
        )
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn identifiers_are_unique_as_on_stripe() {
        let fake = FakeStripe::new(FakeStripeOptions::default());
        assert_eq!(call(&fake, None, &body("id1", 5)).status(), StatusCode::OK);
        let dup = call(&fake, None, &body("id1", 5));
        assert_eq!(dup.status(), StatusCode::BAD_REQUEST);
        assert_eq!(header(&dup, "stripe-should-retry"), Some("false"));
        assert_eq!(fake.events().len(), 1);
    }

    #[test]
    fn idempotency_keys_replay_and_refuse_other_parameters() {
        let fake = FakeStripe::new(FakeStripeOptions::default());
        assert_eq!(
            call(&fake, Some("k"), &body("a", 1)).status(),
            StatusCode::OK
        );
        let replay = call(&fake, Some("k"), &body("a", 1));
        assert_eq!(replay.status(), StatusCode::OK);
        assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
        assert_eq!(
            call(&fake, Some("k"), &body("a", 2)).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(fake.events().len(), 1);
    }

    #[test]
    fn parameters_are_checked() {
        let fake = FakeStripe::new(FakeStripeOptions::default());
        for bad in [
            "payload%5Bstripe_customer_id%5D=cus_1&payload%5Bvalue%5D=1",
            "event_name=ai_tokens&payload%5Bvalue%5D=1",
            "event_name=ai_tokens&payload%5Bstripe_customer_id%5D=c&payload%5Bvalue%5D=1.5",
            "event_name=ai_tokens&payload%5Bstripe_customer_id%5D=c&payload%5Bvalue%5D=1&timestamp=1",
            "event_name=ai_tokens&payload%5Bstripe_customer_id%5D=c&payload%5Bvalue%5D=1&nope=1",
        ] {
            assert_eq!(call(&fake, None, bad).status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(fake.events().is_empty());
    }

    #[test]
    fn rate_limit_answers_429_and_faults_apply_in_order() {
        let fake = FakeStripe::new(FakeStripeOptions {
            rate_limit_per_sec: 0,
            ..FakeStripeOptions::default()
        });
        fake.inject(Fault::Fail { times: 1 });
        assert_eq!(
            call(&fake, None, &body("f", 1)).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(call(&fake, None, &body("f", 1)).status(), StatusCode::OK);
        let limited = FakeStripe::new(FakeStripeOptions {
            rate_limit_per_sec: 1,
            ..FakeStripeOptions::default()
        });
        let statuses: Vec<_> = (0..3)
            .map(|i| call(&limited, None, &body(&format!("r{i}"), 1)).status())
            .collect();
        assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn slow_faults_record_then_hold_the_answer_and_parse_from_json() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"slow","times":1,"delay_ms":250}"#).unwrap();
        assert_eq!(
            fault,
            Fault::Slow {
                times: 1,
                delay_ms: 250
            }
        );
        let fake = FakeStripe::new(FakeStripeOptions::default());
        fake.inject(fault);
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer sk_test_fake"),
        );
        match fake.meter_event(&h, body("slow", 3).as_bytes()) {
            Answer::Later(delay, resp) => {
                assert_eq!(delay, std::time::Duration::from_millis(250));
                assert_eq!(resp.status(), StatusCode::OK);
            }
            _ => panic!("a slow fault answers later"),
        }
        // Stored before the answer went out; the next call is normal.
        assert_eq!(fake.events().len(), 1);
        assert_eq!(call(&fake, None, &body("next", 1)).status(), StatusCode::OK);
        let bad: Result<Fault, _> = serde_json::from_str(r#"{"kind":"slow","times":1}"#);
        assert!(bad.is_err(), "delay_ms is required");
    }

    #[test]
    fn webhook_signatures_match_stripes_scheme() {
        // HMAC-SHA256("1.{}") with key "whsec_x", computed independently.
        // (Python: hmac.new(b"whsec_x", b"1.{}", hashlib.sha256).hexdigest())
        assert_eq!(
            sign_webhook(b"{}", "whsec_x", 1),
            "t=1,v1=36ee2f7498f0c1777d1312b2a7361947fe5ad31223be30d0c62421f4ca753401"
        );
    }
}
