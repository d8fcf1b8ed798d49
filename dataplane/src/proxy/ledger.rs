//! The ledger: the one place a [`UsageEvent`] is built and recorded, for
//! every route that records one (the model routes, WebSocket chat to a bot,
//! OpenAI Realtime sessions), and the token counters that go with it.
//!
//! The stages of a request fill in a [`UsageRecord`] as they learn things
//! (admission: the model and whether it streams; the exchange: the provider
//! and attempts; the relay: tokens and timing); the ledger turns it into an
//! event once the request or connection is over. What each field means is
//! the same on every route: `provider` is the model provider that answered
//! (empty when none did, as for a bot), `bot_id` the bot a chat went to.

use super::route::RouteLabel;
use crate::sink::{Recorded, UsageSink};
use crate::usage_reader::TokenUsage;
use crate::ws::error::CloseReason;
use molt_config::UsageEvent;
use prometheus::IntCounterVec;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a request or connection ended: the `outcome` of its access line and
/// usage event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered in full (or a WebSocket closed normally).
    Ok,
    /// Refused before reaching an upstream (auth, validation, unknown
    /// model, not allowed, ...).
    Rejected,
    /// Refused by a limit.
    RateLimited,
    /// The client went away before the response was complete.
    ClientDisconnected,
    /// The upstream broke off after the response had started.
    UpstreamAborted,
    /// No upstream could answer (unreachable, timed out, refused).
    UpstreamError,
    /// A WebSocket session ended for this reason.
    Closed(CloseReason),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::RateLimited => "rate_limited",
            Self::ClientDisconnected => "client_disconnected",
            Self::UpstreamAborted => "upstream_aborted",
            Self::UpstreamError => "upstream_error",
            Self::Closed(CloseReason::ClientClosed | CloseReason::BotClosed(1000)) => "ok",
            Self::Closed(reason) => reason.label(),
        }
    }
}

/// What a request used, filled in stage by stage.
#[derive(Debug, Default, Clone)]
pub struct UsageRecord {
    /// Unix time in milliseconds when the request arrived.
    pub timestamp_ms: u64,
    /// The canonical model, once resolved.
    pub model: Option<String>,
    /// The provider of the last upstream attempt.
    pub provider: Option<String>,
    /// The bot a WebSocket chat went to.
    pub bot_id: Option<String>,
    pub stream: bool,
    pub attempts: u32,
    pub tokens: TokenUsage,
    /// The tokens were counted locally: the provider reported none.
    pub estimated: bool,
    /// From the request's start to the upstream's response head.
    pub upstream_ttfb: Option<Duration>,
    /// The limiter flagged the user's token rate as unusual.
    pub anomaly: bool,
}

impl UsageRecord {
    /// A record starting now.
    pub fn starting_now() -> Self {
        Self {
            timestamp_ms: now_ms(),
            ..Self::default()
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who made the request, as authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub key_id: &'a str,
    pub user_id: &'a str,
}

/// How a request or connection closed: what the event needs beside its
/// [`UsageRecord`].
#[derive(Debug, Clone, Copy)]
pub struct Closing<'a> {
    pub request_id: &'a str,
    pub route: RouteLabel,
    pub caller: Caller<'a>,
    /// The status the client received (101 for a WebSocket).
    pub status: u16,
    pub outcome: Outcome,
    /// From the request's start to its end.
    pub duration: Duration,
}

/// Builds and records every usage event; counts tokens as they are
/// recorded (`molt_tokens_total`).
#[derive(Clone)]
pub struct Ledger {
    sink: Arc<dyn UsageSink>,
    tokens: IntCounterVec,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn new(sink: Arc<dyn UsageSink>, tokens: IntCounterVec) -> Self {
        Self { sink, tokens }
    }

