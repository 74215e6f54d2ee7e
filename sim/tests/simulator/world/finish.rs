//! The end-of-run checks, once everything settled: every join and leave completed, every
//! client's view of its groups, memberships and pairs agrees with the registry, and every
//! reliable message arrived. Kept apart because these checks read the whole world at once,
//! unlike the checks made as events happen.

use super::World;
use peergroup_protocol::{GroupId, HostId};
use std::collections::BTreeSet;

impl World {
    /// The checks once everything settled: every op completed, every client's view of
    /// its groups and peers agrees with the registry, every reliable message arrived.
    pub(super) fn finish(&mut self) {
        self.check_pairs();
        if !self.oracle.violations.is_empty() {
            return;
        }
        let mut problems = Vec::new();
        for ((group, member), ops) in &self.pending_joins {
            if !ops.is_empty() {
                problems.push(format!("a join of {member} to {group} never completed"));
            }
        }
        for ((group, member), ops) in &self.pending_leaves {
            if !ops.is_empty() {
                problems.push(format!("a leave of {member} from {group} never completed"));
            }
        }
        if self.registry.pending_acks() != 0 {
            problems.push(format!(
                "{} joins and leaves still wait for acks",
                self.registry.pending_acks()
            ));
        }
        for (&host, client) in &self.clients {
            let server_groups: BTreeSet<GroupId> = self
                .registry
                .groups_of(host)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let view = self.oracle.view_of(host);
            let told: BTreeSet<GroupId> = view.keys().copied().collect();
            if told != server_groups {
                problems.push(format!(
                    "{host} was told it is in {told:?}, the server has it in {server_groups:?}"
                ));
            }
            let session_groups: BTreeSet<GroupId> = client.session.groups().into_iter().collect();
            if session_groups != server_groups {
                problems.push(format!(
                    "{host}'s session is in {session_groups:?}, the server has it in {server_groups:?}"
                ));
            }
            for (&group, told_members) in &view {
                let members: BTreeSet<HostId> = self
                    .registry
                    .group_members(group)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                if *told_members != members {
                    problems.push(format!(
                        "{host} was told {group} has {told_members:?}, the server has {members:?}"
                    ));
                }
                let session: BTreeSet<HostId> = client
                    .session
                    .group_members(group)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                if session != members {
                    problems.push(format!(
                        "{host}'s session has {group} as {session:?}, the server has {members:?}"
                    ));
                }
            }
            // Pairs: exactly the hosts it shares a group with, the lingering ones gone.
            let sharing: BTreeSet<HostId> = self
                .clients
                .keys()
                .copied()
                .filter(|&other| {
                    other != host
                        && self
                            .registry
                            .groups_of(other)
                            .unwrap_or_default()
                            .iter()
                            .any(|g| server_groups.contains(g))
                })
                .collect();
            let peers: BTreeSet<HostId> = client.session.peers().into_iter().collect();
            if peers != sharing {
                problems.push(format!(
                    "{host} has peers {peers:?}, but shares groups with {sharing:?}"
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
        let connected: BTreeSet<HostId> = self.clients.keys().copied().collect();
        self.oracle.check_complete(&connected);
    }
}
