//! Groups and membership: create, join, leave, destroy, batches of changes, group data and
//! the queries over them.
//!
//! ProudNet's semantics: when M joins, each existing member is told of M and M is told of
//! every member, itself last; on a leave, the others are told of M and M of every member,
//! itself last. Every join and leave completes once all the hosts told have acked (see
//! `acks.rs`). A pair of hosts is reference-counted by the groups they share (`pairs.rs`).
//!
//! Ordering (the contract the relay keeps, see `ARCHITECTURE.md`): a member's `MemberLeft`
//! reaches each other member after every message that member had queued for it, and a
//! leaver's own `MemberLeft` after everything queued for it; join notices go ahead of
//! queued messages, so no message from a new member arrives before its join notice.

use super::acks::OpKind;
use super::pairs::PairChange;
use super::{group_id, group_key, host_key, Ending, GroupState, NoticeOrder, Registry, Timer};
use crate::error::GroupError;
use crate::events::ServerEvent;
use bytes::Bytes;
use peergroup_protocol::{GroupId, HostId, Notice, PairId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

/// How a group behaves. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// Keep the group when its last member leaves. Default `true` (ProudNet's
    /// `AllowEmptyP2PGroup`); when `false` the group is removed with
    /// [`ServerEvent::GroupRemoved`] as it empties.
    pub allow_empty: bool,
    /// Let members go direct with each other. Default `true`; `false` keeps the group
    /// relay-only.
    pub direct_p2p: bool,
    /// Make the server application a member: it receives the group's messages and members
    /// see it as member [`HostId::SERVER`]. Default `false`.
    pub server_is_member: bool,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            allow_empty: true,
            direct_p2p: true,
            server_is_member: false,
        }
    }
}

/// The result of a join that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The host is now a member; notices went out and acks are awaited.
    Joined,
    /// The host already was a member. Not a failure; nothing was sent.
    AlreadyMember,
}

/// What one change of a [`MembershipBatch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// The host joined; a [`ServerEvent::JoinAckComplete`] follows.
    Joined,
    /// The host already was a member (an earlier change of the batch may have made it
    /// one). Not a failure; nothing was sent.
    AlreadyMember,
    /// The host left; a [`ServerEvent::LeaveAckComplete`] follows.
    Left,
}

/// One change of a [`MembershipBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add `host` to `group`, with `join_message` on every notice of the join.
    Join {
        /// The group.
        group: GroupId,
        /// The host.
        host: HostId,
        /// The application's message for this join.
        join_message: Bytes,
    },
    /// Remove `host` from `group`.
    Leave {
        /// The group.
        group: GroupId,
        /// The host.
        host: HostId,
    },
}

impl MembershipChange {
    fn target(&self) -> (GroupId, HostId) {
        match self {
            MembershipChange::Join { group, host, .. }
            | MembershipChange::Leave { group, host } => (*group, *host),
        }
    }
}

/// Many joins and leaves across groups, applied at once and all or nothing: what an MMO
/// tick does when characters enter and leave each other's sight (Photon's
/// `ChangeGroups(remove, add)`, with acks). Each client gets the notices it is owed in one
/// frame and acks them with one; the application still gets one completion per join and
/// per leave.
///
/// Changes apply in the order they were added, each against the membership the earlier
/// ones left, so a leave and a join of the same host and group in one batch are both fine.
///
/// ```
/// # use peergroup_server::{GroupId, HostId, MembershipBatch};
/// # let (old_view, new_view, bot) = (GroupId::from_raw(1), GroupId::from_raw(2), HostId::from_raw(3));
/// let mut batch = MembershipBatch::new();
/// batch.leave(old_view, bot).join(new_view, bot, "");
/// assert_eq!(batch.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipBatch {
    changes: Vec<MembershipChange>,
}

