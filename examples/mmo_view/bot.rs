//! A bot: it wanders, publishes its position to its view group ten times a second, and
//! checks that the bots it hears are exactly the bots the server put it in view of.

use crate::world::{Position, Report, ToServer, Walker, TICK_HZ};
use peergroup::client::{
    decode, Client, ClientConfig, ClientEvent, Delivery, GroupId, HostId, Priority, SendError,
    Target,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// A peer in view must have been heard from this recently. It publishes every 100 ms, so
/// this is 25 updates: generous enough that a busy machine (a debug build sharing two
/// cores with other work) is not taken for a wrong view, while a peer whose positions
/// stop arriving is still caught.
const FRESH: Duration = Duration::from_millis(2500);
/// A peer whose in-view state changed less than this long ago is not judged yet: notices
/// and positions are still in flight, and the last position from a peer that left must
/// have aged past [`FRESH`].
const STABLE: Duration = Duration::from_millis(3000);

/// Runs one bot until `stop`, then reports to the server and returns the same report.
pub async fn run(
    config: ClientConfig,
    mut walker: Walker,
    settle: Duration,
    stop: CancellationToken,
) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let (client, mut events) = Client::connect(config).await?;
    let me = client.host_id();
    let started = Instant::now();
    let mut view = ViewCheck::default();
    let mut my_group = None;
    let mut publish = tokio::time::interval(Duration::from_secs(1) / TICK_HZ);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    // Missed ticks are skipped, not made up in a burst.
    publish.set_missed_tick_behavior(MissedTickBehavior::Skip);
    check.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = publish.tick() => {
                walker.step();
                if let Some(group) = my_group {
                    // Latest: a newer position replaces one still queued for a slow
                    // watcher; High: positions overtake bulk traffic. Never wait for room
                    // (this loop also reads the events): a position that finds a queue
                    // full is skipped, and the next tick sends a newer one.
                    let options = Delivery::Latest { key: 0 }.with_priority(Priority::High);
                    match client.try_send_message(Target::Group(group), &walker.at, options) {
                        Ok(()) | Err(SendError::QueueFull) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            _ = check.tick(), if started.elapsed() >= settle => {
                // Judge the view only with every event that has arrived taken in.
                while let Some(event) = events.try_next() {
                    handle(&mut view, &mut my_group, me, event)?;
                }
                view.check(me);
            }
            event = events.next() => match event {
                Some(event) => handle(&mut view, &mut my_group, me, event)?,
                None => return Err(format!("{me}: events ended").into()),
            },
        }
    }
    let report = view.report;
    client
        .send_message(
            Target::Server,
            &ToServer::Report(report),
            Delivery::ReliableOrdered,
        )
        .await?;
    client.close().await;
    Ok(report)
}

/// Takes one event into the bot's view of the world.
fn handle(
    view: &mut ViewCheck,
    my_group: &mut Option<GroupId>,
    me: HostId,
    event: ClientEvent,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match event {
        ClientEvent::MemberJoined {
            group,
            member,
            group_data: Some(owner),
            ..
        } if member == me => {
            // Every view group's data names its owner (see the server).
            let owner: HostId = std::str::from_utf8(&owner)?.parse()?;
            if owner == me {
                *my_group = Some(group);
            } else {
                view.entered(group, owner);
            }
        }
        ClientEvent::MemberLeft { group, member, .. } if member == me => view.left(group),
        ClientEvent::Message {
            from,
            group: Some(group),
            payload,
            ..
        } => {
            let position: Position = decode(&payload)?;
            view.heard(from, group, position);
        }
        ClientEvent::Disconnected { reason } => {
            return Err(format!("{me} disconnected: {reason}").into());
        }
        _ => {}
    }
    Ok(())
}

/// What a bot knows of its view and what it heard.
#[derive(Default)]
struct ViewCheck {
    /// View groups this bot is in, with their owners.
    groups: HashMap<GroupId, HostId>,
    /// Owners whose view this bot is in now.
    in_view: HashSet<HostId>,
    /// When each peer last entered or left this bot's view.
    changed: HashMap<HostId, Instant>,
    /// When each peer was last heard.
    heard: HashMap<HostId, Instant>,
    report: Report,
}

impl ViewCheck {
    fn entered(&mut self, group: GroupId, owner: HostId) {
        self.groups.insert(group, owner);
        self.in_view.insert(owner);
        self.changed.insert(owner, Instant::now());
    }

    fn left(&mut self, group: GroupId) {
        if let Some(owner) = self.groups.remove(&group) {
            self.in_view.remove(&owner);
            self.changed.insert(owner, Instant::now());
        }
    }

    fn heard(&mut self, from: HostId, group: GroupId, _at: Position) {
        self.report.position_updates += 1;
        // Only a view group's owner publishes to it; the server stamped `from`.
        if self.groups.get(&group) != Some(&from) {
            tracing::warn!(%from, %group, "a position from someone else's view group");
            self.report.view_mismatches += 1;
        }
        self.heard.insert(from, Instant::now());
    }

    /// Every peer whose in-view state has been stable for a while: heard recently if and
    /// only if the server has this bot in its view.
    fn check(&mut self, me: HostId) {
        let now = Instant::now();
        let peers: HashSet<HostId> = self
            .in_view
            .iter()
            .chain(self.heard.keys())
            .copied()
            .collect();
        for peer in peers {
            let stable = self
                .changed
                .get(&peer)
                .is_none_or(|at| now.duration_since(*at) >= STABLE);
            if !stable {
                continue;
            }
            let fresh = self
                .heard
                .get(&peer)
                .is_some_and(|at| now.duration_since(*at) < FRESH);
            let expected = self.in_view.contains(&peer);
            self.report.view_checks += 1;
            if fresh != expected {
                tracing::warn!(%me, %peer, expected, fresh, "view mismatch");
                self.report.view_mismatches += 1;
            }
        }
    }
}
