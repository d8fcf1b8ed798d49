//! Secrets never come back out: every secret the runtime knows (provider
//! master keys, bot gateway tokens, the ticket and JWT signing secrets) is
//! masked in whatever an upstream sends towards a client — response
//! headers, bodies, WebSocket messages — whatever the upstream put there.
//! Some providers and self-hosted servers echo the key they were given in
//! an error ("Incorrect API key provided: ..."); a client who can provoke
//! that error would otherwise read the master key.
//!
//! A match is replaced by a mask of the same length (`*`), so a
//! `content-length` stays true and nothing is re-framed. Every byte of
//! every occurrence is masked, overlapping ones included (one secret may
//! begin inside another, or be a prefix of another). Matching is one
//! Aho-Corasick automaton built with the runtime (prepare-then-swap, like
//! everything else in it).
//!
//! Bodies are scanned chunk by chunk as they pass, without holding them:
//! a chunk is forwarded as is unless it contains a secret (then it is
//! copied once and masked) or ends with what could be the start of one
//! (then only that tail, at most the longest secret's length less one, is
//! held, as it came, until the next chunk shows whether it completes a
//! secret). The result is the same whatever the chunking. An SSE chunk
//! ends with a newline, which no secret contains, so streams are never
//! held. Cost: `cargo bench -p molt-benches --bench hot_paths --
//! scrub` (see the README's figures).

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;

/// Secrets shorter than this are not scanned for: masking every
/// occurrence of a short string would corrupt ordinary text. Validation
/// warns about such secrets.
pub const MIN_SCANNED_LEN: usize = 12;

/// The mask byte.
const MASK: u8 = b'*';

/// The secrets of one runtime, ready to be found.
#[derive(Debug)]
pub struct Secrets {
    automaton: Option<AhoCorasick>,
    /// Every proper prefix of every secret, to tell whether a chunk ends
    /// with the start of one.
    prefixes: HashSet<Box<[u8]>>,
    /// Bytes that start some secret.
    first_bytes: [bool; 256],
    longest: usize,
}

impl Default for Secrets {
    fn default() -> Self {
        Self {
            automaton: None,
            prefixes: HashSet::new(),
            first_bytes: [false; 256],
            longest: 0,
        }
    }
}

impl Secrets {
    /// The set of `secrets` (shorter ones than [`MIN_SCANNED_LEN`] are
    /// left out; duplicates are fine).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut list: Vec<&[u8]> = secrets
            .into_iter()
            .map(str::as_bytes)
            .filter(|s| s.len() >= MIN_SCANNED_LEN)
            .collect();
        list.sort_unstable();
        list.dedup();
        if list.is_empty() {
            return Self::default();
        }
        let mut prefixes = HashSet::new();
        let mut first_bytes = [false; 256];
        for s in &list {
            first_bytes[usize::from(s[0])] = true;
            for end in 1..s.len() {
                prefixes.insert(Box::<[u8]>::from(&s[..end]));
            }
        }
        let longest = list.iter().map(|s| s.len()).max().unwrap_or(0);
        // Building fails only past the automaton's size limits, which a
        // config's handful of secrets cannot reach; scanning is then off
        // and the reason logged.
        let automaton = AhoCorasick::new(&list)
            .map_err(|e| tracing::error!(error = %e, "cannot build the secret scanner"))
            .ok();
        Self {
            automaton,
            prefixes,
            first_bytes,
            longest,
        }
    }

    /// Whether there is anything to scan for.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// Mask every secret in `bytes` in place; how many were masked.
    pub fn mask_in_place(&self, bytes: &mut [u8]) -> usize {
        let spans = self.occurrences(bytes);
        for &(start, end) in &spans {
            bytes[start..end].fill(MASK);
        }
        spans.len()
    }

    /// Where every secret occurs in `bytes`, overlapping occurrences too:
    /// leftmost-first matching would leave the rest of a secret that
    /// begins inside (or is a longer form of) one it already matched.
    fn occurrences(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        let Some(ac) = &self.automaton else {
            return Vec::new();
        };
        ac.find_overlapping_iter(bytes)
            .map(|m| (m.start(), m.end()))
            .collect()
    }

    /// Whether `bytes` holds a secret.
    pub fn found_in(&self, bytes: &[u8]) -> bool {
        self.automaton
            .as_ref()
            .is_some_and(|ac| ac.find(bytes).is_some())
    }

    /// The length of the longest tail of `bytes` that is the start of a
    /// secret (0 if none).
    fn open_tail(&self, bytes: &[u8]) -> usize {
        if self.automaton.is_none() {
            return 0;
        }
        let window = bytes.len().min(self.longest.saturating_sub(1));
        let tail = &bytes[bytes.len() - window..];
        tail.iter()
            .enumerate()
            .filter(|(_, b)| self.first_bytes[usize::from(**b)])
            .map(|(i, _)| &tail[i..])
            .find(|candidate| self.prefixes.contains(*candidate))
            .map_or(0, <[u8]>::len)
    }
}

