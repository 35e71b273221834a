//! The disk spool: batches the collector has not taken yet, kept on disk so
//! that an outage, a slow collector, an agent restart or a `kill -9` loses
//! nothing that reached it. It is a log of segment files
//! (`spool-<seq>.seg`) in `spool_dir`, each a magic header followed by frames:
//!
//! ```text
//! segment: "SNSPOOL1" frame*
//! frame:   len u32 LE | records u32 LE | crc32 u32 LE | payload (len bytes: an encoded sonde.v1.Batch)
//! crc32:   over the len and records fields and the payload
//! ```
//!
//! A frame is valid only if it is complete and its checksum matches, so a
//! tail torn by a crash is found when the segment is opened, reported, and cut
//! off; nothing after the first bad frame of a segment is trusted (lengths
//! after it may be garbage). A segment is never appended to by a later run:
//! every run starts a new one.
//!
//! The spool owns its bound (`max_bytes`): when a new frame would not fit, the
//! oldest segments are deleted and the records in them that were never sent
//! are reported as dropped. Frames are read back in order through a cursor;
//! a frame read is "in flight" until acknowledged, and `rewind` (after a lost
//! connection) sends every unacknowledged frame again. A segment whose frames
//! are all acknowledged is deleted. This module does file I/O only: no
//! network, no counters (it reports what it dropped to its caller).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use prost::bytes::Bytes;
use prost::Message;
use sonde_proto::v1::Batch;
use thiserror::Error;
use tracing::{info, warn};

use super::batch::EncodedBatch;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"SNSPOOL1";
/// Bytes before each frame's payload.
pub const FRAME_HEADER: usize = 12;
/// Largest payload accepted when reading; a longer length is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// A segment is closed and a new one started once it reaches this size (or
/// `max_bytes / 8` when that is smaller), so that dropping the oldest data
/// frees space in steps of at most an eighth of the spool.
const SEGMENT_TARGET: u64 = 16 << 20;

const SEGMENT_PREFIX: &str = "spool-";
const SEGMENT_SUFFIX: &str = ".seg";
/// The first spool format (one batch per file, written at shutdown only):
/// imported into the log at open.
const LEGACY_PREFIX: &str = "batch-";
const LEGACY_SUFFIX: &str = ".pb";

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("batch of {bytes} bytes is larger than the whole spool (spool_max_bytes = {max})")]
    TooLarge { bytes: u64, max: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a frame is: its segment and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub frame: usize,
}

/// One valid frame found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    pub offset: u64,
    pub len: u32,
    pub records: u32,
}

#[derive(Debug)]
struct Frame {
    meta: FrameMeta,
    acked: bool,
    /// Sent at least once by this run (for counting, not for delivery).
    sent: bool,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// File length: the header and every valid frame.
    bytes: u64,
    frames: Vec<Frame>,
}

impl Segment {
    fn unacked_records_from(&self, first: usize) -> u64 {
        self.frames
            .get(first..)
            .unwrap_or(&[])
            .iter()
            .filter(|f| !f.acked)
            .map(|f| u64::from(f.meta.records))
            .sum()
    }
}

/// What a segment scan found.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    pub frames: Vec<FrameMeta>,
    /// Bytes of the header and the valid frames; anything after is torn or
    /// corrupt.
    pub valid_len: u64,
    /// Whether the file starts with the segment magic.
    pub has_magic: bool,
}

