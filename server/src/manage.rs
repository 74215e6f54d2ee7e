//! The server application's management API on [`Server`]: groups and membership (one at a
//! time or in batches), host and group data, the client and group listings, kicking.
//!
//! Every call takes the core lock once, so what it changes or reports is one consistent
//! state; changes are carried out (notices queued) before the call returns, and their
//! completions arrive later as [`ServerEvent`](crate::ServerEvent)s.

use crate::error::GroupError;
use crate::events::DisconnectReason;
use crate::registry::{
    BatchError, ChangeOutcome, GroupInfo, GroupOptions, JoinOutcome, MembershipBatch,
    MembershipChange,
};
use crate::server::Server;
use bytes::Bytes;
use peergroup_protocol::{CloseCode, Fingerprint, GroupId, HostId};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// What the server knows of one connected client: one consistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Its id.
    pub host: HostId,
    /// The address the server sees (its NAT mapping).
    pub remote_addr: SocketAddr,
    /// SHA-256 of its identity certificate.
    pub identity: Fingerprint,
    /// The login payload it sent.
    pub login: Bytes,
    /// Its host data: what the auth hook attached, or what [`Server::set_host_data`] set
    /// since.
    pub data: Bytes,
    /// Groups it is a member of, in id order.
    pub groups: Vec<GroupId>,
    /// Its pairs whose traffic takes a direct path.
    pub direct_pairs: u32,
    /// Its pairs whose traffic takes the relay (lingering pairs included).
    pub relayed_pairs: u32,
    /// When it logged in (wall clock).
    pub connected_at: SystemTime,
    /// Smoothed RTT of its server connection (on WebSocket, measured by pings every half
    /// idle timeout; zero until the first pong).
    pub rtt: Duration,
    /// Its connection's carrier: QUIC, or the WebSocket fallback (whose pairs stay on
    /// the relay).
    pub transport: crate::Transport,
    /// Bytes waiting in the server's queue to this client (not yet handed to QUIC). Stays
    /// under twice `Limits::client_queue_bytes`: past that the client is disconnected.
    pub queued_bytes: usize,
    /// Membership notices sent to it so far (each entry of a `Notices` frame counts one).
    pub notices_sent: u64,
    /// Of those, how many it has acknowledged: `notices_sent - notices_acked` notices
    /// wait for its ack.
    pub notices_acked: u64,
}

impl Server {
    /// Creates a group with empty data and joins `members` in order. See
    /// [`Server::create_group_with_data`].
    ///
    /// # Errors
    /// As [`Server::create_group_with_data`].
    pub fn create_group(
        &self,
        members: &[HostId],
        options: GroupOptions,
        join_message: impl Into<Bytes>,
    ) -> Result<GroupId, GroupError> {
        self.create_group_with_data(members, options, Bytes::new(), join_message)
    }

    /// Creates a group carrying `data` (members see it on their own `MemberJoined`, and
    /// are told when [`Server::set_group_data`] changes it) and joins `members` in order,
    /// each as [`Server::join_group`] does.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`] if any member is not connected,
    /// [`GroupError::EmptyNotAllowed`] for no members without `allow_empty`,
    /// [`GroupError::DataTooLarge`] when `data` is over [`Limits::max_group_data_len`]
    /// (default 4 KiB) or the join message over [`Limits::max_message_len`],
    /// [`GroupError::EventBacklog`] while the application has too many events unread.
    /// Nothing changes then.
    ///
    /// [`Limits::max_group_data_len`]: crate::Limits::max_group_data_len
    /// [`Limits::max_message_len`]: crate::Limits::max_message_len
    pub fn create_group_with_data(
        &self,
        members: &[HostId],
        options: GroupOptions,
        data: impl Into<Bytes>,
        join_message: impl Into<Bytes>,
    ) -> Result<GroupId, GroupError> {
        let (data, join_message) = (data.into(), join_message.into());
        self.check_event_room()?;
        self.check_join_message(&join_message)?;
        self.shared
            .with_core(|core| {
                core.registry
                    .create_group(members, options, data, join_message, Instant::now())
            })
            .0
    }

