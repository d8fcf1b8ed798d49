//! The non-streaming usage reader (`dataplane::usage_reader::
//! JsonUsageReader`): any body, any chunking. Invariants: no panic, the
//! same usage whatever the chunking, and none from a body that is not one
//! JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_dataplane::usage_reader::{JsonUsageReader, TokenUsage};
use molt_fuzz::{chunks, seed_and_doc};

fn read(pieces: &[&[u8]]) -> Option<TokenUsage> {
    let mut reader = JsonUsageReader::default();
    for p in pieces {
        reader.feed(p);
    }
    reader.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, body)) = seed_and_doc(data) else {
        return;
    };
    let whole = read(&[body]);
    assert_eq!(whole, read(&chunks(seed, body)), "depends on the chunking");
    if whole.is_some() {
        let parsed = serde_json::from_slice::<serde_json::Value>(body);
        if let Ok(v) = parsed {
            assert!(v.get("usage").is_some_and(serde_json::Value::is_object));
        }
    }
});
