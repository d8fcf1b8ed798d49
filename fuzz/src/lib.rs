//! What the fuzz targets share: cutting one input into the chunks a
//! network would deliver, at points the fuzzer chooses.
//!
//! Every streaming target takes its input as one *chunking seed* byte and
//! then the document itself, so a seed corpus file is readable: `5{"a":1}`
//! is the document `{"a":1}` cut by seed `5`. Seed `0` means one chunk,
//! which is the reference the other chunkings are compared against.

/// `data` cut into chunks by `seed`: sizes 1 (seed % 4 == 0), up to 4, up
/// to 17 or up to 64 bytes, with the odd empty chunk; seed 0 is one chunk.
pub fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let max = match seed % 4 {
        0 => 1,
        1 => 4,
        2 => 17,
        _ => 64,
    };
    // xorshift32, seeded so that every seed gives another sequence.
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 29 == 0 {
            out.push(&rest[..0]);
            continue;
        }
        let n = (state as usize % max + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        out.push(piece);
        rest = tail;
    }
    out
}

/// The first byte as the chunking seed, the rest as the document.
pub fn seed_and_doc(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&seed, doc)| (seed, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        for seed in 0..=255u8 {
            assert_eq!(chunks(seed, &data).concat(), data, "seed {seed}");
        }
    }
}