/// Scrubs one response body as it passes.
#[derive(Debug, Default)]
pub struct BodyScrubber {
    /// A tail held back, as it came, because it may be the start of a
    /// secret.
    held: BytesMut,
    /// How many leading bytes of `held` an occurrence that began before it
    /// already covers (they are masked when released).
    held_covered: usize,
    /// Secrets masked so far.
    pub masked: usize,
}

impl BodyScrubber {
    /// Pass one chunk: what may go to the client now.
    pub fn feed(&mut self, secrets: &Secrets, chunk: Bytes) -> Option<Bytes> {
        if secrets.is_empty() {
            return Some(chunk);
        }
        let seen = self.held.len();
        let whole = if seen == 0 {
            // The common case: nothing held, no secret, no open tail.
            if !secrets.found_in(&chunk) && secrets.open_tail(&chunk) == 0 {
                return Some(chunk);
            }
            BytesMut::from(&chunk[..])
        } else {
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(&chunk);
            joined
        };
        self.release(secrets, whole, seen)
    }

    /// The end of the body: whatever is still held, masked if need be.
    pub fn finish(&mut self, secrets: &Secrets) -> Option<Bytes> {
        let mut rest = std::mem::take(&mut self.held);
        if rest.is_empty() {
            return None;
        }
        // Every occurrence in the held tail was counted when its last byte
        // arrived; here they are only masked. Scanned before the covered
        // prefix is masked: masking first would hide an occurrence that
        // overlaps it (found by fuzz/'s scrub target).
        let spans = secrets.occurrences(&rest);
        rest[..self.held_covered].fill(MASK);
        self.held_covered = 0;
        for (start, end) in spans {
            rest[start..end].fill(MASK);
        }
        Some(rest.freeze())
    }

