//! Incremental JSON scanning: validate a document chunk by chunk and note
//! where chosen top-level fields are, without building a tree or copying the
//! document.
//!
//! The proxy uses it twice: on request bodies (find `model`, `stream`,
//! `stream_options`, token caps; reject malformed JSON before anything goes
//! upstream) and on non-streaming response bodies (find `usage`). Chunk
//! boundaries may fall anywhere, including inside a string escape or a
//! number. Only the bytes of tracked values are copied, and only up to a
//! small cap, so a 2 MiB `messages` array costs one pass and no allocation.
//!
//! What "valid" means here: RFC 8259 grammar with an object at the top,
//! control characters rejected inside strings, nesting at most
//! [`MAX_DEPTH`]. UTF-8 validity of string contents is not checked (the
//! upstream does that); duplicate *tracked* keys are rejected so the proxy
//! can never route on one `model` while the upstream reads another.

use memchr::memchr2;

/// Deepest nesting accepted; deeper documents are rejected, not recursed.
pub const MAX_DEPTH: usize = 128;

/// Bytes one key byte may take in the document: `\u0065` for `e`. A key
/// longer than this many times the longest tracked key cannot be one of
/// them, and is skipped without copying.
const ESCAPED_BYTE_LEN: usize = 6;

/// Where a tracked top-level value sits in the document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSpan {
    /// Offset of the value's first byte.
    pub start: u64,
    /// Offset one past the value's last byte.
    pub end: u64,
    /// The value's bytes, if it was no longer than the capture limit.
    pub raw: Option<Vec<u8>>,
}

