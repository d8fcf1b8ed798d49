//! The relay: the upstream's response to the client as it arrives, one
//! client write per upstream read (the HTTP chunks one read brought go out
//! together; nothing ever waits for more), with the
//! usage read on the way ([`SseUsageReader`], [`JsonUsageReader`]) or
//! counted locally when the provider reports none.
//!
//! The end of a response is held back until its usage event is recorded:
//! for SSE everything from the chunk holding the terminal event on, for
//! other bodies the last chunk (a client with a content-length is done at
//! its last byte), and the end-of-body itself. A client that goes away
//! mid-stream is noticed at once and the upstream connection dropped.

use super::admission::Admitted;
use super::ctx::RequestCtx;
use super::exchange::Exchanged;
use super::headers::client_response;
use super::{Failure, MoltProxy};
use crate::log_limit::upstream_warnings;
use crate::metrics::Metrics;
use crate::scrub::BodyScrubber;
use crate::spool::MAX_RECORD_WAIT;
use crate::tokens;
use crate::usage_reader::{JsonUsageReader, SseUsageReader, TokenUsage};
use bytes::Bytes;
use http::header;
use pingora_core::protocols::http::HttpTask;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::Session;
use std::time::Instant;

/// Response bytes kept for counting tokens locally when the provider
/// reports no usage: a whole JSON body up to this size (a larger one cannot
/// be parsed from a prefix and is not estimated).
const RETAIN_FOR_ESTIMATE: usize = 1 << 20;
/// The same for an SSE stream: only its first bytes, and the estimate is
/// scaled to the stream's full length ([`tokens::estimate_stream_output`]).
/// A stream holds what it retains for its whole life, and almost every
/// stream reports usage: 2 KiB (about ten events of the big providers, each
/// mostly one token) gives the estimate its ratio of tokens to bytes while a
/// held stream stays within the brief's 20 KiB (4 KiB cost a long stream
/// 2 KiB more at rest, 16 KiB 14 KiB more).
const RETAIN_SSE_FOR_ESTIMATE: usize = 2 << 10;

/// Reads usage out of the response as it passes.
enum UsageReading {
    Sse(SseUsageReader),
    Json(JsonUsageReader),
}

/// The first bytes of the response, kept for a local estimate.
enum Retained {
    /// A JSON body's chunks as they came, while the body is at most
    /// [`RETAIN_FOR_ESTIMATE`]: no copy, and a JSON response is not held for
    /// long.
    Json { chunks: Vec<Bytes>, len: usize },
    /// A copy of an SSE stream's first [`RETAIN_SSE_FOR_ESTIMATE`] bytes in
    /// one buffer. A copy, because keeping the chunks themselves would pin
    /// each one's allocation (and a shared `Bytes` header) for the stream's
    /// whole life: ~1.5 times the bytes kept.
    Sse { sample: Vec<u8> },
}

impl Retained {
    fn new(is_sse: bool) -> Self {
        if is_sse {
            Self::Sse { sample: Vec::new() }
        } else {
            Self::Json {
                chunks: Vec::new(),
                len: 0,
            }
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        match self {
            Self::Json { chunks, len } => {
                if *len <= RETAIN_FOR_ESTIMATE {
                    *len += chunk.len();
                    chunks.push(chunk.clone());
                }
            }
            Self::Sse { sample } => {
                let room = RETAIN_SSE_FOR_ESTIMATE - sample.len();
                if room > 0 {
                    let take = room.min(chunk.len());
                    // Grow by doubling, but never past the cap.
                    let want = (sample.len() + take).max(2 * sample.len());
                    sample.reserve_exact(want.min(RETAIN_SSE_FOR_ESTIMATE) - sample.len());
                    sample.extend_from_slice(&chunk[..take]);
                }
            }
        }
    }

    /// The output tokens of a response of `total` bytes, counted from what
    /// was kept (an SSE stream's scaled from its first bytes; a JSON body
    /// larger than was kept is not counted).
    fn estimate(&self, total: usize) -> u64 {
        match self {
            Self::Sse { sample } => tokens::estimate_stream_output(sample, total),
            Self::Json { len, .. } if *len < total => 0,
            Self::Json { chunks, .. } => tokens::count_response(&chunks.concat(), false),
        }
    }
}

impl MoltProxy {
    /// Send the upstream's response head to the client, then its body as it
    /// arrives, up to the end that is held back ([`Self::settle`] sends it).
    ///
    /// A room of its own, apart from [`Self::settle`], because this future
    /// is what a held stream keeps for its whole life: sharing one future
    /// with the end's work would size it by that work's state too.
    pub(super) async fn stream<'p>(
        &'p self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        admitted: &Admitted<'_>,
        exchanged: &mut Exchanged<'_>,
    ) -> Result<Streamed<'p>, Failure> {
        let up = &mut exchanged.up;
        let name = exchanged.provider.config.name.as_str();
        let Some(up_resp) = up.response_header() else {
            // The exchange returns only sessions with a response head.
            return Err(Failure::Refuse(crate::error::ClientError::UpstreamFailed));
        };
        let status = up_resp.status.as_u16();
        let is_sse = up_resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let downstream_h2 = session.as_downstream().is_http2();
        let (resp, masked) = client_response(
            up_resp,
            &ctx.stamp(),
            ctx.limits.headers.as_ref(),
            admitted.secrets,
            downstream_h2,
        )
        .map_err(Failure::Broken)?;
        self.metrics.scrub.count("header", masked);
        let before_header = Instant::now();
        ctx.answer.status = status;
        if let Err(e) = session.write_response_header(Box::new(resp), false).await {
            self.client_left(ctx);
            return Err(Failure::Broken(e));
        }
        let overhead = (exchanged.sent_at - admitted.body_read_at) + before_header.elapsed();
        self.metrics
            .proxy_overhead
            .with_label_values(&[admitted.route.name()])
            .observe(overhead.as_secs_f64());

