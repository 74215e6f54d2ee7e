//! Pending join acknowledgements.
//!
//! When host M joins group G, every existing member and M itself receive a notice about M
//! and acknowledge it. The join is complete when all of them have (ProudNet's
//! `OnP2PGroupJoinMemberAckComplete`). A member that leaves or disconnects meanwhile no
//! longer owes an ack; M leaving, the group's end, M's disconnect or the timeout end the
//! join with an error instead.

use peergroup_protocol::{GroupId, HostId};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// One join waiting for acks.
#[derive(Debug)]
struct PendingJoin {
    waiting_on: BTreeSet<HostId>,
    deadline: Instant,
}

/// All joins waiting for acks.
#[derive(Debug, Default)]
pub(crate) struct PendingJoins {
    joins: HashMap<(GroupId, HostId), PendingJoin>,
}

impl PendingJoins {
    /// Starts waiting for `waiting_on` to ack the notice about `member` joining `group`.
    pub fn start(
        &mut self,
        group: GroupId,
        member: HostId,
        waiting_on: BTreeSet<HostId>,
        deadline: Instant,
    ) {
        self.joins.insert(
            (group, member),
            PendingJoin {
                waiting_on,
                deadline,
            },
        );
    }

    /// Records `from`'s ack. Returns true when this completed the join.
    pub fn ack(&mut self, group: GroupId, member: HostId, from: HostId) -> bool {
        let Some(join) = self.joins.get_mut(&(group, member)) else {
            return false;
        };
        if !join.waiting_on.remove(&from) || !join.waiting_on.is_empty() {
            return false;
        }
        self.joins.remove(&(group, member));
        true
    }

    /// Ends the join of `member` into `group` without completing it. Returns whether one
    /// was pending.
    pub fn cancel(&mut self, group: GroupId, member: HostId) -> bool {
        self.joins.remove(&(group, member)).is_some()
    }

    /// `host` no longer owes acks in `group`. Returns the joins this completed.
    pub fn forget_acker(&mut self, group: GroupId, host: HostId) -> Vec<HostId> {
        let mut completed = Vec::new();
        self.joins.retain(|&(g, member), join| {
            if g != group || !join.waiting_on.remove(&host) || !join.waiting_on.is_empty() {
                return true;
            }
            completed.push(member);
            false
        });
        completed.sort();
        completed
    }

    /// Ends the join of `member` into `group` if its deadline has passed.
    pub fn expire(&mut self, group: GroupId, member: HostId, now: Instant) -> bool {
        let due = matches!(self.joins.get(&(group, member)), Some(j) if j.deadline <= now);
        if due {
            self.joins.remove(&(group, member));
        }
        due
    }

    /// Whether the join of `member` into `group` is still waiting.
    #[cfg(test)]
    pub fn is_pending(&self, group: GroupId, member: HostId) -> bool {
        self.joins.contains_key(&(group, member))
    }

    /// Pending joins in `group`, by member.
    pub fn members_pending_in(&self, group: GroupId) -> Vec<HostId> {
        let mut members: Vec<HostId> = self
            .joins
            .keys()
            .filter(|(g, _)| *g == group)
            .map(|(_, m)| *m)
            .collect();
        members.sort();
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const G: GroupId = GroupId::from_raw(5);
    const M: HostId = HostId::from_raw(100);
    const E: HostId = HostId::from_raw(200);

    #[test]
    fn completes_only_when_every_ack_is_in_and_ignores_strangers() {
        let now = Instant::now();
        let mut joins = PendingJoins::default();
        joins.start(G, M, [M, E].into(), now);
        assert!(!joins.ack(G, M, HostId::from_raw(999)), "not owed");
        assert!(!joins.ack(G, M, M));
        assert!(!joins.ack(G, M, M), "a repeated ack counts once");
        assert!(joins.ack(G, M, E));
        assert!(!joins.is_pending(G, M));
    }

    #[test]
    fn a_departed_acker_can_complete_a_join() {
        let now = Instant::now();
        let mut joins = PendingJoins::default();
        joins.start(G, M, [M, E].into(), now);
        joins.ack(G, M, M);
        assert_eq!(joins.forget_acker(G, E), vec![M]);
    }

    #[test]
    fn expiry_respects_the_deadline() {
        let now = Instant::now();
        let mut joins = PendingJoins::default();
        joins.start(G, M, [E].into(), now + Duration::from_secs(15));
        assert!(!joins.expire(G, M, now));
        assert!(joins.expire(G, M, now + Duration::from_secs(15)));
    }
}