impl FieldSpan {
    /// The value decoded as a JSON string, if it is one.
    pub fn as_str(&self) -> Option<String> {
        self.raw
            .as_deref()
            .and_then(|r| serde_json::from_slice(r).ok())
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.raw.as_deref()? {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        std::str::from_utf8(self.raw.as_deref()?).ok()?.parse().ok()
    }

    pub fn is_null(&self) -> bool {
        self.raw.as_deref() == Some(b"null")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {reason}")]
pub struct JsonError {
    pub offset: u64,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level value.
    Start,
    /// Expecting a value (after `:` or `,` in an array, or `[`).
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the closing bracket.
    AfterValue,
    /// Inside a string; `key` says whether it is an object key.
    Str {
        key: bool,
    },
    /// After a backslash inside a string.
    Escape {
        key: bool,
    },
    /// Inside `\uXXXX`, with this many hex digits still to come.
    Unicode {
        key: bool,
        left: u8,
    },
    Number(Num),
    /// Inside `true`/`false`/`null`: the literal and how much was matched.
    Literal {
        word: &'static [u8],
        matched: u8,
    },
    /// After the top-level value: only whitespace may follow.
    Done,
}

/// Position inside the number grammar `-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

/// A resumable JSON validator that records tracked top-level fields.
#[derive(Debug)]
pub struct JsonScanner {
    tracked: &'static [&'static str],
    capture_limit: usize,
    /// Longest key (as written, escapes and all) compared against the
    /// tracked ones.
    key_limit: usize,
    fields: Vec<Option<FieldSpan>>,
    stack: Vec<Container>,
    state: State,
    offset: u64,
    /// Key being read at depth 1 (bounded copy), `None` once too long.
    key: Option<Vec<u8>>,
    key_has_escape: bool,
    /// Tracked field whose value comes next / is being read.
    pending_field: Option<usize>,
    active_field: Option<usize>,
    /// Depth at which the active field's value ends.
    object_end: Option<u64>,
}

impl JsonScanner {
    /// Track these top-level keys; keep copies of values up to
    /// `capture_limit` bytes.
    pub fn new(tracked: &'static [&'static str], capture_limit: usize) -> Self {
        let longest = tracked.iter().map(|t| t.len()).max().unwrap_or(0);
        Self {
            tracked,
            capture_limit,
            key_limit: longest * ESCAPED_BYTE_LEN,
            fields: vec![None; tracked.len()],
            stack: Vec::with_capacity(16),
            state: State::Start,
            offset: 0,
            key: None,
            key_has_escape: false,
            pending_field: None,
            active_field: None,
            object_end: None,
        }
    }

    /// The tracked field `tracked[i]`, if present.
    pub fn field(&self, i: usize) -> Option<&FieldSpan> {
        self.fields.get(i).and_then(Option::as_ref)
    }

    /// Offset of the top-level object's closing `}`.
    pub fn object_end(&self) -> Option<u64> {
        self.object_end
    }

    /// Bytes consumed so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Feed the next chunk of the document.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), JsonError> {
        let base = self.offset;
        let mut i = 0;
        // Where in this chunk the active field's bytes began (for capture).
        let mut capture_from = self.active_field.map(|_| 0);
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Str { key } => {
                    // Skip ordinary string content in bulk.
                    let rest = &chunk[i..];
                    let stop = memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    if let Some(at) = rest[..stop].iter().position(|&c| c < 0x20) {
                        return Err(self.err(base, i + at, "control character in string"));
                    }
                    if key {
                        self.push_key_bytes(&rest[..stop]);
                    }
                    i += stop;
                    if i == chunk.len() {
                        break;
                    }
                    if chunk[i] == b'\\' {
                        self.state = State::Escape { key };
                        if key {
                            self.key_has_escape = true;
                            self.push_key_bytes(b"\\");
                        }
                    } else {
                        // Closing quote.
                        if key {
                            self.state = State::Colon;
                        } else {
                            self.state = State::AfterValue;
                            self.value_ended(base, i + 1, chunk, &mut capture_from);
                        }
                    }
                    i += 1;
                    continue;
                }
                State::Escape { key } => {
                    if key {
                        self.push_key_bytes(&[b]);
                    }
                    self.state = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            State::Str { key }
                        }
                        b'u' => State::Unicode { key, left: 4 },
                        _ => return Err(self.err(base, i, "invalid escape")),
                    };
                }
                State::Unicode { key, left } => {
                    if !b.is_ascii_hexdigit() {
                        return Err(self.err(base, i, "invalid \\u escape"));
                    }
                    if key {
                        self.push_key_bytes(&[b]);
                    }
                    self.state = if left == 1 {
                        State::Str { key }
                    } else {
                        State::Unicode {
                            key,
                            left: left - 1,
                        }
                    };
                }
                State::Number(n) => {
                    let next = match (n, b) {
                        (Num::Minus, b'0') => Some(Num::Zero),
                        (Num::Minus, b'1'..=b'9') => Some(Num::Int),
                        (Num::Int, b'0'..=b'9') => Some(Num::Int),
                        (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
                        (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
                        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
                        (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
                        (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => {
                            Some(Num::ExpDigits)
                        }
                        _ => None,
                    };
                    match next {
                        Some(n) => self.state = State::Number(n),
                        None if n.can_end() => {
                            // The number ended before this byte; handle the
                            // byte again as whatever follows a value.
                            self.state = State::AfterValue;
                            self.value_ended(base, i, chunk, &mut capture_from);
                            continue;
                        }
                        None => return Err(self.err(base, i, "invalid number")),
                    }
                }
                State::Literal { word, matched } => {
                    if b != word[usize::from(matched)] {
                        return Err(self.err(base, i, "invalid literal"));
                    }
                    if usize::from(matched) + 1 == word.len() {
                        self.state = State::AfterValue;
                        self.value_ended(base, i + 1, chunk, &mut capture_from);
                    } else {
                        self.state = State::Literal {
                            word,
                            matched: matched + 1,
                        };
                    }
                }
                _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => {}
                State::Start => {
                    if b != b'{' {
                        return Err(self.err(base, i, "top-level value must be an object"));
                    }
                    self.stack.push(Container::Object);
                    self.state = State::ObjectFirst;
                }
                State::Done => return Err(self.err(base, i, "data after the top-level object")),
                State::ObjectFirst | State::Key => {
                    if b == b'"' {
                        self.start_key();
                        self.state = State::Str { key: true };
                    } else if b == b'}' && self.state == State::ObjectFirst {
                        self.close(base, i, Container::Object, chunk, &mut capture_from)?;
                    } else {
                        return Err(self.err(base, i, "expected a key"));
                    }
                }
                State::Colon => {
                    if b != b':' {
                        return Err(self.err(base, i, "expected ':'"));
                    }
                    self.finish_key(base, i)?;
                    self.state = State::Value;
                }
                State::Value | State::ArrayFirst => {
                    if b == b']' && self.state == State::ArrayFirst {
                        self.close(base, i, Container::Array, chunk, &mut capture_from)?;
                    } else {
                        self.begin_value(base, i, &mut capture_from);
                        self.state = match b {
                            b'{' => self.open(base, i, Container::Object)?,
                            b'[' => self.open(base, i, Container::Array)?,
                            b'"' => State::Str { key: false },
                            b'-' => State::Number(Num::Minus),
                            b'0' => State::Number(Num::Zero),
                            b'1'..=b'9' => State::Number(Num::Int),
                            b't' => State::Literal {
                                word: b"true",
                                matched: 1,
                            },
                            b'f' => State::Literal {
                                word: b"false",
                                matched: 1,
                            },
                            b'n' => State::Literal {
                                word: b"null",
                                matched: 1,
                            },
                            _ => return Err(self.err(base, i, "expected a value")),
                        };
                    }
                }
                State::AfterValue => match (b, self.stack.last()) {
                    (b',', Some(Container::Object)) => self.state = State::Key,
                    (b',', Some(Container::Array)) => self.state = State::Value,
                    (b'}', Some(Container::Object)) => {
                        self.close(base, i, Container::Object, chunk, &mut capture_from)?
                    }
                    (b']', Some(Container::Array)) => {
                        self.close(base, i, Container::Array, chunk, &mut capture_from)?
                    }
                    _ => return Err(self.err(base, i, "expected ',' or a closing bracket")),
                },
            }
            i += 1;
        }
        // Carry a partial capture over to the next chunk.
        if let (Some(field), Some(from)) = (self.active_field, capture_from) {
            self.capture(field, &chunk[from..]);
        }
        self.offset = base + chunk.len() as u64;
        Ok(())
    }

    /// Declare the end of the document.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        match self.state {
            State::Done => Ok(()),
            // A top-level number can't occur (the top is an object), so an
            // unfinished number is always an error here.
            _ => Err(JsonError {
                offset: self.offset,
                reason: "unexpected end of document",
            }),
        }
    }

    fn err(&self, base: u64, i: usize, reason: &'static str) -> JsonError {
        JsonError {
            offset: base + i as u64,
            reason,
        }
    }

    fn depth(&self) -> usize {
        self.stack.len()
    }

    fn start_key(&mut self) {
        if self.depth() == 1 {
            let mut buf = self.key.take().unwrap_or_default();
            buf.clear();
            self.key = Some(buf);
            self.key_has_escape = false;
        }
    }

    fn push_key_bytes(&mut self, bytes: &[u8]) {
        if self.depth() != 1 {
            return;
        }
        if let Some(k) = &mut self.key {
            if k.len() + bytes.len() > self.key_limit {
                self.key = None;
            } else {
                k.extend_from_slice(bytes);
            }
        }
    }

    fn finish_key(&mut self, base: u64, i: usize) -> Result<(), JsonError> {
        self.pending_field = None;
        if self.depth() != 1 {
            return Ok(());
        }
        let Some(raw) = self.key.as_deref() else {
            // Too long to be one of ours; start collecting afresh next time.
            self.key = Some(Vec::new());
            return Ok(());
        };
        let decoded;
        let name: &[u8] = if self.key_has_escape {
            // Rare: decode `"mod\u0065l"` so escapes can't hide a key.
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            decoded = serde_json::from_slice::<String>(&quoted).unwrap_or_default();
            decoded.as_bytes()
        } else {
            raw
        };
        if let Some(idx) = self.tracked.iter().position(|t| t.as_bytes() == name) {
            if self.fields[idx].is_some() {
                return Err(self.err(base, i, "duplicate key"));
            }
            self.pending_field = Some(idx);
        }
        Ok(())
    }

    fn begin_value(&mut self, base: u64, i: usize, capture_from: &mut Option<usize>) {
        if self.depth() == 1 {
            if let Some(idx) = self.pending_field.take() {
                self.fields[idx] = Some(FieldSpan {
                    start: base + i as u64,
                    end: 0,
                    raw: Some(Vec::new()),
                });
                self.active_field = Some(idx);
                *capture_from = Some(i);
            }
        }
    }

    /// A value ended just before chunk index `end`; if it was the tracked
    /// field's value (we are back at depth 1), close its span.
    fn value_ended(
        &mut self,
        base: u64,
        end: usize,
        chunk: &[u8],
        capture_from: &mut Option<usize>,
    ) {
        if self.depth() != 1 {
            return;
        }
        if let Some(idx) = self.active_field.take() {
            if let Some(from) = capture_from.take() {
                self.capture(idx, &chunk[from..end]);
            }
            if let Some(f) = &mut self.fields[idx] {
                f.end = base + end as u64;
            }
        }
    }

    fn capture(&mut self, idx: usize, bytes: &[u8]) {
        let limit = self.capture_limit;
        if let Some(Some(f)) = self.fields.get_mut(idx) {
            if let Some(raw) = &mut f.raw {
                if raw.len() + bytes.len() > limit {
                    f.raw = None;
                } else {
                    raw.extend_from_slice(bytes);
                }
            }
        }
    }

    fn open(&mut self, base: u64, i: usize, c: Container) -> Result<State, JsonError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(base, i, "nesting too deep"));
        }
        self.stack.push(c);
        Ok(match c {
            Container::Object => State::ObjectFirst,
            Container::Array => State::ArrayFirst,
        })
    }

    fn close(
        &mut self,
        base: u64,
        i: usize,
        c: Container,
        chunk: &[u8],
        capture_from: &mut Option<usize>,
    ) -> Result<(), JsonError> {
        if self.stack.pop() != Some(c) {
            return Err(self.err(base, i, "mismatched bracket"));
        }
        if self.stack.is_empty() {
            self.object_end = Some(base + i as u64);
            self.state = State::Done;
        } else {
            self.state = State::AfterValue;
            self.value_ended(base, i + 1, chunk, capture_from);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["model", "stream", "stream_options", "max_tokens"];

    fn scan_in_pieces(doc: &[u8], piece: usize) -> Result<JsonScanner, JsonError> {
        let mut s = JsonScanner::new(KEYS, 1024);
        for c in doc.chunks(piece.max(1)) {
            s.feed(c)?;
        }
        s.finish()?;
        Ok(s)
    }

    #[test]
    fn finds_tracked_fields_at_any_chunking() {
        let doc = br#" {"messages":[{"role":"user","content":"hi \"model\": x"}],"stream" : true,
            "nested":{"model":"nope"},"max_tokens":1e3,"stream_options":{"include_usage":false},"model":"gpt-4o-mini"} "#;
        for piece in 1..doc.len() {
            let s = scan_in_pieces(doc, piece).unwrap();
            let model = s.field(0).unwrap();
            assert_eq!(
                model.as_str().as_deref(),
                Some("gpt-4o-mini"),
                "piece {piece}"
            );
            assert_eq!(
                &doc[model.start as usize..model.end as usize],
                b"\"gpt-4o-mini\""
            );
            assert_eq!(s.field(1).unwrap().as_bool(), Some(true));
            let so = s.field(2).unwrap();
            assert_eq!(so.raw.as_deref(), Some(&br#"{"include_usage":false}"#[..]));
            assert_eq!(s.field(3).unwrap().raw.as_deref(), Some(&b"1e3"[..]));
            assert_eq!(s.object_end(), Some(doc.len() as u64 - 2));
        }
    }

    #[test]
    fn escaped_key_is_still_recognised() {
        let s = scan_in_pieces(br#"{"mod\u0065l":"x"}"#, 3).unwrap();
        assert_eq!(s.field(0).unwrap().as_str().as_deref(), Some("x"));
    }

    /// Found while writing `fuzz/`'s json_scan target (fields must agree
    /// with serde_json's reading): a tracked key written with escapes was
    /// longer than the 64 bytes compared, so `stream_options` or
    /// `max_completion_tokens` could hide from the proxy but not from the
    /// upstream.
    #[test]
    fn a_fully_escaped_key_is_still_recognised() {
        let escaped: String = "max_completion_tokens"
            .bytes()
            .map(|b| format!("\\u{b:04x}"))
            .collect();
        let doc = format!(r#"{{"{escaped}":7,"max_completion_tokens":8}}"#);
        const CAPS: &[&str] = &["model", "max_completion_tokens"];
        let mut s = JsonScanner::new(CAPS, 64);
        let e = s.feed(doc.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "duplicate key");
        let mut s = JsonScanner::new(CAPS, 64);
        s.feed(format!(r#"{{"{escaped}":7}}"#).as_bytes()).unwrap();
        s.finish().unwrap();
        assert_eq!(s.field(1).unwrap().as_u64(), Some(7));
    }

    #[test]
    fn duplicate_tracked_key_is_rejected() {
        let e = scan_in_pieces(br#"{"model":"a","model":"b"}"#, 5).unwrap_err();
        assert_eq!(e.reason, "duplicate key");
    }

    #[test]
    fn rejects_malformed_documents() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":tru}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":[1,2}",
            b"{} {}",
            b"{\"a\":1} x",
        ] {
            for piece in [1, 2, 7, 100] {
                assert!(
                    scan_in_pieces(bad, piece).is_err(),
                    "accepted {:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn accepts_valid_documents() {
        for good in [
            &br#"{}"#[..],
            br#"{"a":[]}"#,
            br#"{"a":{},"b":[1,-0,2.5e-3,true,false,null,"\u00e9\n"]}"#,
            br#"{"a":-12.75E+2}"#,
            b"\n{\"a\" : 1 }\r\n",
        ] {
            for piece in [1, 3, 100] {
                scan_in_pieces(good, piece).unwrap();
            }
        }
    }

    /// Found while writing `fuzz/`'s json_scan target: the offset was where the
    /// string's run in the chunk began, so it moved with the chunking.
    #[test]
    fn a_control_character_is_reported_at_its_own_offset() {
        let doc = b"{\"model\":\"gpt\x01x\"}";
        for piece in [1, 2, 5, 100] {
            let e = scan_in_pieces(doc, piece).unwrap_err();
            assert_eq!(
                (e.offset, e.reason),
                (13, "control character in string"),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut doc = b"{\"a\":".to_vec();
        doc.extend(std::iter::repeat_n(b'[', MAX_DEPTH + 1));
        assert_eq!(
            scan_in_pieces(&doc, 64).unwrap_err().reason,
            "nesting too deep"
        );
    }

    #[test]
    fn long_values_are_located_but_not_copied() {
        let big = "x".repeat(5000);
        let doc = format!(r#"{{"model":"{big}"}}"#);
        let s = scan_in_pieces(doc.as_bytes(), 512).unwrap();
        let f = s.field(0).unwrap();
        assert!(f.raw.is_none());
        assert_eq!(f.end - f.start, 5002);
    }
}
