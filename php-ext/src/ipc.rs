//! The agent socket, seen from one PHP worker process.
//!
//! One SOCK_SEQPACKET connection per process, opened lazily on the first
//! record (never in MINIT: php-fpm forks after it) and reopened when the pid
//! changes (fork). Every operation is non-blocking: a full socket or a
//! missing agent drops the record and counts it; a failed connect is retried
//! at most once per `RETRY_AFTER`, so an absent agent costs one clock read
//! per request. SEQPACKET, unlike datagram sockets, is not limited by
//! `net.unix.max_dgram_qlen` (10 by default), only by the send buffer.

use std::ffi::CStr;
use std::io;
use std::time::{Duration, Instant};

/// How long to wait before trying to connect again after a failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// No agent listening (or no permission); dropped.
    NoAgent,
    /// The agent is not reading fast enough; dropped.
    Full,
    /// The record is larger than the socket accepts; dropped.
    TooLarge,
}

/// The per-process connection to the agent.
#[derive(Debug)]
pub struct AgentSocket {
    fd: libc::c_int,
    owner_pid: u32,
    retry_at: Option<Instant>,
    /// Records dropped since the last one that was sent.
    pub dropped_since_sent: u32,
    /// Totals for this process (shown by phpinfo()).
    pub sent_total: u64,
    pub dropped_total: u64,
}

impl Default for AgentSocket {
    fn default() -> Self {
        AgentSocket {
            fd: -1,
            owner_pid: 0,
            retry_at: None,
            dropped_since_sent: 0,
            sent_total: 0,
            dropped_total: 0,
        }
    }
}

impl AgentSocket {
    /// Sends one frame to the agent at `path`; never blocks.
    pub fn send(&mut self, path: &CStr, frame: &[u8], pid: u32, now: Instant) -> Outcome {
        let outcome = self.try_send(path, frame, pid, now);
        match outcome {
            Outcome::Sent => {
                self.sent_total += 1;
                self.dropped_since_sent = 0;
            }
            _ => {
                self.dropped_total += 1;
                self.dropped_since_sent = self.dropped_since_sent.saturating_add(1);
            }
        }
        outcome
    }

