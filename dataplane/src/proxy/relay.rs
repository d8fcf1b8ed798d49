//! The relay: the upstream's response to the client, chunk by chunk as it
//! arrives (one client write per upstream read, never coalesced), with the
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
/// stream reports usage; keeping 1 MiB of a long generation per stream to
/// cover the rare one that does not would cost more than the answer is worth.
const RETAIN_SSE_FOR_ESTIMATE: usize = 16 << 10;

/// Reads usage out of the response as it passes.
enum UsageReading {
    Sse(SseUsageReader),
    Json(JsonUsageReader),
}

/// The first bytes of the response, kept for a local estimate.
struct Retained {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    /// Bytes of the whole response body.
    total: usize,
}

impl Retained {
    fn new(cap: usize) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            cap,
            total: 0,
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        self.total += chunk.len();
        if self.len < self.cap {
            self.len += chunk.len();
            self.chunks.push(chunk.clone());
        }
    }
}

impl MoltProxy {
    /// Send the upstream's answer to the client, and its usage to the
    /// ledger before its end.
    pub(super) async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        admitted: &Admitted<'_>,
        exchanged: Exchanged<'_>,
    ) -> Result<(), Failure> {
        let Exchanged {
            mut up,
            provider,
            sent_at,
        } = exchanged;
        let name = provider.config.name.as_str();
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
        let overhead = (sent_at - admitted.body_read_at) + before_header.elapsed();
        self.metrics
            .proxy_overhead
            .with_label_values(&[admitted.route.name()])
            .observe(overhead.as_secs_f64());

        let _active = is_sse.then(|| ActiveStream::new(&self.metrics));
        let mut reading = if is_sse {
            UsageReading::Sse(SseUsageReader::new(
                admitted.route.stream_kind(),
                admitted.strip_usage_chunk,
            ))
        } else {
            UsageReading::Json(JsonUsageReader::default())
        };
        let mut retained = Retained::new(if is_sse {
            RETAIN_SSE_FOR_ESTIMATE
        } else {
            RETAIN_FOR_ESTIMATE
        });
        let mut out: Vec<Bytes> = Vec::with_capacity(2);
        let mut last_chunk: Option<Bytes> = None;
        let mut scrub = BodyScrubber::default();
        let result = loop {
            let chunk = tokio::select! {
                biased;
                r = up.read_response_body() => r,
                _ = client_gone(session) => {
                    self.client_left(ctx);
                    break Err(Error::explain(ErrorType::ConnectionClosed, "client went away mid-response"));
                }
            };
            match chunk {
                Ok(Some(c)) => {
                    let Some(c) = scrub.feed(admitted.secrets, c) else {
                        continue;
                    };
                    if take_chunk(c, &mut reading, &mut retained, &mut out, &mut last_chunk) {
                        // From the terminal event on, the stream is held.
                        continue;
                    }
                    if let Err(e) = write_all(session, &mut out).await {
                        self.client_left(ctx);
                        break Err(e);
                    }
                }
                Ok(None) => {
                    if let Some(rest) = scrub.finish(admitted.secrets) {
                        take_chunk(rest, &mut reading, &mut retained, &mut out, &mut last_chunk);
                    }
                    break Ok(());
                }
                Err(e) => {
                    ctx.answer.outcome = super::ledger::Outcome::UpstreamAborted;
                    self.count_upstream_error(name, "aborted");
                    if let Some(left_out) = upstream_warnings().admit(&format!("{name}/aborted")) {
                        tracing::warn!(request_id = %ctx.request_id, provider = name, error = %e, left_out, "upstream broke mid-response");
                    }
                    break Err(e);
                }
            }
        };
        self.metrics.scrub.count("body", scrub.masked);
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
                ctx.usage.tokens = TokenUsage {
                    input: tokens::count_request(&admitted.body.chunks),
                    output: if is_sse {
                        tokens::estimate_stream_output(&retained.chunks, retained.total)
                    } else {
                        tokens::count_response(&retained.chunks, false)
                    },
                };
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
            write_all(session, &mut out).await?;
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

/// Take one (scrubbed) upstream chunk: keep it for an estimate, read its
/// usage, and queue what goes to the client in `out`. Returns true once an
/// SSE stream's terminal event was seen (from then on the end is held).
fn take_chunk(
    c: Bytes,
    reading: &mut UsageReading,
    retained: &mut Retained,
    out: &mut Vec<Bytes>,
    last_chunk: &mut Option<Bytes>,
) -> bool {
    retained.keep(&c);
    match reading {
        UsageReading::Sse(reader) => {
            reader.feed(c, out);
            reader.terminal_seen()
        }
        UsageReading::Json(reader) => {
            reader.feed(&c);
            out.extend(last_chunk.replace(c));
            false
        }
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

/// Write each pending chunk to the client as its own write (no coalescing).
async fn write_all(session: &mut Session, out: &mut Vec<Bytes>) -> Result<()> {
    for b in out.drain(..) {
        session.write_response_body(Some(b), false).await?;
    }
    Ok(())
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
