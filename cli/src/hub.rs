//! The event hub of the `peergroup-server` binary: one task reads the server's one
//! [`ServerEvents`] stream and fans it out, so the rooms application, the admin API and
//! the metrics can all follow the server.
//!
//! - Every event goes to the rooms application, in order, through a bounded channel (a
//!   slow rooms application slows the hub, and the server's own bounded event queue then
//!   applies its back-pressure, as if the application read the stream itself).
//! - Changes made from outside the rooms application (the admin API) reach it through the
//!   same channel as [`RoomsInput::Changed`], in the order they were made.
//! - Join and leave completions ([`ServerEvent::JoinAckComplete`],
//!   [`ServerEvent::LeaveAckComplete`]) go to whoever waits for them.
//!
//! # Matching a completion to its join or leave
//!
//! Completions name only (group, member), and the same pair can be joined, left and
//! joined again while an earlier completion is still queued. Every join and leave that
//! the binary makes goes through [`Control`], which records, per (kind, group, member), a
//! first-in first-out queue of the operations started, with an optional waiter. A
//! completion takes the oldest entry. That is exact because the server completes the
//! operations of one (kind, group, member) in the order they started: at most one join of
//! a pair is pending (a leave ends it first, with `MemberLeft`), leaves owe their acks in
//! notice order and time out in start order, and a destroy or disconnect ends the pair's
//! pending operations before starting its own implicit leaves. Those implicit leaves (of
//! a destroyed group's members, of a disconnected client's groups) were started by no
//! call here, so their completions find no entry and are only counted. The entry is
//! recorded under the same lock the hub takes to match a completion, while the server
//! call runs, so a completion can never be read before its entry exists.

use bytes::Bytes;
use peergroup_server::{
    BatchError, ChangeOutcome, GroupError, GroupId, GroupOptions, HostId, JoinAckError,
    JoinOutcome, LeaveAckError, MembershipBatch, MembershipChange, Server, ServerEvent,
    ServerEvents,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// Events the rooms application may have queued before the hub waits for it.
const ROOMS_QUEUE: usize = 1_024;

/// What the rooms application reads.
#[derive(Debug)]
pub enum RoomsInput {
    /// An event from the server.
    Event(ServerEvent),
    /// A change made from outside the rooms application.
    Changed(OutsideChange),
}

/// A change the admin API made, for the rooms application to keep its books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideChange {
    /// `host` joined `group`.
    Joined {
        /// The group.
        group: GroupId,
        /// The host.
        host: HostId,
    },
    /// `host` left `group`.
    Left {
        /// The group.
        group: GroupId,
        /// The host.
        host: HostId,
    },
    /// `host`'s data changed to `data`.
    HostData {
        /// The host.
        host: HostId,
        /// Its new data.
        data: Bytes,
    },
    /// `group` was destroyed.
    Destroyed {
        /// The group.
        group: GroupId,
    },
}

/// How a join or leave ended: `Ok` when every ack arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// A join's completion.
    Join(Result<(), JoinAckError>),
    /// A leave's completion.
    Leave(Result<(), LeaveAckError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Join,
    Leave,
}

type Waiter = Option<oneshot::Sender<Completion>>;

#[derive(Debug, Default)]
struct Tracker {
    pending: HashMap<(Kind, GroupId, HostId), VecDeque<Waiter>>,
}

impl Tracker {
    fn started(&mut self, kind: Kind, group: GroupId, host: HostId, waiter: Waiter) {
        self.pending
            .entry((kind, group, host))
            .or_default()
            .push_back(waiter);
    }

    fn completed(&mut self, kind: Kind, group: GroupId, host: HostId, completion: Completion) {
        let key = (kind, group, host);
        let Some(queue) = self.pending.get_mut(&key) else {
            return; // an implicit leave (destroy, disconnect): nobody waits
        };
        let waiter = queue.pop_front();
        if queue.is_empty() {
            self.pending.remove(&key);
        }
        if let Some(Some(waiter)) = waiter {
            // The waiter may have given up (its timeout): nothing to do then.
            let _ = waiter.send(completion);
        }
    }
}

/// The server's group operations as the binary makes them: each join and leave is
/// recorded so its completion can be awaited (see the [module docs](self)). A cheap
/// `Clone` handle.
#[derive(Debug, Clone)]
pub struct Control {
    server: Server,
    tracker: Arc<Mutex<Tracker>>,
    /// Weak, so the rooms application's input ends when the hub does (after the server
    /// shut down), however many handles remain.
    rooms: mpsc::WeakSender<RoomsInput>,
}

/// A join or leave that was made, and its completion to come.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Completion>);

impl Pending {
    /// Waits for the completion. `None` if the server shut down first.
    pub async fn wait(self) -> Option<Completion> {
        self.0.await.ok()
    }
}

