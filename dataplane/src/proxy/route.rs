//! What a request path names: the model routes the proxy serves, and the
//! route label every request is counted and logged under (model routes,
//! WebSocket routes, or `unknown`).

use crate::usage_reader::StreamKind;
use crate::ws::WsRoute;
use molt_config::ApiFormat;

/// The model API routes the data plane serves over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    Models,
}

impl Route {
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/messages" => Self::Messages,
            "/v1/models" => Self::Models,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
            Self::Models => "models",
        }
    }

    /// The API whose request, response and error formats the route speaks.
    pub fn format(self) -> ApiFormat {
        match self {
            Self::Messages => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    /// The one method the route answers.
    pub fn method(self) -> http::Method {
        match self {
            Self::Models => http::Method::GET,
            _ => http::Method::POST,
        }
    }

    /// Path after the provider's base path (`/v1` is part of the base).
    pub(super) fn upstream_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
            Self::Models => "/models",
        }
    }

    pub(super) fn stream_kind(self) -> StreamKind {
        match self {
            Self::Responses => StreamKind::Responses,
            Self::Messages => StreamKind::Anthropic,
            _ => StreamKind::OpenAi,
        }
    }

    /// Routes whose streams only carry usage when asked for it.
    pub(super) fn needs_include_usage(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}

/// The route a request was counted under, for every path the data plane
/// listens on: the label of its metrics, access line and usage event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    /// A path no route serves (404), or a request that never got as far as
    /// routing.
    Unknown,
    Http(Route),
    Ws(WsRoute),
}

impl RouteLabel {
    pub fn from_path(path: &str) -> Self {
        if let Some(ws) = WsRoute::from_path(path) {
            Self::Ws(ws)
        } else if let Some(route) = Route::from_path(path) {
            Self::Http(route)
        } else {
            Self::Unknown
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Http(r) => r.name(),
            Self::Ws(r) => r.name(),
        }
    }

    /// The error format of the route (OpenAI's where the route has none).
    pub fn format(self) -> ApiFormat {
        match self {
            Self::Http(r) => r.format(),
            Self::Unknown | Self::Ws(_) => ApiFormat::OpenAi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes_exactly() {
        assert_eq!(Route::from_path("/v1/messages"), Some(Route::Messages));
        assert_eq!(Route::from_path("/v1/chat/completions/"), None);
        assert_eq!(
            RouteLabel::from_path("/ws/chat"),
            RouteLabel::Ws(WsRoute::Chat)
        );
        assert_eq!(RouteLabel::from_path("/ws/chat").name(), "ws.chat");
        assert_eq!(RouteLabel::from_path("/nope").name(), "unknown");
        assert_eq!(
            RouteLabel::from_path("/v1/messages").format(),
            ApiFormat::Anthropic
        );
    }
}
