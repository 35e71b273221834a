//! The extension socket: a SOCK_SEQPACKET Unix socket that every php-fpm
//! worker connects to once and then sends one frame per finished request
//! (and in-flight updates). This module owns the socket file — creating it,
//! refusing to clobber anything that is not a stale socket of ours, setting
//! its group and mode, removing it on shutdown — and turns frames (from the
//! socket and from the record ring alike) into records on the queue. A
//! record is checked (`wire`) and forwarded as the bytes it came in, never
//! decoded whole. It must never block or crash on what a peer sends: bad
//! input is counted, logged at a limited rate, and skipped.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as nixsock, AddressFamily, SockFlag, SockType, UnixAddr};
use prost::bytes::Bytes;
use prost::Message;
use sonde_capture::raw::{Encoder, RawError};
use sonde_core::frame::{self, FrameError, MAX_FRAME_BYTES};
use sonde_proto::v1::{ext_message, ExtMessage, RequestRecord};
use thiserror::Error;
use tokio::task::JoinSet;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};
use tracing::{debug, info, warn};

use super::wire::{self, Ext, RecordBytes, RecordFields, WireError};
use crate::buffer::queue::RecordQueue;
use crate::buffer::record::{host_field, Record};
use crate::counters::{add, Counters};
use crate::identity::Seen;
use crate::live::LiveTable;
use crate::ratelimit::RateLimit;
use crate::shutdown::Shutdown;

/// How often a malformed-message warning may repeat.
const MALFORMED_LOG_PERIOD: Duration = Duration::from_secs(10);
/// At shutdown, how long a connection keeps reading what is already queued in
/// its socket before giving up.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(200);
/// Receive buffers kept for reuse (one is in use per concurrent receive, not
/// per connection, so hundreds of idle workers cost no buffer memory).
const SPARE_BUFFERS: usize = 8;
/// (app, PHP version, extension version) combinations remembered as already
/// noted for registration; beyond it every record is noted (slower, same
/// result).
const SEEN_CACHE: usize = 1024;

/// Why the socket could not be set up.
#[derive(Debug, Error)]
pub enum SocketError {
    #[error("cannot create the socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "{path} exists and is not a socket; refusing to replace it (remove it or change `socket`)"
    )]
    NotASocket { path: PathBuf },
    #[error("{path} is in use: something (another sonde-agent?) is listening on it")]
    InUse { path: PathBuf },
    #[error("cannot check the existing socket {path}: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set mode {mode:o} on {path}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
}

/// Why one message from the extension was refused.
#[derive(Debug, Error)]
pub enum MessageError {
    #[error("message larger than {MAX_FRAME_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("undecodable ExtMessage: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("undecodable ExtMessage: {0}")]
    Wire(#[from] WireError),
    #[error("ExtMessage without a payload")]
    Empty,
    #[error("record or in-flight update without a request id")]
    NoId,
    #[error(transparent)]
    Raw(#[from] RawError),
    #[error("raw record could not be encoded (internal error; the record is skipped)")]
    EncodePanic,
}

/// What is at the socket path before we bind.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A socket file nobody listens on (a crashed agent's leftover).
    Stale,
}

/// Makes `path` free for a new socket: nothing there, or a stale socket
/// (removed). Refuses a live socket and anything that is not a socket.
fn clear_path(path: &Path) -> Result<Existing, SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(source) => {
            return Err(SocketError::Probe {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket { path: path.into() });
    }
    if answers(path)? {
        return Err(SocketError::InUse { path: path.into() });
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::RemoveStale {
                path: path.into(),
                source,
            })
        }
    }
    Ok(Existing::Stale)
}

