//! The area-of-interest server of `examples/mmo_view` (its `server.rs`), run the same way:
//! one view group per bot ("the bots that see me") with the server application a member of
//! each, positions taken from the bots' own updates, and every tick one
//! [`MembershipBatch`] of the joins and leaves the shared world's [`Grid`] gives.
//!
//! What the example does not need and the benchmark does is kept here: which batch every
//! change belongs to, so a tick's batch is timed from `change_membership` to its last
//! completion, and counters that can be read before and after a window.

use super::world::{Grid, Position};
use crate::stats::Latencies;
use peergroup_protocol::{GroupId, HostId};
use peergroup_server::{
    decode, ChangeOutcome, GroupError, GroupOptions, JoinAckError, MembershipBatch, Server,
    ServerEvent,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

/// The batch of a change made outside the ticks (a view group's creation): never timed.
const NO_BATCH: u64 = u64::MAX;

/// Cumulative counts; a window's figures are the difference of two readings
/// ([`Counts::since`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Joins made by the ticks that completed with every ack.
    pub joins_ok: u64,
    /// Leaves made by the ticks that completed with every ack.
    pub leaves_ok: u64,
    /// Joins a later leave ended before every ack came back: the watcher walked out of
    /// sight again first. Not failures (the example counts them apart too).
    pub joins_undone: u64,
    /// Joins and leaves that completed otherwise (timeout, disconnect, destroyed group).
    pub failed: u64,
    /// Completions of changes the ticks did not make: view groups' creations, and the
    /// leaves a disconnect or a destroyed group causes.
    pub other_completions: u64,
    /// Joins and leaves the ticks applied.
    pub changes: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Batches the server refused (nothing of them changed; the views were read back).
    pub refused_batches: u64,
    /// Bots that disconnected.
    pub disconnects: u64,
    /// Position updates the server application received.
    pub positions: u64,
    /// Watchers summed over every placed bot's view at every tick.
    pub view_size_sum: u64,
    /// Views summed at every tick (the divisor of `view_size_sum`).
    pub view_samples: u64,
}

impl Counts {
    /// What was counted after `before` was read.
    pub fn since(self, before: Counts) -> Counts {
        Counts {
            joins_ok: self.joins_ok - before.joins_ok,
            leaves_ok: self.leaves_ok - before.leaves_ok,
            joins_undone: self.joins_undone - before.joins_undone,
            failed: self.failed - before.failed,
            other_completions: self.other_completions - before.other_completions,
            changes: self.changes - before.changes,
            ticks: self.ticks - before.ticks,
            refused_batches: self.refused_batches - before.refused_batches,
            disconnects: self.disconnects - before.disconnects,
            positions: self.positions - before.positions,
            view_size_sum: self.view_size_sum - before.view_size_sum,
            view_samples: self.view_samples - before.view_samples,
        }
    }

    /// Watchers per view, on average over the ticks counted.
    pub fn mean_view_size(&self) -> f64 {
        self.view_size_sum as f64 / self.view_samples.max(1) as f64
    }
}

/// One bot's view group.
struct View {
    group: GroupId,
    /// The bots that see the owner, as the last tick decided.
    watchers: BTreeSet<HostId>,
}

/// A tick's batch until its last change completes.
struct Batch {
    applied: Instant,
    left: usize,
    /// Applied while recording: its completion time is kept.
    timed: bool,
}

/// The view server with the benchmark's bookkeeping.
pub struct Views {
    server: Server,
    /// The last position each bot published.
    positions: HashMap<HostId, Position>,
    /// By owner; a BTreeMap so the same positions make the same batch.
    views: BTreeMap<HostId, View>,
    /// Changes waiting for their completion, by (group, member), oldest first, each with
    /// its batch. A member can leave and join the same group again in later ticks before
    /// the first change completes; completions come in the order of the changes.
    joins: HashMap<(GroupId, HostId), VecDeque<u64>>,
    leaves: HashMap<(GroupId, HostId), VecDeque<u64>>,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    /// Bots connected so far.
    pub connected: usize,
    /// Whether ticks now are timed (their work, and their batch to its last completion).
    pub recording: bool,
    /// Cumulative counts.
    pub counts: Counts,
    /// From `change_membership` to the batch's last completion, for batches applied while
    /// recording.
    pub batch_completion: Latencies,
    /// A tick's own work while recording: the area of interest of every bot and the
    /// `change_membership` call.
    pub tick_work: Latencies,
    /// The `change_membership` call alone while recording: the server's lock is held
    /// for it, so every server task that needs the lock waits as long.
    pub batch_apply: Latencies,
}