impl MembershipBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a join of `host` into `group`.
    pub fn join(
        &mut self,
        group: GroupId,
        host: HostId,
        join_message: impl Into<Bytes>,
    ) -> &mut Self {
        self.changes.push(MembershipChange::Join {
            group,
            host,
            join_message: join_message.into(),
        });
        self
    }

    /// Adds a leave of `host` from `group`.
    pub fn leave(&mut self, group: GroupId, host: HostId) -> &mut Self {
        self.changes.push(MembershipChange::Leave { group, host });
        self
    }

    /// Adds one change.
    pub fn push(&mut self, change: MembershipChange) -> &mut Self {
        self.changes.push(change);
        self
    }

    /// The changes, in order.
    pub fn changes(&self) -> &[MembershipChange] {
        &self.changes
    }

    /// How many changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Removes every change, keeping the allocation (for reuse every tick).
    pub fn clear(&mut self) {
        self.changes.clear();
    }
}

impl FromIterator<MembershipChange> for MembershipBatch {
    fn from_iter<I: IntoIterator<Item = MembershipChange>>(iter: I) -> Self {
        Self {
            changes: iter.into_iter().collect(),
        }
    }
}

/// A batch was refused: the change at `index` could not be applied, so none was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership change {index} refused: {error}")]
pub struct BatchError {
    /// Index of the refused change in the batch.
    pub index: usize,
    /// Why.
    pub error: GroupError,
}

/// A consistent view of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub group: GroupId,
    /// Its members, [`HostId::SERVER`] first when the server is one, then by id.
    pub members: Vec<HostId>,
    /// Its data.
    pub data: Bytes,
    /// The options it was made with.
    pub options: GroupOptions,
}

/// Why a member is leaving; decides who is told and how a pending join ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaveCause {
    Left,
    Destroyed,
    Disconnected,
}

impl Registry {
    /// Creates a group with `data` and joins `members` to it in order, each with
    /// `join_message`.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`] if any member is not connected,
    /// [`GroupError::EmptyNotAllowed`] for no members without `allow_empty`, and
    /// [`GroupError::DataTooLarge`] over [`RegistryConfig::max_group_data_len`](super::RegistryConfig);
    /// nothing changes then.
    pub fn create_group(
        &mut self,
        members: &[HostId],
        options: GroupOptions,
        data: Bytes,
        join_message: Bytes,
        now: Instant,
    ) -> Result<GroupId, GroupError> {
        if let Some(unknown) = members.iter().find(|h| !self.is_connected(**h)) {
            return Err(GroupError::UnknownHost(*unknown));
        }
        if members.is_empty() && !options.allow_empty {
            return Err(GroupError::EmptyNotAllowed);
        }
        self.check_group_data(&data)?;
        let group = group_id(self.groups.insert(GroupState {
            options,
            members: BTreeMap::new(),
            next_membership: 1,
            data,
        }));
        let mut punches = Vec::new();
        for &member in members {
            if !self.groups[group_key(group)].members.contains_key(&member) {
                self.add_member(group, member, &join_message, now, &mut punches);
            }
        }
        self.punch_all(punches, now);
        Ok(group)
    }

