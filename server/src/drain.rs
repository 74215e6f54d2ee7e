//! Graceful shutdown: stop accepting, let every client's queue empty, then close each
//! connection with `ServerShutdown` once the client has acknowledged everything sent.
//!
//! A QUIC close discards stream data not yet acknowledged (RFC 9000 section 10.2), so
//! closing at once loses whatever was still queued. Draining finishes each client's
//! main stream after its last queued frame instead; quinn's `SendStream::stopped`
//! resolves once the client has acknowledged every byte and the end of the stream, and
//! only then does the server close the connection. The client, seeing its main stream
//! end, waits for that close and reports its reason. Everything is bounded by one deadline:
//! past it, [`Server::shutdown_gracefully`] closes whatever is left at once.

use crate::server::Server;
use std::time::Duration;
use tokio::time::Instant;

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Clients connected when draining started.
    pub clients: usize,
    /// Clients still connected at the deadline, closed at once (what was queued for them
    /// may not have arrived).
    pub cut_off: usize,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl Server {
    /// Shuts the server down gracefully, within `deadline`:
    ///
    /// 1. stops accepting: new connections are refused (QUIC `CONNECTION_REFUSED`, RFC
    ///    9000 section 20.1);
    /// 2. lets each client's queue empty (frames queued until then, and anything still
    ///    added while it drains, are written in their usual order), finishes the client's
    ///    main stream, and once the client has acknowledged all of it closes the
    ///    connection with close code `ServerShutdown` and the text "server shutting
    ///    down": the client sees `Disconnected { ServerClosed { code: ServerShutdown, ..
    ///    } }` after every message queued for it;
    /// 3. at the deadline closes whatever is left with `ServerShutdown` at once, as
    ///    [`Server::shutdown`] does, and ends the event stream once it is drained.
    ///
    /// Group operations and sends keep working while it drains. Calling it again, or
    /// after [`Server::shutdown`], only waits for the first one's end. Returns when every
    /// connection is closed (or, past the deadline, after a further second for close
    /// frames to leave).
    pub async fn shutdown_gracefully(&self, deadline: Duration) -> DrainReport {
        let start = Instant::now();
        let drain = &self.shared.drain;
        let clients = self.stats().clients;
        drain.start(start + deadline);
        let until = drain.deadline();
        let shutdown = self.shared.shutdown.clone();
        // The connection tasks remove their links as they end, and say so.
        let all_closed = async {
            tokio::select! {
                _ = self.all_links_removed() => {}
                _ = shutdown.cancelled() => {}
            }
        };
        let cut_off = match tokio::time::timeout_at(until, all_closed).await {
            Ok(()) => 0,
            Err(_) => self.shared.lock().links.len(),
        };
        if cut_off > 0 {
            tracing::warn!(
                cut_off,
                "drain deadline passed; closing the remaining clients"
            );
        }
        self.shared.shutdown.cancel();
        // Closing now makes every connection task end; wait for them (bounded) so the
        // caller can exit knowing the close frames were sent.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.all_links_removed()).await;
        DrainReport {
            clients,
            cut_off,
            elapsed: start.elapsed(),
        }
    }

    /// Resolves once no client link is left (woken by each removal, not by polling).
    async fn all_links_removed(&self) {
        loop {
            let removed = self.shared.link_removed.notified();
            tokio::pin!(removed);
            // Registered before the check, so a removal in between is not missed.
            removed.as_mut().enable();
            if self.shared.lock().links.is_empty() {
                return;
            }
            removed.await;
        }
    }
}
