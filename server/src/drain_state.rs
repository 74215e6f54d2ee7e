//! Whether the server is draining for a graceful shutdown, and until when: the state the
//! accept loop, the connection writers and [`Server::shutdown_gracefully`] share. Kept
//! apart from the shutdown procedure (`drain.rs`) so the shared state does not depend on
//! the server handle.
//!
//! [`Server::shutdown_gracefully`]: crate::Server::shutdown_gracefully

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The drain state the server's tasks share.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// Cancelled when draining starts, to wake idle writers.
    pub started: CancellationToken,
    /// Set when draining starts: what writers check after every batch (an atomic load,
    /// where the token's check takes a lock).
    flag: AtomicBool,
    /// Set before `started` is cancelled: when every connection must be closed.
    pub deadline: OnceLock<Instant>,
}

impl Drain {
    /// Whether draining has started.
    pub fn is_started(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Starts draining, with `deadline`.
    pub fn start(&self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        self.flag.store(true, Ordering::Release);
        self.started.cancel();
    }

    /// The deadline (far in the future if draining has not started).
    pub fn deadline(&self) -> Instant {
        self.deadline
            .get()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))
    }
}