/// Whether something accepts connections on the socket at `path`.
fn answers(path: &Path) -> Result<bool, SocketError> {
    let probe_err = |e: Errno| SocketError::Probe {
        path: path.into(),
        source: io::Error::from(e),
    };
    let fd = nixsock::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(probe_err)?;
    let addr = UnixAddr::new(path).map_err(probe_err)?;
    match nixsock::connect(fd.as_raw_fd(), &addr) {
        // Connected, or a listener with a full backlog: alive.
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(true),
        // A live socket of another type (e.g. SOCK_STREAM): not ours, alive.
        Err(Errno::EPROTOTYPE) => Ok(true),
        Err(Errno::ECONNREFUSED) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(probe_err(e)),
    }
}

/// The socket file we created; removed when dropped, unless something else
/// has replaced it meanwhile.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev_ino: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Ok(meta) = fs::symlink_metadata(&self.path) else {
            return;
        };
        if self.dev_ino == Some((meta.dev(), meta.ino())) {
            match fs::remove_file(&self.path) {
                Ok(()) => debug!(path = %self.path.display(), "removed the socket"),
                Err(error) => {
                    warn!(%error, path = %self.path.display(), "cannot remove the socket")
                }
            }
        }
    }
}

/// The bound, listening extension socket.
#[derive(Debug)]
pub struct SocketSource {
    listener: UnixSeqpacketListener,
    file: SocketFile,
}

