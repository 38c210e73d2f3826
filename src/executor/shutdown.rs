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

/// Call `on_signal` on every SIGINT / SIGTERM until the process ends. Listening also replaces
/// the default "die at once", so callers get to clean up.
pub fn on_each_signal(mut on_signal: impl FnMut() + Send + 'static) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            {
                let terminated = async {
                    match terminate.as_mut() {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    result = tokio::signal::ctrl_c() => { if result.is_err() { return; } }
                    () = terminated => {}
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            on_signal();
        }
    });
}
