//! The one shutdown signal: SIGTERM or SIGINT fires it once, and every
//! server and agent stream holds a [`Shutdown`] to notice it and wind down.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Fires the shutdown signal.
pub struct Trigger(watch::Sender<bool>);

/// Notices the shutdown signal. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, not yet fired, shutdown signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once the signal has fired (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Waits for SIGTERM or SIGINT and returns its name.
pub async fn os_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_signal() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        let mut b = shutdown;
        let waiter = tokio::spawn(async move { a.wait().await });
        trigger.fire();
        waiter.await.unwrap();
        b.wait().await;
    }
}