impl SocketSource {
    /// Creates the socket at `path` (see the module comment for the rules),
    /// gives it to `group` (warns and keeps ours if impossible) and sets
    /// `mode`. Must run inside a tokio runtime.
    pub fn bind(path: &Path, group: &str, mode: u32) -> Result<SocketSource, SocketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| SocketError::CreateDir {
                    path: dir.into(),
                    source,
                })?;
        }
        if clear_path(path)? == Existing::Stale {
            info!(path = %path.display(), "removed a stale socket left by a previous agent");
        }
        let listener = UnixSeqpacketListener::bind_with_backlog(path, 1024).map_err(|source| {
            SocketError::Bind {
                path: path.into(),
                source,
            }
        })?;
        let file = SocketFile {
            path: path.into(),
            dev_ino: fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino())),
        };
        set_group(path, group);
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
            SocketError::Chmod {
                path: path.into(),
                mode,
                source,
            }
        })?;
        info!(path = %path.display(), mode = format_args!("{mode:o}"), "listening for the PHP extension");
        Ok(SocketSource { listener, file })
    }

    /// Accepts connections until shutdown, then removes the socket file and
    /// lets every connection read what is already queued before it ends.
    pub async fn run(self, ctx: Arc<Context>, mut shutdown: Shutdown) {
        let SocketSource { mut listener, file } = self;
        let mut conns = JoinSet::new();
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                accepted = listener.accept() => match accepted {
                    Ok(sock) => {
                        next_id += 1;
                        conns.spawn(connection(sock, next_id, ctx.clone(), shutdown.clone()));
                    }
                    Err(error) => {
                        // EMFILE and the like: back off instead of spinning.
                        warn!(%error, "cannot accept a connection on the extension socket");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Stop accepting first, so workers see the agent gone and count drops.
        drop(listener);
        drop(file);
        while conns.join_next().await.is_some() {}
        debug!("extension socket closed");
    }
}

pub(crate) fn set_group(path: &Path, group: &str) {
    if group.is_empty() {
        return;
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => {
            if let Err(error) = nix::unistd::chown(path, None, Some(g.gid)) {
                warn!(%error, group, path = %path.display(),
                    "cannot give the socket to its group; it keeps the agent's group");
            }
        }
        Ok(None) => warn!(group, path = %path.display(),
            "socket_group does not exist; the socket keeps the agent's group"),
        Err(error) => {
            warn!(%error, group, "cannot look up socket_group; the socket keeps the agent's group")
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct Context {
    pub queue: RecordQueue,
    pub live: Arc<LiveTable>,
    pub seen: Arc<Seen>,
    pub counters: Arc<Counters>,
    /// The agent's host name as an encoded `RequestRecord.host` field,
    /// appended to records that arrive without a host.
    host_suffix: Bytes,
    /// Hashes of the (app, versions) already given to `seen`.
    seen_cache: Mutex<HashSet<u64>>,
    malformed_log: RateLimit,
    buffers: Mutex<Vec<Box<[u8]>>>,
    /// Turns the extension's raw frames into records (normalising SQL,
    /// naming endpoints and instances): one per agent, its caches shared
    /// by every worker. Held only while one frame is encoded.
    encoder: Mutex<Encoder>,
}

impl Context {
    pub fn new(
        queue: RecordQueue,
        live: Arc<LiveTable>,
        seen: Arc<Seen>,
        counters: Arc<Counters>,
        hostname: String,
    ) -> Self {
        Context {
            queue,
            live,
            seen,
            counters,
            host_suffix: host_field(&hostname),
            seen_cache: Mutex::new(HashSet::new()),
            malformed_log: RateLimit::new(MALFORMED_LOG_PERIOD),
            buffers: Mutex::new(Vec::new()),
            encoder: Mutex::new(Encoder::new()),
        }
    }

    fn take_buffer(&self) -> Box<[u8]> {
        let spare = self.buffers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // One byte more than the largest frame, so a larger one shows as truncated.
        spare.unwrap_or_else(|| vec![0u8; MAX_FRAME_BYTES + 1].into_boxed_slice())
    }

    fn give_back(&self, buf: Box<[u8]>) {
        let mut spare = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }

    /// Handles one socket message from connection `conn` (a record is
    /// copied out of `msg`).
    pub fn handle(&self, msg: &[u8], truncated: bool, conn: u64, peer_pid: Option<i32>) {
        self.handle_in(msg, None, 0, truncated, conn, peer_pid);
    }

    /// Handles one message held in shared bytes (the ring, which holds it
    /// up to offset `ring_end`): a record is kept as a slice of them, not
    /// copied.
    pub fn handle_shared(&self, msg: &Bytes, ring_end: u64, conn: u64) {
        self.handle_in(msg, Some(msg), ring_end, false, conn, None);
    }

    fn handle_in(
        &self,
        msg: &[u8],
        owner: Option<&Bytes>,
        ring_end: u64,
        truncated: bool,
        conn: u64,
        peer_pid: Option<i32>,
    ) {
        add(&self.counters.messages_received, 1);
        add(&self.counters.bytes_received, msg.len() as u64);
        if let Err(error) = self.try_handle(msg, owner, ring_end, truncated, conn) {
            add(&self.counters.records_malformed, 1);
            if let Some(silenced) = self.malformed_log.check(Instant::now()) {
                warn!(%error, peer_pid, bytes = msg.len(), since_last_warning = silenced + 1,
                    "malformed message on the extension socket (ignored)");
            }
        }
    }

    fn try_handle(
        &self,
        msg: &[u8],
        owner: Option<&Bytes>,
        ring_end: u64,
        truncated: bool,
        conn: u64,
    ) -> Result<(), MessageError> {
        if truncated {
            return Err(MessageError::TooLarge);
        }
        let payload = match frame::decode(msg)? {
            (frame::Kind::ExtMessage, payload) => payload,
            (frame::Kind::Raw, payload) => {
                // Encoded here, from a frame whose every field was checked
                // while reading it: the record's bytes need no walk, and
                // its fields come from what was read.
                let mut enc = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
                // A bug in encoding must not take the agent down: the ring
                // would hand the same record to the next agent, again and
                // again. Such a record is skipped as malformed, and the
                // encoder (its caches possibly half-updated) starts afresh.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    enc.encode_record(payload, |body, c| {
                        // A raw frame always carries its ids.
                        let id: &[u8] = c.ids.map_or(&[], |i| &i.record);
                        let fields = RecordFields {
                            id: Some(id),
                            app: Some(c.app),
                            php_version: Some(c.php_version),
                            ext_version: Some(c.ext_version),
                            host: None,
                            dropped_records: Some(c.dropped_records),
                        };
                        self.record(Bytes::copy_from_slice(body), id, &fields, ring_end);
                    })
                }));
                return match result {
                    Ok(done) => done.map_err(MessageError::from),
                    Err(_) => {
                        *enc = Encoder::new();
                        Err(MessageError::EncodePanic)
                    }
                };
            }
        };
        self.try_handle_ext(payload, owner, ring_end, conn)
    }

    /// Handles the payload of an `ExtMessage` frame (`owner`, when given,
    /// holds `payload`'s bytes).
    fn try_handle_ext(
        &self,
        payload: &[u8],
        owner: Option<&Bytes>,
        ring_end: u64,
        conn: u64,
    ) -> Result<(), MessageError> {
        match wire::check_ext(payload)? {
            Ext::Record(bytes, fields) => {
                let id = fields.id.unwrap_or_default();
                if id.is_empty() {
                    return Err(MessageError::NoId);
                }
                let body = match (bytes, owner) {
                    // `msg` is `owner`'s bytes, so the record is inside them.
                    (RecordBytes::One(b), Some(owner)) => owner.slice_ref(b),
                    (RecordBytes::One(b), None) => Bytes::copy_from_slice(b),
                    (RecordBytes::Merged(v), _) => v.into(),
                };
                self.record(body, id, &fields, ring_end);
                Ok(())
            }
            // Rare (the socket only): decoded whole.
            Ext::Inflight => match ExtMessage::decode(payload)?.msg {
                Some(ext_message::Msg::Inflight(u)) if u.request_id.is_empty() => {
                    Err(MessageError::NoId)
                }
                Some(ext_message::Msg::Inflight(u)) => {
                    self.live.update(conn, u);
                    Ok(())
                }
                _ => Err(MessageError::Empty),
            },
            Ext::Empty => Err(MessageError::Empty),
        }
    }

    fn record(&self, body: Bytes, id: &[u8], f: &RecordFields<'_>, ring_end: u64) {
        add(&self.counters.records_received, 1);
        if let Some(n) = f.dropped_records {
            add(&self.counters.ext_records_dropped, u64::from(n));
        }
        let suffix = match f.host {
            Some(h) if !h.is_empty() => Bytes::new(),
            _ => self.host_suffix.clone(),
        };
        self.note_seen(f);
        self.live.finish(id);
        self.queue
            .push(Record::new(body, suffix).with_ring_end(ring_end));
    }

    /// Tells `seen` about the record's app and versions, unless this
    /// combination was told already.
    fn note_seen(&self, f: &RecordFields<'_>) {
        let (app, php, ext) = (
            f.app.unwrap_or(""),
            f.php_version.unwrap_or(""),
            f.ext_version.unwrap_or(""),
        );
        let mut h = DefaultHasher::new();
        (app, php, ext).hash(&mut h);
        let key = h.finish();
        {
            let mut cache = self.seen_cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.contains(&key) {
                return;
            }
            if cache.len() < SEEN_CACHE {
                cache.insert(key);
            }
        }
        self.seen.note(&RequestRecord {
            app: app.to_owned(),
            php_version: php.to_owned(),
            ext_version: ext.to_owned(),
            ..Default::default()
        });
    }
}

