//! The secret scrubber (`dataplane::scrub`): any secrets, any body, any
//! chunking. Invariant: what the client gets is the body with every byte
//! of every occurrence of every scanned secret masked and nothing else
//! changed, whatever the chunking, and whole messages (headers, WebSocket
//! frames) are masked the same way; so no secret gets through, in part or
//! whole.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use molt_dataplane::scrub::{BodyScrubber, Secrets, MIN_SCANNED_LEN};
use molt_fuzz::chunks;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Chunking seed (see `molt_fuzz::chunks`).
    seed: u8,
    /// Secrets taken from the body itself, as (start, length): so they
    /// occur in it, overlap each other and start one another.
    spans: Vec<(u16, u8)>,
    /// Secrets of their own.
    others: Vec<String>,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let body = &input.body;
    let mut list: Vec<String> = input.others.clone();
    for &(start, len) in input.spans.iter().take(8) {
        let start = usize::from(start) % (body.len() + 1);
        let end = (start + usize::from(len)).min(body.len());
        if let Ok(s) = std::str::from_utf8(&body[start..end]) {
            list.push(s.to_owned());
        }
    }
    let secrets = Secrets::new(list.iter().map(String::as_str));
    let want = masked(body, &list);

    let mut scrubber = BodyScrubber::default();
    let mut got = Vec::new();
    for piece in chunks(input.seed, body) {
        got.extend(scrubber.feed(&secrets, Bytes::copy_from_slice(piece)));
    }
    got.extend(scrubber.finish(&secrets));
    assert_eq!(got.concat(), want, "body masked wrongly");

    let mut whole = body.clone();
    secrets.mask_in_place(&mut whole);
    assert_eq!(whole, want, "message masked wrongly");
});

/// The reference: every byte covered by an occurrence of a secret that is
/// scanned for (at least `MIN_SCANNED_LEN` bytes) becomes `*`.
fn masked(body: &[u8], secrets: &[String]) -> Vec<u8> {
    let mut out = body.to_vec();
    for s in secrets.iter().map(String::as_bytes) {
        if s.len() < MIN_SCANNED_LEN || s.len() > body.len() {
            continue;
        }
        for (at, window) in body.windows(s.len()).enumerate() {
            if window == s {
                out[at..at + s.len()].fill(b'*');
            }
        }
    }
    out
}
