//! The SSE usage reader (`dataplane::usage_reader::SseUsageReader`) in
//! every format (OpenAI chat, Responses, Anthropic), with and without
//! cutting out the usage chunk the proxy asked for, at any chunking.
//!
//! Input: a mode byte (`b % 3`: 0 OpenAI, 1 Responses, 2 Anthropic; bit
//! `0x08`: strip the usage chunk), a chunking seed byte, then the stream.
//! Invariants: no panic; usage, terminal and the bytes forwarded are the
//! same whatever the chunking; without stripping the client gets exactly
//! the upstream's bytes, with it never more than them.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use molt_dataplane::usage_reader::{SseUsageReader, StreamKind, TokenUsage};
use molt_fuzz::{chunks, seed_and_doc};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    usage: Option<TokenUsage>,
    terminal: bool,
    forwarded: Vec<u8>,
}

fn read(kind: StreamKind, strip: bool, pieces: &[&[u8]]) -> Outcome {
    let mut reader = SseUsageReader::new(kind, strip);
    let mut out = Vec::new();
    for p in pieces {
        reader.feed(Bytes::copy_from_slice(p), &mut out);
    }
    reader.finish(&mut out);
    Outcome {
        usage: reader.usage(),
        terminal: reader.terminal_seen(),
        forwarded: out.concat(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let Some((seed, stream)) = seed_and_doc(rest) else {
        return;
    };
    let kind = match mode % 3 {
        0 => StreamKind::OpenAi,
        1 => StreamKind::Responses,
        _ => StreamKind::Anthropic,
    };
    let strip = mode & 0x08 != 0;
    let whole = read(kind, strip, &[stream]);
    let pieces = read(kind, strip, &chunks(seed, stream));
    assert_eq!(whole, pieces, "the outcome depends on the chunking");
    if strip {
        assert!(
            whole.forwarded.len() <= stream.len(),
            "stripping added bytes"
        );
        if !stream.windows(7).any(|w| w == b"\"usage\"") {
            assert_eq!(whole.forwarded, stream, "changed a stream without usage");
        }
    } else {
        assert_eq!(whole.forwarded, stream, "forwarded bytes differ");
    }
});
