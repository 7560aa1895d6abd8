//! Telling systemd how the coordinator is doing, for a `Type=notify` unit (see `deploy/`):
//! ready once recovery has finished (so `systemctl start` returns when the coordinator
//! answers), a watchdog ping while the runtime runs (a stuck process is restarted), stopping
//! at shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn notify(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

/// Recovery is reading the log back.
pub fn recovering() {
    notify(&[NotifyState::Status("recovering: reading the log back")]);
}

/// Recovery has finished: requests are served.
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("ready")]);
}

/// The coordinator is shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings systemd's watchdog at half its interval until `shutdown`: pings stop when the
/// runtime does not get to run this task, and systemd then restarts the process.
pub async fn watchdog(every: Duration, shutdown: CancellationToken) {
    // A zero period would make `interval` panic.
    let mut tick = tokio::time::interval((every / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            () = shutdown.cancelled() => return,
        }
    }
}
