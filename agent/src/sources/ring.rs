//! The record ring (layout: `sonde_core::ring`): PHP workers put each
//! finished request's frame into a shared-memory ring; this source drains it
//! with plain `pread`/`pwrite` (no shared-memory access from Rust) — in
//! chunks of up to 1 MiB, each read into one buffer that the records then
//! share (no allocation per record) — hands the frames to the same checker
//! as the socket, each with the ring offset just past it, and frees the
//! space once every record read before it is durable (the sink's
//! `buffer::durable::Watermark`: acknowledged, spooled, or counted as
//! dropped), so that after a `kill -9` the next agent reads again whatever
//! the dead one held only in memory. It polls: every 20 ms while records
//! come, backing off to 100 ms while the ring stays empty, at once again
//! while a chunk comes back full. Records wait in the ring while the agent
//! is stalled or restarting — and while the record queue is nearly full
//! (the sink is behind): the ring, not the queue, absorbs a burst, and only
//! a full ring drops (counted by the workers). It must never free what is
//! not durable; when too much of the ring waits on the sink it asks the
//! sink to spool what it holds. An existing valid ring file is kept across
//! restarts.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::bytes::{Bytes, BytesMut};
use sonde_core::ring as r;
use thiserror::Error;
use tracing::{debug, info, warn};

use super::socket::Context;
use crate::buffer::durable::Watermark;
use crate::ratelimit::RateLimit;
use crate::shutdown::Shutdown;

/// Pause after a drain that found records (and did not fill a chunk).
pub const ACTIVE_WAIT: Duration = Duration::from_millis(20);
/// The pause doubles from `ACTIVE_WAIT` up to this while the ring stays
/// empty: an idle agent wakes 10 times a second. A burst arriving meanwhile
/// waits in the ring (at 200,000 records/s, 100 ms is ~26 MB of 64 MiB).
pub const IDLE_WAIT_MAX: Duration = Duration::from_millis(100);
/// Most bytes read per drain.
const CHUNK: u64 = 1 << 20;
/// An entry reserved but never committed for this long belongs to a worker
/// that died mid-write: it is skipped (or, without a length, the ring
/// restarts at `head`).
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// When more than this share of the ring (1/PRESSURE_SHARE) has been read
/// but is not durable yet, the sink is asked to spool what it holds rather
/// than wait for acknowledgements (a slow collector would otherwise let
/// the ring fill; a full ring drops new records).
const PRESSURE_SHARE: u64 = 4;
/// The connection id given to ring frames (socket connections count up
/// from 1).
const RING_CONN: u64 = u64::MAX;
/// Room the record queue must have for a drain: records, and chunks of
/// bytes (a drain reads whole chunks).
const MIN_ROOM_RECORDS: usize = 4096;
const MIN_ROOM_CHUNKS: u64 = 2;
/// How often "the agent is behind" may be logged.
const BEHIND_LOG_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum RingError {
    #[error("cannot create the record ring {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// The ring file.
#[derive(Debug)]
pub struct RingFile {
    file: File,
    path: PathBuf,
    cap: u64,
}

/// Where an agent reads the ring.
#[derive(Debug)]
pub struct Reader {
    /// Bytes read so far (at least the persisted tail).
    read: u64,
    /// Bytes freed so far: the persisted tail.
    freed: u64,
    /// An entry that stays uncommitted: where, since when.
    stuck: Option<(u64, Instant)>,
}

/// What one drain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub frames: usize,
    /// Entries skipped because their worker died before committing them.
    pub skipped: u64,
    /// Whether it stopped at its size limit with more to read.
    pub more: bool,
}

impl Drained {
    /// How long to wait before the next drain, after waiting `last`.
    pub fn next_wait(&self, last: Duration) -> Duration {
        if self.more {
            Duration::ZERO
        } else if self.frames > 0 {
            ACTIVE_WAIT
        } else {
            (last * 2).clamp(ACTIVE_WAIT, IDLE_WAIT_MAX)
        }
    }
}

