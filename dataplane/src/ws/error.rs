//! Every way a WebSocket route can fail, and the one place that turns a
//! failure into what the client sees: an OpenAI-style JSON error before the
//! upgrade ([`WsReject`]), or a close code after it ([`CloseReason`]).
//!
//! Messages are static text and ids the client itself sent; never a key,
//! a ticket or a gateway token.

use crate::auth::AuthError;
use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

/// A refusal before the upgrade, answered as an HTTP error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WsReject {
    #[error("{0}")]
    Auth(AuthError),
    #[error("the ticket is not valid")]
    TicketInvalid,
    #[error("the ticket has expired")]
    TicketExpired,
    #[error("the ticket has already been used")]
    TicketReused,
    #[error("the query string needs a `bot` parameter")]
    MissingBot,
    /// Unknown bot and someone else's bot look the same, so a client can't
    /// probe which bot ids exist.
    #[error("no bot with id {0:?}")]
    BotNotFound(String),
    #[error("not a WebSocket handshake: {0}")]
    NotWebSocket(&'static str),
    #[error("only WebSocket version 13 is supported")]
    UnsupportedVersion,
    #[error("WebSocket needs HTTP/1.1; this connection uses HTTP/2")]
    NeedsHttp1,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("too many open WebSocket connections for this user (limit {0})")]
    TooManyConnections(u32),
    #[error("the bot could not be reached")]
    BotUnreachable,
    #[error("the bot did not answer in time")]
    BotTimeout,
    #[error("the bot refused the connection (status {0})")]
    BotRefused(u16),
    #[error("the query string needs a `model` parameter")]
    MissingModel,
    #[error("the model `{0}` does not exist or you do not have access to it")]
    UnknownModel(String),
    #[error("this key may not use the model `{0}`")]
    ModelNotAllowed(String),
    /// The model's provider does not speak OpenAI's Realtime API.
    #[error(
        "the model `{0}` is not served by an OpenAI-compatible provider, so it has no Realtime API"
    )]
    NotRealtime(String),
    #[error("the upstream provider could not be reached")]
    ProviderUnreachable,
    #[error("the upstream provider did not answer in time")]
    ProviderTimeout,
    #[error("the upstream provider refused the connection (status {0})")]
    ProviderRefused(u16),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the gateway failed to set up the connection")]
    Internal,
    /// A browser page on an origin `[browser] allowed_origins` does not list.
    #[error("this origin may not open WebSockets to the gateway")]
    OriginNotAllowed,
}

impl WsReject {
    pub fn status(&self) -> u16 {
        match self {
            Self::Auth(_) | Self::TicketInvalid | Self::TicketExpired | Self::TicketReused => 401,
            Self::MissingBot
            | Self::MissingModel
            | Self::NotRealtime(_)
            | Self::NotWebSocket(_)
            | Self::NeedsHttp1 => 400,
            Self::ModelNotAllowed(_) | Self::OriginNotAllowed => 403,
            Self::BotNotFound(_) | Self::UnknownModel(_) => 404,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedVersion => 426,
            Self::TooManyConnections(_) => 429,
            Self::Internal => 500,
            Self::BotUnreachable
            | Self::BotRefused(_)
            | Self::ProviderUnreachable
            | Self::ProviderRefused(_) => 502,
            Self::ShuttingDown => 503,
            Self::BotTimeout | Self::ProviderTimeout => 504,
        }
    }

    /// OpenAI's `error.type` and `error.code`; the code doubles as the
    /// metric and log label.
    pub fn type_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Self::Auth(AuthError::Missing) => ("invalid_request_error", "missing_api_key"),
            Self::Auth(AuthError::Expired) => ("invalid_request_error", "expired_token"),
            Self::Auth(AuthError::Invalid) => ("invalid_request_error", "invalid_api_key"),
            Self::TicketInvalid => ("invalid_request_error", "invalid_ticket"),
            Self::TicketExpired => ("invalid_request_error", "expired_ticket"),
            Self::TicketReused => ("invalid_request_error", "ticket_already_used"),
            Self::MissingBot => ("invalid_request_error", "missing_bot"),
            Self::BotNotFound(_) => ("invalid_request_error", "bot_not_found"),
            // The same codes as the HTTP model routes.
            Self::MissingModel => ("invalid_request_error", "missing_model"),
            Self::UnknownModel(_) => ("invalid_request_error", "model_not_found"),
            Self::ModelNotAllowed(_) => ("permission_error", "model_not_allowed"),
            Self::NotRealtime(_) => ("invalid_request_error", "model_not_realtime"),
            Self::ProviderUnreachable => ("api_error", "upstream_unavailable"),
            Self::ProviderTimeout => ("api_error", "upstream_timeout"),
            Self::ProviderRefused(_) => ("api_error", "upstream_error"),
            Self::NotWebSocket(_) => ("invalid_request_error", "not_websocket"),
            Self::UnsupportedVersion => ("invalid_request_error", "unsupported_websocket_version"),
            Self::NeedsHttp1 => ("invalid_request_error", "websocket_needs_http1"),
            Self::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            Self::TooManyConnections(_) => ("rate_limit_error", "too_many_connections"),
            Self::BotUnreachable => ("api_error", "bot_unreachable"),
            Self::BotTimeout => ("api_error", "bot_timeout"),
            Self::BotRefused(_) => ("api_error", "bot_refused"),
            Self::ShuttingDown => ("api_error", "shutting_down"),
            Self::Internal => ("api_error", "internal_error"),
            Self::OriginNotAllowed => ("permission_error", "origin_not_allowed"),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.type_and_code().1
    }

    /// Extra response headers this refusal needs.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::UnsupportedVersion => &[("sec-websocket-version", "13")],
            // A slot frees up when one of the user's connections closes;
            // a second is a polite first retry.
            Self::TooManyConnections(_) => &[("retry-after", "1")],
            Self::Auth(_) | Self::TicketInvalid | Self::TicketExpired | Self::TicketReused => {
                &[("www-authenticate", "Bearer")]
            }
            _ => &[],
        }
    }

    /// `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> Bytes {
        let (kind, code) = self.type_and_code();
        let v = serde_json::json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}});
        Bytes::from(v.to_string())
    }
}