/// Reads a segment from its start and returns its valid frames. Stops at the
/// first frame that is incomplete, too long, empty or fails its checksum.
/// Never panics, whatever the bytes.
pub fn scan(reader: impl Read) -> io::Result<Scan> {
    let mut r = BufReader::with_capacity(64 << 10, reader);
    let mut magic = [0u8; MAGIC.len()];
    if !read_full(&mut r, &mut magic)? || &magic != MAGIC {
        return Ok(Scan {
            frames: Vec::new(),
            valid_len: 0,
            has_magic: false,
        });
    }
    let mut frames = Vec::new();
    let mut offset = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        if !read_full(&mut r, &mut header)? {
            break;
        }
        let (len, records, crc) = split_header(&header);
        if len == 0 || len as usize > MAX_PAYLOAD {
            break;
        }
        payload.resize(len as usize, 0);
        if !read_full(&mut r, &mut payload)? || checksum(&header[..8], &payload) != crc {
            break;
        }
        frames.push(FrameMeta {
            offset,
            len,
            records,
        });
        offset += (FRAME_HEADER + len as usize) as u64;
    }
    Ok(Scan {
        frames,
        valid_len: offset,
        has_magic: true,
    })
}

/// Fills `buf` completely; `false` if the input ended first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn split_header(h: &[u8; FRAME_HEADER]) -> (u32, u32, u32) {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    (word(0), word(4), word(8))
}

fn checksum(len_and_records: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_and_records);
    h.update(payload);
    h.finalize()
}