        let _active = is_sse.then(|| ActiveStream::new(&self.metrics));
        let mut outbox = Outbox::new(is_sse, admitted);
        let mut scrub = BodyScrubber::default();
        let result = loop {
            let mut read = tokio::select! {
                biased;
                r = up.read_response_body() => r,
                _ = client_gone(session) => {
                    self.client_left(ctx);
                    break Err(Error::explain(ErrorType::ConnectionClosed, "client went away mid-response"));
                }
            };
            // This read and every chunk the same socket read already brought
            // (Pingora hands out one HTTP chunk per call) go out in one
            // client write: what the upstream delivered at once, never
            // waiting for more.
            let ended = loop {
                match read {
                    Ok(Some(c)) => {
                        if let Some(c) = scrub.feed(admitted.secrets, c) {
                            outbox.take(c);
                        }
                    }
                    Ok(None) => {
                        if let Some(rest) = scrub.finish(admitted.secrets) {
                            outbox.take(rest);
                        }
                        break Some(Ok(()));
                    }
                    Err(e) => {
                        ctx.answer.outcome = super::ledger::Outcome::UpstreamAborted;
                        self.count_upstream_error(name, "aborted");
                        if let Some(left_out) =
                            upstream_warnings().admit(&format!("{name}/aborted"))
                        {
                            tracing::warn!(request_id = %ctx.request_id, provider = name, error = %e, left_out, "upstream broke mid-response");
                        }
                        break Some(Err(e));
                    }
                }
                if !up.response_body_buffered() {
                    break None;
                }
                read = up.read_response_body().await;
            };
            if !matches!(ended, Some(Err(_))) {
                if let Err(e) = write_all(session, outbox.sendable()).await {
                    self.client_left(ctx);
                    break Err(e);
                }
            }
            if let Some(end) = ended {
                break end;
            }
        };
        self.metrics.scrub.count("body", scrub.masked);
        Ok(Streamed {
            outbox,
            result,
            status,
            _active,
        })
    }

    /// Settle a streamed response: its usage (what the provider reported,
    /// else a local count) recorded, then the held end written and the
    /// upstream connection released.
    pub(super) async fn settle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        admitted: &Admitted<'_>,
        exchanged: Exchanged<'_>,
        streamed: Streamed<'_>,
    ) -> Result<(), Failure> {
        let Exchanged {
            mut up, provider, ..
        } = exchanged;
        let Streamed {
            outbox,
            result,
            status,
            _active,
        } = streamed;
        let Outbox {
            reading,
            retained,
            total,
            mut out,
            last_chunk,
            ..
        } = outbox;
        // Usage: what the provider reported, else a local count.
        let (reported, mut sse) = match reading {
            UsageReading::Sse(r) => (r.usage(), Some(r)),
            UsageReading::Json(j) if result.is_ok() => (j.finish(), None),
            UsageReading::Json(_) => (None, None),
        };
        match reported {
            Some(u) => ctx.usage.tokens = u,
            None if (200..300).contains(&status) => {
                tokens::ready().await;
                ctx.usage.tokens = TokenUsage::totals(
                    tokens::count_request(&admitted.body.chunks),
                    retained.estimate(total),
                );
                ctx.usage.estimated = true;
            }
            None => {}
        }
        // Dropping `up` on an error closes the upstream connection at once.
        result.map_err(Failure::Broken)?;
        if let Some(r) = &mut sse {
            r.finish(&mut out);
        }
        out.extend(last_chunk);
        // Recorded before the end goes out: a response the client saw
        // complete has its usage on disk, whatever is killed next.
        if let Some(event) = ctx.finish_usage(&self.ledger, status) {
            let recorded = self.ledger.record_durable(event);
            if recorded.wait_at_most(MAX_RECORD_WAIT).await.is_none() {
                self.metrics.usage_record_wait_timeouts.inc();
            }
        }
        let end = async {
            write_all(session, out.drain(..)).await?;
            session.write_response_body(None, true).await
        };
        if let Err(e) = end.await {
            self.client_left(ctx);
            return Err(Failure::Broken(e));
        }
        if up.response_done() {
            // Boxed like the connect (~3 KiB, the largest state left).
            let release = self.connector.release_http_session(
                up,
                &provider.peer,
                provider.peer.options.idle_timeout,
            );
            Box::pin(release).await;
        }
        Ok(())
    }
}

