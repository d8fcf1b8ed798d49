//! Reading what is recorded and not yet acknowledged: one batch of lines
//! after `acked`, cut at the contract's batch limits and already written
//! as the [`UsageBatch`](molt_config::contract::UsageBatch) body.

use super::segments::segment_path;
use super::{io_err, Shared, SpoolError};
use bytes::Bytes;
use molt_config::contract::{UsageBatchWriter, MAX_BATCH_BYTES};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;

/// A batch read from the spool, ready to post.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) body: Bytes,
    pub(super) events: u64,
    /// Offset just past the batch's last line.
    pub(super) end: u64,
}

/// Read the recorded lines after `acked`, up to the batch limits. Lines
/// that are not JSON (only a corrupted disk makes them) are skipped with a
/// log line rather than blocking the spool forever.
pub(super) fn read_batch(shared: &Shared) -> Result<Option<Batch>, SpoolError> {
    let acked = shared.acked.load(Ordering::Acquire);
    let durable = shared.durable.load(Ordering::Acquire);
    if acked >= durable {
        return Ok(None);
    }
    let (start, next) = {
        let segs = shared.segments();
        let i = segs.partition_point(|&s| s <= acked).saturating_sub(1);
        (
            segs.get(i).copied().unwrap_or(0),
            segs.get(i + 1).copied().unwrap_or(u64::MAX),
        )
    };
    let until = durable.min(next);
    let path = segment_path(&shared.dir, start);
    let mut file = std::fs::File::open(&path).map_err(io_err(&path))?;
    file.seek(SeekFrom::Start(acked - start))
        .map_err(io_err(&path))?;
    let available = usize::try_from(until - acked).unwrap_or(usize::MAX);
    let mut data = vec![0u8; available.min(MAX_BATCH_BYTES)];
    file.read_exact(&mut data).map_err(io_err(&path))?;
    // Grow past the byte limit only for a single line longer than it.
    if !data.contains(&b'\n') && available > data.len() {
        data.resize(available, 0);
        file.seek(SeekFrom::Start(acked - start))
            .map_err(io_err(&path))?;
        file.read_exact(&mut data).map_err(io_err(&path))?;
    }
    let mut batch = UsageBatchWriter::with_capacity(data.len());
    let mut consumed = 0usize;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') || batch.is_full() {
            break;
        }
        consumed += line.len();
        let json = &line[..line.len() - 1];
        if serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err() {
            tracing::error!(
                offset = acked + (consumed - line.len()) as u64,
                "skipping a corrupt line in the usage spool"
            );
            continue;
        }
        batch.push_json(json);
    }
    let events = batch.events() as u64;
    Ok(Some(Batch {
        body: Bytes::from(batch.finish()),
        events,
        end: acked + consumed as u64,
    }))
}
