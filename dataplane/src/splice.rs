//! Zero-copy edits of a body held as a list of `Bytes` chunks.
//!
//! The proxy changes a request body in at most two small places (the model
//! name when an alias maps to another upstream name, and the
//! `stream_options.include_usage` splice). Both are expressed as [`Edit`]s at
//! byte offsets found by the JSON scanner and applied by slicing the held
//! chunks: untouched bytes are never copied, only re-referenced.

use bytes::Bytes;

/// Replace `remove` bytes at offset `at` with `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub at: u64,
    pub remove: u64,
    pub insert: Bytes,
}

impl Edit {
    pub fn insert(at: u64, bytes: impl Into<Bytes>) -> Self {
        Self {
            at,
            remove: 0,
            insert: bytes.into(),
        }
    }

    pub fn replace(start: u64, end: u64, bytes: impl Into<Bytes>) -> Self {
        Self {
            at: start,
            remove: end - start,
            insert: bytes.into(),
        }
    }

    /// Change in body length this edit causes.
    pub fn delta(&self) -> i64 {
        self.insert.len() as i64 - self.remove as i64
    }
}

/// Apply `edits` (sorted by offset, non-overlapping) to `chunks`.
pub fn apply(chunks: &[Bytes], edits: &[Edit]) -> Vec<Bytes> {
    if edits.is_empty() {
        return chunks.to_vec();
    }
    let mut out = Vec::with_capacity(chunks.len() + edits.len() * 2);
    let mut edits = edits.iter().peekable();
    // Bytes still to skip because an edit removed them.
    let mut skip: u64 = 0;
    let mut chunk_start: u64 = 0;
    for chunk in chunks {
        let chunk_end = chunk_start + chunk.len() as u64;
        let mut pos = chunk_start;
        while pos < chunk_end {
            if skip > 0 {
                let n = skip.min(chunk_end - pos);
                skip -= n;
                pos += n;
                continue;
            }
            match edits.peek() {
                Some(e) if e.at < chunk_end => {
                    let at = e.at.max(pos);
                    if at > pos {
                        out.push(slice(chunk, chunk_start, pos, at));
                    }
                    if !e.insert.is_empty() {
                        out.push(e.insert.clone());
                    }
                    skip = e.remove;
                    pos = at;
                    edits.next();
                }
                _ => {
                    out.push(slice(chunk, chunk_start, pos, chunk_end));
                    pos = chunk_end;
                }
            }
        }
        chunk_start = chunk_end;
    }
    // Insertions at the very end of the body.
    for e in edits {
        if !e.insert.is_empty() {
            out.push(e.insert.clone());
        }
    }
    out
}

fn slice(chunk: &Bytes, chunk_start: u64, from: u64, to: u64) -> Bytes {
    // Offsets are within this chunk by construction, and a chunk is never
    // larger than usize::MAX, so the casts are exact.
    chunk.slice((from - chunk_start) as usize..(to - chunk_start) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn edits_land_at_the_same_place_whatever_the_chunking() {
        let body = br#"{"model":"mini","stream":true}"#;
        let edits = [
            Edit::replace(9, 15, Bytes::from_static(br#""gpt-4o-mini""#)),
            Edit::insert(
                29,
                Bytes::from_static(br#","stream_options":{"include_usage":true}"#),
            ),
        ];
        let want =
            br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#;
        for size in 1..body.len() {
            let chunks: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
            assert_eq!(flat(&apply(&chunks, &edits)), want, "chunk size {size}");
        }
        let total: i64 = edits.iter().map(Edit::delta).sum();
        assert_eq!(want.len() as i64 - body.len() as i64, total);
    }

    #[test]
    fn no_edits_is_identity_and_insert_at_end_works() {
        let chunks = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        assert_eq!(apply(&chunks, &[]), chunks);
        assert_eq!(
            flat(&apply(
                &chunks,
                &[Edit::insert(4, Bytes::from_static(b"!"))]
            )),
            b"abcd!"
        );
    }
}