    fn try_send(&mut self, path: &CStr, frame: &[u8], pid: u32, now: Instant) -> Outcome {
        if self.fd >= 0 && self.owner_pid != pid {
            // Forked: the connection belongs to the parent. Close our copy.
            self.close();
            self.retry_at = None;
        }
        if self.fd < 0 {
            if self.retry_at.is_some_and(|t| now < t) {
                return Outcome::NoAgent;
            }
            if self.connect(path, pid).is_err() {
                self.retry_at = Some(now + RETRY_AFTER);
                return Outcome::NoAgent;
            }
        }
        match self.write(frame) {
            Ok(()) => Outcome::Sent,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Outcome::Full,
                Some(libc::EMSGSIZE) => Outcome::TooLarge,
                _ => {
                    // The agent went away (restart): reconnect once and retry.
                    self.close();
                    if self.connect(path, pid).is_err() {
                        self.retry_at = Some(now + RETRY_AFTER);
                        return Outcome::NoAgent;
                    }
                    match self.write(frame) {
                        Ok(()) => Outcome::Sent,
                        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Outcome::TooLarge,
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Outcome::Full,
                        Err(_) => {
                            self.close();
                            self.retry_at = Some(now + RETRY_AFTER);
                            Outcome::NoAgent
                        }
                    }
                }
            },
        }
    }

    fn connect(&mut self, path: &CStr, pid: u32) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_un is a valid value (family set below).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let bytes = path.to_bytes();
        if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: plain socket(2) call; the returned fd is owned by `self`.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `addr` is a valid, initialised sockaddr_un and the length
        // passed is its size; the socket is non-blocking so connect(2) cannot
        // wait (a full backlog gives EAGAIN).
        let rc = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: `fd` was returned by socket(2) above and not yet closed.
            unsafe { libc::close(fd) };
            return Err(err);
        }
        self.fd = fd;
        self.owner_pid = pid;
        self.retry_at = None;
        Ok(())
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid slice for its length; MSG_DONTWAIT keeps
        // the call non-blocking and MSG_NOSIGNAL turns SIGPIPE into EPIPE, so
        // the application's signal handling is never disturbed.
        let n = unsafe {
            libc::send(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SEQPACKET sends are all or nothing.
        Ok(())
    }

    fn close(&mut self) {
        if self.fd >= 0 {
            // SAFETY: `fd` is our own open socket; it is forgotten right after.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
    }

    /// True while a connection is open.
    pub fn is_connected(&self) -> bool {
        self.fd >= 0
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    /// A SOCK_SEQPACKET listener for tests, with std only.
    fn listen(path: &std::path::Path, backlog: i32) -> libc::c_int {
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            assert!(fd >= 0);
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            assert_eq!(rc, 0);
            assert_eq!(libc::listen(fd, backlog), 0);
            fd
        }
    }

    fn recv_one(fd: libc::c_int) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0);
        buf.truncate(n as usize);
        buf
    }

    #[test]
    fn no_agent_drops_and_counts_then_waits_before_retrying() {
        let dir = tempfile_dir();
        let path = CString::new(dir.join("none.sock").as_os_str().as_bytes()).unwrap();
        let mut s = AgentSocket::default();
        let t0 = Instant::now();
        assert_eq!(s.send(&path, b"x", 1, t0), Outcome::NoAgent);
        assert_eq!(s.send(&path, b"x", 1, t0), Outcome::NoAgent);
        assert_eq!(s.dropped_since_sent, 2);
        assert_eq!(s.dropped_total, 2);
        assert!(!s.is_connected());
        // The second attempt did not even try: retry is scheduled later.
        assert!(s.retry_at.unwrap() > t0);
    }

    #[test]
    fn sends_whole_messages_and_reconnects_after_fork() {
        let dir = tempfile_dir();
        let p = dir.join("agent.sock");
        let lfd = listen(&p, 16);
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let mut s = AgentSocket::default();
        let now = Instant::now();
        assert_eq!(s.send(&path, b"hello", 10, now), Outcome::Sent);
        assert_eq!(s.send(&path, b"world!", 10, now), Outcome::Sent);
        let cfd = unsafe { libc::accept(lfd, std::ptr::null_mut(), std::ptr::null_mut()) };
        assert!(cfd >= 0);
        assert_eq!(recv_one(cfd), b"hello");
        assert_eq!(recv_one(cfd), b"world!");
        // A new pid (fork) must use a connection of its own.
        assert_eq!(s.send(&path, b"child", 11, now), Outcome::Sent);
        let cfd2 = unsafe { libc::accept(lfd, std::ptr::null_mut(), std::ptr::null_mut()) };
        assert!(cfd2 >= 0);
        assert_eq!(recv_one(cfd2), b"child");
        assert_eq!(s.sent_total, 3);
        unsafe {
            libc::close(cfd);
            libc::close(cfd2);
            libc::close(lfd);
        }
    }

    #[test]
    fn full_socket_drops_without_blocking() {
        let dir = tempfile_dir();
        let p = dir.join("slow.sock");
        let lfd = listen(&p, 16);
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let mut s = AgentSocket::default();
        let frame = vec![7u8; 32 * 1024];
        let now = Instant::now();
        let mut outcomes = Vec::new();
        // Nobody reads: the send buffer fills, then sends fail fast.
        for _ in 0..200 {
            outcomes.push(s.send(&path, &frame, 5, now));
        }
        assert_eq!(outcomes[0], Outcome::Sent);
        assert!(outcomes.contains(&Outcome::Full), "{outcomes:?}");
        assert!(s.dropped_total > 0);
        unsafe { libc::close(lfd) };
    }

    #[test]
    fn agent_restart_is_survived() {
        let dir = tempfile_dir();
        let p = dir.join("restart.sock");
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let lfd = listen(&p, 16);
        let mut s = AgentSocket::default();
        let now = Instant::now();
        assert_eq!(s.send(&path, b"one", 3, now), Outcome::Sent);
        let cfd = unsafe { libc::accept(lfd, std::ptr::null_mut(), std::ptr::null_mut()) };
        unsafe {
            libc::close(cfd);
            libc::close(lfd);
        }
        std::fs::remove_file(&p).unwrap();
        let lfd2 = listen(&p, 16);
        // The old connection is dead; the record still arrives on a new one.
        assert_eq!(s.send(&path, b"two", 3, now), Outcome::Sent);
        let cfd2 = unsafe { libc::accept(lfd2, std::ptr::null_mut(), std::ptr::null_mut()) };
        assert_eq!(recv_one(cfd2), b"two");
        unsafe {
            libc::close(cfd2);
            libc::close(lfd2);
        }
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sonde-ipc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
}
