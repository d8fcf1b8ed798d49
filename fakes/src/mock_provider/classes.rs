//! The token classes the mock reports beside its totals: prompt-cache
//! reads and writes and reasoning tokens, deterministic so tests can
//! predict them, each in its format's real shape (see [`super::openai`] and
//! [`super::anthropic`]).
//!
//! When: a request with `x-mock-usage-classes: 1` gets every class its
//! format has; without it, a request gets cache figures when its body asks
//! for caching (a `cache_control` block anywhere, as Anthropic clients
//! mark cacheable prompt parts, or OpenAI's `prompt_cache_key`) and
//! reasoning tokens when it sets `reasoning_effort` (chat) or `reasoning`
//! (Responses), so `molt dev` shows them to anyone who asks like that.
//!
//! How many, for a prompt of P tokens and an answer of V visible tokens:
//! cache reads P/2, cache writes P/4 (with a 1-hour lifetime when a
//! `cache_control` says `"ttl": "1h"`, else 5 minutes), reasoning V
//! (hidden tokens, so the output total is 2V). The totals keep meaning
//! "every token": P input (Anthropic's own `input_tokens` field then holds
//! what the cache leaves, as Anthropic reports it) and V or 2V output.

use serde_json::{Map, Value};

/// The classes of one answer (zero: not reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReportedClasses {
    pub cache_read_input: u64,
    pub cache_write_5m_input: u64,
    pub cache_write_1h_input: u64,
    pub reasoning_output: u64,
}

/// Which classes a request asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClassRequest {
    pub(crate) cache: bool,
    pub(crate) cache_1h: bool,
    pub(crate) reasoning: bool,
}

/// Which classes a format reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FormatClasses {
    pub(crate) cache_read: bool,
    pub(crate) cache_write: bool,
    pub(crate) reasoning: bool,
}

impl ClassRequest {
    /// From the body and the `x-mock-usage-classes` control.
    pub(crate) fn of(body: &Map<String, Value>, forced: bool) -> ClassRequest {
        let mut found = ClassRequest {
            cache: forced || body.contains_key("prompt_cache_key"),
            cache_1h: false,
            reasoning: forced
                || body.contains_key("reasoning_effort")
                || body.contains_key("reasoning"),
        };
        for value in body.values() {
            find_cache_control(value, &mut found);
        }
        found
    }

    /// The classes of an answer in a format that reports `format`'s.
    pub(crate) fn classes(
        &self,
        format: FormatClasses,
        prompt: u64,
        visible: u64,
    ) -> ReportedClasses {
        let cache = self.cache;
        let write = if cache && format.cache_write {
            prompt / 4
        } else {
            0
        };
        ReportedClasses {
            cache_read_input: if cache && format.cache_read {
                prompt / 2
            } else {
                0
            },
            cache_write_5m_input: if self.cache_1h { 0 } else { write },
            cache_write_1h_input: if self.cache_1h { write } else { 0 },
            reasoning_output: if self.reasoning && format.reasoning {
                visible
            } else {
                0
            },
        }
    }
}

impl ReportedClasses {
    pub fn is_empty(&self) -> bool {
        *self == ReportedClasses::default()
    }

    pub(crate) fn cache_writes(&self) -> u64 {
        self.cache_write_5m_input + self.cache_write_1h_input
    }
}

/// Any `cache_control` object, at any depth (system blocks, message
/// content blocks, tools).
fn find_cache_control(value: &Value, found: &mut ClassRequest) {
    match value {
        Value::Object(object) => {
            for (key, v) in object {
                if key == "cache_control" && v.is_object() {
                    found.cache = true;
                    if v.get("ttl").and_then(Value::as_str) == Some("1h") {
                        found.cache_1h = true;
                    }
                } else {
                    find_cache_control(v, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| find_cache_control(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn requests_ask_for_classes_by_their_real_fields() {
        let anthropic = object(json!({"system": [{"type": "text", "text": "x",
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}));
        let r = ClassRequest::of(&anthropic, false);
        assert!(r.cache && r.cache_1h && !r.reasoning);
        let all = FormatClasses {
            cache_read: true,
            cache_write: true,
            reasoning: true,
        };
        assert_eq!(
            r.classes(all, 100, 8),
            ReportedClasses {
                cache_read_input: 50,
                cache_write_1h_input: 25,
                ..ReportedClasses::default()
            }
        );
        let chat = object(json!({"reasoning_effort": "low", "prompt_cache_key": "k"}));
        let r = ClassRequest::of(&chat, false);
        assert!(r.cache && r.reasoning && !r.cache_1h);
        let plain = ClassRequest::of(&object(json!({"model": "m"})), false);
        assert_eq!(plain, ClassRequest::default());
        assert_eq!(plain.classes(all, 100, 8), ReportedClasses::default());
        assert!(ClassRequest::of(&object(json!({})), true).reasoning);
    }
}
