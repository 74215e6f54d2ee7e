//! The game server: it owns one view group per bot ("who sees me") and, every tick,
//! recomputes every bot's area of interest with a spatial grid, then applies all the
//! resulting joins and leaves as one batch.

use crate::world::{Grid, Position, Report, ToServer};
use peergroup::server::{
    decode, ChangeOutcome, GroupError, GroupId, GroupOptions, HostId, JoinAckError,
    MembershipBatch, Server, ServerEvent,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the server counts for the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub joins: u64,
    pub leaves: u64,
    pub join_acks_ok: u64,
    pub leave_acks_ok: u64,
    /// Joins a later leave undid before every ack came back: not failures, the bot simply
    /// walked out of sight again first.
    pub joins_undone: u64,
    pub ack_failures: u64,
    /// Position updates the server application received (it is a member of every view
    /// group, so it sees each update once).
    pub positions_seen: u64,
}

impl Counters {
    /// Joins and leaves whose completion has not arrived yet.
    pub fn pending(&self) -> u64 {
        (self.joins + self.leaves)
            .saturating_sub(self.join_acks_ok + self.leave_acks_ok)
            .saturating_sub(self.joins_undone + self.ack_failures)
    }
}

/// One bot's view group: the bots that currently see it.
struct View {
    group: GroupId,
    watchers: BTreeSet<HostId>,
}

/// The area-of-interest server.
pub struct ViewServer {
    server: Server,
    /// The last position each bot published.
    positions: HashMap<HostId, Position>,
    /// By owner; a BTreeMap so a seeded run makes the same batches.
    views: BTreeMap<HostId, View>,
    pub counters: Counters,
    pub reports: Vec<Report>,
    /// Whether watchers may punch to a direct path with the bots they watch.
    direct: bool,
}

impl ViewServer {
    pub fn new(server: Server, direct: bool) -> Self {
        Self {
            server,
            direct,
            positions: HashMap::new(),
            views: BTreeMap::new(),
            counters: Counters::default(),
            reports: Vec::new(),
        }
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Members of all view groups (not counting owners).
    pub fn watchers(&self) -> usize {
        self.views.values().map(|v| v.watchers.len()).sum()
    }

    /// Takes one server event.
    pub fn handle(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::ClientConnected { host, .. } => {
                // The server is a member of every view group, so one send from a bot
                // reaches its watchers and the server, which needs positions for the AOI.
                let options = GroupOptions {
                    server_is_member: true,
                    direct_p2p: self.direct,
                    ..GroupOptions::default()
                };
                // The group's data names its owner, so a watcher knows whose view it
                // joined.
                match self
                    .server
                    .create_group_with_data(&[host], options, host.to_string(), "")
                {
                    Ok(group) => {
                        let watchers = BTreeSet::new();
                        self.views.insert(host, View { group, watchers });
                        // The owner's own join completes like any other.
                        self.counters.joins += 1;
                    }
                    Err(error) => tracing::warn!(%host, %error, "no view group"),
                }
            }
            ServerEvent::ClientDisconnected { host, .. } => self.forget(host),
            ServerEvent::Message { from, payload, .. } => {
                if let Ok(position) = decode::<Position>(&payload) {
                    self.positions.insert(from, position);
                    self.counters.positions_seen += 1;
                } else if let Ok(ToServer::Report(report)) = decode::<ToServer>(&payload) {
                    self.reports.push(report);
                }
            }
            ServerEvent::JoinAckComplete { result, .. } => match result {
                Ok(()) => self.counters.join_acks_ok += 1,
                Err(JoinAckError::MemberLeft) => self.counters.joins_undone += 1,
                Err(error) => {
                    tracing::warn!(%error, "a join did not complete");
                    self.counters.ack_failures += 1;
                }
            },
            ServerEvent::LeaveAckComplete { result, .. } => match result {
                Ok(()) => self.counters.leave_acks_ok += 1,
                Err(error) => {
                    tracing::warn!(%error, "a leave did not complete");
                    self.counters.ack_failures += 1;
                }
            },
            _ => {}
        }
    }

    /// A bot left the game: the server already removed it from every group it was in.
    fn forget(&mut self, host: HostId) {
        self.positions.remove(&host);
        let Some(own) = self.views.remove(&host) else {
            return;
        };
        // Its disconnect left every group it was in, and destroying its view group makes
        // its watchers leave: each of those leaves completes like any other.
        let mut watched = 0;
        for view in self.views.values_mut() {
            watched += usize::from(view.watchers.remove(&host));
        }
        self.counters.leaves += watched as u64 + 1;
        if self.server.destroy_group(own.group).is_ok() {
            self.counters.leaves += own.watchers.len() as u64;
        }
    }

    /// One tick: every bot's area of interest, then one batch of joins and leaves.
    pub fn tick(&mut self) {
        let grid = Grid::new(self.positions.iter().map(|(&host, &at)| (host, at)));
        let mut batch = MembershipBatch::new();
        for (&owner, view) in &mut self.views {
            let Some(&at) = self.positions.get(&owner) else {
                continue; // not placed yet
            };
            let sees = grid.watchers(owner, at, &view.watchers);
            for &gone in view.watchers.difference(&sees) {
                batch.leave(view.group, gone);
            }
            for &new in sees.difference(&view.watchers) {
                batch.join(view.group, new, "");
            }
            view.watchers = sees;
        }
        if batch.is_empty() {
            return;
        }
        match self.server.change_membership(&batch) {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome {
                        ChangeOutcome::Joined => self.counters.joins += 1,
                        ChangeOutcome::Left => self.counters.leaves += 1,
                        ChangeOutcome::AlreadyMember => {}
                    }
                }
            }
            // A bot disconnected since the last event we read: the batch changed nothing.
            // Forget the bot; the next tick recomputes everything.
            Err(error) => {
                if let GroupError::UnknownHost(host) = error.error {
                    self.forget(host);
                } else {
                    tracing::warn!(%error, "batch refused");
                }
                self.resync();
            }
        }
    }

    /// Makes the watcher sets match the server again after a refused batch.
    fn resync(&mut self) {
        for view in self.views.values_mut() {
            if let Ok(info) = self.server.group_info(view.group) {
                view.watchers = info
                    .members
                    .into_iter()
                    .filter(|m| *m != HostId::SERVER)
                    .collect();
            }
        }
        for (&owner, view) in &mut self.views {
            view.watchers.remove(&owner);
        }
    }
}