/// A response streamed up to its held end: what [`MoltProxy::settle`]
/// finishes.
pub(super) struct Streamed<'p> {
    outbox: Outbox,
    /// How the body's relay ended: `Ok` at the upstream's end of body.
    result: Result<()>,
    status: u16,
    /// Counts the stream as active until it is settled.
    _active: Option<ActiveStream<'p>>,
}

/// What the relay took from the upstream and has not written yet: each
/// (scrubbed) chunk is kept for an estimate, its usage read, and what goes
/// to the client queued in `out`.
struct Outbox {
    reading: UsageReading,
    retained: Retained,
    /// Bytes of the whole response body so far.
    total: usize,
    out: Vec<Bytes>,
    /// A JSON body's last chunk so far: its end is held until the usage is
    /// recorded (a client with a content-length is done at its last byte).
    last_chunk: Option<Bytes>,
    /// An SSE stream's terminal event went past: from then on the rest of
    /// the stream is held until its usage is recorded.
    holding: bool,
    /// How many pieces at the front of `out` may go to the client now.
    sendable: usize,
}

impl Outbox {
    fn new(is_sse: bool, admitted: &Admitted<'_>) -> Self {
        let reading = if is_sse {
            let reader =
                SseUsageReader::new(admitted.route.stream_kind(), admitted.strip_usage_chunk);
            UsageReading::Sse(reader)
        } else {
            UsageReading::Json(JsonUsageReader::default())
        };
        Self {
            reading,
            retained: Retained::new(is_sse),
            total: 0,
            out: Vec::with_capacity(2),
            last_chunk: None,
            holding: false,
            sendable: 0,
        }
    }

    /// Take chunk `c`.
    fn take(&mut self, c: Bytes) {
        self.total += c.len();
        self.retained.keep(&c);
        let before = self.out.len();
        let terminal = match &mut self.reading {
            UsageReading::Sse(reader) => {
                reader.feed(c, &mut self.out);
                reader.terminal_seen()
            }
            UsageReading::Json(reader) => {
                reader.feed(&c);
                self.out.extend(self.last_chunk.replace(c));
                false
            }
        };
        if self.holding {
            return;
        }
        if terminal {
            // What came before this chunk still goes; from it on, held.
            self.holding = true;
            self.sendable = before;
        } else {
            self.sendable = self.out.len();
        }
    }

    /// The pieces that may go to the client now, taken out of the box.
    fn sendable(&mut self) -> std::vec::Drain<'_, Bytes> {
        let n = std::mem::take(&mut self.sendable);
        self.out.drain(..n)
    }
}

/// Counts a response being streamed while it lives.
struct ActiveStream<'a>(&'a Metrics);

impl<'a> ActiveStream<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.active_streams.inc();
        Self(m)
    }
}

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}

/// Write `pieces` to the client: one as it is, several (what one upstream
/// read delivered) in one write.
async fn write_all(
    session: &mut Session,
    mut pieces: impl ExactSizeIterator<Item = Bytes>,
) -> Result<()> {
    match pieces.len() {
        0 => Ok(()),
        1 => session.write_response_body(pieces.next(), false).await,
        _ => {
            let tasks = pieces.map(|b| HttpTask::Body(Some(b), false)).collect();
            // Boxed (~1 KiB): inline, it would size every held stream's
            // state for the stream's whole life.
            Box::pin(session.write_response_tasks(tasks))
                .await
                .map(|_| ())
        }
    }
}

/// Resolves when the client closes its connection (or stream); never
/// otherwise.
pub(super) async fn client_gone(session: &mut Session) {
    if session
        .as_downstream_mut()
        .read_body_or_idle(true)
        .await
        .is_err()
    {
        return;
    }
    // Data or end-of-stream without an error: nothing to act on; keep
    // waiting (the select loop re-polls us after every chunk anyway).
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_sample_is_one_copy_never_past_its_cap() {
        let mut kept = Retained::new(true);
        let event = Bytes::from(vec![b'x'; 700]);
        for _ in 0..5 {
            kept.keep(&event);
        }
        let Retained::Sse { sample } = &kept else {
            panic!("an SSE sample")
        };
        assert_eq!(sample.len(), RETAIN_SSE_FOR_ESTIMATE);
        assert!(
            sample.capacity() <= RETAIN_SSE_FOR_ESTIMATE,
            "{}",
            sample.capacity()
        );
    }

    #[test]
    fn a_json_body_larger_than_was_kept_is_not_estimated() {
        let mut kept = Retained::new(false);
        let chunk = Bytes::from_static(br#"{"choices":[{"message":{"content":"Hello there"}}]}"#);
        kept.keep(&chunk);
        assert!(kept.estimate(chunk.len()) > 0);
        assert_eq!(kept.estimate(chunk.len() + RETAIN_FOR_ESTIMATE), 0);
    }
}
