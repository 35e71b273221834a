//! The in-flight scoreboard (layout: `sonde_core::scoreboard`): the agent
//! creates the file, PHP workers map it and keep their slot current, and
//! every second the agent reads it (plain `pread`, no shared-memory access
//! from Rust) to publish the requests running now and to notice workers
//! that died mid-request — their request becomes a failed transaction.
//!
//! An existing valid file is kept across agent restarts (workers have it
//! mapped); a missing or foreign one is created afresh.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use sonde_core::scoreboard::{self as sb, Slot};
use sonde_proto::v1::{ErrorInfo, InflightRequest, RequestRecord};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::buffer::queue::RecordQueue;
use crate::buffer::record::Record;
use crate::live::LiveTable;
use crate::shutdown::Shutdown;

/// How often the scoreboard is read.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum ScoreboardError {
    #[error("cannot create the scoreboard {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// The scoreboard file, opened for reading slots and freeing dead ones.
#[derive(Debug)]
pub struct Scoreboard {
    file: File,
    path: PathBuf,
    slots: u32,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Database connections the live workers hold (each worker's count
    /// from its slot, summed).
    pub db_connections: u32,
    /// Requests running now.
    pub running: Vec<InflightRequest>,
    /// Requests whose worker died before finishing them.
    pub orphaned: Vec<Slot>,
    /// Workers holding a slot, busy and idle.
    pub busy: u32,
    pub idle: u32,
}

impl Scoreboard {
    /// Opens `path`, creating it with `slots` slots when missing or not a
    /// scoreboard; gives it to `group` with `mode`.
    pub fn open(
        path: &Path,
        slots: u32,
        group: &str,
        mode: u32,
    ) -> Result<Scoreboard, ScoreboardError> {
        let err = |source| ScoreboardError::Create {
            path: path.to_path_buf(),
            source,
        };
        let (file, existed) = super::shared_file::open_shared(
            path,
            &sb::header(slots),
            sb::file_bytes(slots) as u64,
            group,
            mode,
            |h, len| sb::parse_header(h).is_some_and(|n| len >= sb::file_bytes(n) as u64),
        )
        .map_err(err)?;
        let mut h = [0u8; sb::HEADER_BYTES];
        file.read_exact_at(&mut h, 0).map_err(err)?;
        let slots = sb::parse_header(&h).unwrap_or(slots);
        if existed {
            info!(path = %path.display(), slots, "using the existing scoreboard");
        } else {
            info!(path = %path.display(), slots, "created the scoreboard");
        }
        Ok(Scoreboard {
            file,
            path: path.to_path_buf(),
            slots,
        })
    }

    /// Reads every slot once. `alive(pid)` tells whether a worker still runs.
    pub fn scan(&self, now_unix_ns: i64, alive: impl Fn(u32) -> bool) -> io::Result<Scan> {
        let mut all = vec![0u8; sb::file_bytes(self.slots)];
        self.file.read_exact_at(&mut all, 0)?;
        let mut scan = Scan::default();
        for i in 0..self.slots {
            let off = sb::slot_offset(i);
            let bytes = &all[off..off + sb::SLOT_BYTES];
            let Some(slot) = sb::parse_slot(bytes) else {
                continue;
            };
            if !alive(slot.pid) {
                if slot.busy {
                    scan.orphaned.push(slot.clone());
                }
                self.free(i, slot.pid)?;
                continue;
            }
            // Held between requests too (persistent connections).
            scan.db_connections += slot.db_connections;
            if !slot.busy {
                scan.idle += 1;
                continue;
            }
            scan.busy += 1;
            // The copy is only good if the worker did not write meanwhile.
            let mut seq = [0u8; 4];
            self.file
                .read_exact_at(&mut seq, (off + sb::S_SEQ) as u64)?;
            if u32::from_le_bytes(seq) != slot.seq {
                continue;
            }
            scan.running.push(inflight(&slot, now_unix_ns));
        }
        Ok(scan)
    }