/// One PHP worker's connection: read frames until it closes or shutdown.
async fn connection(sock: UnixSeqpacket, id: u64, ctx: Arc<Context>, mut shutdown: Shutdown) {
    let peer_pid = sock.peer_cred().ok().and_then(|c| c.pid());
    debug!(conn = id, peer_pid, "extension connected");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => {
                drain(&sock, id, &ctx, peer_pid).await;
                break;
            }
            open = receive(&sock, id, &ctx, peer_pid) => if !open { break },
        }
    }
    ctx.live.drop_connection(id);
    debug!(conn = id, peer_pid, "extension disconnected");
}

/// Waits for one message and handles it; false when the connection is over.
/// Cancel-safe: it only waits for readiness, and takes a buffer just for the
/// non-blocking read, so hundreds of idle workers hold no buffer memory.
async fn receive(sock: &UnixSeqpacket, id: u64, ctx: &Context, peer_pid: Option<i32>) -> bool {
    loop {
        if let Err(error) = sock.as_async_fd().readable().await {
            debug!(%error, conn = id, "extension socket error");
            return false;
        }
        let mut buf = ctx.take_buffer();
        // One poll: a stale readiness flag yields Pending (and is cleared).
        let polled = std::future::poll_fn(|cx| Poll::Ready(sock.poll_recv(cx, &mut buf))).await;
        let open = match polled {
            Poll::Pending => {
                ctx.give_back(buf);
                continue;
            }
            // Zero bytes: the peer closed (the extension never sends empty messages).
            Poll::Ready(Ok(info)) if info.bytes_read() == 0 => false,
            Poll::Ready(Ok(info)) => {
                ctx.handle(&buf[..info.bytes_read()], info.truncated(), id, peer_pid);
                true
            }
            Poll::Ready(Err(error)) => {
                debug!(%error, conn = id, "extension socket error");
                false
            }
        };
        ctx.give_back(buf);
        return open;
    }
}