impl RingFile {
    /// Opens `path`, creating it with `capacity` data bytes (a power of two)
    /// when missing or not a ring; gives it to `group` with `mode`.
    pub fn open(path: &Path, capacity: u64, group: &str, mode: u32) -> Result<RingFile, RingError> {
        let err = |source| RingError::Create {
            path: path.to_path_buf(),
            source,
        };
        let cap = capacity.next_power_of_two().max(4096);
        let (file, existed) = super::shared_file::open_shared(
            path,
            &r::header(cap),
            r::HEADER_BYTES as u64 + cap,
            group,
            mode,
            |h, len| r::parse_header(h).is_some_and(|c| len >= r::HEADER_BYTES as u64 + c),
        )
        .map_err(err)?;
        let mut h = vec![0u8; r::HEADER_BYTES];
        file.read_exact_at(&mut h, 0).map_err(err)?;
        let cap = r::parse_header(&h).unwrap_or(cap);
        if existed {
            info!(path = %path.display(), capacity = cap, "using the existing record ring");
        } else {
            info!(path = %path.display(), capacity = cap, "created the record ring");
        }
        Ok(RingFile {
            file,
            path: path.to_path_buf(),
            cap,
        })
    }

    fn word(&self, off: usize) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, off as u64)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A reader positioned where the last agent stopped freeing: frames
    /// after the persisted tail are read (again) from there.
    pub fn reader(&self) -> io::Result<Reader> {
        let tail = self.word(r::H_TAIL)?;
        Ok(Reader {
            read: tail,
            freed: tail,
            stuck: None,
        })
    }

    /// Hands every committed frame after the reader's position to `f`, as
    /// a slice of the chunk it was read in with the ring offset just past
    /// it, up to `max_bytes` (at least one chunk). Frees nothing: see
    /// `release`.
    pub fn drain(
        &self,
        buf: &mut BytesMut,
        reader: &mut Reader,
        max_bytes: u64,
        mut f: impl FnMut(Bytes, u64),
    ) -> io::Result<Drained> {
        let mut out = Drained::default();
        let head = self.word(r::H_HEAD)?;
        let start = reader.read;
        'chunks: while reader.read < head {
            if reader.read - start >= max_bytes {
                out.more = true;
                break;
            }
            // Read up to the end of the data (entries never wrap) or CHUNK,
            // into a buffer of its own that the frames share (the last
            // one's, when none of its frames is still held).
            let off = reader.read % self.cap;
            let n = (head - reader.read).min(self.cap - off).min(CHUNK);
            buf.clear();
            buf.resize(n as usize, 0);
            self.file
                .read_exact_at(&mut buf[..], r::HEADER_BYTES as u64 + off)?;
            let chunk = buf.split().freeze();
            let buf = &chunk[..];
            let mut pos = 0usize;
            while pos + r::ENTRY_HEADER <= buf.len() {
                let len = r::u32_at(buf, pos + r::E_LEN) as usize;
                let state = r::u32_at(buf, pos + r::E_STATE);
                let size = r::entry_bytes(len) as usize;
                match state {
                    r::STATE_COMMITTED | r::STATE_PADDING if pos + size <= buf.len() => {
                        if state == r::STATE_COMMITTED {
                            let end = reader.read + (pos + size) as u64;
                            f(
                                chunk.slice(pos + r::ENTRY_HEADER..pos + r::ENTRY_HEADER + len),
                                end,
                            );
                            out.frames += 1;
                        }
                        pos += size;
                    }
                    r::STATE_COMMITTED | r::STATE_PADDING => break, // rest in the next chunk
                    _ => {
                        // Reserved, not committed yet: wait, unless for too long.
                        let at = reader.read + pos as u64;
                        match reader.stuck {
                            Some((where_, since))
                                if where_ == at && since.elapsed() >= STUCK_AFTER =>
                            {
                                reader.stuck = None;
                                out.skipped += 1;
                                if len > 0 && pos + size <= buf.len() {
                                    pos += size;
                                    continue;
                                }
                                // No length to skip by: go on from head.
                                reader.read = head;
                                break 'chunks;
                            }
                            Some((where_, _)) if where_ == at => {}
                            _ => reader.stuck = Some((at, Instant::now())),
                        }
                        reader.read += pos as u64;
                        break 'chunks;
                    }
                }
            }
            if pos == 0 {
                break;
            }
            reader.read += pos as u64;
        }
        Ok(out)
    }

    /// Frees what was read up to `durable` — the offset up to which every
    /// record read is durable — and persists the tail. Frames read but not
    /// yet durable stay: if this agent is killed, the next one reads them
    /// again, and the collector, which stores each record id once, drops
    /// the repeats. Frames that were not records (malformed) are freed
    /// with the next durable record after them.
    pub fn release(&self, reader: &mut Reader, durable: u64) -> io::Result<()> {
        let upto = durable.min(reader.read);
        if upto > reader.freed {
            self.free(reader.freed, upto - reader.freed)?;
            self.file
                .write_all_at(&upto.to_le_bytes(), r::H_TAIL as u64)?;
            reader.freed = upto;
        }
        Ok(())
    }

    /// Whether so much of the ring has been read but is not durable yet
    /// that the sink should spool what it holds.
    fn pressed(&self, reader: &Reader) -> bool {
        reader.read - reader.freed > self.cap / PRESSURE_SHARE
    }

    /// Zeroes `len` consumed bytes at `tail` so entry headers read empty
    /// when producers come round again.
    fn free(&self, tail: u64, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64);
            let off = r::HEADER_BYTES as u64 + (tail + done) % self.cap;
            self.file.write_all_at(&ZEROS[..n as usize], off)?;
            done += n;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The ring as the source left it at shutdown: the last frames it read may