    /// Frees slot `i` of dead worker `pid` (if it still holds it).
    fn free(&self, i: u32, pid: u32) -> io::Result<()> {
        let off = sb::slot_offset(i) as u64;
        let mut owner = [0u8; 4];
        self.file.read_exact_at(&mut owner, off)?;
        if u32::from_le_bytes(owner) == pid {
            self.file.write_all_at(&[0u8; sb::SLOT_BYTES], off)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn current_text(slot: &Slot) -> String {
    match slot.current_kind {
        sb::CURRENT_SQL => {
            sonde_core::sql::normalize(&slot.current, sonde_core::sql::Dialect::MySql, 1024)
        }
        sb::CURRENT_NONE => String::new(),
        _ => slot.current.clone(),
    }
}

fn redacted(url: &str) -> String {
    sonde_core::redact::redact_query(url, sonde_core::redact::DEFAULT_SENSITIVE)
        .unwrap_or_else(|| url.to_string())
}

fn inflight(slot: &Slot, now_unix_ns: i64) -> InflightRequest {
    InflightRequest {
        request_id: slot.request_id.to_vec(),
        pid: slot.pid,
        app: slot.app.clone(),
        method: slot.method.clone(),
        endpoint: sonde_core::endpoint::EndpointNamer::default().name(&slot.url),
        url: redacted(&slot.url),
        start_unix_ns: slot.start_unix_ns,
        elapsed_ms: now_unix_ns.saturating_sub(slot.start_unix_ns).max(0) as f64 / 1e6,
        current: current_text(slot),
    }
}

/// The failed transaction of a request whose worker died.
pub fn orphan_record(slot: &Slot, now_unix_ns: i64, hostname: &str) -> RequestRecord {
    let running = current_text(slot);
    let message = if running.is_empty() {
        format!("the PHP worker (pid {}) ended during the request", slot.pid)
    } else {
        format!(
            "the PHP worker (pid {}) ended during the request, while running: {running}",
            slot.pid
        )
    };
    RequestRecord {
        id: slot.request_id.to_vec(),
        app: if slot.app.is_empty() {
            "default".into()
        } else {
            slot.app.clone()
        },
        pid: slot.pid,
        start_unix_ns: slot.start_unix_ns,
        wall_ns: now_unix_ns.saturating_sub(slot.start_unix_ns).max(0) as u64,
        method: slot.method.clone(),
        url: redacted(&slot.url),
        endpoint: sonde_core::endpoint::EndpointNamer::default().name(&slot.url),
        status: 0,
        error: Some(ErrorInfo {
            class: "WorkerDied".into(),
            message,
            fatal: true,
            ..Default::default()
        }),
        host: hostname.to_string(),
        ..Default::default()
    }
}

fn pid_alive(pid: u32) -> bool {
    // kill(pid, 0): ESRCH = no such process; EPERM = it exists (another user).
    !matches!(kill(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Reads the scoreboard every second until shutdown.
pub async fn run(
    board: Scoreboard,
    live: Arc<LiveTable>,
    queue: RecordQueue,
    hostname: String,
    mut shutdown: Shutdown,
) {
    let board = Arc::new(board);
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => break,
        }
        let b = board.clone();
        let now = now_ns();
        let scan = tokio::task::spawn_blocking(move || b.scan(now, pid_alive)).await;
        let scan = match scan {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                if !warned {
                    warn!(%error, path = %board.path().display(), "cannot read the scoreboard");
                    warned = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        for slot in &scan.orphaned {
            warn!(pid = slot.pid, url = %redacted(&slot.url), "a PHP worker died mid-request; recording it as failed");
            queue.push(Record::from_message(&orphan_record(slot, now, &hostname)));
        }
        debug!(busy = scan.busy, idle = scan.idle, "scoreboard");
        live.set_db_connections(scan.db_connections);
        live.set_board(scan.running);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::PermissionsExt;

    fn write_slot(path: &Path, i: u32, pid: u32, busy: bool, url: &str, current: &str) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        let mut s = vec![0u8; sb::SLOT_BYTES];
        s[sb::S_PID..sb::S_PID + 4].copy_from_slice(&pid.to_le_bytes());
        s[sb::S_SEQ..sb::S_SEQ + 4].copy_from_slice(&2u32.to_le_bytes());
        let state = if busy { sb::STATE_BUSY } else { sb::STATE_IDLE };
        s[sb::S_STATE..sb::S_STATE + 4].copy_from_slice(&state.to_le_bytes());
        s[sb::S_START_NS..sb::S_START_NS + 8].copy_from_slice(&1_000_000_000i64.to_le_bytes());
        s[sb::S_REQUEST_ID..sb::S_REQUEST_ID + 16].copy_from_slice(&[pid as u8; 16]);
        s[sb::S_CURRENT_KIND..sb::S_CURRENT_KIND + 4]
            .copy_from_slice(&sb::CURRENT_SQL.to_le_bytes());
        sb::put_text(&mut s, sb::S_METHOD, sb::METHOD_CAP, b"GET");
        sb::put_text(&mut s, sb::S_APP, sb::APP_CAP, b"shop");
        sb::put_text(&mut s, sb::S_URL, sb::URL_CAP, url.as_bytes());
        sb::put_text(&mut s, sb::S_CURRENT, sb::CURRENT_CAP, current.as_bytes());
        f.write_all_at(&s, sb::slot_offset(i) as u64).unwrap();
    }

    #[test]
    fn running_idle_and_dead_workers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/scoreboard");
        let board = Scoreboard::open(&path, 8, "", 0o660).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        write_slot(
            &path,
            1,
            101,
            true,
            "/photos/7?token=s3cret",
            "SELECT * FROM t WHERE id = 5",
        );
        write_slot(&path, 2, 102, false, "/", "");
        write_slot(&path, 3, 103, true, "/slow", "SELECT SLEEP(10)");
        let scan = board.scan(1_500_000_000, |pid| pid != 103).unwrap();
        assert_eq!((scan.busy, scan.idle), (1, 1));
        assert_eq!(scan.running.len(), 1);
        let r = &scan.running[0];
        assert_eq!(r.endpoint, "/photos/{num}");
        assert_eq!(r.url, "/photos/7?token=[redacted]");
        assert_eq!(r.current, "SELECT * FROM t WHERE id = ?");
        assert_eq!(r.elapsed_ms, 500.0);
        assert_eq!(scan.orphaned.len(), 1);
        let rec = orphan_record(&scan.orphaned[0], 3_000_000_000, "web-1");
        assert_eq!(rec.id, vec![103u8; 16]);
        assert_eq!(rec.wall_ns, 2_000_000_000);
        let e = rec.error.unwrap();
        assert_eq!(e.class, "WorkerDied");
        assert!(
            e.fatal && e.message.contains("SELECT SLEEP(?)"),
            "{}",
            e.message
        );
        // The dead worker's slot was freed; a second scan finds no orphan.
        let again = board.scan(1_500_000_000, |pid| pid != 103).unwrap();
        assert!(again.orphaned.is_empty());
        // Reopening keeps the file (workers have it mapped).
        drop(board);
        let reopened = Scoreboard::open(&path, 16, "", 0o660).unwrap();
        assert_eq!(reopened.slots, 8);
        assert_eq!(reopened.scan(0, |_| true).unwrap().busy, 1);
    }

    #[test]
    fn a_foreign_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scoreboard");
        fs::write(&path, b"not a scoreboard").unwrap();
        let board = Scoreboard::open(&path, 4, "", 0o660).unwrap();
        assert_eq!(board.slots, 4);
        assert_eq!(fs::metadata(&path).unwrap().len(), sb::file_bytes(4) as u64);
    }
}