    /// Adds `host` to `group`. Existing members get `MemberJoined` for it (with its host
    /// data); it gets `MemberJoined` for every member including itself, last (each with
    /// that member's data, and the group's data on its own). `join_message` is on every
    /// notice of this join. When all have acked,
    /// [`ServerEvent::JoinAckComplete`](crate::ServerEvent::JoinAckComplete) follows.
    /// Joining a group the host is already in answers [`JoinOutcome::AlreadyMember`] and
    /// sends nothing.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], [`GroupError::UnknownHost`],
    /// [`GroupError::DataTooLarge`] for a join message over
    /// [`Limits::max_message_len`](crate::Limits::max_message_len),
    /// [`GroupError::EventBacklog`] while the application has too many events unread.
    pub fn join_group(
        &self,
        group: GroupId,
        host: HostId,
        join_message: impl Into<Bytes>,
    ) -> Result<JoinOutcome, GroupError> {
        let join_message = join_message.into();
        self.check_event_room()?;
        self.check_join_message(&join_message)?;
        self.shared
            .with_core(|core| {
                core.registry
                    .join_group(group, host, join_message, Instant::now())
            })
            .0
    }

    /// Removes `host` from `group`. The remaining members get `MemberLeft` for it, after
    /// every message it sent them before; it gets `MemberLeft` for every member, itself
    /// last, after everything queued for it. When all have acked,
    /// [`ServerEvent::LeaveAckComplete`](crate::ServerEvent::LeaveAckComplete) follows.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], [`GroupError::NotMember`],
    /// [`GroupError::EventBacklog`] while the application has too many events unread.
    pub fn leave_group(&self, group: GroupId, host: HostId) -> Result<(), GroupError> {
        self.check_event_room()?;
        self.shared
            .with_core(|core| core.registry.leave_group(group, host, Instant::now()))
            .0
    }

