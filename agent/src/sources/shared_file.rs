//! Files shared with PHP workers through their `MAP_SHARED` mappings (the
//! record ring, the scoreboard): kept when one with a valid header already
//! exists (workers may have it mapped, and records may wait in it), else
//! built aside and renamed into place, so a worker never maps a half-made
//! file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Opens the shared file at `path`. `existing(header, file_len)` accepts a
/// file already there; otherwise a new one of `len` bytes starting with
/// `header` is made with `mode` and `group`. Returns the file and whether
/// it already existed.
pub fn open_shared(
    path: &Path,
    header: &[u8],
    len: u64,
    group: &str,
    mode: u32,
    existing: impl Fn(&[u8], u64) -> bool,
) -> io::Result<(File, bool)> {
    if let Ok(file) = OpenOptions::new().read(true).write(true).open(path) {
        let mut h = vec![0u8; header.len()];
        let file_len = file.metadata()?.len();
        if file.read_exact_at(&mut h, 0).is_ok() && existing(&h, file_len) {
            return Ok((file, true));
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".new");
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_len(len)?;
    file.write_all_at(header, 0)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    super::socket::set_group(&tmp, group);
    fs::rename(&tmp, path)?;
    Ok((file, false))
}
