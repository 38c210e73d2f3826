//! Ctrl-C as a parameter: the first request stops new tenants from starting and lets the ones
//! in flight finish; the second aborts at once (open transactions roll back with their sessions).

use tokio::sync::watch;

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const ABORTING: u8 = 2;

/// The side that raises shutdown levels (the signal handler, or a test).
#[derive(Clone)]
pub struct ShutdownTrigger(watch::Sender<u8>);

/// The side the executor watches.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<u8>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(RUNNING);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

impl ShutdownTrigger {
    /// Raise the level by one: running -> stopping -> aborting.
    pub fn escalate(&self) {
        self.0
            .send_modify(|level| *level = (*level + 1).min(ABORTING));
    }
}

impl Shutdown {
    /// A shutdown that never fires (library callers without signals).
    pub fn never() -> Shutdown {
        let (sender, receiver) = watch::channel(RUNNING);
        // Keep the sender alive forever so `changed()` never errors and never fires.
        std::mem::forget(sender);
        Shutdown(receiver)
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow() >= STOPPING
    }

    pub fn is_aborting(&self) -> bool {
        *self.0.borrow() >= ABORTING
    }

    /// Resolves once stopping (or aborting) was requested.
    pub async fn stopping(&self) {
        let mut receiver = self.0.clone();
        let _ = receiver.wait_for(|level| *level >= STOPPING).await;
    }

    /// Resolves once aborting was requested.
    pub async fn aborting(&self) {
        let mut receiver = self.0.clone();
        let _ = receiver.wait_for(|level| *level >= ABORTING).await;
    }
}

/// Escalate `trigger` on every SIGINT / SIGTERM until the process ends.
pub fn install_signal_handlers(trigger: ShutdownTrigger) {
    on_each_signal(move || trigger.escalate());
}

/// Call `on_signal` on every SIGINT / SIGTERM / SIGHUP until the process ends. Listening also
/// replaces the default "die at once", so callers get to clean up.
pub fn on_each_signal(mut on_signal: impl FnMut() + Send + 'static) {
    tokio::spawn(async move {
        let mut signals = TerminationSignals::new();
        while signals.recv().await {
            on_signal();
        }
    });
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP. A closed terminal or a dropped SSH session sends
/// SIGHUP, whose default would kill the process and orphan the PostgreSQL server a local fleet
/// started (and its data in /dev/shm): it must clean up like Ctrl-C.
pub struct TerminationSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl TerminationSignals {
    /// Start listening (from now on these signals no longer kill the process by default).
    pub fn new() -> TerminationSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            TerminationSignals {
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        TerminationSignals {}
    }

    /// Wait for the next one; false when signals cannot be listened to at all.
    pub async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                result = tokio::signal::ctrl_c() => result.is_ok(),
                () = next(&mut self.terminate) => true,
                () = next(&mut self.hangup) => true,
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.is_ok()
    }
}

impl Default for TerminationSignals {
    fn default() -> Self {
        Self::new()
    }
}
