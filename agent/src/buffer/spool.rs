//! The disk spool: batches still unacknowledged at shutdown, one file each
//! (`batch-<id>.pb`, an encoded `sonde.v1.Batch`), replayed at the next start
//! and deleted once the collector acknowledges them. Files are written under a
//! temporary name, synced, then renamed, so a crash never leaves half a batch
//! under a real name. This is the simple first spool: no size bound beyond
//! what memory held, no writing while running.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use prost::Message;
use sonde_proto::v1::Batch;
use thiserror::Error;

const PREFIX: &str = "batch-";
const SUFFIX: &str = ".pb";
const TMP_SUFFIX: &str = ".tmp";

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool file {path} is not a valid batch: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Creates the directory (0750) if needed and removes temporary files a
    /// crash left behind.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_err(dir))?;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Spool {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Spooled batch files, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            if batch_id_of(&path).is_some() {
                files.push(path);
            }
        }
        // Zero-padded ids: name order is id order.
        files.sort();
        Ok(files)
    }

    pub fn read(&self, path: &Path) -> Result<Batch, SpoolError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        Batch::decode(bytes.as_slice()).map_err(|source| SpoolError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes `batch` durably; returns its file.
    pub fn write(&self, batch: &Batch) -> Result<PathBuf, SpoolError> {
        let name = format!("{PREFIX}{:020}{SUFFIX}", batch.batch_id);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}{TMP_SUFFIX}"));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&batch.encode_to_vec()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // Make the rename itself durable.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(path)
    }

    pub fn remove(&self, path: &Path) -> Result<(), SpoolError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
            _ => Ok(()),
        }
    }

    /// Moves an unreadable file aside (`*.corrupt`) rather than deleting data.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf, SpoolError> {
        let mut to = path.as_os_str().to_owned();
        to.push(".corrupt");
        let to = PathBuf::from(to);
        fs::rename(path, &to).map_err(io_err(path))?;
        Ok(to)
    }
}

/// The batch id in a spool file name, `None` if not a spool file.
pub fn batch_id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::v1::RequestRecord;

    #[test]
    fn write_list_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let batch = |id: u64| Batch {
            batch_id: id,
            records: vec![RequestRecord {
                id: vec![id as u8; 16],
                ..Default::default()
            }],
            ..Default::default()
        };
        let b9 = spool.write(&batch(9)).unwrap();
        let b10 = spool.write(&batch(10)).unwrap();
        fs::write(dir.path().join("spool/unrelated"), b"x").unwrap();
        assert_eq!(spool.list().unwrap(), vec![b9.clone(), b10.clone()]);
        assert_eq!(spool.read(&b10).unwrap(), batch(10));
        assert_eq!(batch_id_of(&b10), Some(10));
        spool.remove(&b9).unwrap();
        spool.remove(&b9).unwrap();
        assert_eq!(spool.list().unwrap(), vec![b10]);
    }

    #[test]
    fn leftover_temp_files_are_cleaned_and_corrupt_files_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".batch-1.pb.tmp"), b"half").unwrap();
        let bad = dir.path().join("batch-00000000000000000002.pb");
        fs::write(&bad, b"\xff\xff\xff").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join(".batch-1.pb.tmp").exists());
        assert_eq!(spool.list().unwrap(), vec![bad.clone()]);
        assert!(matches!(spool.read(&bad), Err(SpoolError::Decode { .. })));
        spool.quarantine(&bad).unwrap();
        assert!(spool.list().unwrap().is_empty());
    }
}
