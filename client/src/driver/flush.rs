//! Carrying out what the session produced after an operation ([`Inner::flush`]): frames
//! for the server and for peers go into their queues, datagrams go out, punch orders are
//! registered and handed to the punch task, stalled and ended direct links are closed,
//! and the tasks that wait on the session (senders on a direct window, paused direct
//! readers, the timer) are woken.
//!
//! Every task that hands the session input calls it under the same lock, so what the
//! session asks for goes out in the order it asked.

use crate::driver::shared::{Core, Inner, PunchHandle, PunchStart};
use crate::session::Upload;
use bytes::Bytes;
use peergroup_protocol::{
    encode_client_frame, encode_peer_frame, encode_server_datagram, frame_to_bytes, ClientToServer,
    CloseCode, FrameError, HostId, PunchOrder, PunchOutcome, ServerDatagram,
};
use peergroup_transport::close;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

impl Inner {
    /// Sends what the session produced after an operation: frames for the server and for
    /// peers, punch orders, ended pairs; wakes direct readers the session lets go on and
    /// the timer when a deadline came earlier. Events stay in the session: readers hand them
    /// over themselves ([`Inner::deliver_events`]); other callers wake the emitter
    /// ([`Inner::flush_and_wake`]).
    pub fn flush(self: &Arc<Self>, core: &mut Core) {
        while let Some(upload) = core.session.poll_upload() {
            self.dispatch(core, upload);
        }
        while let Some(order) = core.session.poll_punch_order() {
            self.start_punch(core, order);
        }
        while let Some(peer) = core.session.poll_stalled_link() {
            if let Some(link) = core.directs.get(&peer) {
                close(&link.connection, CloseCode::Normal, "messages left unacked");
            }
        }
        if core.session.take_window_moved() {
            self.window_generation.fetch_add(1, Ordering::AcqRel);
            self.window_room.notify_waiters();
        }
        while let Some(peer) = core.session.poll_ended_pair() {
            if let Some(link) = core.directs.get(&peer) {
                close(&link.connection, CloseCode::Normal, "pair ended");
            }
        }
        wake_resumed_readers(core);
        if core.session.take_timeout_moved() {
            // A stored permit if the timer is busy: it looks again when it next waits.
            self.timer_moved.notify_one();
        }
        self.pending_events
            .store(core.session.pending_events(), Ordering::Release);
    }

    /// As [`Inner::flush`], and wakes the emitter task if there are events: for work
    /// that is not a reader (sends, timers, path changes).
    pub fn flush_and_wake(self: &Arc<Self>, core: &mut Core) {
        self.flush(core);
        if core.session.pending_events() > 0 {
            self.event_ready.notify_one();
        }
    }

    /// Puts one upload in its queue, or sends its datagram.
    pub fn dispatch(&self, core: &mut Core, upload: Upload) {
        match upload {
            Upload::Control(frame) => {
                if let Some(bytes) = encoded(frame_to_bytes(&frame, self.max_frame_len)) {
                    self.control.push_control(bytes);
                }
            }
            Upload::Relay {
                frame,
                priority,
                flow,
                latest,
            } => {
                if let Some(bytes) = encoded(encode_client_frame(&frame, self.max_frame_len)) {
                    self.uploads.push_data(bytes, priority, flow, latest, 0);
                }
            }
            Upload::Datagram(datagram) => {
                self.connection()
                    .send_datagram(datagram, self.max_frame_len);
            }
            Upload::Peer {
                to,
                frame,
                priority,
                latest,
                id,
            } => {
                let (Some(link), Some(bytes)) = (
                    core.directs.get(&to),
                    encoded(encode_peer_frame(&frame, self.max_frame_len)),
                ) else {
                    return;
                };
                if let Some(replaced) = link.queue.push_data(bytes, priority, 0, latest, id) {
                    core.session.forget_replaced(to, replaced);
                }
            }
            Upload::PeerControl { to, frame } => {
                if let (Some(link), Some(bytes)) = (
                    core.directs.get(&to),
                    encoded(encode_peer_frame(&frame, self.max_frame_len)),
                ) {
                    link.queue.push_control(bytes);
                }
            }
            Upload::PeerDatagram { to, datagram } => {
                send_peer_datagram(core, to, &datagram);
            }
        }
    }

    /// Starts carrying out a punch order, or declines it. The punch is registered here,
    /// under the lock, so probes and the peer's connection find it at once;
    /// `run_punches` (`direct/punch.rs`) starts its task, and probes that come first wait
    /// in its input queue.
    fn start_punch(&self, core: &mut Core, order: PunchOrder) {
        if core.directs.contains_key(&order.peer) {
            return; // already direct: a stale order, not one to decline
        }
        // A newer attempt for a pair already punching supersedes the older one (an order
        // replayed after a resume can be running when the server orders the pair again):
        // the older task sees its input close and ends without a report. An older or
        // equal one is stale.
        let superseding = match core.punches.get(&order.pair) {
            Some(running) if running.attempt >= order.attempt => return,
            Some(_) => true,
            None => false,
        };
        // Punches under way count against the limit too: a client ordered to punch with a
        // whole crowd at once would otherwise start them all while it has no direct path.
        let at_limit =
            !superseding && core.directs.len() + core.punches.len() >= self.direct.max_direct_peers;
        if !self.direct.enabled || at_limit {
            self.send_server_frame(&ClientToServer::PunchReport {
                pair: order.pair,
                attempt: order.attempt,
                outcome: PunchOutcome::Declined,
            });
            return;
        }
        let Some(info) = core.session.peer_info(order.peer) else {
            return;
        };
        self.expected_peers.insert(info.identity);
        let (input, inputs) = mpsc::channel(256);
        core.punches.insert(
            order.pair,
            PunchHandle {
                attempt: order.attempt,
                input,
            },
        );
        // An error only means the client is going away, and the punch with it.
        let _ = self.punch_starts.send(PunchStart {
            order,
            inputs,
            identity: info.identity,
        });
    }
}

/// Wakes the direct readers the session lets go on again (each waits in
/// `direct/link.rs`, `wait_until_resumed`).
fn wake_resumed_readers(core: &mut Core) {
    while let Some(peer) = core.session.poll_resumed_reader() {
        if let Some(link) = core.directs.get(&peer) {
            // Stored if the reader is not waiting yet, so the wake is never lost.
            link.resume_reading.notify_one();
        }
    }
}

/// Sends a datagram on the peer's direct link.
fn send_peer_datagram(core: &Core, to: HostId, datagram: &ServerDatagram) {
    if let (Some(link), Ok(bytes)) = (core.directs.get(&to), encode_server_datagram(datagram)) {
        let _ = link.connection.send_datagram(bytes);
    }
}

/// An encoded frame, or `None`, logged, for one that cannot be sent.
fn encoded(frame: Result<Bytes, FrameError>) -> Option<Bytes> {
    match frame {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::error!(%error, "frame not sent");
            None
        }
    }
}
