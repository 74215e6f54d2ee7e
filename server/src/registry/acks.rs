//! Pending acknowledgements of membership notices: joins and leaves.
//!
//! When host M joins group G, every existing member and M itself get a notice about M; when
//! M leaves, every remaining member and M get one. The operation completes once every host
//! that was told has acknowledged (ProudNet's `OnP2PGroupJoinMemberAckComplete`, extended
//! to leaves). See `ARCHITECTURE.md`, "Membership notices and acks".
//!
//! Acks are cumulative: each host numbers the notices it was sent from 1 and acks "the
//! first N", so one ack frame covers a whole batch. Each host keeps a queue of (notice
//! number, operation) for the notices an operation waits on, and an operation keeps only a
//! count of the acks it still needs, so an ack costs O(notices it covers) and starting an
//! operation allocates nothing per member beyond the queue entry.

use peergroup_protocol::{GroupId, HostId};
use slotmap::SlotMap;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

slotmap::new_key_type! {
    /// One pending join or leave.
    pub(crate) struct OpKey;
}

/// What an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Join,
    Leave,
}

/// One operation waiting for acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub kind: OpKind,
    pub group: GroupId,
    pub member: HostId,
    /// Acks still needed.
    remaining: u32,
    pub deadline: Instant,
    /// Numbers operations in the order they started (their member's index is in it).
    order: u64,
}

/// One host's side of the numbering: notices sent, acked, and the ones operations wait on.
#[derive(Debug, Default)]
pub(crate) struct NoticeLog {
    sent: u64,
    acked: u64,
    /// (notice number, operation), in notice order.
    owed: VecDeque<(u64, OpKey)>,
}

impl NoticeLog {
    /// Numbers the next notice sent to this host.
    pub fn next(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// Notices sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Notices acknowledged so far (the highest cumulative ack).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Notices sent and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent - self.acked
    }
}

/// A client acknowledged membership notices it was never sent: a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("acknowledged {acked} membership notices but only {sent} were sent")]
pub struct AckBeyondSent {
    /// The count it acked.
    pub acked: u64,
    /// Notices sent to it.
    pub sent: u64,
}

/// Every join and leave waiting for acks.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    ops: SlotMap<OpKey, Op>,
    /// Pending operations by their member, in the order they started, to end them when
    /// it leaves or disconnects: ending one costs O(log n) of its member's, not a scan.
    by_member: HashMap<HostId, BTreeMap<u64, OpKey>, foldhash::fast::RandomState>,
    /// The pending join of each member into each group (there is at most one).
    joins: HashMap<(GroupId, HostId), OpKey, foldhash::fast::RandomState>,
    /// The next operation's `order`.
    next_order: u64,
}

impl PendingAcks {
    /// Starts an operation; acks are added with [`PendingAcks::owe`].
    pub fn start(
        &mut self,
        kind: OpKind,
        group: GroupId,
        member: HostId,
        deadline: Instant,
    ) -> OpKey {
        let order = self.next_order;
        self.next_order += 1;
        let key = self.ops.insert(Op {
            kind,
            group,
            member,
            remaining: 0,
            deadline,
            order,
        });
        self.by_member.entry(member).or_default().insert(order, key);
        if kind == OpKind::Join {
            self.joins.insert((group, member), key);
        }
        key
    }

    /// `op` waits for the host whose log is `log` to ack notice number `notice`.
    pub fn owe(&mut self, op: OpKey, log: &mut NoticeLog, notice: u64) {
        if let Some(state) = self.ops.get_mut(op) {
            state.remaining += 1;
            log.owed.push_back((notice, op));
        }
    }

    /// Whether `op` still waits for an ack.
    pub fn is_waiting(&self, op: OpKey) -> bool {
        self.ops.get(op).is_some_and(|o| o.remaining > 0)
    }

    /// The host acked its first `upto` notices: the operations this completed, in the
    /// order their last ack arrived, go to `completed`.
    ///
    /// An ack of fewer notices than an earlier one changes nothing.
    ///
    /// # Errors
    /// [`AckBeyondSent`] when it acks notices that were never sent (nothing changes).
    pub fn ack(
        &mut self,
        log: &mut NoticeLog,
        upto: u64,
        completed: &mut Vec<Op>,
    ) -> Result<(), AckBeyondSent> {
        if upto > log.sent {
            return Err(AckBeyondSent {
                acked: upto,
                sent: log.sent,
            });
        }
        log.acked = log.acked.max(upto);
        while let Some(&(notice, op)) = log.owed.front() {
            if notice > upto {
                break;
            }
            log.owed.pop_front();
            self.release(op, completed);
        }
        Ok(())
    }