/// One frame, header and payload, as written to a segment (tests; the
/// spool writes `batch_frame`).
#[cfg(test)]
pub fn encode_frame(payload: &[u8], records: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&records.to_le_bytes());
    let crc = checksum(&out[..8], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frame of `batch`, encoded straight after its header.
fn batch_frame(batch: &EncodedBatch) -> Vec<u8> {
    let len = batch.encoded_len();
    let mut out = Vec::with_capacity(FRAME_HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&batch.records.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    batch.encode(&mut out);
    let crc = checksum(&out[..8], &out[FRAME_HEADER..]);
    out[8..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What `append` did besides writing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub position: Option<Position>,
    /// Records never sent that were deleted to make room (oldest first).
    pub dropped_records: u64,
    pub dropped_segments: usize,
}

/// A frame that could not be read back.
#[derive(Debug, Error)]
#[error("spool segment {path} is damaged at offset {offset} ({reason}); {lost_records} records after it are lost")]
pub struct ReadError {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
    /// Records of the frames given up (the rest of that segment).
    pub lost_records: u64,
}

/// What `open` found, for the start-up log and counters.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub segments: usize,
    pub frames: usize,
    pub records: u64,
    pub bytes: u64,
    /// Bytes cut off torn or corrupt segment tails.
    pub torn_bytes: u64,
    /// First-format batch files imported.
    pub legacy_imported: usize,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_target: u64,
    segments: VecDeque<Segment>,
    next_seq: u64,
    /// The last segment, open for appending; `None` until the first append
    /// of this run (an earlier run's segment is never appended to).
    writer: Option<File>,
    /// The next frame to read: segment sequence and index.
    cursor: Position,
    /// Frames at or after the cursor not yet acknowledged.
    unread: usize,
    total_bytes: u64,
    dirty: bool,
    reader: Option<(u64, File)>,
}

impl Spool {
    /// Opens (creating, 0750) the spool in `dir`: scans every segment,
    /// cuts torn tails, deletes empty segments and imports first-format
    /// batch files. Everything found is unread: it will be sent again.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, OpenReport), SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_err(dir))?;
        let mut seg_paths = Vec::new();
        let mut legacy = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".tmp") {
                // The first format's half-written file.
                let _ = fs::remove_file(&path);
            } else if let Some(seq) = segment_seq(&path) {
                seg_paths.push((seq, path));
            } else if is_legacy(name) {
                legacy.push(path);
            }
        }
        seg_paths.sort();
        legacy.sort();

        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        for (seq, path) in seg_paths {
            let file = File::open(&path).map_err(io_err(&path))?;
            let file_len = file.metadata().map_err(io_err(&path))?.len();
            let found = scan(&file).map_err(io_err(&path))?;
            if found.valid_len < file_len {
                let torn = file_len - found.valid_len;
                report.torn_bytes += torn;
                warn!(path = %path.display(), valid_bytes = found.valid_len, torn_bytes = torn,
                    frames = found.frames.len(),
                    "spool segment has a torn or corrupt tail (an interrupted write); keeping its complete frames");
            }
            if found.frames.is_empty() {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if found.valid_len < file_len {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(found.valid_len))
                    .map_err(io_err(&path))?;
            }
            report.segments += 1;
            report.frames += found.frames.len();
            report.records += found
                .frames
                .iter()
                .map(|f| u64::from(f.records))
                .sum::<u64>();
            report.bytes += found.valid_len;
            segments.push_back(Segment {
                seq,
                path,
                bytes: found.valid_len,
                frames: found
                    .frames
                    .into_iter()
                    .map(|meta| Frame {
                        meta,
                        acked: false,
                        sent: false,
                    })
                    .collect(),
            });
        }
        let next_seq = segments.back().map_or(1, |s| s.seq + 1);
        let cursor = Position {
            segment: segments.front().map_or(next_seq, |s| s.seq),
            frame: 0,
        };
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_target: SEGMENT_TARGET.min(max_bytes / 8).max(1),
            unread: report.frames,
            total_bytes: report.bytes,
            segments,
            next_seq,
            writer: None,
            cursor,
            dirty: false,
            reader: None,
        };
        for path in legacy {
            spool.import_legacy(&path, &mut report)?;
        }
        if report.legacy_imported > 0 {
            spool.sync()?;
            for path in spool.legacy_done() {
                let _ = fs::remove_file(path);
            }
        }
        Ok((spool, report))
    }

    fn import_legacy(&mut self, path: &Path, report: &mut OpenReport) -> Result<(), SpoolError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        match Batch::decode(bytes.as_slice()) {
            Ok(batch) => {
                let records = batch.records.len() as u32;
                let a = self.append(&EncodedBatch::from_body(bytes.into(), records), false)?;
                report.legacy_imported += 1;
                report.records += u64::from(records);
                if a.dropped_records > 0 {
                    warn!(
                        dropped_records = a.dropped_records,
                        "the spool is full; dropped the oldest data"
                    );
                }
            }
            Err(error) => {
                warn!(%error, path = %path.display(), "setting an unreadable spool file aside");
                let mut to = path.as_os_str().to_owned();
                to.push(".corrupt");
                fs::rename(path, PathBuf::from(to)).map_err(io_err(path))?;
            }
        }
        Ok(())
    }

    /// First-format files already imported (still present until synced).
    fn legacy_done(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_legacy)
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Whether frames wait to be read (sent).
    pub fn has_unread(&self) -> bool {
        self.unread > 0
    }

    /// Whether the spool holds nothing unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Appends `batch` durably against a crash of the agent (written to the
    /// file at once; `sync` makes it durable against a crash of the host).
    /// `in_flight`: the batch is already being sent (it must not be read
    /// back unless `rewind` is called); only valid while nothing is unread.
    /// Drops the oldest segments when the spool would exceed its bound.
    pub fn append(
        &mut self,
        batch: &EncodedBatch,
        in_flight: bool,
    ) -> Result<Appended, SpoolError> {
        let payload_len = batch.encoded_len();
        let need = (FRAME_HEADER + payload_len) as u64;
        if need + MAGIC.len() as u64 > self.max_bytes || payload_len > MAX_PAYLOAD {
            return Err(SpoolError::TooLarge {
                bytes: need,
                max: self.max_bytes,
            });
        }
        let mut out = Appended::default();
        let rotate = loop {
            // A new segment when there is none of this run or it is full.
            let rotate = match (&self.writer, self.segments.back()) {
                (Some(_), Some(last)) => {
                    last.bytes + need > self.segment_target && !last.frames.is_empty()
                }
                _ => true,
            };
            let header = if rotate { MAGIC.len() as u64 } else { 0 };
            if self.total_bytes + header + need <= self.max_bytes || self.segments.is_empty() {
                break rotate;
            }
            out.dropped_records += self.drop_oldest()?;
            out.dropped_segments += 1;
        };
        if rotate {
            self.start_segment()?;
        }
        let in_flight = in_flight && !self.has_unread();
        let Some(seg) = self.segments.back_mut() else {
            unreachable!("start_segment pushed a segment");
        };
        let Some(writer) = self.writer.as_mut() else {
            unreachable!("start_segment opened the writer");
        };
        writer
            .write_all(&batch_frame(batch))
            .map_err(io_err(&seg.path))?;
        let offset = seg.bytes;
        seg.bytes += need;
        self.total_bytes += need;
        seg.frames.push(Frame {
            meta: FrameMeta {
                offset,
                len: payload_len as u32,
                records: batch.records,
            },
            acked: false,
            sent: false,
        });
        let position = Position {
            segment: seg.seq,
            frame: seg.frames.len() - 1,
        };
        if in_flight {
            self.cursor = Position {
                segment: seg.seq,
                frame: seg.frames.len(),
            };
        } else {
            self.unread += 1;
        }
        self.dirty = true;
        out.position = Some(position);
        Ok(out)
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        if let (Some(w), Some(last)) = (self.writer.take(), self.segments.back()) {
            w.sync_data().map_err(io_err(&last.path))?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self
            .dir
            .join(format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}"));
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(MAGIC).map_err(io_err(&path))?;
        // The new name must survive a host crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        let was_at_end = !self.has_unread();
        self.segments.push_back(Segment {
            seq,
            path,
            bytes: MAGIC.len() as u64,
            frames: Vec::new(),
        });
        if was_at_end {
            self.cursor = Position {
                segment: seq,
                frame: 0,
            };
        }
        self.total_bytes += MAGIC.len() as u64;
        self.writer = Some(f);
        Ok(())
    }

    /// Deletes the oldest segment; returns its records that were never sent.
    fn drop_oldest(&mut self) -> Result<u64, SpoolError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(0);
        };
        let first_unread = match self.cursor.segment.cmp(&seg.seq) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => self.cursor.frame,
            std::cmp::Ordering::Greater => seg.frames.len(),
        };
        let unread_frames = seg
            .frames
            .get(first_unread..)
            .unwrap_or(&[])
            .iter()
            .filter(|f| !f.acked)
            .count();
        let dropped = seg.unacked_records_from(first_unread);
        self.unread -= unread_frames;
        if self.cursor.segment <= seg.seq {
            self.cursor = Position {
                segment: self.segments.front().map_or(self.next_seq, |s| s.seq),
                frame: 0,
            };
        }
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.remove_segment_file(seg)?;
        Ok(dropped)
    }

    fn remove_segment_file(&mut self, seg: Segment) -> Result<(), SpoolError> {
        self.total_bytes -= seg.bytes;
        if self.reader.as_ref().is_some_and(|(s, _)| *s == seg.seq) {
            self.reader = None;
        }
        match fs::remove_file(&seg.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&seg.path)(e)),
            _ => Ok(()),
        }
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        self.segments.binary_search_by_key(&seq, |s| s.seq).ok()
    }

    /// Reads the next unread frame and puts it in flight. `None` when all is
    /// read. A damaged frame gives up the rest of its segment (`Err`, with
    /// the records lost); the next call goes on with the next segment. The
    /// batch comes back as it was written (its checksum vouches for it),
    /// not decoded.
    pub fn read_next(&mut self) -> Option<Result<(Position, EncodedBatch), ReadError>> {
        loop {
            if self.unread == 0 {
                return None;
            }
            // The cursor's segment, or the first after it.
            let i = match self
                .segments
                .binary_search_by_key(&self.cursor.segment, |s| s.seq)
            {
                Ok(i) => i,
                Err(i) => {
                    let seq = self.segments.get(i)?.seq;
                    self.cursor = Position {
                        segment: seq,
                        frame: 0,
                    };
                    i
                }
            };
            let seg = &self.segments[i];
            let Some(frame) = seg.frames.get(self.cursor.frame) else {
                let next = self.segments.get(i + 1)?.seq;
                self.cursor = Position {
                    segment: next,
                    frame: 0,
                };
                continue;
            };
            let pos = self.cursor;
            self.cursor.frame += 1;
            if frame.acked {
                continue;
            }
            self.unread -= 1;
            let meta = frame.meta;
            return Some(match self.read_frame(i, meta) {
                Ok(batch) => Ok((pos, batch)),
                Err(reason) => Err(self.give_up_rest(i, pos.frame, reason)),
            });
        }
    }

    fn read_frame(&mut self, i: usize, meta: FrameMeta) -> Result<EncodedBatch, String> {
        let seg = &self.segments[i];
        if self.reader.as_ref().is_none_or(|(s, _)| *s != seg.seq) {
            let f = File::open(&seg.path).map_err(|e| e.to_string())?;
            self.reader = Some((seg.seq, f));
        }
        let Some((_, f)) = self.reader.as_ref() else {
            unreachable!("reader opened above");
        };
        let mut buf = vec![0u8; FRAME_HEADER + meta.len as usize];
        f.read_exact_at(&mut buf, meta.offset)
            .map_err(|e| e.to_string())?;
        let mut header = [0u8; FRAME_HEADER];
        header.copy_from_slice(&buf[..FRAME_HEADER]);
        let (len, records, crc) = split_header(&header);
        let payload = &buf[FRAME_HEADER..];
        if len != meta.len || records != meta.records || checksum(&header[..8], payload) != crc {
            return Err("checksum mismatch".into());
        }
        let payload = Bytes::from(buf).slice(FRAME_HEADER..);
        Ok(EncodedBatch::from_body(payload, records))
    }

    /// Marks frames `from..` of segment `i` as done (lost) and moves on.
    fn give_up_rest(&mut self, i: usize, from: usize, reason: String) -> ReadError {
        let seg = &mut self.segments[i];
        let lost_records = seg.unacked_records_from(from);
        let offset = seg.frames[from].meta.offset;
        // `from` itself was already taken off `unread`.
        let still_unread = seg.frames[from + 1..].iter().filter(|f| !f.acked).count();
        for f in &mut seg.frames[from..] {
            f.acked = true;
        }
        self.unread -= still_unread;
        let err = ReadError {
            path: seg.path.clone(),
            offset,
            reason,
            lost_records,
        };
        let seq = seg.seq;
        self.collect(seq);
        err
    }

    /// The frame at `pos` was acknowledged (or rejected): it is done.
    /// Deletes its segment once every frame in it is done. Unknown positions
    /// (a segment dropped meanwhile) are ignored.
    pub fn ack(&mut self, pos: Position) {
        let Some(i) = self.index_of(pos.segment) else {
            return;
        };
        let Some(f) = self.segments[i].frames.get_mut(pos.frame) else {
            return;
        };
        if f.acked {
            return;
        }
        f.acked = true;
        let unread_before_cursor =
            (pos.segment, pos.frame) >= (self.cursor.segment, self.cursor.frame);
        if unread_before_cursor {
            // Acknowledged without having been read in this run (a resend
            // of the same data): no longer unread.
            self.unread -= 1;
        }
        self.collect(pos.segment);
    }

    /// Deletes segment `seq` if every frame in it is done.
    fn collect(&mut self, seq: u64) {
        let Some(i) = self.index_of(seq) else {
            return;
        };
        if !self.segments[i].frames.iter().all(|f| f.acked) {
            return;
        }
        let is_last = i + 1 == self.segments.len();
        let Some(seg) = self.segments.remove(i) else {
            return;
        };
        if is_last {
            self.writer = None;
        }
        if self.cursor.segment == seq {
            self.cursor = Position {
                segment: self.segments.get(i).map_or(self.next_seq, |s| s.seq),
                frame: 0,
            };
        }
        if let Err(error) = self.remove_segment_file(seg) {
            warn!(%error, "cannot delete an acknowledged spool segment; its data may be sent again");
        }
    }

    /// Notes that the frame at `pos` was sent; true the first time.
    pub fn mark_sent(&mut self, pos: Position) -> bool {
        let Some(i) = self.index_of(pos.segment) else {
            return false;
        };
        match self.segments[i].frames.get_mut(pos.frame) {
            Some(f) if !f.sent => {
                f.sent = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `pos` is still held (not dropped for room or given up).
    pub fn holds(&self, pos: Position) -> bool {
        self.index_of(pos.segment)
            .and_then(|i| self.segments[i].frames.get(pos.frame))
            .is_some_and(|f| !f.acked)
    }

    /// After a lost connection: every unacknowledged frame is unread again,
    /// read from the oldest.
    pub fn rewind(&mut self) {
        self.unread = self
            .segments
            .iter()
            .map(|s| s.frames.iter().filter(|f| !f.acked).count())
            .sum();
        self.cursor = Position {
            segment: self.segments.front().map_or(self.next_seq, |s| s.seq),
            frame: 0,
        };
    }

    /// Makes every append so far durable against a host crash.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        if let (Some(w), Some(last)) = (&self.writer, self.segments.back()) {
            w.sync_data().map_err(io_err(&last.path))?;
        }
        self.dirty = false;
        Ok(())
    }

    /// One line for the start-up log.
    pub fn log_open(&self, report: &OpenReport) {
        if report.frames > 0 || report.legacy_imported > 0 {
            info!(dir = %self.dir.display(), segments = report.segments, batches = report.frames,
                records = report.records, bytes = report.bytes, legacy_imported = report.legacy_imported,
                "the spool holds data from a previous run; it is sent before new data");
        }
    }
}