impl Control {
    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`Server::create_group_with_data`], recording each member's join.
    ///
    /// # Errors
    /// As [`Server::create_group_with_data`].
    pub fn create_group(
        &self,
        members: &[HostId],
        options: GroupOptions,
        data: Bytes,
        join_message: Bytes,
    ) -> Result<GroupId, GroupError> {
        let mut tracker = self.tracker();
        let group = self
            .server
            .create_group_with_data(members, options, data, join_message)?;
        // A member named twice joins once (the repeat is `AlreadyMember`, with no
        // completion to come).
        let mut seen = std::collections::HashSet::new();
        for &member in members {
            if seen.insert(member) {
                tracker.started(Kind::Join, group, member, None);
            }
        }
        Ok(group)
    }

    /// [`Server::join_group`], recording the join; with `wait`, its completion can be
    /// awaited ([`Pending`]; `None` for [`JoinOutcome::AlreadyMember`]: nothing was sent).
    ///
    /// # Errors
    /// As [`Server::join_group`].
    pub fn join(
        &self,
        group: GroupId,
        host: HostId,
        join_message: Bytes,
        wait: bool,
    ) -> Result<(JoinOutcome, Option<Pending>), GroupError> {
        let mut tracker = self.tracker();
        let outcome = self.server.join_group(group, host, join_message)?;
        let pending = match outcome {
            JoinOutcome::Joined => {
                let (waiter, pending) = waiter(wait);
                tracker.started(Kind::Join, group, host, waiter);
                pending
            }
            JoinOutcome::AlreadyMember => None,
        };
        Ok((outcome, pending))
    }

    /// [`Server::leave_group`], recording the leave; with `wait`, its completion can be
    /// awaited.
    ///
    /// # Errors
    /// As [`Server::leave_group`].
    pub fn leave(
        &self,
        group: GroupId,
        host: HostId,
        wait: bool,
    ) -> Result<Option<Pending>, GroupError> {
        let mut tracker = self.tracker();
        self.server.leave_group(group, host)?;
        let (waiter, pending) = waiter(wait);
        tracker.started(Kind::Leave, group, host, waiter);
        Ok(pending)
    }

    /// [`Server::change_membership`], recording every join and leave it made; with
    /// `wait`, each one's completion (in the batch's order; `None` where nothing was
    /// sent).
    ///
    /// # Errors
    /// As [`Server::change_membership`].
    #[allow(clippy::type_complexity)] // one list of pairs, read together
    pub fn change_membership(
        &self,
        batch: &MembershipBatch,
        wait: bool,
    ) -> Result<Vec<(ChangeOutcome, Option<Pending>)>, BatchError> {
        let mut tracker = self.tracker();
        let outcomes = self.server.change_membership(batch)?;
        let mut out = Vec::with_capacity(outcomes.len());
        for (change, outcome) in batch.changes().iter().zip(outcomes) {
            let (kind, group, host) = match change {
                MembershipChange::Join { group, host, .. } => (Kind::Join, *group, *host),
                MembershipChange::Leave { group, host } => (Kind::Leave, *group, *host),
            };
            let pending = match outcome {
                ChangeOutcome::Joined | ChangeOutcome::Left => {
                    let (waiter, pending) = waiter(wait);
                    tracker.started(kind, group, host, waiter);
                    pending
                }
                ChangeOutcome::AlreadyMember => None,
            };
            out.push((outcome, pending));
        }
        Ok(out)
    }

    /// Tells the rooms application about a change made from outside it, in order with
    /// the server's events. Waits while the rooms application is behind.
    pub async fn tell_rooms(&self, change: OutsideChange) {
        // Gone or failing only once the server shut down and the rooms application stopped.
        if let Some(rooms) = self.rooms.upgrade() {
            let _ = rooms.send(RoomsInput::Changed(change)).await;
        }
    }
}

fn waiter(wait: bool) -> (Waiter, Option<Pending>) {
    if wait {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(Pending(rx)))
    } else {
        (None, None)
    }
}

/// Starts the hub: a task reading `events` until the server shuts down. Returns the
/// [`Control`] handle and what the rooms application reads (it ends after the last
/// event).
pub fn start(server: Server, mut events: ServerEvents) -> (Control, mpsc::Receiver<RoomsInput>) {
    let (rooms_tx, rooms_rx) = mpsc::channel(ROOMS_QUEUE);
    let control = Control {
        server,
        tracker: Arc::default(),
        rooms: rooms_tx.downgrade(),
    };
    let tracker = control.tracker.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let completed = match &event {
                ServerEvent::JoinAckComplete {
                    group,
                    member,
                    result,
                } => Some((Kind::Join, *group, *member, Completion::Join(*result))),
                ServerEvent::LeaveAckComplete {
                    group,
                    member,
                    result,
                } => Some((Kind::Leave, *group, *member, Completion::Leave(*result))),
                _ => None,
            };
            if let Some((kind, group, member, completion)) = completed {
                tracker
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .completed(kind, group, member, completion);
            }
            if rooms_tx.send(RoomsInput::Event(event)).await.is_err() {
                tracing::debug!("the rooms application stopped; the hub goes on for waiters");
            }
        }
        tracing::debug!("event hub stopped: the server shut down");
    });
    (control, rooms_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_go_to_the_oldest_operation_of_their_pair() {
        let mut tracker = Tracker::default();
        let (g, h) = (GroupId::from_raw(1), HostId::from_raw(3));
        let (first, mut first_rx) = oneshot::channel();
        let (second, mut second_rx) = oneshot::channel();
        tracker.started(Kind::Leave, g, h, Some(first));
        tracker.started(Kind::Leave, g, h, None);
        tracker.started(Kind::Leave, g, h, Some(second));
        // A join completion of the same pair is another queue.
        tracker.completed(Kind::Join, g, h, Completion::Join(Ok(())));
        assert!(first_rx.try_recv().is_err());

        let timeout = Completion::Leave(Err(LeaveAckError::Timeout));
        tracker.completed(Kind::Leave, g, h, timeout);
        assert_eq!(first_rx.try_recv().unwrap(), timeout);
        tracker.completed(Kind::Leave, g, h, Completion::Leave(Ok(())));
        assert!(
            second_rx.try_recv().is_err(),
            "that one was the untracked middle"
        );
        tracker.completed(Kind::Leave, g, h, Completion::Leave(Ok(())));
        assert_eq!(second_rx.try_recv().unwrap(), Completion::Leave(Ok(())));
        assert!(tracker.pending.is_empty());
        // An implicit leave nobody started finds nothing and changes nothing.
        tracker.completed(Kind::Leave, g, h, Completion::Leave(Ok(())));
        assert!(tracker.pending.is_empty());
    }
}