    /// The host is gone: it owes nothing any more (operations that waited only on it
    /// complete).
    pub fn forget_host(&mut self, log: &mut NoticeLog, completed: &mut Vec<Op>) {
        while let Some((_, op)) = log.owed.pop_front() {
            self.release(op, completed);
        }
    }

    fn release(&mut self, op: OpKey, completed: &mut Vec<Op>) {
        let Some(state) = self.ops.get_mut(op) else {
            // Ended already (cancelled or timed out).
            return;
        };
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining == 0 {
            if let Some(done) = self.remove(op) {
                completed.push(done);
            }
        }
    }

    /// Ends `op` without completing it; `None` if it had ended already.
    pub fn remove(&mut self, op: OpKey) -> Option<Op> {
        let state = self.ops.remove(op)?;
        if let Some(keys) = self.by_member.get_mut(&state.member) {
            keys.remove(&state.order);
            if keys.is_empty() {
                self.by_member.remove(&state.member);
            }
        }
        if state.kind == OpKind::Join && self.joins.get(&(state.group, state.member)) == Some(&op) {
            self.joins.remove(&(state.group, state.member));
        }
        Some(state)
    }

    /// Ends `op` if its deadline is at or before `now`.
    pub fn expire(&mut self, op: OpKey, now: Instant) -> Option<Op> {
        let due = self.ops.get(op).is_some_and(|o| o.deadline <= now);
        if due {
            self.remove(op)
        } else {
            None
        }
    }

    /// The pending join of `member` into `group`, if any (there is at most one: a second
    /// join needs a leave first, which ends it).
    pub fn join_of(&self, group: GroupId, member: HostId) -> Option<OpKey> {
        self.joins.get(&(group, member)).copied()
    }

    /// Pending operations whose member is `member`, oldest first.
    pub fn of_member(&self, member: HostId) -> Vec<OpKey> {
        self.by_member
            .get(&member)
            .map(|ops| ops.values().copied().collect())
            .unwrap_or_default()
    }

    /// Pending operations in `group`, oldest first. O(pending operations): for the rare
    /// destroy.
    pub fn in_group(&self, group: GroupId) -> Vec<OpKey> {
        self.ops
            .iter()
            .filter(|(_, o)| o.group == group)
            .map(|(k, _)| k)
            .collect()
    }

    /// The operation, if still pending.
    #[cfg(test)]
    pub fn get(&self, op: OpKey) -> Option<&Op> {
        self.ops.get(op)
    }

    /// Operations pending now.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const G: GroupId = GroupId::from_raw(5);
    const M: HostId = HostId::from_raw(100);

    fn start(acks: &mut PendingAcks, now: Instant) -> OpKey {
        acks.start(OpKind::Join, G, M, now + Duration::from_secs(15))
    }

