//! The spool on disk: segment files named by the offset of their first
//! line, the `acked` file, recovery on open, and deleting what the control
//! plane has acknowledged.

use super::{io_err, Shared, SpoolError};
use molt_config::files::write_atomically;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

const ACK_FILE: &str = "acked";
const SEGMENT_EXT: &str = "jsonl";

pub(super) fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.{SEGMENT_EXT}"))
}

/// The segment being appended to.
#[derive(Debug)]
pub(super) struct Tail {
    pub(super) file: File,
    /// Offset of its first byte.
    pub(super) start: u64,
    /// Bytes in it that are whole, durable lines.
    pub(super) len: u64,
}

impl Tail {
    /// Offset just past its last line.
    pub(super) fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Start a new segment at this one's end (and name it durably).
    pub(super) fn next(&self, dir: &Path) -> Result<Self, SpoolError> {
        let start = self.end();
        Ok(Self {
            file: create_segment(dir, start)?,
            start,
            len: 0,
        })
    }
}

/// What [`recover`] found in the spool directory.
#[derive(Debug)]
pub(super) struct Recovered {
    /// The acknowledged offset, within the segments on disk.
    pub(super) acked: u64,
    /// Start offsets of every segment, ascending.
    pub(super) starts: Vec<u64>,
    pub(super) tail: Tail,
}

/// Open (or create) the spool in `dir`: read `acked`, list the segments,
/// cut a torn last line off the last one, and keep `acked` within them.
pub(super) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut acked = read_acked(dir)?;
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        if let Some(start) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    let (start, file) = match starts.last() {
        Some(&start) => (start, recover_tail(&segment_path(dir, start))?),
        None => {
            starts.push(acked);
            (acked, create_segment(dir, acked)?)
        }
    };
    let len = file.metadata().map_err(io_err(dir))?.len();
    let tail = Tail { file, start, len };
    let end = tail.end();
    if acked > end {
        tracing::warn!(acked, end, dir = %dir.display(), "spool acknowledged beyond its end (segments removed by hand?); resuming at the end");
        acked = end;
    }
    acked = acked.max(starts.first().copied().unwrap_or(0));
    Ok(Recovered {
        acked,
        starts,
        tail,
    })
}

fn read_acked(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(ACK_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| SpoolError::BadAck {
            path: path.clone(),
            text: text.chars().take(40).collect(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Persist `end` as acknowledged, then drop what it covers.
pub(super) fn commit_ack(shared: &Shared, end: u64) -> Result<(), SpoolError> {
    let path = shared.dir.join(ACK_FILE);
    write_atomically(&path, end.to_string().as_bytes()).map_err(io_err(&path))?;
    shared.acked.store(end, Ordering::Release);
    shared.update_bytes();
    delete_acked(shared);
    Ok(())
}

/// Open the last segment for appending, cutting off a torn last line.
fn recover_tail(path: &Path) -> Result<File, SpoolError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(path))?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < data.len() {
        tracing::warn!(path = %path.display(), bytes = data.len() - keep, "cutting off a torn usage line");
        file.set_len(keep as u64).map_err(io_err(path))?;
    }
    // Whatever the previous process wrote but did not fsync is in the page
    // cache; make it durable before it can be acknowledged.
    file.sync_all().map_err(io_err(path))?;
    file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    Ok(file)
}

fn create_segment(dir: &Path, start: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, start);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // The new name must survive a power cut too, or its lines would vanish.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(file)
}

/// Delete every segment that ends at or before `acked` (never the last).
pub(super) fn delete_acked(shared: &Shared) {
    let acked = shared.acked.load(Ordering::Acquire);
    let mut segs = shared.segments();
    while segs.len() > 1 && segs[1] <= acked {
        let path = segment_path(&shared.dir, segs[0]);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot delete a shipped spool segment");
                return;
            }
        }
        segs.remove(0);
    }
}
