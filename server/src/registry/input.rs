//! The registry's inputs from clients: one call per frame ([`Registry::handle_frame`]) and
//! one per datagram ([`Registry::handle_datagram`]), each dispatching to the handler of its
//! kind, and the protocol violations a frame can be refused with.
//!
//! The driver decodes, checks that a frame came on its stream (that is a fact about the
//! transport, not about the registry's state) and closes the connection on a refusal; every
//! decision about what a frame means is taken here, so the registry's tests see exactly
//! what a client can send.

use super::{AckBeyondSent, Action, Registry};
use peergroup_protocol::{ClientDatagram, ClientToServer, CloseCode, HostId, ServerToClient};
use std::time::{Duration, Instant};

/// Why the registry refused a client's frame: the client broke the protocol, and the
/// driver closes its connection with [`ProtocolViolation::close_code`] and the error's
/// text. Nothing changed in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A hello (or a resume) after the one the connection began with: a client says
    /// hello once.
    #[error("a second hello")]
    SecondHello,
    /// An ack of more membership notices than the client was sent.
    #[error(transparent)]
    AckBeyondSent(#[from] AckBeyondSent),
}

impl ProtocolViolation {
    /// The close code the connection is closed with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolViolation::SecondHello | ProtocolViolation::AckBeyondSent(_) => {
                CloseCode::ProtocolViolation
            }
        }
    }
}

impl Registry {
    /// One frame `host` (a connected client) sent, read at `now`, handed to the handler of
    /// its kind; what it causes is queued as actions.
    ///
    /// A [`ClientToServer::TimeRequest`] is answered with an [`Action::Send`] of
    /// [`ServerToClient::Time`] (a notice, so it goes ahead of queued messages): the
    /// server's clock is `now` less the epoch the registry was made with, in microseconds.
    ///
    /// # Errors
    /// [`ProtocolViolation`] for a frame the client may not send: a second
    /// [`ClientToServer::Hello`], or an ack of more notices than it was sent. Nothing
    /// changes then; the driver closes the connection.
    pub fn handle_frame(
        &mut self,
        host: HostId,
        frame: ClientToServer,
        now: Instant,
    ) -> Result<(), ProtocolViolation> {
        self.token_delivered(host);
        match frame {
            ClientToServer::Hello(_) | ClientToServer::Resume(_) => {
                return Err(ProtocolViolation::SecondHello)
            }
            // The driver keeps the frames it wrote, and takes their confirmations itself.
            ClientToServer::Received { .. } => {}
            // A datagram carried as a frame (a WebSocket client): as if it came as one.
            ClientToServer::Datagram(datagram) => self.handle_datagram(host, datagram, now),
            ClientToServer::Ack { notices } => self.handle_ack(host, notices)?,
            ClientToServer::HostCandidates { addrs } => self.handle_host_candidates(host, addrs),
            ClientToServer::WantDirect { pair } => self.handle_want_direct(host, pair, now),
            ClientToServer::PunchReport {
                pair,
                attempt,
                outcome,
            } => self.handle_punch_report(host, pair, attempt, outcome, now),
            ClientToServer::PathReport { pair, path, reason } => {
                self.handle_path_report(host, pair, path, reason, now)
            }
            ClientToServer::Relay {
                group,
                to_server,
                lane,
                priority,
                dests,
                payload,
            } => {
                self.count_upload(host, now);
                self.handle_relay(host, group, to_server, lane, priority, &dests, payload, now)
            }
            ClientToServer::TimeRequest { token } => self.answer_time_request(host, token, now),
            ClientToServer::LinkReport {
                pair,
                rtt_us,
                last_rtt_us,
                loss_permille,
            } => {
                let micros = |us: Option<u32>| us.map(|us| Duration::from_micros(us.into()));
                self.handle_link_report(
                    host,
                    pair,
                    micros(rtt_us),
                    micros(last_rtt_us),
                    loss_permille.map(|p| f32::from(p) / 1000.0),
                )
            }
        }
        Ok(())
    }

    /// One datagram `host` (a connected client) sent, read at `now`: an unreliable relay
    /// upload, relayed under the relay rule and the sender's delivery budget
    /// ([`RegistryConfig::datagram_deliveries_per_sec`]). A datagram is never refused as a
    /// whole: one may be lost anyway, so what does not pass is dropped, counted, or
    /// reported to the sender as a refused destination.
    ///
    /// [`RegistryConfig::datagram_deliveries_per_sec`]:
    /// super::RegistryConfig::datagram_deliveries_per_sec
    pub fn handle_datagram(&mut self, host: HostId, datagram: ClientDatagram, now: Instant) {
        let ClientDatagram::Relay {
            group,
            to_server,
            lane,
            server_seq,
            dests,
            payload,
        } = datagram;
        self.handle_relay_datagram(
            host, group, to_server, lane, server_seq, &dests, payload, now,
        );
    }

    /// Answers a clock request at once. The registry reads no clock, but every input
    /// carries `now`, so with the epoch it was made with the answer is complete here: the
    /// driver carries it out like any other frame, in the registry's order, and the tests
    /// see the exact time. (The alternative, an action the driver fills in with its own
    /// clock, would leave the one frame the registry cannot check.)
    fn answer_time_request(&mut self, host: HostId, token: u64, now: Instant) {
        if !self.is_connected(host) {
            return;
        }
        let since_epoch = now.saturating_duration_since(self.epoch);
        let server_time_us = since_epoch.as_micros().min(u128::from(u64::MAX)) as u64;
        // A notice ([`Action::Send`]) goes ahead of queued messages, so the round trip
        // the client measures is mostly the network's.
        self.actions.push_back(Action::Send {
            to: host,
            message: ServerToClient::Time {
                token,
                server_time_us,
            },
        });
    }
}
