//! The request-body JSON scanner (`dataplane::json_scan`): any bytes, any
//! chunking. Invariants: no panic; the outcome (fields, object end, or the
//! error's offset and reason) is the same whatever the chunking; located
//! fields lie within the document and slice to their captured bytes; and
//! the scanner agrees with serde_json on what is valid JSON, except where
//! its documented rules differ (UTF-8 and surrogates left to the upstream,
//! duplicate tracked keys and over-deep nesting refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_dataplane::json_scan::{FieldSpan, JsonError, JsonScanner};
use molt_fuzz::{chunks, seed_and_doc};

/// The fields the proxy tracks in request bodies (`proxy/body.rs`).
const FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
];
/// Small enough that the fuzzer reaches the "too long to copy" path.
const CAPTURE: usize = 32;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    fields: Vec<Option<FieldSpan>>,
    object_end: Option<u64>,
    len: u64,
}

fn scan(pieces: &[&[u8]]) -> Result<Outcome, JsonError> {
    let mut s = JsonScanner::new(FIELDS, CAPTURE);
    for p in pieces {
        s.feed(p)?;
    }
    s.finish()?;
    Ok(Outcome {
        fields: (0..FIELDS.len()).map(|i| s.field(i).cloned()).collect(),
        object_end: s.object_end(),
        len: s.len(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, doc)) = seed_and_doc(data) else {
        return;
    };
    let whole = scan(&[doc]);
    let pieces = scan(&chunks(seed, doc));
    assert_eq!(whole, pieces, "the outcome depends on the chunking");
    match &whole {
        Ok(outcome) => check_found(doc, outcome),
        Err(e) => assert!(e.offset <= doc.len() as u64, "error past the end: {e}"),
    }
    agree_with_serde(doc, &whole);
});

fn check_found(doc: &[u8], o: &Outcome) {
    assert_eq!(o.len, doc.len() as u64);
    let end = o.object_end.expect("a valid document has an end") as usize;
    assert_eq!(doc[end], b'}');
    assert!(doc[end + 1..].iter().all(u8::is_ascii_whitespace));
    for span in o.fields.iter().flatten() {
        let (start, stop) = (span.start as usize, span.end as usize);
        assert!(
            start < stop && stop <= end,
            "span {start}..{stop} outside 0..{end}"
        );
        let bytes = &doc[start..stop];
        match &span.raw {
            Some(raw) => {
                assert_eq!(raw, bytes, "captured bytes differ from the span");
                assert!(raw.len() <= CAPTURE);
            }
            None => assert!(bytes.len() > CAPTURE, "a short value was not captured"),
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                assert!(tolerated(&e), "span {text:?} is not one JSON value: {e}");
            }
        }
    }
}

/// serde_json refusals the scanner leaves to the upstream by design.
fn tolerated(e: &serde_json::Error) -> bool {
    let m = e.to_string();
    // Lone surrogates (`\ud800`, or one not followed by its pair: "end of
    // hex escape"), numbers past f64, and depth are not the scanner's to
    // judge (see `json_scan`'s module doc).
    ["surrogate", "hex escape", "out of range", "recursion limit"]
        .iter()
        .any(|t| m.contains(t))
}

fn agree_with_serde(doc: &[u8], ours: &Result<Outcome, JsonError>) {
    let Ok(text) = std::str::from_utf8(doc) else {
        return; // UTF-8 is the upstream's business.
    };
    let theirs = serde_json::from_str::<serde_json::Value>(text);
    match (ours, theirs) {
        (Ok(o), Ok(v)) => {
            let map = v.as_object().expect("the scanner accepts objects only");
            for (i, name) in FIELDS.iter().enumerate() {
                assert_eq!(o.fields[i].is_some(), map.contains_key(*name), "{name}");
            }
            if let (Some(model), Some(serde_json::Value::String(s))) =
                (&o.fields[0], map.get("model"))
            {
                if model.raw.is_some() {
                    assert_eq!(model.as_str().as_deref(), Some(s.as_str()));
                }
            }
        }
        (Ok(_), Err(e)) => assert!(tolerated(&e), "accepted what serde_json refuses: {e}"),
        (Err(e), Ok(v)) => assert!(
            !v.is_object() || e.reason == "duplicate key" || e.reason == "nesting too deep",
            "refused valid JSON: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
}