    /// The event for a closed request.
    pub fn event(&self, closing: &Closing<'_>, record: &UsageRecord) -> UsageEvent {
        UsageEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            request_id: closing.request_id.to_owned(),
            timestamp_ms: record.timestamp_ms,
            key_id: closing.caller.key_id.to_owned(),
            user_id: closing.caller.user_id.to_owned(),
            model: record.model.clone().unwrap_or_default(),
            provider: record.provider.clone().unwrap_or_default(),
            bot_id: record.bot_id.clone(),
            route: closing.route.name().to_owned(),
            status: closing.status,
            input_tokens: record.tokens.input,
            output_tokens: record.tokens.output,
            classes: record.tokens.classes,
            estimated: record.estimated,
            stream: record.stream,
            attempts: record.attempts,
            duration_ms: closing.duration.as_millis() as u64,
            upstream_ttfb_ms: record.upstream_ttfb.map(|d| d.as_millis() as u64),
            anomaly: record.anomaly,
            outcome: closing.outcome.as_str().to_owned(),
        }
    }

    /// Hand `event` to the sink without waiting.
    pub fn record(&self, event: UsageEvent) {
        self.count_tokens(&event);
        self.sink.record(event);
    }

    /// Hand `event` to the sink; the answer resolves once it is durable.
    pub fn record_durable(&self, event: UsageEvent) -> Recorded {
        self.count_tokens(&event);
        self.sink.record_durable(event)
    }

    fn count_tokens(&self, e: &UsageEvent) {
        if e.input_tokens == 0 && e.output_tokens == 0 {
            return;
        }
        let provider = if e.provider.is_empty() {
            "none"
        } else {
            &e.provider
        };
        self.tokens
            .with_label_values(&["input", &e.model, provider])
            .inc_by(e.input_tokens);
        self.tokens
            .with_label_values(&["output", &e.model, provider])
            .inc_by(e.output_tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::WsRoute;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kept(Mutex<Vec<UsageEvent>>);

    impl UsageSink for Kept {
        fn record(&self, event: UsageEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn every_route_means_the_same_by_provider_and_bot() {
        let kept = Arc::new(Kept::default());
        let tokens = IntCounterVec::new(
            prometheus::Opts::new("t", "t"),
            &["direction", "model", "provider"],
        )
        .unwrap();
        let ledger = Ledger::new(kept.clone(), tokens.clone());
        let caller = Caller {
            key_id: "k1",
            user_id: "u1",
        };
        let chat = UsageRecord {
            bot_id: Some("bot-1".into()),
            stream: true,
            attempts: 1,
            ..UsageRecord::starting_now()
        };
        let closing = Closing {
            request_id: "r1",
            route: RouteLabel::Ws(WsRoute::Chat),
            caller,
            status: 101,
            outcome: Outcome::Closed(CloseReason::BotClosed(1000)),
            duration: Duration::from_millis(5),
        };
        ledger.record(ledger.event(&closing, &chat));
        let mut model = UsageRecord {
            model: Some("gpt".into()),
            provider: Some("openai".into()),
            tokens: TokenUsage::totals(3, 4),
            ..UsageRecord::starting_now()
        };
        model.attempts = 2;
        let closing = Closing {
            route: RouteLabel::Http(super::super::route::Route::ChatCompletions),
            status: 200,
            outcome: Outcome::Ok,
            ..closing
        };
        ledger.record(ledger.event(&closing, &model));
        let events = kept.0.lock().unwrap();
        assert_eq!(
            (
                events[0].provider.as_str(),
                events[0].bot_id.as_deref(),
                events[0].outcome.as_str()
            ),
            ("", Some("bot-1"), "ok")
        );
        assert_eq!(events[0].route, "ws.chat");
        assert_eq!(
            (events[1].provider.as_str(), events[1].bot_id.as_deref()),
            ("openai", None)
        );
        assert_eq!((events[1].attempts, events[1].input_tokens), (2, 3));
        assert_eq!(
            tokens.with_label_values(&["output", "gpt", "openai"]).get(),
            4
        );
    }

    #[test]
    fn websocket_close_reasons_name_the_outcome() {
        assert_eq!(Outcome::Closed(CloseReason::ClientClosed).as_str(), "ok");
        assert_eq!(
            Outcome::Closed(CloseReason::ClientGone).as_str(),
            "client_disconnected"
        );
        assert_eq!(Outcome::RateLimited.as_str(), "rate_limited");
    }
}