    /// Mask `whole` (the held tail, `seen` bytes already scanned, then the
    /// new chunk, as they came) and hold back its open tail, unmasked, with
    /// how much of it an occurrence beginning before it covers.
    fn release(&mut self, secrets: &Secrets, mut whole: BytesMut, seen: usize) -> Option<Bytes> {
        let spans = secrets.occurrences(&whole);
        // Counted once, when the occurrence's last byte arrives: one that
        // lies within the held tail is found again with the next chunk.
        self.masked += spans.iter().filter(|&&(_, end)| end > seen).count();
        let keep = whole.len() - secrets.open_tail(&whole);
        let covered = std::mem::take(&mut self.held_covered);
        whole[..covered.min(keep)].fill(MASK);
        let mut tail_covered = covered.saturating_sub(keep);
        for &(start, end) in spans.iter().filter(|&&(start, _)| start < keep) {
            whole[start..end.min(keep)].fill(MASK);
            tail_covered = tail_covered.max(end.saturating_sub(keep));
        }
        self.held = whole.split_off(keep);
        self.held_covered = tail_covered;
        (!whole.is_empty()).then(|| whole.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-master-0123456789abcdef";
    const TOKEN: &str = "gw-token-ffffeeeeddddcccc";

    fn secrets() -> Secrets {
        Secrets::new([KEY, TOKEN, "short"])
    }

    fn scrub(chunks: &[&str]) -> (String, usize) {
        let s = secrets();
        let mut scrubber = BodyScrubber::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(scrubber.feed(&s, Bytes::copy_from_slice(c.as_bytes())));
        }
        out.extend(scrubber.finish(&s));
        (String::from_utf8(out.concat()).unwrap(), scrubber.masked)
    }

    #[test]
    fn a_secret_is_masked_whatever_the_chunk_split() {
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. Token {TOKEN}"}}}}"#
        );
        let masked_key = "*".repeat(KEY.len());
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            let (out, n) = scrub(&[a, b]);
            assert_eq!(out.len(), body.len(), "split at {split}");
            assert!(
                !out.contains(KEY) && !out.contains(TOKEN),
                "split at {split}: {out}"
            );
            assert!(out.contains(&masked_key));
            assert_eq!(n, 2);
        }
        // One byte at a time.
        let bytes: Vec<String> = body.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert!(!scrub(&refs).0.contains(KEY));
    }

    #[test]
    fn ordinary_chunks_pass_untouched_and_unheld() {
        let s = secrets();
        let mut scrubber = BodyScrubber::default();
        let chunk =
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"sk\"}}]}\n\n");
        let out = scrubber.feed(&s, chunk.clone()).unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "forwarded without a copy");
        // A tail that may start a secret is held, then released when it
        // turns out not to be one.
        assert_eq!(
            scrubber
                .feed(&s, Bytes::from_static(b"the sk-mas"))
                .as_deref(),
            Some(&b"the "[..])
        );
        assert_eq!(
            scrubber
                .feed(&s, Bytes::from_static(b"sive thing\n"))
                .as_deref(),
            Some(&b"sk-massive thing\n"[..])
        );
        assert_eq!(scrubber.masked, 0);
    }

    /// Found while writing `fuzz/`'s scrub target: with one secret a prefix of
    /// another, or beginning inside another, only the first match was masked
    /// and the rest of the other secret went out to the client.
    #[test]
    fn overlapping_secrets_are_masked_whole_at_any_split() {
        let long = "sk-live-0123456789-abcdef";
        let s = Secrets::new(["sk-live-0123456789", long, "0123456789-abcdef-more"]);
        let body = format!("key {long}-more end");
        let want = format!("key {} end", "*".repeat(30));
        let mut whole = body.clone().into_bytes();
        assert_eq!(s.mask_in_place(&mut whole), 3);
        assert_eq!(String::from_utf8(whole).unwrap(), want);
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            let mut scrubber = BodyScrubber::default();
            let mut out = Vec::new();
            for piece in [a, b] {
                out.extend(scrubber.feed(&s, Bytes::copy_from_slice(piece.as_bytes())));
            }
            out.extend(scrubber.finish(&s));
            assert_eq!(
                String::from_utf8(out.concat()).unwrap(),
                want,
                "split at {split}"
            );
            assert_eq!(scrubber.masked, 3, "split at {split}");
        }
    }

    #[test]
    fn short_secrets_are_not_scanned_for() {
        assert_eq!(scrub(&["a short story"]).0, "a short story");
        assert!(Secrets::new(["tiny"]).is_empty());
    }
}

/// `molt_secrets_masked_total{where}`: secrets masked in what upstreams
/// sent, by where they were found (`header`, `body`, `websocket`). Any
/// non-zero value means an upstream echoed a secret: look at which.
#[derive(Debug, Clone)]
pub struct ScrubMetrics {
    masked: prometheus::IntCounterVec,
}

impl ScrubMetrics {
    pub fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let masked = molt_config::metrics::Registrar(registry).counter_vec(
            "molt_secrets_masked_total",
            "Secrets (master keys, bot tokens, signing secrets) masked in what an upstream sent towards a client, by where.",
            &["where"],
        )?;
        for place in ["header", "body", "websocket"] {
            masked.with_label_values(&[place]);
        }
        Ok(Self { masked })
    }

    /// Count `n` masked secrets found in `place`.
    pub fn count(&self, place: &str, n: usize) {
        if n > 0 {
            self.masked.with_label_values(&[place]).inc_by(n as u64);
        }
    }
}

#[cfg(test)]
mod repetitive_tests {
    use super::*;

    /// Found by `fuzz/`'s scrub target: at the end of a body, the held tail
    /// was masked where an earlier occurrence covered it *before* it was
    /// scanned, which hid the occurrences overlapping that prefix.
    #[test]
    fn repetitive_overlapping_secrets_are_masked_whole() {
        let q = |n: usize| "Q".repeat(n);
        let list = [
            q(13),
            format!("{}[QQ", q(16)),
            q(12),
            q(10),
            "##QQQQQQQQQQQ".to_owned(),
        ];
        let secrets = Secrets::new(list.iter().map(String::as_str));
        let body = q(30);
        let mut scrubber = BodyScrubber::default();
        let mut got = Vec::new();
        let mut at = 0;
        for n in [15, 1, 9, 5] {
            let piece = Bytes::copy_from_slice(&body.as_bytes()[at..at + n]);
            at += n;
            got.extend(scrubber.feed(&secrets, piece));
        }
        got.extend(scrubber.finish(&secrets));
        let out: Vec<u8> = got.concat();
        assert_eq!(String::from_utf8_lossy(&out), "*".repeat(30));
    }
}