    /// Adds `host` to `group`. Every existing member is told of it, and the host is told
    /// of every member including itself (the server too, when it is a member); the join
    /// completes with [`ServerEvent::JoinAckComplete`] once all of them ack.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`] or [`GroupError::UnknownHost`].
    pub fn join_group(
        &mut self,
        group: GroupId,
        host: HostId,
        join_message: Bytes,
        now: Instant,
    ) -> Result<JoinOutcome, GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        if !self.is_connected(host) {
            return Err(GroupError::UnknownHost(host));
        }
        if state.members.contains_key(&host) {
            return Ok(JoinOutcome::AlreadyMember);
        }
        let mut punches = Vec::new();
        self.add_member(group, host, &join_message, now, &mut punches);
        self.punch_all(punches, now);
        Ok(JoinOutcome::Joined)
    }

    /// Removes `host` from `group`. Each remaining member is told, and the host is told of
    /// every member including itself; the leave completes with
    /// [`ServerEvent::LeaveAckComplete`] once all of them ack. A group without
    /// `allow_empty` is removed as it empties.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`] or [`GroupError::NotMember`].
    pub fn leave_group(
        &mut self,
        group: GroupId,
        host: HostId,
        now: Instant,
    ) -> Result<(), GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        if !state.members.contains_key(&host) {
            return Err(GroupError::NotMember { group, host });
        }
        self.remove_member(group, host, LeaveCause::Left, now);
        Ok(())
    }

    /// Ends a group: joins and leaves still waiting for acks in it end with
    /// `GroupDestroyed`, every member leaves (each leave completing when acked, as any
    /// leave), then [`ServerEvent::GroupRemoved`].
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn destroy_group(&mut self, group: GroupId, now: Instant) -> Result<(), GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        let members: Vec<HostId> = state.members.keys().copied().collect();
        for op in self.acks.in_group(group) {
            if let Some(op) = self.acks.remove(op) {
                self.finish(op, Ending::Destroyed);
            }
        }
        for member in members {
            self.remove_member(group, member, LeaveCause::Destroyed, now);
        }
        self.remove_group(group);
        Ok(())
    }

    /// Applies every change of `batch`, in order, or none. See [`MembershipBatch`].
    ///
    /// # Errors
    /// [`BatchError`] naming the first change that cannot be applied (after the earlier
    /// ones): [`GroupError::UnknownGroup`] (including a group an earlier leave emptied and
    /// so removed), [`GroupError::UnknownHost`], [`GroupError::NotMember`]. Nothing
    /// changes then.
    pub fn apply_batch(
        &mut self,
        batch: &MembershipBatch,
        now: Instant,
    ) -> Result<Vec<ChangeOutcome>, BatchError> {
        let outcomes = self.plan_batch(batch)?;
        // Every change was checked against the state the earlier ones leave, so none of
        // these can fail.
        let mut punches = Vec::new();
        for (change, outcome) in batch.changes.iter().zip(&outcomes) {
            match (change, outcome) {
                (
                    MembershipChange::Join {
                        group,
                        host,
                        join_message,
                    },
                    ChangeOutcome::Joined,
                ) => self.add_member(*group, *host, join_message, now, &mut punches),
                (MembershipChange::Leave { group, host }, ChangeOutcome::Left) => {
                    self.remove_member(*group, *host, LeaveCause::Left, now)
                }
                _ => {}
            }
        }
        // Punch orders after every notice, so each client's notices stay in one frame.
        self.punch_all(punches, now);
        Ok(outcomes)
    }

    /// Decides every change of a batch against the membership the earlier ones leave,
    /// changing nothing.
    fn plan_batch(&self, batch: &MembershipBatch) -> Result<Vec<ChangeOutcome>, BatchError> {
        // Membership and sizes as the batch changes them, over the registry's.
        let mut member: HashMap<(GroupId, HostId), bool> = HashMap::new();
        let mut sizes: HashMap<GroupId, usize> = HashMap::new();
        let mut emptied: HashSet<GroupId> = HashSet::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, change) in batch.changes.iter().enumerate() {
            let (group, host) = change.target();
            let refuse = |error| BatchError { index, error };
            let state = self
                .groups
                .get(group_key(group))
                .filter(|_| !emptied.contains(&group))
                .ok_or(refuse(GroupError::UnknownGroup(group)))?;
            if !self.is_connected(host) {
                return Err(refuse(GroupError::UnknownHost(host)));
            }
            let is_member = *member
                .entry((group, host))
                .or_insert_with(|| state.members.contains_key(&host));
            let size = sizes.entry(group).or_insert(state.members.len());
            let outcome = match change {
                MembershipChange::Join { .. } if is_member => ChangeOutcome::AlreadyMember,
                MembershipChange::Join { .. } => {
                    *size += 1;
                    ChangeOutcome::Joined
                }
                MembershipChange::Leave { .. } if !is_member => {
                    return Err(refuse(GroupError::NotMember { group, host }))
                }
                MembershipChange::Leave { .. } => {
                    *size -= 1;
                    if *size == 0 && !state.options.allow_empty {
                        emptied.insert(group);
                    }
                    ChangeOutcome::Left
                }
            };
            member.insert((group, host), outcome != ChangeOutcome::Left);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Sets `group`'s data; every member is told ([`Notice::GroupData`]), and later
    /// joiners see it on their own join notice.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], or [`GroupError::DataTooLarge`] over
    /// [`RegistryConfig::max_group_data_len`](super::RegistryConfig); nothing changes then.
    pub fn set_group_data(&mut self, group: GroupId, data: Bytes) -> Result<(), GroupError> {
        self.check_group_data(&data)?;
        let state = self
            .groups
            .get_mut(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        state.data = data.clone();
        let members: Vec<HostId> = state.members.keys().copied().collect();
        for member in members {
            let notice = Notice::GroupData {
                group,
                data: data.clone(),
            };
            self.notify(member, notice, NoticeOrder::AheadOfMessages, None);
        }
        Ok(())
    }

    /// Members of a group, with [`HostId::SERVER`] first when the server is a member.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError> {
        Ok(self.group_info(group)?.members)
    }

    /// Members, data and options of a group, as one consistent view.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn group_info(&self, group: GroupId) -> Result<GroupInfo, GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        let server = state.options.server_is_member.then_some(HostId::SERVER);
        Ok(GroupInfo {
            group,
            members: server
                .into_iter()
                .chain(state.members.keys().copied())
                .collect(),
            data: state.data.clone(),
            options: state.options,
        })
    }

    /// The options a group was made with.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    // Used by the rooms application's tests only (through the feature), not by this
    // crate's own.
    #[cfg(feature = "unstable-registry")]
    pub fn group_options(&self, group: GroupId) -> Result<GroupOptions, GroupError> {
        self.groups
            .get(group_key(group))
            .map(|g| g.options)
            .ok_or(GroupError::UnknownGroup(group))
    }

    /// Groups `host` is a member of.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`].
    pub fn groups_of(&self, host: HostId) -> Result<Vec<GroupId>, GroupError> {
        self.hosts
            .get(host_key(host))
            .map(|h| h.groups.iter().copied().collect())
            .ok_or(GroupError::UnknownHost(host))
    }

    /// Every group.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.keys().map(group_id).collect()
    }

    /// How many groups exist.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    // ---- internals -----------------------------------------------------------------------

    fn check_group_data(&self, data: &Bytes) -> Result<(), GroupError> {
        let max = self.config.max_group_data_len;
        if data.len() > max {
            return Err(GroupError::DataTooLarge {
                len: data.len(),
                max,
            });
        }
        Ok(())
    }

    /// Adds a host that is connected and not yet a member: notices, the pending join, and
    /// the pairs it starts (whose punch orders the caller sends after all notices).
    fn add_member(
        &mut self,
        group: GroupId,
        host: HostId,
        join_message: &Bytes,
        now: Instant,
        punches: &mut Vec<PairId>,
    ) {
        let state = &mut self.groups[group_key(group)];
        let existing: Vec<(HostId, u32)> = state.members.iter().map(|(h, m)| (*h, *m)).collect();
        let membership = state.next_membership;
        state.next_membership = state.next_membership.wrapping_add(1).max(1);
        state.members.insert(host, membership);
        let server_is_member = state.options.server_is_member;
        let direct = state.options.direct_p2p;
        let group_data = state.data.clone();
        let member_count = (existing.len() + 1 + usize::from(server_is_member)) as u32;
        self.hosts[host_key(host)].groups.insert(group);
        for &(other, _) in &existing {
            match self.pairs.add_shared_group(host, other, direct, now) {
                PairChange::Started(pair) => {
                    self.announce_pair(pair, host, other);
                    punches.push(pair);
                }
                PairChange::Kept(pair) => punches.push(pair),
            }
        }

        let op = self.start_op(OpKind::Join, group, host, now);
        let data_of = |registry: &Registry, member: HostId| {
            registry
                .hosts
                .get(host_key(member))
                .map(|h| h.data.clone())
                .unwrap_or_default()
        };
        let notice = |member: HostId,
                      membership: u32,
                      member_data: Bytes,
                      group_data: Option<Bytes>| Notice::MemberJoined {
            group,
            member,
            membership,
            member_count,
            join_message: join_message.clone(),
            member_data,
            group_data,
        };
        let host_data = data_of(self, host);
        for &(other, _) in &existing {
            let told = notice(host, membership, host_data.clone(), None);
            self.notify(other, told, NoticeOrder::AheadOfMessages, Some(op));
        }
        if server_is_member {
            let told = notice(HostId::SERVER, 0, Bytes::new(), None);
            self.notify(host, told, NoticeOrder::AheadOfMessages, None);
        }
        for &(other, other_membership) in &existing {
            let told = notice(other, other_membership, data_of(self, other), None);
            self.notify(host, told, NoticeOrder::AheadOfMessages, None);
        }
        // The joiner's notice about itself comes last, so its ack means it has read all.
        let told = notice(host, membership, host_data, Some(group_data));
        self.notify(host, told, NoticeOrder::AheadOfMessages, Some(op));
    }

    pub(super) fn remove_member(
        &mut self,
        group: GroupId,
        host: HostId,
        cause: LeaveCause,
        now: Instant,
    ) {
        let Some(state) = self.groups.get_mut(group_key(group)) else {
            return;
        };
        if state.members.remove(&host).is_none() {
            return;
        }
        let server_is_member = state.options.server_is_member;
        let allow_empty = state.options.allow_empty;
        let direct = state.options.direct_p2p;
        let remaining: Vec<HostId> = state.members.keys().copied().collect();
        let member_count = (remaining.len() + usize::from(server_is_member)) as u32;
        if let Some(h) = self.hosts.get_mut(host_key(host)) {
            h.groups.remove(&group);
        }

        // A join still waiting for acks ends first, so it is reported before the leave.
        if let Some(join) = self.acks.join_of(group, host) {
            if let Some(join) = self.acks.remove(join) {
                let ending = match cause {
                    LeaveCause::Left => Ending::Left,
                    LeaveCause::Destroyed => Ending::Destroyed,
                    LeaveCause::Disconnected => Ending::Disconnected,
                };
                self.finish(join, ending);
            }
        }

        let op = self.start_op(OpKind::Leave, group, host, now);
        let notice = |member: HostId| Notice::MemberLeft {
            group,
            member,
            member_count,
        };
        for &other in &remaining {
            // After every message the leaver had queued for this member.
            let order = NoticeOrder::AfterMessagesFrom(host);
            self.notify(other, notice(host), order, Some(op));
        }
        if cause != LeaveCause::Disconnected {
            // After everything queued for the leaver: nothing addressed to the group may
            // follow its own `MemberLeft`.
            let order = NoticeOrder::AfterAllMessages;
            if server_is_member {
                self.notify(host, notice(HostId::SERVER), order, None);
            }
            for &other in &remaining {
                self.notify(host, notice(other), order, None);
            }
            self.notify(host, notice(host), order, Some(op));
        }
        self.settle_if_untold(op);

        let linger_until = now + self.config.pair_linger;
        for &other in &remaining {
            if let Some((pair, at)) =
                self.pairs
                    .remove_shared_group(host, other, direct, linger_until)
            {
                self.timers.insert((at, Timer::PairLinger(pair)));
            }
        }

        if remaining.is_empty() && !allow_empty && cause != LeaveCause::Destroyed {
            self.remove_group(group);
        }
    }

    /// Removes an empty group. Leaves still waiting for acks keep waiting: the hosts were
    /// told and will ack.
    fn remove_group(&mut self, group: GroupId) {
        if self.groups.remove(group_key(group)).is_some() {
            self.event(ServerEvent::GroupRemoved { group });
        }
    }

    /// Tells both hosts of a new pair about each other, before any notice that needs it.
    fn announce_pair(&mut self, pair: PairId, a: HostId, b: HostId) {
        for (to, peer) in [(a, b), (b, a)] {
            let identity = self.hosts[host_key(peer)].identity;
            self.send(
                to,
                peergroup_protocol::ServerToClient::PeerUp {
                    peer,
                    pair,
                    info: peergroup_protocol::PeerInfo { identity },
                },
            );
        }
    }

    /// Punch orders go after the notices, so each side already knows the peer.
    fn punch_all(&mut self, pairs: Vec<PairId>, now: Instant) {
        let mut seen = HashSet::with_capacity(pairs.len());
        for pair in pairs {
            if seen.insert(pair) {
                self.maybe_punch(pair, now);
            }
        }
    }
}
