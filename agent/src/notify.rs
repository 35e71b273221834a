//! systemd's notification protocol (`sd_notify`) without libsystemd: one
//! datagram per state change to the Unix socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` in the abstract namespace). `READY=1` once the
//! extension socket listens, `WATCHDOG=1` every half of `$WATCHDOG_USEC`
//! while the runtime is alive, `STOPPING=1` at shutdown. Without
//! `$NOTIFY_SOCKET` every call does nothing. Failures are logged, never fatal.

use std::env;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

use crate::shutdown::Shutdown;

/// Where systemd listens, if it does.
#[derive(Debug, Clone)]
pub struct Notifier {
    addr: Option<String>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        Notifier {
            addr: env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()),
        }
    }

    /// Sends `state` (e.g. `"READY=1"`); a no-op without `$NOTIFY_SOCKET`.
    pub fn notify(&self, state: &str) {
        let Some(addr) = &self.addr else {
            return;
        };
        if let Err(error) = send(addr, state) {
            warn!(%error, socket = %addr, state, "cannot notify systemd");
        }
    }

    /// The watchdog period asked for by systemd: `$WATCHDOG_USEC`, when
    /// `$WATCHDOG_PID` is unset or names this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.addr.as_ref()?;
        if let Ok(pid) = env::var("WATCHDOG_PID") {
            if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        let usec: u64 = env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec))
    }

    /// Pings the watchdog at half its period until shutdown. Runs on the
    /// runtime, so a wedged runtime stops the pings and systemd restarts us.
    pub async fn watchdog(self, period: Duration, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        debug!(
            period_ms = period.as_millis() as u64,
            "pinging the systemd watchdog"
        );
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => self.notify("WATCHDOG=1"),
            }
        }
    }
}

fn send(addr: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    // Never block the runtime on a busy manager: a full queue loses one
    // notification (the next watchdog ping comes soon), not the agent.
    sock.set_nonblocking(true)?;
    let target = if let Some(name) = addr.strip_prefix('@') {
        abstract_addr(name.as_bytes())?
    } else {
        SocketAddr::from_pathname(addr)?
    };
    sock.send_to_addr(state.as_bytes(), &target)?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets are Linux-only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket_and_is_a_no_op_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            addr: Some(path.display().to_string()),
        };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        Notifier { addr: None }.notify("READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sonde-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier {
            addr: Some(format!("@{name}")),
        };
        n.notify("WATCHDOG=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