    #[test]
    fn completes_when_every_owed_notice_is_acked_cumulatively() {
        let now = Instant::now();
        let mut acks = PendingAcks::default();
        let (mut m, mut e) = (NoticeLog::default(), NoticeLog::default());
        let op = start(&mut acks, now);
        // The member gets two notices and owes the last; the existing member owes one.
        m.next();
        let last = m.next();
        acks.owe(op, &mut m, last);
        let n = e.next();
        acks.owe(op, &mut e, n);

        let mut done = Vec::new();
        acks.ack(&mut m, 1, &mut done).unwrap();
        assert!(done.is_empty(), "the first notice is not the one owed");
        acks.ack(&mut m, 2, &mut done).unwrap();
        assert!(done.is_empty(), "still waiting for the other member");
        assert!(acks.is_waiting(op));
        acks.ack(&mut e, 1, &mut done).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].kind, done[0].group, done[0].member),
            (OpKind::Join, G, M)
        );
        assert_eq!(acks.len(), 0);
        assert!(acks.of_member(M).is_empty(), "the index forgets it too");
    }

    #[test]
    fn one_ack_completes_many_operations_in_notice_order() {
        let now = Instant::now();
        let mut acks = PendingAcks::default();
        let mut log = NoticeLog::default();
        let ops: Vec<OpKey> = (0..3)
            .map(|i| {
                let op = acks.start(OpKind::Leave, G, HostId::from_raw(10 + i), now);
                let n = log.next();
                acks.owe(op, &mut log, n);
                op
            })
            .collect();
        let mut done = Vec::new();
        acks.ack(&mut log, 3, &mut done).unwrap();
        let members: Vec<u64> = done.iter().map(|o| o.member.raw()).collect();
        assert_eq!(members, [10, 11, 12]);
        assert!(ops.iter().all(|op| acks.get(*op).is_none()));
    }

    #[test]
    fn acks_beyond_what_was_sent_are_refused_and_old_acks_change_nothing() {
        let now = Instant::now();
        let mut acks = PendingAcks::default();
        let mut log = NoticeLog::default();
        let op = start(&mut acks, now);
        let n = log.next();
        acks.owe(op, &mut log, n);
        let mut done = Vec::new();
        assert_eq!(
            acks.ack(&mut log, 2, &mut done),
            Err(AckBeyondSent { acked: 2, sent: 1 })
        );
        assert!(acks.is_waiting(op), "a refused ack changes nothing");
        acks.ack(&mut log, 0, &mut done).unwrap();
        assert!(acks.is_waiting(op));
        acks.ack(&mut log, 1, &mut done).unwrap();
        assert_eq!(done.len(), 1);
        acks.ack(&mut log, 1, &mut done).unwrap();
        assert_eq!(done.len(), 1, "a repeated ack counts once");
        assert_eq!(log.unacked(), 0);
    }

    #[test]
    fn a_departed_acker_releases_what_it_owed_and_removed_operations_stay_ended() {
        let now = Instant::now();
        let mut acks = PendingAcks::default();
        let (mut gone, mut other) = (NoticeLog::default(), NoticeLog::default());
        let first = start(&mut acks, now);
        let n = gone.next();
        acks.owe(first, &mut gone, n);
        let second = acks.start(OpKind::Leave, G, HostId::from_raw(7), now);
        let n = gone.next();
        acks.owe(second, &mut gone, n);
        let n = other.next();
        acks.owe(second, &mut other, n);
        assert!(acks.remove(first).is_some(), "cancelled");

        let mut done = Vec::new();
        acks.forget_host(&mut gone, &mut done);
        assert!(done.is_empty(), "the second still waits for the other host");
        acks.ack(&mut other, 1, &mut done).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].member, HostId::from_raw(7));
    }

    #[test]
    fn expiry_respects_the_deadline_and_lookups_find_pending_joins() {
        let now = Instant::now();
        let mut acks = PendingAcks::default();
        let op = start(&mut acks, now);
        assert_eq!(acks.join_of(G, M), Some(op));
        assert_eq!(acks.in_group(G), vec![op]);
        assert!(acks.expire(op, now).is_none(), "not due yet");
        assert!(acks.expire(op, now + Duration::from_secs(15)).is_some());
        assert_eq!(acks.join_of(G, M), None);
    }

    #[test]
    fn a_members_operations_stay_oldest_first_as_any_of_them_end() {
        // Issue 12, finding 11: ending an operation scanned its member's list, and finding
        // a member's pending join copied it, so a client in n groups cost O(n^2) to
        // disconnect (20,000 groups: 755 ms, now 45 ms, and 83 ms for 40,000).
        let now = Instant::now();
        let mut acks = PendingAcks::default();
        let groups: Vec<GroupId> = (1..=50).map(|g| GroupId::from_raw(g << 32 | 1)).collect();
        let ops: Vec<OpKey> = groups
            .iter()
            .map(|g| acks.start(OpKind::Join, *g, M, now))
            .collect();
        for (n, op) in ops.iter().enumerate() {
            if n % 2 == 1 {
                assert!(acks.remove(*op).is_some());
            }
        }
        let left: Vec<OpKey> = ops.iter().copied().step_by(2).collect();
        assert_eq!(acks.of_member(M), left, "oldest first");
        assert_eq!(acks.join_of(groups[2], M), Some(ops[2]));
        assert_eq!(acks.join_of(groups[3], M), None, "ended");
        let leave = acks.start(OpKind::Leave, groups[2], M, now);
        assert_eq!(
            acks.join_of(groups[2], M),
            Some(ops[2]),
            "a leave is no join"
        );
        assert_eq!(acks.of_member(M).last(), Some(&leave));
        for op in acks.of_member(M) {
            acks.remove(op);
        }
        assert!(acks.of_member(M).is_empty());
        assert_eq!(acks.join_of(groups[0], M), None);
    }
}