impl Views {
    /// A view server with no bots yet.
    pub fn new(server: Server) -> Self {
        Self {
            server,
            positions: HashMap::new(),
            views: BTreeMap::new(),
            joins: HashMap::new(),
            leaves: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            connected: 0,
            recording: false,
            counts: Counts::default(),
            batch_completion: Latencies::default(),
            tick_work: Latencies::default(),
            batch_apply: Latencies::default(),
        }
    }

    /// Bots whose position the server knows.
    pub fn placed(&self) -> usize {
        self.positions.len()
    }

    /// Joins and leaves still waiting for their completion.
    pub fn pending(&self) -> usize {
        self.joins.values().map(VecDeque::len).sum::<usize>()
            + self.leaves.values().map(VecDeque::len).sum::<usize>()
    }

    /// Takes one server event.
    pub fn handle(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::ClientConnected { host, .. } => {
                self.connected += 1;
                // As the example: the server is a member, so one upload from a bot reaches
                // its watchers and the server; relay-only, since raw clients do not punch.
                let options = GroupOptions {
                    server_is_member: true,
                    direct_p2p: false,
                    ..GroupOptions::default()
                };
                // The group's data names its owner: that is how a bot finds its own group.
                match self
                    .server
                    .create_group_with_data(&[host], options, host.to_string(), "")
                {
                    Ok(group) => {
                        let watchers = BTreeSet::new();
                        self.views.insert(host, View { group, watchers });
                        self.joins
                            .entry((group, host))
                            .or_default()
                            .push_back(NO_BATCH);
                    }
                    Err(error) => {
                        tracing::warn!(%host, %error, "no view group");
                        self.counts.failed += 1;
                    }
                }
            }
            ServerEvent::ClientDisconnected { host, reason } => {
                tracing::warn!(%host, %reason, "a bot disconnected");
                self.counts.disconnects += 1;
                self.forget(host);
            }
            ServerEvent::Message { from, payload, .. } => {
                if let Ok(position) = decode::<Position>(&payload) {
                    self.positions.insert(from, position);
                    self.counts.positions += 1;
                }
            }
            ServerEvent::JoinAckComplete {
                group,
                member,
                result,
            } => {
                let batch = pop(&mut self.joins, (group, member));
                match (batch, result) {
                    (Some(batch), Ok(())) if batch != NO_BATCH => self.counts.joins_ok += 1,
                    (Some(batch), Err(JoinAckError::MemberLeft)) if batch != NO_BATCH => {
                        self.counts.joins_undone += 1
                    }
                    (_, Ok(())) => self.counts.other_completions += 1,
                    (_, Err(error)) => {
                        tracing::warn!(%group, %member, %error, "a join did not complete");
                        self.counts.failed += 1;
                    }
                }
                self.ended(batch);
            }
            ServerEvent::LeaveAckComplete {
                group,
                member,
                result,
            } => {
                let batch = pop(&mut self.leaves, (group, member));
                match (batch, result) {
                    (Some(_), Ok(())) => self.counts.leaves_ok += 1,
                    (None, Ok(())) => self.counts.other_completions += 1,
                    (_, Err(error)) => {
                        tracing::warn!(%group, %member, %error, "a leave did not complete");
                        self.counts.failed += 1;
                    }
                }
                self.ended(batch);
            }
            _ => {}
        }
    }

    /// A change of `batch` completed: the batch's time is kept if it was its last.
    fn ended(&mut self, batch: Option<u64>) {
        let Some(id) = batch else {
            return;
        };
        let Some(state) = self.batches.get_mut(&id) else {
            return;
        };
        state.left -= 1;
        if state.left == 0 {
            if state.timed {
                self.batch_completion.record(state.applied.elapsed());
            }
            self.batches.remove(&id);
        }
    }

    /// A bot is gone: the server already removed it from every group it was in.
    fn forget(&mut self, host: HostId) {
        self.positions.remove(&host);
        for view in self.views.values_mut() {
            view.watchers.remove(&host);
        }
        if let Some(own) = self.views.remove(&host) {
            // Its watchers leave; those completions are counted as other completions.
            let _ = self.server.destroy_group(own.group);
        }
    }

    /// One tick: every placed bot's area of interest, then one batch of joins and leaves.
    pub fn tick(&mut self) {
        let started = Instant::now();
        self.counts.ticks += 1;
        let grid = Grid::new(self.positions.iter().map(|(&host, &at)| (host, at)));
        let mut batch = MembershipBatch::new();
        // (group, member, join) of each change, in the batch's order.
        let mut changes = Vec::new();
        for (&owner, view) in &mut self.views {
            let Some(&at) = self.positions.get(&owner) else {
                continue; // not placed yet
            };
            let sees = grid.watchers(owner, at, &view.watchers);
            for &gone in view.watchers.difference(&sees) {
                batch.leave(view.group, gone);
                changes.push((view.group, gone, false));
            }
            for &new in sees.difference(&view.watchers) {
                batch.join(view.group, new, "");
                changes.push((view.group, new, true));
            }
            self.counts.view_size_sum += sees.len() as u64;
            self.counts.view_samples += 1;
            view.watchers = sees;
        }
        if !batch.is_empty() {
            let applied = Instant::now();
            let result = self.server.change_membership(&batch);
            if self.recording {
                self.batch_apply.record(applied.elapsed());
            }
            match result {
                Ok(outcomes) => self.track(changes, outcomes, applied),
                Err(error) => {
                    // Nothing of the batch changed. A bot that disconnected since the last
                    // event read is forgotten; the views are read back from the server.
                    self.counts.refused_batches += 1;
                    tracing::warn!(%error, "batch refused");
                    if let GroupError::UnknownHost(host) = error.error {
                        self.forget(host);
                    }
                    self.resync();
                }
            }
        }
        if self.recording {
            self.tick_work.record(started.elapsed());
        }
    }

    /// Records the batch's changes as waiting for their completion.
    fn track(
        &mut self,
        changes: Vec<(GroupId, HostId, bool)>,
        outcomes: Vec<ChangeOutcome>,
        applied: Instant,
    ) {
        let id = self.next_batch;
        self.next_batch += 1;
        let mut left = 0;
        for ((group, member, _), outcome) in changes.into_iter().zip(outcomes) {
            let waiting = match outcome {
                ChangeOutcome::Joined => &mut self.joins,
                ChangeOutcome::Left => &mut self.leaves,
                // Nothing was sent, so nothing completes.
                ChangeOutcome::AlreadyMember => continue,
            };
            waiting.entry((group, member)).or_default().push_back(id);
            left += 1;
        }
        self.counts.changes += left as u64;
        if left > 0 {
            let timed = self.recording;
            self.batches.insert(
                id,
                Batch {
                    applied,
                    left,
                    timed,
                },
            );
        }
    }

    /// Makes the watcher sets match the server again after a refused batch.
    fn resync(&mut self) {
        for (&owner, view) in &mut self.views {
            if let Ok(info) = self.server.group_info(view.group) {
                view.watchers = info
                    .members
                    .into_iter()
                    .filter(|m| *m != HostId::SERVER && *m != owner)
                    .collect();
            }
        }
    }
}

/// Takes the oldest change waiting under `key`.
fn pop(
    waiting: &mut HashMap<(GroupId, HostId), VecDeque<u64>>,
    key: (GroupId, HostId),
) -> Option<u64> {
    let queue = waiting.get_mut(&key)?;
    let batch = queue.pop_front();
    if queue.is_empty() {
        waiting.remove(&key);
    }
    batch
}