/// Why an open relay ended, with the close code the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame; the bot gets the same code.
    ClientClosed,
    /// The client's connection dropped without a close frame.
    ClientGone,
    /// The client stopped reading and a write could not finish in time.
    ClientStalled,
    /// The bot sent a close frame; the client gets the bot's code.
    BotClosed(u16),
    /// No frame from the client (not even a pong) within the idle timeout.
    Idle,
    /// The data plane is shutting down.
    Shutdown,
    /// A config reload moved or deleted the bot.
    BotMoved,
    /// The bot broke the protocol or sent a message over the limit.
    BotFailed,
    /// The bot's connection was lost mid-session.
    BotLost,
    /// The client sent a message over the limit.
    TooBig,
    /// The client broke the WebSocket protocol.
    Protocol,
    /// The client sent a text message that is not UTF-8.
    BadUtf8,
}

impl CloseReason {
    /// The close code sent to the client (RFC 6455 §7.4, IANA registry).
    pub fn client_code(self) -> u16 {
        match self {
            Self::ClientClosed | Self::ClientGone | Self::Idle => 1000,
            Self::BotClosed(code) => code,
            Self::Shutdown | Self::ClientStalled => 1001,
            Self::Protocol => 1002,
            Self::BadUtf8 => 1007,
            Self::TooBig => 1009,
            Self::BotFailed => 1011,
            Self::BotMoved => 1012,
            Self::BotLost => 1014,
        }
    }

    /// The close code sent to the bot when the relay ends on our side.
    pub fn bot_code(self) -> u16 {
        match self {
            // The client's own code is passed through by the relay.
            Self::ClientClosed | Self::BotClosed(_) => 1000,
            Self::ClientGone | Self::ClientStalled | Self::Idle | Self::Shutdown => 1001,
            Self::BotMoved => 1012,
            Self::Protocol | Self::BadUtf8 | Self::TooBig => 1001,
            Self::BotFailed | Self::BotLost => 1011,
        }
    }

    /// Short text for the close frame's reason, the log and the usage
    /// event's `outcome`.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientGone => "client_disconnected",
            Self::ClientStalled => "client_stalled",
            Self::BotClosed(_) => "bot_closed",
            Self::Idle => "idle_timeout",
            Self::Shutdown => "shutting_down",
            Self::BotMoved => "bot_moved",
            Self::BotFailed => "bot_failed",
            Self::BotLost => "bot_unreachable",
            Self::TooBig => "message_too_big",
            Self::Protocol => "protocol_error",
            Self::BadUtf8 => "invalid_utf8",
        }
    }

    /// The reason for an error tungstenite reported on the client side.
    pub fn from_client_error(e: &tungstenite::Error) -> Self {
        use tungstenite::error::{CapacityError, ProtocolError};
        match e {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. }) => Self::TooBig,
            tungstenite::Error::Capacity(_) => Self::TooBig,
            tungstenite::Error::Utf8(_) => Self::BadUtf8,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Io(_) => Self::ClientGone,
            _ => Self::Protocol,
        }
    }

    /// Close codes a peer may put on the wire; the rest (1005, 1006, 1015,
    /// out of range) are replaced by 1000 before relaying.
    pub fn sendable(code: u16) -> u16 {
        let ok = matches!(code, 1000..=1003 | 1007..=1014) || (3000..=4999).contains(&code);
        if ok {
            code
        } else {
            1000
        }
    }

    pub fn close_code(code: u16) -> CloseCode {
        CloseCode::from(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_openai_errors() {
        let e = WsReject::BotNotFound("b-1".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(e.status(), 404);
        assert_eq!(v["error"]["code"], "bot_not_found");
        assert_eq!(WsReject::TooManyConnections(3).status(), 429);
        assert_eq!(WsReject::BotUnreachable.status(), 502);
        let e = WsReject::UnknownModel("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            (e.status(), v["error"]["code"].as_str()),
            (404, Some("model_not_found"))
        );
        assert_eq!(WsReject::ModelNotAllowed("m".into()).status(), 403);
        assert_eq!(WsReject::ProviderTimeout.status(), 504);
    }

    #[test]
    fn close_codes() {
        assert_eq!(CloseReason::TooBig.client_code(), 1009);
        assert_eq!(CloseReason::BotMoved.client_code(), 1012);
        assert_eq!(CloseReason::Shutdown.client_code(), 1001);
        assert_eq!(CloseReason::BotLost.client_code(), 1014);
        assert_eq!(CloseReason::sendable(1006), 1000);
        assert_eq!(CloseReason::sendable(4001), 4001);
    }
}
