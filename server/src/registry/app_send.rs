//! The server application's messages to clients: numbered per client and lane, and queued
//! as actions like every other frame, so the registry orders everything a client receives.

use super::{host_key, Action, Registry};
use bytes::Bytes;
use peergroup_protocol::{Carrier, GroupId, HostId, Priority, ServerDatagram, ServerToClient};

impl Registry {
    /// Sends one message from the server application to each host of `to` that is
    /// connected (others are skipped: the driver checks its targets first), as
    /// [`ServerToClient::FromServer`] on a [`Carrier::Stream`] lane (an
    /// [`Action::SendData`] per host at `priority`, from [`HostId::SERVER`]; a queued
    /// [`Lane::Latest`](peergroup_protocol::Lane::Latest) value with the same key is
    /// replaced) or as a [`ServerDatagram::Deliver`] on a [`Carrier::Datagram`] lane (one
    /// [`Action::AppDatagram`] for every host). `group` is the group the application
    /// addressed, if any. Each host numbers the application's messages per lane from 1
    /// (unnumbered datagram lanes carry 0).
    ///
    /// Sizes are the driver's to check: it knows the frame limit and each path's datagram
    /// size.
    pub fn handle_app_send(
        &mut self,
        to: &[HostId],
        group: Option<GroupId>,
        carrier: Carrier,
        priority: Priority,
        payload: Bytes,
    ) {
        match carrier {
            Carrier::Stream(lane) => {
                for &host in to {
                    let Some(state) = self.hosts.get_mut(host_key(host)) else {
                        continue;
                    };
                    let seq = state.app_lanes.next(lane);
                    self.actions.push_back(Action::SendData {
                        to: host,
                        message: ServerToClient::FromServer {
                            group,
                            lane,
                            seq,
                            payload: payload.clone(),
                        },
                        priority,
                        from: HostId::SERVER,
                        latest: lane.latest_key(),
                    });
                }
            }
            Carrier::Datagram(lane) => {
                let recipients: Vec<(HostId, u64)> = to
                    .iter()
                    .filter_map(|&host| {
                        let state = self.hosts.get_mut(host_key(host))?;
                        Some((host, state.app_lanes.next_datagram(lane)))
                    })
                    .collect();
                if recipients.is_empty() {
                    return;
                }
                self.actions.push_back(Action::AppDatagram {
                    to: recipients,
                    message: ServerDatagram::Deliver {
                        from: HostId::SERVER,
                        group,
                        lane,
                        seq: 0,
                        payload,
                    },
                });
            }
        }
    }
}
