//! One shutdown signal for the whole agent: SIGTERM or SIGINT flips a watch
//! channel that every task holds a receiver of.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The sending half, kept by `main`.
pub fn channel() -> (watch::Sender<bool>, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (tx, Shutdown(rx))
}

/// Waits for SIGTERM or SIGINT, then calls `on_stop` (at once, before any
/// task reacts) and triggers `tx`.
pub async fn on_signal(
    tx: watch::Sender<bool>,
    on_stop: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    on_stop();
    let _ = tx.send(true);
    Ok(())
}

/// A task's view of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// True once shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown starts (at once if it already has, or if the
    /// sender is gone). Cancel-safe.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
