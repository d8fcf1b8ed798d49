//! Reading token usage out of responses as they stream past.
//!
//! [`SseUsageReader`] follows an SSE stream chunk by chunk: events may be
//! split across chunks (and chunks may hold several events). It finds the
//! usage the provider reports (OpenAI's final chunk, Anthropic's
//! `message_start` + `message_delta`, Responses' `response.completed`) and,
//! when the proxy itself asked for OpenAI's usage chunk, removes that chunk
//! so the client sees exactly what it asked for.
//!
//! [`JsonUsageReader`] does the same for a non-streaming JSON body with the
//! incremental scanner: only the `usage` value is copied.
//!
//! Cost on the hot path: a `memchr` for line ends and a `memmem` for
//! `"usage"` per line; JSON is parsed only for the few lines that mention
//! usage. Bytes are forwarded as the same `Bytes` they arrived in unless an
//! event has to be cut out.

use crate::json_scan::JsonScanner;
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

/// Tokens a provider reported (or the proxy counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
}

/// The usage object of any supported format.
#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl RawUsage {
    fn tokens(&self) -> TokenUsage {
        // OpenAI's prompt_tokens already include cached tokens; Anthropic's
        // input_tokens exclude cache writes and reads, which are billed input.
        // Saturating: an upstream's counts are untrusted, and a sum that
        // wrapped would bill next to nothing.
        let sum = |counts: &[Option<u64>]| {
            counts
                .iter()
                .fold(0u64, |sum, c| sum.saturating_add(c.unwrap_or(0)))
        };
        TokenUsage {
            input: sum(&[
                self.prompt_tokens,
                self.input_tokens,
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ]),
            output: sum(&[self.completion_tokens, self.output_tokens]),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Nested {
    usage: Option<RawUsage>,
}

/// The fields of an SSE `data:` payload that carry usage, in any format.
#[derive(Debug, Deserialize)]
struct EventData {
    #[serde(rename = "type")]
    kind: Option<String>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
    usage: Option<RawUsage>,
    /// Anthropic `message_start`.
    message: Option<Nested>,
    /// Responses `response.completed` and friends.
    response: Option<Nested>,
}

/// Which terminal marker ends a well-formed stream of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// OpenAI chat/completions: `data: [DONE]`.
    OpenAi,
    /// OpenAI Responses: `response.completed` (or `.incomplete`/`.failed`).
    Responses,
    /// Anthropic Messages: `message_stop`.
    Anthropic,
}

/// Follows one SSE response stream.
#[derive(Debug)]
pub struct SseUsageReader {
    kind: StreamKind,
    /// Cut out OpenAI's usage-only chunk (the proxy asked for it, the client
    /// did not).
    strip_usage_chunk: bool,
    usage: Option<TokenUsage>,
    terminal_seen: bool,
    /// The unfinished last line of the previous chunk.
    partial_line: Vec<u8>,
    /// Strip mode only: bytes of the current, unfinished event that were not
    /// forwarded yet.
    held: BytesMut,
    /// Strip mode only: the current event is the usage-only chunk.
    current_event_is_usage_only: bool,
    usage_finder: memmem::Finder<'static>,
}

impl SseUsageReader {
    pub fn new(kind: StreamKind, strip_usage_chunk: bool) -> Self {
        Self {
            kind,
            strip_usage_chunk,
            usage: None,
            terminal_seen: false,
            partial_line: Vec::new(),
            held: BytesMut::new(),
            current_event_is_usage_only: false,
            usage_finder: memmem::Finder::new(b"\"usage\""),
        }
    }

    /// Usage the stream reported so far.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The stream's terminal event went past.
    pub fn terminal_seen(&self) -> bool {
        self.terminal_seen
    }

    /// Read `chunk` and push what should be forwarded to `out`. Without
    /// stripping that is `chunk` itself; with stripping, complete events are
    /// forwarded at once and only an unfinished trailing event is held back.
    pub fn feed(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        if !self.strip_usage_chunk {
            self.scan_lines(&chunk, |_, _, _| {});
            out.push(chunk);
            return;
        }
        // Strip mode: track event boundaries so one event can be cut out.
        let mut ends: Vec<(usize, bool)> = Vec::new();
        self.scan_lines(&chunk, |line_end, blank, usage_only| {
            if blank {
                ends.push((line_end, usage_only));
            }
        });
        let held_before = !self.held.is_empty();
        let mut emit_from = 0usize;
        let mut event_start = 0usize;
        for (i, (end, usage_only)) in ends.iter().copied().enumerate() {
            if i == 0 && held_before {
                // The event that began in an earlier chunk is complete: send
                // it as one piece (it is already a copy) or drop it.
                if usage_only {
                    self.held.clear();
                } else {
                    self.held.extend_from_slice(&chunk[..end]);
                    out.push(without_null_usage(std::mem::take(&mut self.held).freeze()));
                }
                emit_from = end;
            } else if usage_only {
                if event_start > emit_from {
                    out.push(without_null_usage(chunk.slice(emit_from..event_start)));
                }
                emit_from = end;
            }
            event_start = end;
        }
        // Everything up to the start of the unfinished event goes out now.
        if event_start > emit_from {
            out.push(without_null_usage(chunk.slice(emit_from..event_start)));
        }
        if event_start < chunk.len() {
            self.held.extend_from_slice(&chunk[event_start..]);
        }
    }

    /// Stream ended: release anything still held (an unterminated last
    /// event is forwarded as it was, never invented or dropped).
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if !self.held.is_empty() {
            out.push(std::mem::take(&mut self.held).freeze());
        }
    }

    /// Walk complete lines; `on_line(index after the line, line was blank,
    /// event was the usage-only chunk)` is called for each.
    fn scan_lines(&mut self, chunk: &[u8], mut on_line: impl FnMut(usize, bool, bool)) {
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &chunk[start..]) {
            let end = start + nl + 1;
            let (usage_only, blank) = if self.partial_line.is_empty() {
                let line = trim_line(&chunk[start..end]);
                (self.inspect_line(line), line.is_empty())
            } else {
                let mut line = std::mem::take(&mut self.partial_line);
                line.extend_from_slice(&chunk[start..end]);
                let trimmed = trim_line(&line);
                let r = (self.inspect_line(trimmed), trimmed.is_empty());
                line.clear();
                // Keep the allocation for the next split line.
                self.partial_line = line;
                r
            };
            if blank {
                let was = std::mem::replace(&mut self.current_event_is_usage_only, false);
                on_line(end, true, was);
            } else {
                if usage_only {
                    self.current_event_is_usage_only = true;
                }
                on_line(end, false, false);
            }
            start = end;
        }
        if start < chunk.len() {
            self.partial_line.extend_from_slice(&chunk[start..]);
        }
    }

    /// Look at one complete line; true if it is the data of OpenAI's
    /// usage-only chunk.
    fn inspect_line(&mut self, line: &[u8]) -> bool {
        if let Some(name) = line.strip_prefix(b"event:") {
            let name = name.trim_ascii();
            if matches!(
                name,
                b"message_stop"
                    | b"response.completed"
                    | b"response.incomplete"
                    | b"response.failed"
            ) {
                self.terminal_seen = true;
            }
            return false;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return false;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            if self.kind == StreamKind::OpenAi {
                self.terminal_seen = true;
            }
            return false;
        }
        if self.kind == StreamKind::Anthropic && memmem::find(data, b"\"message_stop\"").is_some() {
            self.terminal_seen = true;
        }
        if !self.has_usage_object(data) {
            return false;
        }
        let Ok(event) = serde_json::from_slice::<EventData>(data) else {
            return false;
        };
        if let Some(kind) = &event.kind {
            if kind == "message_stop" || kind.starts_with("response.completed") {
                self.terminal_seen = true;
            }
        }
        let raw = event
            .usage
            .as_ref()
            .or(event.message.as_ref().and_then(|m| m.usage.as_ref()))
            .or(event.response.as_ref().and_then(|r| r.usage.as_ref()));
        if let Some(raw) = raw {
            let t = raw.tokens();
            // Anthropic reports input in message_start and the final output
            // count in message_delta; counts only ever grow.
            let u = self.usage.get_or_insert_with(TokenUsage::default);
            u.input = u.input.max(t.input);
            u.output = u.output.max(t.output);
        }
        self.kind == StreamKind::OpenAi
            && raw.is_some()
            && event.choices.as_ref().is_some_and(|c| c.is_empty())
    }
}

