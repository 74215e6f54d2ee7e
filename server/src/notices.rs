//! Gathers the membership notices one registry operation produced into as few frames as
//! possible: one [`ServerToClient::Notices`] frame per client, however many joins and
//! leaves of a batch concern it (split only when a frame would grow past
//! [`FRAME_BUDGET`]). The client acks each frame's notices with one message.
//!
//! Order within a host is kept: notices leave in the order the registry numbered them, and
//! any other frame for that host (apart from a `PeerUp`, which only has to precede the
//! notices about its peer) first flushes the notices gathered before it.

use crate::registry::NoticeOrder;
use peergroup_protocol::{HostId, Notice};
use std::collections::HashMap;

/// Bytes of notices gathered into one frame at most (estimated), so a large batch never
/// approaches the frame limit and a slow client reads it in pieces.
pub(crate) const FRAME_BUDGET: usize = 64 << 10;

/// Fixed bytes counted per notice besides its payloads: variant, ids, count, lengths.
const NOTICE_OVERHEAD: usize = 48;

/// The notices gathered for one host, and which queued messages the frame must wait for.
#[derive(Debug, Default)]
pub(crate) struct PendingFrame {
    pub notices: Vec<Notice>,
    /// Senders whose queued messages go first.
    pub after_senders: Vec<HostId>,
    /// Whether every queued message goes first.
    pub after_everything: bool,
    bytes: usize,
}

impl PendingFrame {
    fn add(&mut self, notice: Notice, order: NoticeOrder) {
        self.bytes += estimated_len(&notice);
        self.notices.push(notice);
        match order {
            NoticeOrder::AheadOfMessages => {}
            NoticeOrder::AfterMessagesFrom(sender) => {
                if !self.after_senders.contains(&sender) {
                    self.after_senders.push(sender);
                }
            }
            NoticeOrder::AfterAllMessages => self.after_everything = true,
        }
    }
}

fn estimated_len(notice: &Notice) -> usize {
    NOTICE_OVERHEAD
        + match notice {
            Notice::MemberJoined {
                join_message,
                member_data,
                group_data,
                ..
            } => {
                join_message.len() + member_data.len() + group_data.as_ref().map_or(0, |d| d.len())
            }
            Notice::HostData { data, .. } | Notice::GroupData { data, .. } => data.len(),
            Notice::MemberLeft { .. } => 0,
        }
}

/// One dispatch's notices, per host.
#[derive(Debug, Default)]
pub(crate) struct NoticeFrames {
    pending: HashMap<HostId, PendingFrame>,
}

impl NoticeFrames {
    /// Adds a notice for `to`; returns a full frame to send first when this one would
    /// overflow [`FRAME_BUDGET`].
    pub fn add(&mut self, to: HostId, notice: Notice, order: NoticeOrder) -> Option<PendingFrame> {
        let frame = self.pending.entry(to).or_default();
        let full = (!frame.notices.is_empty()
            && frame.bytes + estimated_len(&notice) > FRAME_BUDGET)
            .then(|| std::mem::take(frame));
        frame.add(notice, order);
        full
    }

    /// The notices gathered for `to` so far, to send before another frame for it.
    pub fn take(&mut self, to: HostId) -> Option<PendingFrame> {
        self.pending.remove(&to)
    }

    /// Everything gathered, at the end of the dispatch.
    pub fn drain(&mut self) -> impl Iterator<Item = (HostId, PendingFrame)> + '_ {
        self.pending.drain()
    }

    /// Whether nothing is gathered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use peergroup_protocol::GroupId;

    fn left(member: u64) -> Notice {
        Notice::MemberLeft {
            group: GroupId::from_raw(1),
            member: HostId::from_raw(member),
            member_count: 1,
        }
    }

    #[test]
    fn one_frame_per_host_keeping_order_and_the_strictest_placement() {
        let (a, b) = (HostId::from_raw(10), HostId::from_raw(20));
        let mut frames = NoticeFrames::default();
        assert!(frames
            .add(a, left(1), NoticeOrder::AheadOfMessages)
            .is_none());
        assert!(frames
            .add(b, left(2), NoticeOrder::AfterMessagesFrom(b))
            .is_none());
        assert!(frames
            .add(a, left(3), NoticeOrder::AfterMessagesFrom(b))
            .is_none());
        assert!(frames
            .add(a, left(4), NoticeOrder::AfterMessagesFrom(b))
            .is_none());
        let to_a = frames.take(a).unwrap();
        assert_eq!(to_a.notices, vec![left(1), left(3), left(4)]);
        assert_eq!(to_a.after_senders, vec![b], "each sender once");
        assert!(!to_a.after_everything);
        assert!(frames.take(a).is_none());
        assert_eq!(frames.drain().count(), 1, "b's frame is left");
        assert!(frames.is_empty());
    }

    #[test]
    fn a_frame_that_would_pass_the_budget_is_handed_back_first() {
        let a = HostId::from_raw(10);
        let big = Notice::HostData {
            host: a,
            data: Bytes::from(vec![0; FRAME_BUDGET / 2]),
        };
        let mut frames = NoticeFrames::default();
        assert!(frames
            .add(a, big.clone(), NoticeOrder::AheadOfMessages)
            .is_none());
        let full = frames.add(a, big.clone(), NoticeOrder::AheadOfMessages);
        assert_eq!(full.map(|f| f.notices.len()), Some(1));
        assert_eq!(frames.take(a).map(|f| f.notices.len()), Some(1));
    }
}
