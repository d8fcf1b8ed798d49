//! Per-request state, from the first filter to `logging`: who asked, what
//! the limiter reserved, what the request used, and how it was answered.
//! Each stage fills in its part; `logging` reads all of it once.

use super::ledger::{Caller, Closing, Ledger, Outcome, UsageRecord};
use super::respond::Stamp;
use super::route::RouteLabel;
use crate::auth::Principal;
use crate::error::ClientError;
use crate::limits::{Admission, RateLimitHeaders};
use crate::runtime::Runtime;
use crate::ws::WsOutcome;
use http::HeaderValue;
use molt_config::UsageEvent;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state.
pub struct RequestCtx {
    pub(super) start: Instant,
    pub(super) request_id: String,
    /// The config snapshot the request runs on, loaded once at its start.
    pub(super) rt: Option<Arc<Runtime>>,
    pub(super) route: RouteLabel,
    /// The authenticated client.
    pub(super) caller: Option<Principal>,
    pub(super) limits: LimitState,
    pub(super) usage: UsageRecord,
    pub(super) answer: Answer,
    /// The browser origin allowed to read the answers (CORS), if any.
    pub(super) cors_origin: Option<HeaderValue>,
    /// What a WebSocket route reported, for the access line. Boxed, like
    /// the admission: this struct sits twice in the future Pingora keeps per
    /// request for the request's whole life (see ARCHITECTURE.md on what a
    /// held connection keeps), and most requests have neither.
    pub(super) ws: Option<Box<WsOutcome>>,
    /// `finish_usage` ran: the admission is settled and the usage event
    /// handed to the ledger (before the response end, or in `logging`).
    pub(super) usage_finished: bool,
}

/// What the limiter decided for the request.
#[derive(Default)]
pub(super) struct LimitState {
    /// The reservation, settled with the actual usage by `finish_usage`
    /// (dropping it releases a concurrent-stream slot).
    pub(super) admission: Option<Box<Admission>>,
    /// `x-ratelimit-*` values for every response after admission.
    pub(super) headers: Option<RateLimitHeaders>,
    /// Seconds for `retry-after` on a 429.
    pub(super) retry_after: Option<u64>,
}

/// How the client was answered.
pub(super) struct Answer {
    /// The status sent to the client; 0 until a response header is sent.
    pub(super) status: u16,
    pub(super) outcome: Outcome,
    /// The error code of a refusal (`ClientError::kind`).
    pub(super) error_kind: Option<&'static str>,
}

impl RequestCtx {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            request_id: String::new(),
            rt: None,
            route: RouteLabel::Unknown,
            caller: None,
            limits: LimitState::default(),
            usage: UsageRecord::starting_now(),
            answer: Answer {
                status: 0,
                outcome: Outcome::Ok,
                error_kind: None,
            },
            cors_origin: None,
            ws: None,
            usage_finished: false,
        }
    }

    /// What every answer to this request carries.
    pub(super) fn stamp(&self) -> Stamp<'_> {
        Stamp {
            request_id: &self.request_id,
            cors_origin: self.cors_origin.as_ref(),
        }
    }

    /// Note a refusal: its status and code, and its outcome unless an
    /// earlier stage already said how the request ended.
    pub(super) fn refused(&mut self, err: &ClientError) {
        self.answer.status = err.status();
        self.answer.error_kind = Some(err.kind());
        if self.answer.outcome == Outcome::Ok {
            self.answer.outcome = match err {
                ClientError::RateLimited { .. } | ClientError::BudgetExceeded(_) => {
                    Outcome::RateLimited
                }
                ClientError::UpstreamUnavailable
                | ClientError::UpstreamTimeout
                | ClientError::UpstreamFailed => Outcome::UpstreamError,
                _ => Outcome::Rejected,
            };
        }
    }

    /// A WebSocket route is done: its status, refusal or closed session.
    pub(super) fn ws_finished(&mut self, out: WsOutcome) {
        self.answer.status = out.status;
        self.answer.error_kind = out.error_kind;
        self.answer.outcome = match (&out.session, out.error_kind) {
            (Some(session), _) => Outcome::Closed(session.reason),
            (None, Some(_)) => Outcome::Rejected,
            // A ticket issued, or a client that left before its 101.
            (None, None) if out.status == 101 => Outcome::ClientDisconnected,
            (None, None) => Outcome::Ok,
        };
        self.ws = Some(Box::new(out));
    }

    /// The client went away; the status stays what was sent, if anything.
    pub(super) fn client_gone(&mut self) {
        self.answer.outcome = Outcome::ClientDisconnected;
    }
}

impl RequestCtx {
    /// Settle the request's admission with what it really used (refunding
    /// or topping up the estimate admitted against; releasing any stream
    /// slot) and build its usage event. Runs once per request: the first
    /// call does the work, later ones return `None`.
    ///
    /// Every authenticated model request gets an event, including rejected
    /// ones (zero tokens), so per-user activity is complete.
    pub(super) fn finish_usage(&mut self, ledger: &Ledger, status: u16) -> Option<UsageEvent> {
        if std::mem::replace(&mut self.usage_finished, true) {
            return None;
        }
        if let Some(admission) = self.limits.admission.take() {
            self.usage.anomaly |= admission.settle(&self.usage.tokens).anomalous;
        }
        let principal = self.caller.as_ref()?;
        self.usage.model.as_ref()?;
        let closing = Closing {
            request_id: &self.request_id,
            route: self.route,
            caller: Caller {
                key_id: &principal.key_id,
                user_id: &principal.user,
            },
            status,
            outcome: self.answer.outcome,
            duration: self.start.elapsed(),
        };
        Some(ledger.event(&closing, &self.usage))
    }
}