    /// Ends a group: joins and leaves in it still waiting for acks complete with
    /// `GroupDestroyed`, every member leaves (each leave completing as any leave does),
    /// then [`ServerEvent::GroupRemoved`](crate::ServerEvent::GroupRemoved).
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], [`GroupError::EventBacklog`] while the application
    /// has too many events unread.
    pub fn destroy_group(&self, group: GroupId) -> Result<(), GroupError> {
        self.check_event_room()?;
        self.shared
            .with_core(|core| core.registry.destroy_group(group, Instant::now()))
            .0
    }

    /// Applies a batch of joins and leaves across groups, all or nothing (see
    /// [`MembershipBatch`]): each client gets the notices it is owed in one frame, and
    /// each join and leave still completes with its own event. Returns what each change
    /// did, in order.
    ///
    /// # Errors
    /// [`BatchError`] with the index of the first change that cannot be applied and why
    /// ([`GroupError::UnknownGroup`], [`GroupError::UnknownHost`],
    /// [`GroupError::NotMember`], [`GroupError::DataTooLarge`] for a join message), or
    /// index 0 with [`GroupError::EventBacklog`] while the application has too many
    /// events unread; nothing changes then.
    pub fn change_membership(
        &self,
        batch: &MembershipBatch,
    ) -> Result<Vec<ChangeOutcome>, BatchError> {
        self.check_event_room()
            .map_err(|error| BatchError { index: 0, error })?;
        for (index, change) in batch.changes().iter().enumerate() {
            if let MembershipChange::Join { join_message, .. } = change {
                self.check_join_message(join_message)
                    .map_err(|error| BatchError { index, error })?;
            }
        }
        self.shared
            .with_core(|core| core.registry.apply_batch(batch, Instant::now()))
            .0
    }

    /// Sets a client's host data. It and every host sharing a group with it get
    /// `HostDataChanged`; later joiners see it on their `MemberJoined` notices.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`]; [`GroupError::DataTooLarge`] over
    /// [`Limits::max_host_data_len`](crate::Limits::max_host_data_len) (default 1 KiB).
    /// Nothing changes then.
    pub fn set_host_data(&self, host: HostId, data: impl Into<Bytes>) -> Result<(), GroupError> {
        let data = data.into();
        self.shared
            .with_core(|core| core.registry.set_host_data(host, data))
            .0
    }

    /// Sets a group's data; every member gets `GroupDataChanged`.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`]; [`GroupError::DataTooLarge`] over
    /// [`Limits::max_group_data_len`](crate::Limits::max_group_data_len) (default 4 KiB).
    /// Nothing changes then.
    pub fn set_group_data(&self, group: GroupId, data: impl Into<Bytes>) -> Result<(), GroupError> {
        let data = data.into();
        self.shared
            .with_core(|core| core.registry.set_group_data(group, data))
            .0
    }

    /// Members of a group ([`HostId::SERVER`] first when the server is a member).
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError> {
        self.shared.lock().registry.group_members(group)
    }

    /// A group's members, data and options, as one consistent snapshot.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn group_info(&self, group: GroupId) -> Result<GroupInfo, GroupError> {
        self.shared.lock().registry.group_info(group)
    }

    /// Groups a client is in.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`].
    pub fn groups_of(&self, host: HostId) -> Result<Vec<GroupId>, GroupError> {
        self.shared.lock().registry.groups_of(host)
    }

    /// Every group.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared.lock().registry.groups()
    }

    /// What the server knows about a connected client; `None` if it is not connected.
    pub fn host_info(&self, host: HostId) -> Option<HostInfo> {
        let core = self.shared.lock();
        host_info(&core, host)
    }

    /// Every connected client, in id order, as one consistent snapshot.
    pub fn clients(&self) -> Vec<HostInfo> {
        let core = self.shared.lock();
        let mut hosts = core.registry.hosts();
        hosts.sort_unstable();
        hosts
            .into_iter()
            .filter_map(|host| host_info(&core, host))
            .collect()
    }

    /// Every pair of clients (sharing a group now, or lingering after their last one) as
    /// `(a, b, stats)` with `a` the lower id, in no particular order, as one consistent
    /// snapshot: the server's side of ProudNet's `GetP2PConnectionStats` for all pairs.
    pub fn pairs(&self) -> Vec<(HostId, HostId, crate::PairStats)> {
        self.shared.lock().registry.all_pair_stats()
    }

    /// Disconnects a client: it sees `Disconnected` with close code `Kicked` and
    /// `reason`; the application gets `ClientDisconnected` with
    /// [`DisconnectReason::Kicked`].
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`].
    pub fn disconnect(&self, host: HostId, reason: &str) -> Result<(), GroupError> {
        let mut core = self.shared.lock();
        let link = core.links.get(&host).ok_or(GroupError::UnknownHost(host))?;
        let offline = link.offline.is_some();
        link.close(CloseCode::Kicked, DisconnectReason::Kicked, reason);
        if offline {
            // Removed by the task that keeps it; no resume may take it back meanwhile.
            core.registry.end_resume(host);
        }
        Ok(())
    }

    /// New group operations wait for the application to read its events (see
    /// [`Limits::app_event_queue`](crate::Limits::app_event_queue)).
    fn check_event_room(&self) -> Result<(), GroupError> {
        if self.shared.events.has_room() {
            Ok(())
        } else {
            Err(GroupError::EventBacklog {
                queued: self.shared.events.queued(),
            })
        }
    }

    fn check_join_message(&self, join_message: &Bytes) -> Result<(), GroupError> {
        let max = self.shared.limits.max_message_len as usize;
        if join_message.len() > max {
            return Err(GroupError::DataTooLarge {
                len: join_message.len(),
                max,
            });
        }
        Ok(())
    }
}

fn host_info(core: &crate::shared::Core, host: HostId) -> Option<HostInfo> {
    let link = core.links.get(&host)?;
    let summary = core.registry.host_summary(host)?;
    Some(HostInfo {
        host,
        remote_addr: link.remote_addr,
        identity: link.identity,
        login: link.login.clone(),
        data: summary.data,
        groups: summary.groups,
        direct_pairs: summary.direct_pairs,
        relayed_pairs: summary.relayed_pairs,
        connected_at: link.connected_at,
        rtt: link.wire.rtt(),
        transport: link.wire.transport(),
        queued_bytes: link.outbound.queued_bytes(),
        notices_sent: summary.notices_sent,
        notices_acked: summary.notices_acked,
    })
}
