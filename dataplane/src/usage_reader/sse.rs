//! [`SseUsageReader`]: usage from an SSE stream, and the cut of OpenAI's
//! usage-only chunk when the proxy (not the client) asked for it.

use super::formats::UsageFields;
use super::TokenUsage;
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Nested {
    usage: Option<UsageFields>,
}

/// The fields of an SSE `data:` payload that carry usage, in any format.
#[derive(Debug, Deserialize)]
struct EventData {
    #[serde(rename = "type")]
    kind: Option<String>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
    usage: Option<UsageFields>,
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
    /// Every usage object seen so far, merged (later figures win). Boxed:
    /// every format's fields are large, and a held stream has none until
    /// its usage arrives (see ARCHITECTURE.md on what a held stream keeps).
    usage: Option<Box<UsageFields>>,
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
        self.usage.as_deref().map(UsageFields::tokens)
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
        // OpenAI's usage chunk, or usage on a chunk that still carries
        // `choices` (some servers send it on the last content chunk).
        let usage = event
            .usage
            .or(event.message.and_then(|m| m.usage))
            .or(event.response.and_then(|r| r.usage));
        let found = usage.is_some();
        if let Some(later) = usage {
            match &mut self.usage {
                Some(earlier) => earlier.merge(later),
                None => self.usage = Some(Box::new(later)),
            }
        }
        self.kind == StreamKind::OpenAi
            && found
            && event.choices.as_ref().is_some_and(|c| c.is_empty())
    }
}

/// Remove the `"usage":null` OpenAI adds to every chunk once usage is
/// requested, so a client that did not request it sees chunks as it would
/// have. Complete events only; copies the piece only if it has one.
pub(super) fn without_null_usage(piece: Bytes) -> Bytes {
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
    pub(super) fn has_usage_object(&self, data: &[u8]) -> bool {
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