/// not be durable yet.
#[derive(Debug)]
pub struct Stopped {
    ring: RingFile,
    reader: Reader,
}

impl Stopped {
    /// Frees what the sink made durable while it stopped, so that the next
    /// agent does not read it again.
    pub fn release(mut self, mark: &Watermark) {
        if let Err(error) = self.ring.release(&mut self.reader, mark.durable()) {
            warn!(%error, path = %self.ring.path().display(), "cannot free ring space");
        }
    }
}

/// Drains the ring into `ctx` until shutdown, then once more; frees what
/// `mark` says is durable as it goes. Returns the ring for a last release
/// once the sink has finished.
pub async fn run(
    ring: RingFile,
    ctx: Arc<Context>,
    mark: Arc<Watermark>,
    shutdown: Shutdown,
) -> Option<Stopped> {
    let task = tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::new();
        let mut warned = false;
        let mut wait = ACTIVE_WAIT;
        let behind_log = RateLimit::new(BEHIND_LOG_PERIOD);
        let mut reader = match ring.reader() {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, path = %ring.path().display(), "cannot read the record ring");
                return None;
            }
        };
        let release = |reader: &mut Reader| {
            if let Err(error) = ring.release(reader, mark.durable()) {
                debug!(%error, "cannot free ring space");
            }
            if ring.pressed(reader) {
                mark.want_durable();
            }
        };
        loop {
            let stopping = shutdown.is_triggered();
            // At shutdown, everything; else a few chunks (then the release
            // of durable space and a look at `head` again), and no more
            // than the queue takes.
            let (room_records, room_bytes) = ctx.queue.room();
            let room_bytes = room_bytes as u64;
            if !stopping
                && (room_records < MIN_ROOM_RECORDS || room_bytes < MIN_ROOM_CHUNKS * CHUNK)
            {
                if let Some(silenced) = behind_log.check(Instant::now()) {
                    warn!(
                        since_last_warning = silenced + 1,
                        "the record queue is nearly full (the collector or the agent is behind); \
                         records wait in the ring"
                    );
                }
                release(&mut reader);
                std::thread::sleep(ACTIVE_WAIT);
                continue;
            }
            let max = if stopping {
                u64::MAX
            } else {
                (4 * CHUNK).min(room_bytes / 2)
            };
            let drained = ring.drain(&mut buf, &mut reader, max, |frame, end| {
                ctx.handle_shared(&frame, end, RING_CONN)
            });
            release(&mut reader);
            match drained {
                Ok(d) => {
                    if d.skipped > 0 {
                        warn!(
                            skipped = d.skipped,
                            "skipped ring entries a dead worker never finished"
                        );
                    }
                    if stopping {
                        break;
                    }
                    wait = d.next_wait(wait);
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
                Err(error) => {
                    if !warned {
                        warn!(%error, path = %ring.path().display(), "cannot read the record ring");
                        warned = true;
                    }
                    if stopping {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        // `ctx` goes here: the record queue closes once the socket's
        // connections are done too.
        drop(ctx);
        Some(Stopped { ring, reader })
    });
    task.await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    /// A producer writing the file directly, as a PHP worker does through
    /// its mapping.
    fn produce(f: &File, frame: &[u8], commit: bool) -> bool {
        let mut h = vec![0u8; r::HEADER_BYTES];
        f.read_exact_at(&mut h, 0).unwrap();
        let cap = r::parse_header(&h).unwrap();
        let (head, tail) = (r::u64_at(&h, r::H_HEAD), r::u64_at(&h, r::H_TAIL));
        let need = r::entry_bytes(frame.len());
        let (pad, off) = r::placement(head, need, cap);
        if !r::fits(head, tail, pad, need, cap) {
            return false;
        }
        let base = r::HEADER_BYTES as u64;
        if pad > 0 {
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&((pad - 8) as u32).to_le_bytes());
            e[4..].copy_from_slice(&r::STATE_PADDING.to_le_bytes());
            f.write_all_at(&e, base + head % cap).unwrap();
        }
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        if commit {
            e[4..].copy_from_slice(&r::STATE_COMMITTED.to_le_bytes());
        }
        f.write_all_at(frame, base + off + 8).unwrap();
        f.write_all_at(&e, base + off).unwrap();
        f.write_all_at(&(head + pad + need).to_le_bytes(), r::H_HEAD as u64)
            .unwrap();
        true
    }

    /// A fresh ring in a temp dir, and the file opened as a producer would.
    fn new_ring(capacity: u64) -> (tempfile::TempDir, std::path::PathBuf, RingFile, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring");
        let ring = RingFile::open(&path, capacity, "", 0o660).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, path, ring, f)
    }

    #[test]
    fn drains_in_order_across_the_wrap() {
        let (_dir, _path, ring, f) = new_ring(4096);
        let mut reader = ring.reader().unwrap();
        let (mut sent, mut got, mut buf) = (Vec::new(), Vec::new(), BytesMut::new());
        let mut durable = 0;
        for i in 0..300u32 {
            let frame: Vec<u8> = (0..(i * 53 % 700) as usize)
                .map(|k| (k as u32 ^ i) as u8)
                .collect();
            if produce(&f, &frame, true) {
                sent.push(frame);
            }
            if i % 4 == 0 {
                // What was read in the drain before is durable now.
                ring.release(&mut reader, durable).unwrap();
                ring.drain(&mut buf, &mut reader, u64::MAX, |fr, end| {
                    assert!(end > durable, "offsets grow");
                    durable = end;
                    got.push(fr.to_vec())
                })
                .unwrap();
            }
        }
        ring.drain(&mut buf, &mut reader, u64::MAX, |fr, _| {
            got.push(fr.to_vec())
        })
        .unwrap();
        assert!(sent.len() > 100, "the ring went round many times");
        assert_eq!(got, sent);
    }

    #[test]
    fn space_is_freed_only_up_to_the_durable_offset() {
        let (_dir, _path, ring, f) = new_ring(4096);
        let mut reader = ring.reader().unwrap();
        let (mut ends, mut buf) = (Vec::new(), BytesMut::new());
        let mut n = 0;
        while produce(&f, &[7; 500], true) {
            n += 1;
        }
        ring.drain(&mut buf, &mut reader, u64::MAX, |_, end| ends.push(end))
            .unwrap();
        assert_eq!(ends.len(), n);
        // Read, nothing durable: the ring stays full.
        ring.release(&mut reader, 0).unwrap();
        assert!(!produce(&f, &[8; 500], true), "nothing freed");
        assert!(ring.pressed(&reader), "the sink is asked to spool");
        // The first two durable: room for one more frame (the producer
        // needs room before the tail, so one at most).
        ring.release(&mut reader, ends[1]).unwrap();
        assert!(produce(&f, &[8; 500], true));
        // A durable offset beyond what was read frees only what was read.
        ring.release(&mut reader, u64::MAX).unwrap();
        assert_eq!(reader.freed, reader.read);
        assert!(!ring.pressed(&reader));
        let mut got = Vec::new();
        ring.drain(&mut buf, &mut reader, u64::MAX, |fr, _| {
            got.push(fr.to_vec())
        })
        .unwrap();
        assert_eq!(got, [vec![8; 500]]);
    }

    #[test]
    fn a_new_agent_reads_again_what_was_not_released() {
        let (_dir, path, ring, f) = new_ring(1 << 16);
        let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
        for fr in &frames[..6] {
            assert!(produce(&f, fr, true));
        }
        let (mut buf, mut got, mut ends) = (BytesMut::new(), Vec::new(), Vec::new());
        let mut reader = ring.reader().unwrap();
        let mut take = |fr: Bytes, end| {
            got.push(fr.to_vec());
            ends.push(end);
        };
        ring.drain(&mut buf, &mut reader, u64::MAX, &mut take)
            .unwrap();
        for fr in &frames[6..] {
            assert!(produce(&f, fr, true));
        }
        ring.drain(&mut buf, &mut reader, u64::MAX, &mut take)
            .unwrap();
        assert_eq!(got, frames);
        // The first four are durable (say acknowledged), the rest only in
        // this agent's memory.
        ring.release(&mut reader, ends[3]).unwrap();
        // The agent is killed now: a new one (same file) reads again the
        // frames not yet durable, and only those.
        drop(ring);
        let ring = RingFile::open(&path, 1 << 20, "", 0o660).unwrap();
        assert_eq!(ring.cap, 1 << 16, "an existing ring is kept");
        let mut again = Vec::new();
        let mut reader = ring.reader().unwrap();
        ring.drain(&mut buf, &mut reader, u64::MAX, |fr, _| {
            again.push(fr.to_vec())
        })
        .unwrap();
        assert_eq!(again, frames[4..]);
    }

    #[test]
    fn polls_less_while_idle_and_at_once_while_behind() {
        let idle = Drained::default();
        let mut wait = ACTIVE_WAIT;
        let mut waits = Vec::new();
        for _ in 0..5 {
            wait = idle.next_wait(wait);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [40, 80, 100, 100, 100]);
        let some = Drained {
            frames: 3,
            ..Default::default()
        };
        assert_eq!(some.next_wait(IDLE_WAIT_MAX), ACTIVE_WAIT);
        let behind = Drained {
            frames: 900,
            more: true,
            ..Default::default()
        };
        assert_eq!(behind.next_wait(ACTIVE_WAIT), Duration::ZERO);
    }

    #[test]
    fn a_drain_stops_at_its_size_limit() {
        let (_dir, _path, ring, f) = new_ring(4 << 20);
        for i in 0..1500u32 {
            assert!(produce(&f, &[i as u8; 1000], true));
        }
        let (mut buf, mut got) = (BytesMut::new(), Vec::new());
        let mut reader = ring.reader().unwrap();
        let d = ring
            .drain(&mut buf, &mut reader, 1, |fr, _| got.push(fr))
            .unwrap();
        assert!(d.more, "one chunk, then it stops");
        assert_eq!(d.frames as u64, CHUNK / 1008);
        // The frames of a chunk share its buffer.
        assert_eq!(got[1].as_ptr() as usize - got[0].as_ptr() as usize, 1008);
        let d = ring
            .drain(&mut buf, &mut reader, 1, |fr, _| got.push(fr))
            .unwrap();
        assert!(!d.more);
        assert_eq!(got.len(), 1500);
        assert!(got.iter().enumerate().all(|(i, fr)| fr[0] == i as u8));
    }

    #[test]
    fn waits_for_an_uncommitted_entry() {
        let (_dir, _path, ring, f) = new_ring(4096);
        assert!(produce(&f, b"first", true));
        assert!(produce(&f, b"in progress", false));
        assert!(produce(&f, b"third", true));
        let (mut buf, mut got) = (BytesMut::new(), Vec::new());
        let mut reader = ring.reader().unwrap();
        let d = ring
            .drain(&mut buf, &mut reader, u64::MAX, |fr, _| {
                got.push(fr.to_vec())
            })
            .unwrap();
        assert_eq!(d.frames, 1, "stops at the entry still being written");
        let (at, _) = reader.stuck.unwrap();
        // Pretend it has been stuck for long: it is skipped.
        reader.stuck = Some((at, Instant::now() - STUCK_AFTER));
        let d = ring
            .drain(&mut buf, &mut reader, u64::MAX, |fr, _| {
                got.push(fr.to_vec())
            })
            .unwrap();
        assert_eq!((d.frames, d.skipped), (1, 1));
        assert_eq!(got, vec![b"first".to_vec(), b"third".to_vec()]);
    }
}