/// Remove the `"usage":null` OpenAI adds to every chunk once usage is
/// requested, so a client that did not request it sees chunks as it would
/// have. Complete events only; copies the piece only if it has one.
fn without_null_usage(piece: Bytes) -> Bytes {
    const FIELD: &[u8] = b"\"usage\":null";
    let finder = memmem::Finder::new(FIELD);
    if finder.find(&piece).is_none() {
        return piece;
    }
    let mut out = BytesMut::with_capacity(piece.len());
    let mut rest = &piece[..];
    while let Some(at) = finder.find(rest) {
        let after = at + FIELD.len();
        // Take one adjacent comma with the field: `,"usage":null` or
        // `"usage":null,` so the object stays valid JSON.
        let (cut_start, cut_end) = if at > 0 && rest[at - 1] == b',' {
            (at - 1, after)
        } else if rest.get(after) == Some(&b',') {
            (at, after + 1)
        } else {
            (at, after)
        };
        out.extend_from_slice(&rest[..cut_start]);
        rest = &rest[cut_end..];
    }
    out.extend_from_slice(rest);
    out.freeze()
}

impl SseUsageReader {
    /// Whether `data` has a `"usage"` key whose value is not `null`. Once
    /// usage is requested, OpenAI puts `"usage":null` in every chunk; only
    /// the final chunk's object is worth a JSON parse (a parse costs ~10x
    /// this scan per chunk).
    fn has_usage_object(&self, data: &[u8]) -> bool {
        let mut rest = data;
        while let Some(at) = self.usage_finder.find(rest) {
            let after = &rest[at + b"\"usage\"".len()..];
            let value = after
                .trim_ascii_start()
                .strip_prefix(b":")
                .map(<[u8]>::trim_ascii_start)
                .unwrap_or(after);
            if !value.starts_with(b"null") {
                return true;
            }
            rest = after;
        }
        false
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Finds `usage` in a non-streaming JSON response.
#[derive(Debug)]
pub struct JsonUsageReader {
    scanner: JsonScanner,
    failed: bool,
}

impl Default for JsonUsageReader {
    fn default() -> Self {
        Self {
            scanner: JsonScanner::new(&["usage"], 16 * 1024),
            failed: false,
        }
    }
}

impl JsonUsageReader {
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.failed && self.scanner.feed(chunk).is_err() {
            // Not JSON (an HTML error page, say): there is no usage to read.
            self.failed = true;
        }
    }

    /// The usage object, once the whole body was fed.
    pub fn finish(mut self) -> Option<TokenUsage> {
        if self.failed || self.scanner.finish().is_err() {
            return None;
        }
        let raw = self.scanner.field(0)?.raw.as_deref()?;
        serde_json::from_slice::<RawUsage>(raw)
            .ok()
            .map(|u| u.tokens())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(stream: &str, kind: StreamKind, strip: bool, piece: usize) -> (SseUsageReader, Vec<u8>) {
        let mut r = SseUsageReader::new(kind, strip);
        let mut out = Vec::new();
        for c in stream.as_bytes().chunks(piece) {
            r.feed(Bytes::copy_from_slice(c), &mut out);
        }
        r.finish(&mut out);
        (r, out.iter().flat_map(|b| b.iter().copied()).collect())
    }

    #[test]
    fn openai_usage_found_at_every_split() {
        for piece in 1..OPENAI_STREAM.len() {
            let (r, out) = run(OPENAI_STREAM, StreamKind::OpenAi, false, piece);
            assert_eq!(
                r.usage(),
                Some(TokenUsage {
                    input: 11,
                    output: 2
                }),
                "piece {piece}"
            );
            assert!(r.terminal_seen());
            assert_eq!(out, OPENAI_STREAM.as_bytes());
        }
    }

    #[test]
    fn usage_chunk_is_stripped_exactly_at_every_split() {
        let want = OPENAI_STREAM
            .replace(
                "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\n",
                "",
            )
            .replace(",\"usage\":null", "");
        for piece in 1..OPENAI_STREAM.len() {
            let (r, out) = run(OPENAI_STREAM, StreamKind::OpenAi, true, piece);
            assert_eq!(
                r.usage(),
                Some(TokenUsage {
                    input: 11,
                    output: 2
                }),
                "piece {piece}"
            );
            assert_eq!(String::from_utf8(out).unwrap(), want, "piece {piece}");
        }
    }

    #[test]
    fn null_usage_is_not_parsed_but_objects_are() {
        let r = SseUsageReader::new(StreamKind::OpenAi, false);
        assert!(!r.has_usage_object(br#"{"choices":[],"usage":null}"#));
        assert!(!r.has_usage_object(br#"{"usage" : null,"a":1}"#));
        assert!(!r.has_usage_object(br#"{"a":1}"#));
        assert!(r.has_usage_object(br#"{"usage":{"prompt_tokens":1}}"#));
        // A later non-null usage (Anthropic nests it) is still found.
        assert!(r.has_usage_object(br#"{"usage":null,"message":{"usage":{"input_tokens":3}}}"#));
    }

    #[test]
    fn null_usage_is_removed_with_one_comma() {
        let cases = [
            (r#"data: {"a":1,"usage":null}"#, r#"data: {"a":1}"#),
            (r#"data: {"usage":null,"a":1}"#, r#"data: {"a":1}"#),
            (r#"data: {"usage":null}"#, r#"data: {}"#),
            (r#"data: {"a":1}"#, r#"data: {"a":1}"#),
        ];
        for (input, want) in cases {
            assert_eq!(without_null_usage(Bytes::from(input)), Bytes::from(want));
        }
    }

    #[test]
    fn stripping_forwards_complete_events_immediately() {
        let mut r = SseUsageReader::new(StreamKind::OpenAi, true);
        let mut out = Vec::new();
        r.feed(
            Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\""),
            &mut out,
        );
        assert_eq!(out, [Bytes::from_static(b"data: {\"a\":1}\n\n")]);
    }

    #[test]
    fn anthropic_usage_combines_start_and_delta() {
        let stream = concat!(
            "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n",
            "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n",
            "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
            "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
        );
        for piece in [1, 7, 64, stream.len()] {
            let (r, _) = run(stream, StreamKind::Anthropic, false, piece);
            assert_eq!(
                r.usage(),
                Some(TokenUsage {
                    input: 30,
                    output: 15
                })
            );
            assert!(r.terminal_seen());
        }
    }

    #[test]
    fn responses_usage_from_completed_event() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"total_tokens\":13}}}\n\n",
        );
        let (r, _) = run(stream, StreamKind::Responses, false, 10);
        assert_eq!(
            r.usage(),
            Some(TokenUsage {
                input: 9,
                output: 4
            })
        );
        assert!(r.terminal_seen());
    }

    #[test]
    fn stream_without_terminal_is_noticed() {
        let cut = &OPENAI_STREAM[..60];
        let (r, _) = run(cut, StreamKind::OpenAi, false, 8);
        assert!(!r.terminal_seen());
        assert_eq!(r.usage(), None);
    }

    /// Found while writing `fuzz/`'s sse_usage target: usage fields whose sum
    /// passes `u64::MAX` overflowed: a panic in debug builds, a wrapped (tiny)
    /// count in release ones.
    #[test]
    fn huge_counts_saturate() {
        let max = u64::MAX;
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{max},\"cache_read_input_tokens\":7,\"output_tokens\":{max}}}}}}}\n\n"
        );
        let (r, _) = run(&stream, StreamKind::Anthropic, false, 16);
        assert_eq!(
            r.usage(),
            Some(TokenUsage {
                input: max,
                output: max
            })
        );
        let body = format!(
            r#"{{"usage":{{"prompt_tokens":{max},"input_tokens":1,"completion_tokens":{max},"output_tokens":2}}}}"#
        );
        let mut r = JsonUsageReader::default();
        r.feed(body.as_bytes());
        assert_eq!(
            r.finish(),
            Some(TokenUsage {
                input: max,
                output: max
            })
        );
    }

    #[test]
    fn json_usage_reader_copies_only_usage() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        for piece in [1, 5, body.len()] {
            let mut r = JsonUsageReader::default();
            for c in body.chunks(piece) {
                r.feed(c);
            }
            assert_eq!(
                r.finish(),
                Some(TokenUsage {
                    input: 3,
                    output: 4
                })
            );
        }
        let mut r = JsonUsageReader::default();
        r.feed(b"<html>");
        assert_eq!(r.finish(), None);
    }
}