fn segment_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()
}

fn is_legacy(name: &str) -> bool {
    name.strip_prefix(LEGACY_PREFIX)
        .and_then(|n| n.strip_suffix(LEGACY_SUFFIX))
        .is_some_and(|id| id.parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sonde_proto::v1::RequestRecord;

    fn batch(id: u64, records: usize, url_len: usize) -> EncodedBatch {
        EncodedBatch::from_batch(&Batch {
            batch_id: id,
            records: (0..records)
                .map(|n| RequestRecord {
                    id: vec![n as u8; 16],
                    url: "u".repeat(url_len),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn open(dir: &Path, max: u64) -> Spool {
        Spool::open(dir, max).unwrap().0
    }

    fn read_all(s: &mut Spool) -> Vec<(Position, u64)> {
        std::iter::from_fn(|| s.read_next())
            .map(|r| r.map(|(p, b)| (p, b.decode().batch_id)).unwrap())
            .collect()
    }

    fn ids(s: &mut Spool) -> Vec<u64> {
        read_all(s).into_iter().map(|(_, id)| id).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| segment_seq(p).is_some())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn scan_finds_exactly_the_complete_frames_at_every_tear() {
        let payloads: Vec<Vec<u8>> = (1..=4u8).map(|n| vec![n; 10 * n as usize]).collect();
        let mut file = MAGIC.to_vec();
        let mut ends = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            file.extend(encode_frame(p, i as u32));
            ends.push(file.len());
        }
        // Every prefix of the file (a tear anywhere, including inside the
        // magic) keeps exactly the frames that end within it.
        for cut in 0..=file.len() {
            let s = scan(&file[..cut]).unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.frames.len(), complete, "cut at {cut}");
            let valid = if cut < MAGIC.len() {
                0
            } else {
                ends.get(complete.wrapping_sub(1))
                    .copied()
                    .unwrap_or(MAGIC.len())
            };
            assert_eq!(s.valid_len, valid as u64, "cut at {cut}");
            for (k, f) in s.frames.iter().enumerate() {
                assert_eq!(f.records, k as u32);
                assert_eq!(f.len as usize, payloads[k].len());
            }
        }
        // A flipped bit anywhere in the last frame invalidates it alone; a
        // zero-filled tail (what a crash can leave) is not a frame.
        let last_start = ends[2];
        for at in last_start..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            let s = scan(bad.as_slice()).unwrap();
            assert_eq!(s.frames.len(), 3, "flip at {at}");
        }
        let mut zeros = file.clone();
        zeros.extend([0u8; 64]);
        assert_eq!(scan(zeros.as_slice()).unwrap().frames.len(), 4);
        assert!(!scan(&b"garbage!"[..]).unwrap().has_magic);
    }

    #[test]
    fn torn_last_frame_on_disk_reopens_with_the_complete_frames() {
        // Write 3 batches, tear the file at every byte of the last frame,
        // reopen, and read back exactly the first two.
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for id in 1..=3 {
            s.append(&batch(id, 3, 20), false).unwrap();
        }
        s.sync().unwrap();
        drop(s);
        let seg = segment_files(dir.path()).pop().unwrap();
        let whole = fs::read(&seg).unwrap();
        let last = scan(whole.as_slice()).unwrap().frames[2];
        for cut in last.offset as usize..whole.len() {
            let d = tempfile::tempdir().unwrap();
            fs::write(d.path().join(seg.file_name().unwrap()), &whole[..cut]).unwrap();
            let (mut s, report) = Spool::open(d.path(), 1 << 20).unwrap();
            assert_eq!(report.torn_bytes, (cut - last.offset as usize) as u64);
            assert_eq!(ids(&mut s), [1, 2], "cut at {cut}");
            // The torn tail was cut off: appending after it is clean.
            s.append(&batch(4, 1, 0), false).unwrap();
            drop(s);
            let mut s = open(d.path(), 1 << 20);
            assert_eq!(ids(&mut s), [1, 2, 4], "cut at {cut}");
        }
    }

    #[test]
    fn acked_segments_are_deleted_and_the_rest_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for id in 1..=3 {
            s.append(&batch(id, 2, 10), false).unwrap();
        }
        let read = read_all(&mut s);
        assert_eq!(read.len(), 3);
        s.ack(read[0].0);
        s.ack(read[1].0);
        assert!(!s.is_empty());
        drop(s);
        // Acknowledgements are not kept on disk: after a restart the whole
        // unfinished segment is sent again (the collector deduplicates).
        let mut s = open(dir.path(), 1 << 20);
        let again = read_all(&mut s);
        assert_eq!(
            again.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for (p, _) in again {
            s.ack(p);
        }
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert!(segment_files(dir.path()).is_empty());
    }

    #[test]
    fn rewind_resends_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for id in 1..=4 {
            s.append(&batch(id, 1, 0), false).unwrap();
        }
        let read = read_all(&mut s);
        s.ack(read[1].0);
        assert!(!s.has_unread());
        s.rewind();
        assert_eq!(ids(&mut s), [1, 3, 4]);
    }

    #[test]
    fn in_flight_appends_are_not_read_back_unless_rewound() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let a = s.append(&batch(1, 1, 0), true).unwrap().position.unwrap();
        s.append(&batch(2, 1, 0), false).unwrap();
        assert_eq!(ids(&mut s), [2]);
        s.rewind();
        assert_eq!(ids(&mut s), [1, 2]);
        s.ack(a);
        s.rewind();
        assert_eq!(ids(&mut s), [2]);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_segments_and_says_how_many_records() {
        let dir = tempfile::tempdir().unwrap();
        // ~1100-byte frames; 8 KiB spool → segments of 1 KiB: one frame each.
        let mut s = open(dir.path(), 8 << 10);
        let mut dropped = 0;
        for id in 1..=20 {
            let a = s.append(&batch(id, 10, 100), false).unwrap();
            dropped += a.dropped_records;
            assert!(s.bytes() <= 8 << 10, "{}", s.bytes());
        }
        let kept = ids(&mut s);
        assert_eq!(*kept.last().unwrap(), 20);
        assert_eq!(dropped, (20 - kept.len() as u64) * 10);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert!(matches!(
            s.append(&batch(99, 100, 1000), false),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_damaged_frame_loses_the_rest_of_its_segment_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for id in 1..=3 {
            s.append(&batch(id, 2, 10), false).unwrap();
        }
        s.sync().unwrap();
        // Damage frame 2 after the segment was scanned (bit rot while running).
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let f2 = scan(bytes.as_slice()).unwrap().frames[1];
        bytes[f2.offset as usize + FRAME_HEADER + 3] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        let (p1, b1) = s.read_next().unwrap().unwrap();
        assert_eq!(b1.decode().batch_id, 1);
        let e = s.read_next().unwrap().unwrap_err();
        assert_eq!(e.lost_records, 4);
        assert!(s.read_next().is_none());
        s.ack(p1);
        assert!(s.is_empty());
    }

    #[test]
    fn first_format_files_are_imported() {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(7, 2, 5);
        fs::write(dir.path().join("batch-00000000000000000007.pb"), b.to_vec()).unwrap();
        fs::write(
            dir.path().join("batch-00000000000000000008.pb"),
            b"\xff\xff",
        )
        .unwrap();
        fs::write(dir.path().join(".batch-9.pb.tmp"), b"half").unwrap();
        let (mut s, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.legacy_imported, 1);
        assert_eq!(ids(&mut s), [7]);
        assert!(!dir.path().join("batch-00000000000000000007.pb").exists());
        assert!(dir
            .path()
            .join("batch-00000000000000000008.pb.corrupt")
            .exists());
        assert!(!dir.path().join(".batch-9.pb.tmp").exists());
    }

    /// Model-based: random appends, reads, acks, rewinds, restarts and
    /// crashes (a torn last frame) against a simple model of what must come
    /// back. The model: the ordered list of unacknowledged batch ids.
    #[test]
    fn model_based_random_operations() {
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let max = 1 << 20; // never full here
            let mut s = open(dir.path(), max);
            let mut model: Vec<u64> = Vec::new(); // unacked, in order
            let mut in_flight: Vec<(Position, u64)> = Vec::new();
            let mut next = 1u64;
            let mut restarted = false;
            for _ in 0..200 {
                match rng.gen_range(0..100) {
                    0..=39 => {
                        s.append(
                            &batch(next, rng.gen_range(0..4), rng.gen_range(0..50)),
                            false,
                        )
                        .unwrap();
                        model.push(next);
                        next += 1;
                    }
                    40..=64 => {
                        if let Some(r) = s.read_next() {
                            in_flight.push(r.map(|(p, b)| (p, b.decode().batch_id)).unwrap());
                        }
                    }
                    65..=84 => {
                        if !in_flight.is_empty() {
                            let (p, id) = in_flight.remove(rng.gen_range(0..in_flight.len()));
                            s.ack(p);
                            model.retain(|&m| m != id);
                        }
                    }
                    85..=92 => {
                        s.rewind();
                        in_flight.clear();
                    }
                    93..=96 => {
                        drop(s);
                        s = open(dir.path(), max);
                        in_flight.clear();
                        restarted = true;
                    }
                    _ => {
                        // kill -9 in the middle of an append: a torn frame.
                        s.sync().unwrap();
                        drop(s);
                        if let Some(last) = segment_files(dir.path()).pop() {
                            let frame = encode_frame(&batch(0, 1, 7).to_vec(), 1);
                            let cut = rng.gen_range(1..frame.len());
                            let mut f = OpenOptions::new().append(true).open(&last).unwrap();
                            f.write_all(&frame[..cut]).unwrap();
                        }
                        s = open(dir.path(), max);
                        in_flight.clear();
                        restarted = true;
                    }
                }
            }
            // Everything unacknowledged comes back, once, in order. Within a
            // run acknowledged batches never do; acknowledgements are not
            // kept across a restart, so after one an acknowledged batch may
            // come back (the collector deduplicates by record id).
            s.rewind();
            let got = ids(&mut s);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {got:?}");
            if restarted {
                let missing: Vec<_> = model.iter().filter(|m| !got.contains(m)).collect();
                assert!(missing.is_empty(), "seed {seed}: lost {missing:?}");
            } else {
                assert_eq!(got, model, "seed {seed}");
            }
        }
    }
}