/// At shutdown: take what the worker already sent, briefly.
async fn drain(sock: &UnixSeqpacket, id: u64, ctx: &Context, peer_pid: Option<i32>) {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while let Ok(true) = tokio::time::timeout_at(deadline, receive(sock, id, ctx, peer_pid)).await {
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::queue;
    use sonde_proto::v1::{DropCounts, InflightUpdate};

    #[test]
    fn a_regular_file_at_the_path_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            clear_path(&path),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A listener that went away leaves its file behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let src = SocketSource::bind(&path, "", 0o660).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        UnixSeqpacket::connect(&path)
            .await
            .expect("the new socket answers");
        drop(src);
        assert!(!path.exists(), "removed when the source is dropped");
    }

    #[tokio::test]
    async fn a_live_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let first = SocketSource::bind(&path, "no-such-group-sonde-test", 0o600).unwrap();
        assert!(matches!(
            SocketSource::bind(&path, "", 0o660),
            Err(SocketError::InUse { .. })
        ));
        // A live stream socket (someone else's) is refused too.
        drop(first);
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(clear_path(&path), Err(SocketError::InUse { .. })));
    }

    #[test]
    fn the_parent_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/agent.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _src = rt.block_on(async { SocketSource::bind(&path, "", 0o660).unwrap() });
        let mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755 & !current_umask());
    }

    fn current_umask() -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("probe");
        fs::DirBuilder::new().mode(0o777).create(&p).unwrap();
        !fs::metadata(&p).unwrap().permissions().mode() & 0o777
    }

    fn frame_of(msg: ext_message::Msg) -> Vec<u8> {
        let mut buf = Vec::new();
        frame::start(&mut buf, frame::Kind::ExtMessage);
        ExtMessage { msg: Some(msg) }.encode(&mut buf).unwrap();
        buf
    }

    /// Mutation fuzzing from valid records (deterministic): flipped,
    /// truncated, extended and spliced frames never panic the checker, and
    /// every message is accounted for as a record, an in-flight update or
    /// malformed — exactly as decoding it whole with prost says, and each
    /// record forwarded decodes to what prost decodes (host filled in).
    #[test]
    fn mutated_valid_frames_are_all_accounted_and_never_panic() {
        use crate::counters::get;
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = queue::bounded(1_000_000, 1 << 34, counters.clone());
        let live = Arc::new(LiveTable::default());
        let ctx = Context::new(q, live, Arc::default(), counters.clone(), "h".into());
        let span = sonde_proto::v1::Span {
            kind: 1,
            statement: "SELECT * FROM t WHERE id = ?".into(),
            db: "mysql://db:3306/app".into(),
            rows: 3,
            ..Default::default()
        };
        let base = frame_of(ext_message::Msg::Record(RequestRecord {
            id: vec![9; 16],
            app: "shop".into(),
            url: "/photos/1?lang=ko".into(),
            method: "GET".into(),
            status: 200,
            spans: vec![span; 6],
            ..Default::default()
        }));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let n = 50_000u64;
        let mut inflight_like = 0u64;
        for _ in 0..n {
            let mut f = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % f.len();
                match next() % 5 {
                    0 => f[at] ^= 1 << (next() % 8),
                    1 => f.truncate(at),
                    2 => f.insert(at, next() as u8),
                    3 => {
                        let end = (at + (next() as usize % 16)).min(f.len());
                        let piece = f[at..end].to_vec();
                        f.splice(at..at, piece);
                    }
                    _ => f[at] = next() as u8,
                }
                if f.is_empty() {
                    break;
                }
            }
            // What prost makes of it. A mutation can turn a record into
            // another valid message kind.
            let mut want_record = None;
            if let Ok((frame::Kind::ExtMessage, payload)) = frame::decode(&f) {
                match ExtMessage::decode(payload).map(|m| m.msg) {
                    Ok(Some(ext_message::Msg::Inflight(u))) if !u.request_id.is_empty() => {
                        inflight_like += 1;
                    }
                    Ok(Some(ext_message::Msg::Record(mut r))) if !r.id.is_empty() => {
                        if r.host.is_empty() {
                            r.host = "h".into();
                        }
                        want_record = Some(r);
                    }
                    _ => {}
                }
            }
            let before = get(&counters.records_received);
            if next() % 2 == 0 {
                ctx.handle(&f, false, 1, None);
            } else {
                ctx.handle_shared(&Bytes::from(f.clone()), 0, 1);
            }
            let took = get(&counters.records_received) - before;
            assert_eq!(took, u64::from(want_record.is_some()), "{f:x?}");
            if let Some(want) = want_record {
                assert_eq!(rx.try_recv().unwrap().decode(), want, "{f:x?}");
            }
        }
        let received = get(&counters.records_received);
        let malformed = get(&counters.records_malformed);
        assert_eq!(get(&counters.messages_received), n);
        assert_eq!(received + malformed + inflight_like, n);
        assert!(
            received > 0 && malformed > 0,
            "{received} records, {malformed} malformed"
        );
    }

    /// The extension's raw frames: each becomes the record the extension
    /// would have encoded itself (host added), its drop count is counted,
    /// and a cut or corrupted one is counted as malformed, never a panic.
    #[test]
    fn raw_frames_become_records_and_bad_ones_are_counted() {
        use crate::counters::get;
        use sonde_capture::record::{Builder, Captured, Spans};
        use sonde_capture::spans::{Library, RawSpan, SpanBuf, StatementCache};
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = queue::bounded(1000, 1 << 24, counters.clone());
        let ctx = Context::new(
            q,
            Arc::default(),
            Arc::default(),
            counters.clone(),
            "h".into(),
        );
        let mut b = Builder::new([5, 6]);
        let mut buf = SpanBuf::new(10);
        let text = buf.text(b"SELECT * FROM photos WHERE id = 17");
        let db = buf.db(1, || Some((&b"mysql"[..], &b"host=db;dbname=app"[..])));
        buf.push(RawSpan {
            kind: sonde_proto::v1::SpanKind::Sql as i32,
            library: Library::PDO,
            start_ns: 10,
            duration_ns: 500,
            text,
            db,
            rows: 1,
            calls: 1,
            ..Default::default()
        });
        let ids = b.start(None, None);
        let c = Captured {
            app: "shop",
            method: "GET",
            uri: "/photos/17?token=s",
            status: 200,
            ids: Some(&ids),
            dropped_records: 4,
            ext_version: "1.2.3",
            ..Default::default()
        };
        let mut raw = Vec::new();
        sonde_capture::raw::write(&mut raw, &c, "", Some((&buf, 1.0)));
        let direct = b
            .frame(
                &c,
                Some(Spans {
                    buf: &mut buf,
                    ns_per_tick: 1.0,
                    cache: &mut StatementCache::default(),
                }),
            )
            .to_vec();
        let (_, payload) = frame::decode(&direct).unwrap();
        let Some(ext_message::Msg::Record(mut want)) = ExtMessage::decode(payload).unwrap().msg
        else {
            panic!("not a record")
        };
        want.host = "h".into();
        assert_eq!(want.spans[0].statement, "SELECT * FROM photos WHERE id = ?");

        ctx.handle(&raw, false, 1, None);
        ctx.handle_shared(&Bytes::from(raw.clone()), 0, 1);
        for _ in 0..2 {
            assert_eq!(rx.try_recv().unwrap().decode(), want);
        }
        assert_eq!(get(&counters.records_received), 2);
        assert_eq!(get(&counters.ext_records_dropped), 8);

        // Cut anywhere: malformed. A string that is not UTF-8: malformed.
        for n in 0..raw.len() {
            ctx.handle(&raw[..n], false, 1, None);
        }
        let at = raw
            .windows(4)
            .position(|w| w == b"shop")
            .expect("the app name is in the frame");
        let mut bad = raw.clone();
        bad[at] = 0xff;
        ctx.handle(&bad, false, 1, None);
        assert_eq!(get(&counters.records_received), 2);
        assert_eq!(get(&counters.records_malformed), raw.len() as u64 + 1);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn frames_become_records_and_garbage_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = queue::bounded(100, 1 << 20, counters.clone());
        let live = Arc::new(LiveTable::default());
        let ctx = Arc::new(Context::new(
            q,
            live.clone(),
            Arc::default(),
            counters.clone(),
            "web-1".into(),
        ));
        let (stop, shutdown) = crate::shutdown::channel();
        let src = SocketSource::bind(&path, "", 0o660).unwrap();
        let task = tokio::spawn(src.run(ctx, shutdown));

        let client = UnixSeqpacket::connect(&path).await.unwrap();
        let record = RequestRecord {
            id: vec![7; 16],
            app: "shop".into(),
            dropped: Some(DropCounts {
                records: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        client
            .send(&frame_of(ext_message::Msg::Inflight(InflightUpdate {
                state: 1,
                request_id: vec![8; 16],
                ..Default::default()
            })))
            .await
            .unwrap();
        for garbage in [
            &b"garbage"[..],
            b"SN\x01\x01\xff\xff\xff",
            b"SN\x01\x01",
            b"SN\x02\x01",
        ] {
            client.send(garbage).await.unwrap();
        }
        client
            .send(&frame_of(ext_message::Msg::Record(record.clone())))
            .await
            .unwrap();
        let got = rx.recv().await.unwrap().decode();
        assert_eq!(got.id, record.id);
        assert_eq!(got.host, "web-1");
        assert_eq!(
            RequestRecord {
                host: String::new(),
                ..got
            },
            record,
            "forwarded as sent, but for the host"
        );
        let c = counters.snapshot();
        assert_eq!(
            (
                c.records_received,
                c.records_malformed,
                c.ext_records_dropped
            ),
            (1, 4, 3)
        );
        assert_eq!(live.snapshot(0).len(), 1);
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            live.snapshot(0).is_empty(),
            "a closed connection's requests are gone"
        );

        // Shutdown ends connections whose worker stays connected, after
        // taking what it already sent.
        let idle = UnixSeqpacket::connect(&path).await.unwrap();
        let busy = UnixSeqpacket::connect(&path).await.unwrap();
        busy.send(&frame_of(ext_message::Msg::Record(record.clone())))
            .await
            .unwrap();
        rx.recv().await.unwrap();
        busy.send(&frame_of(ext_message::Msg::Record(record)))
            .await
            .unwrap();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the source stops promptly")
            .unwrap();
        assert!(!path.exists());
        assert!(rx.recv().await.is_some(), "the last record was drained");
        assert!(rx.recv().await.is_none(), "the source released the queue");
        drop((idle, busy));
    }
}
