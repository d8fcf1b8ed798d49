//! Counting tokens locally when a provider reports none.
//!
//! The figures are marked `estimated` in the usage event. Text is pulled out
//! of the request and response JSON (message contents, prompts, deltas,
//! tool-call arguments) and counted with OpenAI's `o200k_base` BPE from
//! tiktoken-rs; for other vendors' models that is an approximation, which is
//! what "estimated" says. This runs once per request at its end, and only
//! when usage is missing, so it is off the hot path.
//!
//! The tokenizer's tables take about 45 MB, more than everything else a
//! data plane holds at idle, and most providers report usage, so they are
//! loaded on first need ([`ready`], off the async workers), not at start.

use bytes::Bytes;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};

/// Keys whose string values are text the model read or wrote.
const TEXT_KEYS: &[&str] = &[
    "content",
    "text",
    "prompt",
    "input",
    "system",
    "instructions",
    "arguments",
    "refusal",
    "delta",
];

/// Count tokens in `text` with the o200k tokenizer.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tiktoken_rs::o200k_base_singleton()
        .encode_with_special_tokens(text)
        .len() as u64
}

/// Set once the tokenizer's tables are loaded.
static LOADED: AtomicBool = AtomicBool::new(false);

/// Load the tokenizer's tables if they are not yet, on a blocking thread
/// (it takes a moment), so counting after this does not stall an async
/// worker. The first response that needs an estimate waits for it once per
/// process; every later call is one atomic load.
pub async fn ready() {
    if LOADED.load(Ordering::Acquire) {
        return;
    }
    if tokio::task::spawn_blocking(|| count("load")).await.is_ok() {
        LOADED.store(true, Ordering::Release);
    }
}

/// Estimate the input tokens of a request body.
pub fn count_request(chunks: &[Bytes]) -> u64 {
    let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            let mut text = String::new();
            collect_text(&v, false, &mut text);
            count(&text)
        }
        Err(_) => 0,
    }
}

/// Estimate the output tokens of a response body: an SSE stream (every
/// `data:` payload) or one JSON document.
pub fn count_response(body: &[u8], is_sse: bool) -> u64 {
    let mut text = String::new();
    if is_sse {
        for line in body.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
                collect_text(&v, false, &mut text);
            }
        }
    } else if let Ok(v) = serde_json::from_slice::<Value>(body) {
        collect_text(&v, false, &mut text);
    }
    count(&text)
}

/// Estimate the output tokens of an SSE stream of `total_bytes` from its
/// first bytes: their count, scaled by the bytes not kept. Exact when the
/// prefix is the whole stream. A prefix cut inside a line counts up to its
/// last complete line, and scales by that length.
pub fn estimate_stream_output(prefix: &[u8], total_bytes: usize) -> u64 {
    if total_bytes <= prefix.len() {
        return count_response(prefix, true);
    }
    let complete = prefix
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let prefix = &prefix[..complete];
    if prefix.is_empty() {
        return 0;
    }
    let counted = count_response(prefix, true);
    // u128: tokens times bytes cannot overflow.
    let scaled = u128::from(counted) * total_bytes as u128 / prefix.len() as u128;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Append every string found under a text key, at any depth.
fn collect_text(v: &Value, under_text_key: bool, out: &mut String) {
    match v {
        Value::String(s) if under_text_key => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_text(i, under_text_key, out)),
        Value::Object(map) => {
            for (k, v) in map {
                collect_text(v, TEXT_KEYS.contains(&k.as_str()), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_message_text_not_json_syntax() {
        let body = Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"Hello there"},{"role":"user","content":[{"type":"text","text":"General Kenobi"}]}]}"#,
        );
        let n = count_request(&[body]);
        assert!((4..=8).contains(&n), "{n}");
    }

    #[test]
    fn counts_stream_deltas() {
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(count_response(sse, true), count("Hello\n world\n"));
    }

    #[test]
    fn a_stream_estimate_from_its_prefix_scales_to_its_length() {
        let event: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n";
        let whole = event.repeat(10);
        let per_event = count_response(event, true);
        assert!(per_event > 0);
        // The whole stream kept: the plain count.
        assert_eq!(estimate_stream_output(&whole, whole.len()), 10 * per_event);
        // Only the first 2 of 10 events kept: scaled to all 10.
        assert_eq!(
            estimate_stream_output(&whole[..2 * event.len()], whole.len()),
            10 * per_event
        );
        // Cut inside the third event: it is left out, and the scale is
        // taken from the two complete ones.
        assert_eq!(
            estimate_stream_output(&whole[..2 * event.len() + 20], whole.len()),
            10 * per_event
        );
        assert_eq!(estimate_stream_output(&[], 1000), 0);
    }
}
