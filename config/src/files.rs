//! Files a process writes for another to read (the data plane's snapshot
//! cache and spool offsets, `molt dev`'s secrets, every server's ready
//! file): replaced whole, so a reader or a crash never sees half of one.

use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` so that a crash leaves either the old or the
/// new content: write a temp file (mode 0600), fsync it, rename it over
/// `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
