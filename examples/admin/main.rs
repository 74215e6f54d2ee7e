//! The server's management API as a walkthrough: creating and destroying groups, joins and
//! leaves with their ack completions, host and group data, a batched change, listing
//! clients and groups, pair stats and path changes, errors, and kicking. Each step prints
//! what it did and its result, and checks that result against what really happened: the
//! server's events, its listings, and what the clients say they were told.
//!
//! Run it (server and three clients, alice, bob and carol, in one process on loopback):
//!
//! ```text
//! cargo run --release --example admin
//! cargo run --release --example admin -- --demo     # JSON summary last, exit code = checks
//! ```
//!
//! Or split: the walkthrough runs in the server's process once the three clients have
//! connected from another process or machine (it waits up to two minutes for them), and
//! that process ends with it; the clients' process prints what they see and exits 0 if
//! carol was kicked with the walkthrough's reason and the others saw the server shut down:
//!
//! ```text
//! cargo run --release --example admin -- --server-only --listen 0.0.0.0:7700 --demo
//! cargo run --release --example admin -- --connect HOST:7700 --server-cert PATH
//! ```
//!
//! `--demo` prints `{"example":"admin","steps":n,"failed_steps":n}` as the last line and
//! exits 0 only if every step's check held.
//!
//! What to read: [`walkthrough`] below, top to bottom; each step is one call (or a few) of
//! the `Server` API, followed by how its result shows. `clients.rs` is the client side:
//! clients report what they see to the server application, so the walkthrough can check
//! it.

mod clients;
#[path = "../common/mod.rs"]
mod common;

use clap::Parser;
use clients::{Command, Seen};
use peergroup::client::{CloseCode, DisconnectReason as ClientDisconnect};
use peergroup::server::{
    decode, AuthDecision, AuthHook, ChangeOutcome, Delivery, DisconnectReason, GroupError, GroupId,
    GroupOptions, HostId, JoinOutcome, MembershipBatch, PairPath, Server, ServerEvent,
    ServerEvents, ServerTarget,
};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The walkthrough's clients; each logs in with its name.
const NAMES: [&str; 3] = ["alice", "bob", "carol"];
/// How long one expected event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole walkthrough may take once its clients are in.
const WALKTHROUGH_LIMIT: Duration = Duration::from_secs(60);
/// How long the walkthrough waits for its clients to connect from another process.
const SPLIT_CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// What carol is told when she is kicked.
const KICK_REASON: &str = "kicked by the admin walkthrough";

#[derive(Debug, Parser)]
#[command(about = "A walkthrough of the server's management API")]
struct Args {
    #[command(flatten)]
    network: common::Network,

    /// Print a JSON summary as the last line; exit 0 only if every step's check held.
    #[arg(long)]
    demo: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logs();
    let args = Args::parse();
    let outcome = if args.network.runs_server() {
        serve(&args).await
    } else {
        only_clients(&args).await
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("admin: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the server and the walkthrough (and the clients, unless `--server-only`).
async fn serve(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    // The login is the client's name; accepted, it becomes the client's host data, which
    // every member of its groups sees on its `MemberJoined`.
    let auth = AuthHook::from_fn(|request| {
        if request.login.is_empty() || request.login.len() > 32 {
            AuthDecision::reject("log in with a name of 1 to 32 bytes")
        } else {
            AuthDecision::accept_with_data(request.login)
        }
    });
    let hosted = args.network.start_server("admin", auth, |_| {}).await?;
    let (addr, trust) = args.network.target(Some(&hosted))?;
    let mut bots = HashMap::new();
    if args.network.runs_clients() {
        for name in NAMES {
            let trust = trust.clone();
            let bot = tokio::spawn(async move { clients::run(addr, &trust, name, false).await });
            bots.insert(name, bot);
        }
    }
    let connect_limit = if bots.is_empty() {
        SPLIT_CONNECT_TIMEOUT
    } else {
        EVENT_TIMEOUT
    };
    let server = hosted.server.clone();
    let mut watch = Watch::new(hosted.events);
    let mut steps = Steps::default();
    let walk = walkthrough(&server, &mut watch, &mut steps, &mut bots, connect_limit);
    let stopped = match tokio::time::timeout(connect_limit + WALKTHROUGH_LIMIT, walk).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some("it took too long".to_owned()),
    };
    if let Some(error) = stopped {
        println!("walkthrough stopped: {error}");
        steps.failed += 1;
    }

    // Clients left over if the walkthrough stopped early.
    server.shutdown();
    for (name, bot) in bots {
        if let Ok(Ok(Ok(reason))) = tokio::time::timeout(EVENT_TIMEOUT, bot).await {
            println!("{name}: {reason}");
        }
    }
    println!("{} steps, {} failed", steps.done, steps.failed);
    if args.demo {
        let summary = serde_json::json!({
            "example": "admin",
            "steps": steps.done,
            "failed_steps": steps.failed,
        });
        println!("{summary}");
    }
    Ok(steps.failed == 0)
}

/// `--connect`: runs the three clients against a walkthrough in another process, printing
/// what they see, until the server kicks them or shuts down.
async fn only_clients(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let (addr, trust) = args.network.target(None)?;
    let bots: Vec<_> = NAMES
        .into_iter()
        .map(|name| {
            let trust = trust.clone();
            tokio::spawn(async move { clients::run(addr, &trust, name, true).await })
        })
        .collect();
    // The walkthrough kicks carol, then shuts the server down, which ends the others.
    let mut as_expected = true;
    for (name, bot) in NAMES.into_iter().zip(bots) {
        let expected = |reason: &ClientDisconnect| match reason {
            ClientDisconnect::ServerClosed { code, reason } if name == "carol" => {
                *code == CloseCode::Kicked && reason == KICK_REASON
            }
            ClientDisconnect::ServerClosed { code, .. } => *code == CloseCode::ServerShutdown,
            _ => false,
        };
        match tokio::time::timeout(SPLIT_CONNECT_TIMEOUT, bot).await {
            Ok(Ok(Ok(reason))) if expected(&reason) => {}
            other => {
                println!("{name} ended unexpectedly: {other:?}");
                as_expected = false;
            }
        }
    }
    Ok(as_expected)
}

/// The walkthrough: every step of the management API, in the order one learns it.
async fn walkthrough(
    server: &Server,
    watch: &mut Watch,
    steps: &mut Steps,
    bots: &mut HashMap<&str, JoinHandle<Result<ClientDisconnect, String>>>,
    connect_limit: Duration,
) -> Result<(), String> {
    // Clients connect on their own: each passes the auth hook and the application gets
    // `ClientConnected` with the host data the hook gave it.
    let mut hosts = HashMap::new();
    while hosts.len() < NAMES.len() {
        let event = watch
            .event_within(connect_limit, "a client to connect", |e| {
                matches!(e, ServerEvent::ClientConnected { .. })
            })
            .await?;
        if let ServerEvent::ClientConnected { host, app_data, .. } = event {
            let name = String::from_utf8_lossy(&app_data).into_owned();
            println!("{host} connected as {name}");
            hosts.insert(name, host);
        }
    }
    let host = |name: &str| hosts.get(name).copied().ok_or(format!("no client {name}"));
    let (alice, bob, carol) = (host("alice")?, host("bob")?, host("carol")?);

    // 1. Listing clients: one consistent snapshot of every connected client.
    let result = async {
        let clients = server.clients();
        let mut listing = String::new();
        for info in &clients {
            listing += &format!(
                "\n    {} login {:?}, data {:?}, at {}, RTT {:.1?}, groups {:?}",
                info.host,
                String::from_utf8_lossy(&info.login),
                String::from_utf8_lossy(&info.data),
                info.remote_addr,
                info.rtt,
                info.groups
            );
        }
        ensure(
            clients.len() == 3,
            format!("{} clients listed", clients.len()),
        )?;
        ensure(
            clients.iter().all(|info| info.data == info.login),
            "host data differs from the login",
        )?;
        Ok(format!(
            "{} clients, each with its name as host data:{listing}",
            clients.len()
        ))
    }
    .await;
    steps.record("list the clients: server.clients()", result);

    // 2. Creating a group. It may start empty (`allow_empty`, the default), and carries
    //    data its members get on their own join notice.
    let lobby = server
        .create_group_with_data(&[], GroupOptions::default(), "lobby", "")
        .map_err(|e| e.to_string())?;
    let result = async {
        let info = server.group_info(lobby).map_err(|e| e.to_string())?;
        ensure(
            info.members.is_empty(),
            format!("members {:?}", info.members),
        )?;
        ensure(info.data == "lobby", "wrong data")?;
        ensure(info.options == GroupOptions::default(), "wrong options")?;
        Ok(format!(
            "{lobby}: no members, data \"lobby\", default options"
        ))
    }
    .await;
    steps.record(
        "create an empty group with data: create_group_with_data",
        result,
    );

    // 3. Joining. The joiner is told of every member, itself last, and every member of
    //    it; once all of them have acknowledged, `JoinAckComplete` arrives.
    let result = async {
        let started = Instant::now();
        let outcome = server
            .join_group(lobby, alice, "welcome, alice")
            .map_err(|e| e.to_string())?;
        ensure(outcome == JoinOutcome::Joined, format!("{outcome:?}"))?;
        watch.join_acked(lobby, alice).await?;
        let took = started.elapsed();
        watch
            .seen(alice, "her own MemberJoined", |seen| {
                matches!(seen, Seen::MemberJoined { group, member, member_data, group_data, join_message }
                    if *group == lobby && *member == alice && member_data == "alice"
                        && group_data.as_deref() == Some("lobby") && join_message == "welcome, alice")
            })
            .await?;
        Ok(format!(
            "JoinAckComplete Ok in {}; alice saw MemberJoined with her data, the group's \
             data and the join message",
            ms(took)
        ))
    }
    .await;
    steps.record(
        &format!("join alice ({alice}) to {lobby}: join_group"),
        result,
    );

    // 4. A second member: both sides learn of each other, each with the other's host
    //    data (here, the name).
    let result = async {
        let started = Instant::now();
        server
            .join_group(lobby, bob, "welcome, bob")
            .map_err(|e| e.to_string())?;
        watch.join_acked(lobby, bob).await?;
        let took = started.elapsed();
        watch
            .seen(alice, "bob's MemberJoined", |seen| {
                matches!(seen, Seen::MemberJoined { group, member, member_data, .. }
                    if *group == lobby && *member == bob && member_data == "bob")
            })
            .await?;
        watch
            .seen(bob, "alice's MemberJoined", |seen| {
                matches!(seen, Seen::MemberJoined { group, member, member_data, .. }
                    if *group == lobby && *member == alice && member_data == "alice")
            })
            .await?;
        Ok(format!(
            "JoinAckComplete Ok in {}; alice saw bob join, bob saw alice (with names)",
            ms(took)
        ))
    }
    .await;
    steps.record(&format!("join bob ({bob}) to {lobby}"), result);

    // 5. Joining twice is not an error: it answers `AlreadyMember` and sends nothing.
    let result = async {
        let outcome = server
            .join_group(lobby, bob, "again")
            .map_err(|e| e.to_string())?;
        ensure(
            outcome == JoinOutcome::AlreadyMember,
            format!("{outcome:?}"),
        )?;
        Ok("AlreadyMember".to_owned())
    }
    .await;
    steps.record("join bob again", result);

    // 6. A group's members, data and options, as one snapshot.
    let result = async {
        let info = server.group_info(lobby).map_err(|e| e.to_string())?;
        ensure(
            info.members == sorted([alice, bob]),
            format!("members {:?}", info.members),
        )?;
        Ok(format!("members {:?}", info.members))
    }
    .await;
    steps.record(&format!("group_info({lobby})"), result);

    // 7. Two hosts sharing a group with `direct_p2p` (the default) punch: the server
    //    coordinates, and the application gets `PairPathChanged` when the pair goes direct.
    let result =
        async {
            let event = watch
                .event("alice and bob's PairPathChanged", |e| {
                    matches!(e, ServerEvent::PairPathChanged { a, b, .. }
                    if sorted([*a, *b]) == sorted([alice, bob]))
                })
                .await?;
            let ServerEvent::PairPathChanged { path, reason, .. } = event else {
                unreachable!("matched above")
            };
            ensure(path == PairPath::Direct, format!("{path:?}"))?;
            watch
            .seen(bob, "his PathChanged to alice", |seen| {
                matches!(seen, Seen::PathChanged { peer, direct: true } if *peer == alice)
            })
            .await?;
            let stats = server
                .pair_stats(alice, bob)
                .ok_or("no pair between alice and bob")?;
            ensure(stats.path == PairPath::Direct, format!("{stats:?}"))?;
            Ok(format!(
                "PairPathChanged {path:?} ({reason:?}); pair_stats: {} shared group(s), {} punch \
             attempt(s), {} message(s) relayed",
                stats.shared_groups, stats.punch_attempts, stats.relayed
            ))
        }
        .await;
    steps.record(
        "alice and bob go direct: PairPathChanged, pair_stats",
        result,
    );

    // 8. Messages: the server application sends to a whole group; clients send to each
    //    other, here over their direct path.
    let result =
        async {
            let say = Command::Say("the lobby opens at noon".into());
            server
                .send_message(ServerTarget::Group(lobby), &say, Delivery::ReliableOrdered)
                .map_err(|e| e.to_string())?;
            for member in [alice, bob] {
                watch
                .seen(member, "the server's message", |seen| {
                    matches!(seen, Seen::Message { from, .. } if *from == HostId::SERVER)
                })
                .await?;
            }
            let send = Command::Send {
                to: bob,
                text: "hi bob".into(),
            };
            server
                .send_message(ServerTarget::Host(alice), &send, Delivery::ReliableOrdered)
                .map_err(|e| e.to_string())?;
            let seen = watch
                .seen(
                    bob,
                    "alice's message",
                    |seen| matches!(seen, Seen::Message { from, .. } if *from == alice),
                )
                .await?;
            ensure(
                matches!(&seen, Seen::Message { text, direct: true, .. } if text == "hi bob"),
                format!("{seen:?}"),
            )?;
            Ok("both members got the server's message; alice's reached bob directly".to_owned())
        }
        .await;
    steps.record(
        "send_message to a group; a client's message on the direct path",
        result,
    );

    // 9. Host data: changed by the application, seen by the host and everyone sharing a
    //    group with it.
    let result = async {
        server
            .set_host_data(alice, "alice (captain)")
            .map_err(|e| e.to_string())?;
        for member in [alice, bob] {
            watch
                .seen(member, "alice's HostDataChanged", |seen| {
                    matches!(seen, Seen::HostDataChanged { host, data }
                        if *host == alice && data == "alice (captain)")
                })
                .await?;
        }
        let info = server.host_info(alice).ok_or("alice is not listed")?;
        ensure(info.data == "alice (captain)", "host_info has the old data")?;
        Ok("alice and bob saw HostDataChanged; host_info has the new data".to_owned())
    }
    .await;
    steps.record("set_host_data(alice)", result);

    // 10. Group data: every member gets `GroupDataChanged`.
    let result = async {
        server
            .set_group_data(lobby, "lobby, map: harbor")
            .map_err(|e| e.to_string())?;
        for member in [alice, bob] {
            watch
                .seen(member, "GroupDataChanged", |seen| {
                    matches!(seen, Seen::GroupDataChanged { group, data }
                        if *group == lobby && data == "lobby, map: harbor")
                })
                .await?;
        }
        Ok("alice and bob saw GroupDataChanged".to_owned())
    }
    .await;
    steps.record(&format!("set_group_data({lobby})"), result);

    // 11. Creating a group with its first members in one call.
    let arena = server
        .create_group(&[carol], GroupOptions::default(), "")
        .map_err(|e| e.to_string())?;
    let result = async {
        watch.join_acked(arena, carol).await?;
        Ok(format!("{arena} with carol; JoinAckComplete Ok"))
    }
    .await;
    steps.record("create a group with a member: create_group", result);

    // 12. A batch: many joins and leaves across groups, applied in order, all or nothing.
    //     Each client gets its notices in one frame; each change still completes on its own.
    let result = async {
        let frames_before = server.stats().notice_frames_sent;
        let mut batch = MembershipBatch::new();
        batch
            .leave(lobby, bob)
            .join(arena, bob, "")
            .join(lobby, carol, "");
        let outcomes = server
            .change_membership(&batch)
            .map_err(|e| e.to_string())?;
        ensure(
            outcomes
                == [
                    ChangeOutcome::Left,
                    ChangeOutcome::Joined,
                    ChangeOutcome::Joined,
                ],
            format!("{outcomes:?}"),
        )?;
        watch.leave_acked(lobby, bob).await?;
        watch.join_acked(arena, bob).await?;
        watch.join_acked(lobby, carol).await?;
        let frames = server.stats().notice_frames_sent - frames_before;
        let lobby_members = server.group_members(lobby).map_err(|e| e.to_string())?;
        let arena_members = server.group_members(arena).map_err(|e| e.to_string())?;
        ensure(
            lobby_members == sorted([alice, carol]),
            format!("{lobby}: {lobby_members:?}"),
        )?;
        ensure(
            arena_members == sorted([bob, carol]),
            format!("{arena}: {arena_members:?}"),
        )?;
        Ok(format!(
            "{outcomes:?}; three completions Ok; {frames} notice frame(s); {lobby} \
             {lobby_members:?}, {arena} {arena_members:?}"
        ))
    }
    .await;
    steps.record(
        "batch: bob moves from the lobby to the arena, carol joins the lobby: change_membership",
        result,
    );

    // 13. A batch with one change that cannot apply changes nothing, and says which.
    let result = async {
        let mut batch = MembershipBatch::new();
        batch
            .join(arena, alice, "")
            .leave(arena, alice)
            .leave(arena, alice);
        let error = match server.change_membership(&batch) {
            Err(error) => error,
            Ok(outcomes) => return Err(format!("applied: {outcomes:?}")),
        };
        ensure(
            error.index == 2 && matches!(error.error, GroupError::NotMember { .. }),
            format!("{error}"),
        )?;
        let members = server.group_members(arena).map_err(|e| e.to_string())?;
        ensure(
            members == sorted([bob, carol]),
            format!("{arena} changed: {members:?}"),
        )?;
        Ok(format!("refused: {error}; {arena} unchanged"))
    }
    .await;
    steps.record(
        "a batch that cannot apply: join, leave, leave again",
        result,
    );

    // 14. Leaving. The others get `MemberLeft` for the leaver; the leaver gets it for
    //     every member, itself last; then `LeaveAckComplete`.
    let result = async {
        let started = Instant::now();
        server.leave_group(lobby, alice).map_err(|e| e.to_string())?;
        watch.leave_acked(lobby, alice).await?;
        let took = started.elapsed();
        for member in [alice, carol] {
            watch
                .seen(member, "alice's MemberLeft", |seen| {
                    matches!(seen, Seen::MemberLeft { group, member } if *group == lobby && *member == alice)
                })
                .await?;
        }
        Ok(format!(
            "LeaveAckComplete Ok in {}; alice and carol saw her leave",
            ms(took)
        ))
    }
    .await;
    steps.record(&format!("alice leaves {lobby}: leave_group"), result);

    // 15. Listings after all that: who is where, and the server's counters.
    let result = async {
        let groups = server.groups();
        let stats = server.stats();
        let mut listing = String::new();
        for info in server.clients() {
            listing += &format!(
                "\n    {} {}: groups {:?}, {} direct and {} relayed pair(s)",
                info.host,
                String::from_utf8_lossy(&info.login),
                info.groups,
                info.direct_pairs,
                info.relayed_pairs
            );
        }
        ensure(
            groups == sorted([lobby, arena]),
            format!("groups {groups:?}"),
        )?;
        ensure(
            server.groups_of(carol).map_err(|e| e.to_string())? == sorted([lobby, arena]),
            "carol's groups",
        )?;
        ensure(
            stats.clients == 3 && stats.groups == 2,
            format!("{stats:?}"),
        )?;
        Ok(format!(
            "groups {groups:?}; carol in both; stats: {} clients, {} groups, {} pairs ({} \
             direct), {} messages relayed:{listing}",
            stats.clients, stats.groups, stats.pairs, stats.direct_pairs, stats.relayed
        ))
    }
    .await;
    steps.record(
        "list groups and clients: groups, groups_of, clients, stats",
        result,
    );

    // 16. Per-host punch records, for a matchmaker.
    let result = async {
        let punch = server.punch_stats(alice).ok_or("alice is not connected")?;
        ensure(punch.direct >= 1, format!("{punch:?}"))?;
        Ok(format!(
            "alice: {} order(s), {} direct, {} no response, {} declined",
            punch.orders, punch.direct, punch.no_response, punch.declined
        ))
    }
    .await;
    steps.record("punch_stats(alice)", result);

    // 17. Destroying a group: every member leaves (each leave completes as any leave
    //     does), then `GroupRemoved`.
    let result = async {
        server.destroy_group(arena).map_err(|e| e.to_string())?;
        watch.leave_acked(arena, bob).await?;
        watch.leave_acked(arena, carol).await?;
        watch
            .event("GroupRemoved", |e| {
                matches!(e, ServerEvent::GroupRemoved { group } if *group == arena)
            })
            .await?;
        watch
            .seen(bob, "his own MemberLeft", |seen| {
                matches!(seen, Seen::MemberLeft { group, member } if *group == arena && *member == bob)
            })
            .await?;
        let gone = server.group_info(arena);
        ensure(
            gone == Err(GroupError::UnknownGroup(arena)),
            format!("{gone:?}"),
        )?;
        Ok("two LeaveAckComplete Ok, GroupRemoved; group_info answers UnknownGroup".to_owned())
    }
    .await;
    steps.record(&format!("destroy {arena}: destroy_group"), result);

    // 18. Mistakes are errors, and change nothing.
    let result = async {
        let unknown = server.join_group(arena, alice, "");
        ensure(
            unknown == Err(GroupError::UnknownGroup(arena)),
            format!("{unknown:?}"),
        )?;
        let too_big = server.set_host_data(alice, vec![b'x'; 2048]);
        ensure(
            matches!(too_big, Err(GroupError::DataTooLarge { .. })),
            format!("{too_big:?}"),
        )?;
        let info = server.host_info(alice).ok_or("alice is not listed")?;
        ensure(info.data == "alice (captain)", "alice's data changed")?;
        Ok(format!(
            "{}; {}",
            unknown.unwrap_err(),
            too_big.unwrap_err()
        ))
    }
    .await;
    steps.record("join a destroyed group; host data over its limit", result);

    // 19. Kicking: the client sees `Disconnected` with close code `Kicked` and the reason,
    //     the application `ClientDisconnected` with `Kicked`, and the client leaves its
    //     groups as any disconnect does.
    let result = async {
        server
            .disconnect(carol, KICK_REASON)
            .map_err(|e| e.to_string())?;
        let event = watch
            .event(
                "carol's ClientDisconnected",
                |e| matches!(e, ServerEvent::ClientDisconnected { host, .. } if *host == carol),
            )
            .await?;
        ensure(
            matches!(
                event,
                ServerEvent::ClientDisconnected {
                    reason: DisconnectReason::Kicked,
                    ..
                }
            ),
            format!("{event:?}"),
        )?;
        watch.leave_acked(lobby, carol).await?;
        ensure(server.host_info(carol).is_none(), "carol is still listed")?;
        let members = server.group_members(lobby).map_err(|e| e.to_string())?;
        ensure(members.is_empty(), format!("{lobby}: {members:?}"))?;
        // Her own view, when she runs in this process.
        let Some(bot) = bots.remove("carol") else {
            return Ok("ClientDisconnected Kicked; carol's view is in the clients' process".into());
        };
        let seen = tokio::time::timeout(EVENT_TIMEOUT, bot)
            .await
            .map_err(|_| "carol never saw Disconnected".to_owned())?
            .map_err(|e| e.to_string())??;
        let expected = ClientDisconnect::ServerClosed {
            code: CloseCode::Kicked,
            reason: KICK_REASON.into(),
        };
        ensure(seen == expected, format!("carol saw {seen:?}"))?;
        Ok(format!(
            "ClientDisconnected Kicked; carol left {lobby} (LeaveAckComplete Ok); she saw: {seen}"
        ))
    }
    .await;
    steps.record("kick carol: disconnect", result);

    // 20. Shutting down closes every connection with `ServerShutdown`, and the event
    //     stream ends once what was queued has been read. (Disconnects that follow the
    //     shutdown need not reach the application: the stream may end first.)
    let result = async {
        server.shutdown();
        watch.until_end().await?;
        let mut seen = Vec::new();
        for name in ["alice", "bob"] {
            // Their own view, when they run in this process.
            let Some(bot) = bots.remove(name) else {
                continue;
            };
            let reason = tokio::time::timeout(EVENT_TIMEOUT, bot)
                .await
                .map_err(|_| format!("{name} never saw Disconnected"))?
                .map_err(|e| e.to_string())??;
            ensure(
                matches!(
                    &reason,
                    ClientDisconnect::ServerClosed {
                        code: CloseCode::ServerShutdown,
                        ..
                    }
                ),
                format!("{name} saw {reason:?}"),
            )?;
            seen.push(name);
        }
        Ok(format!(
            "the event stream ended; {} saw Disconnected with ServerShutdown",
            if seen.is_empty() {
                "the clients' process shows who".to_owned()
            } else {
                seen.join(" and ")
            }
        ))
    }
    .await;
    steps.record("shut down: server.shutdown()", result);
    Ok(())
}

/// The steps so far.
#[derive(Debug, Default)]
struct Steps {
    done: u32,
    failed: u32,
}

impl Steps {
    /// Prints a finished step with its result, or why its check failed.
    fn record(&mut self, title: &str, result: Result<String, String>) {
        self.done += 1;
        match result {
            Ok(result) => println!("step {}: {title} -> {result}", self.done),
            Err(error) => {
                self.failed += 1;
                println!("step {}: {title} -> CHECK FAILED: {error}", self.done);
            }
        }
    }
}

/// Ids in the order listings use (by id).
fn sorted<T: Ord, const N: usize>(mut ids: [T; N]) -> Vec<T> {
    ids.sort();
    ids.into()
}

fn ensure(holds: bool, otherwise: impl Into<String>) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(otherwise.into())
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

/// The server's events, read as the walkthrough waits for them. Events nobody waited for
/// yet are kept, so a step may look for one that arrived during an earlier step; each is
/// taken once. Clients' [`Seen`] reports arrive as messages and are kept apart.
struct Watch {
    events: ServerEvents,
    pending: Vec<ServerEvent>,
    seen: Vec<(HostId, Seen)>,
}

impl Watch {
    fn new(events: ServerEvents) -> Self {
        Self {
            events,
            pending: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Takes the first event that `wanted` matches, waiting up to [`EVENT_TIMEOUT`].
    async fn event(
        &mut self,
        what: &str,
        wanted: impl FnMut(&ServerEvent) -> bool,
    ) -> Result<ServerEvent, String> {
        self.event_within(EVENT_TIMEOUT, what, wanted).await
    }

    async fn event_within(
        &mut self,
        limit: Duration,
        what: &str,
        mut wanted: impl FnMut(&ServerEvent) -> bool,
    ) -> Result<ServerEvent, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.pending.iter().position(&mut wanted) {
                return Ok(self.pending.remove(i));
            }
            self.read(deadline, what).await?;
        }
    }

    /// Takes the first report from `host` that `wanted` matches.
    async fn seen(
        &mut self,
        host: HostId,
        what: &str,
        mut wanted: impl FnMut(&Seen) -> bool,
    ) -> Result<Seen, String> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let found = self
                .seen
                .iter()
                .position(|(from, seen)| *from == host && wanted(seen));
            if let Some(i) = found {
                return Ok(self.seen.remove(i).1);
            }
            self.read(deadline, &format!("{host} to report {what}"))
                .await?;
        }
    }

    /// Waits for `member`'s join into `group` to complete, and checks it completed `Ok`.
    async fn join_acked(&mut self, group: GroupId, member: HostId) -> Result<(), String> {
        let event = self
            .event("JoinAckComplete", |e| {
                matches!(e, ServerEvent::JoinAckComplete { group: g, member: m, .. } if *g == group && *m == member)
            })
            .await?;
        match event {
            ServerEvent::JoinAckComplete { result: Ok(()), .. } => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Waits for `member`'s leave from `group` to complete, and checks it completed `Ok`.
    async fn leave_acked(&mut self, group: GroupId, member: HostId) -> Result<(), String> {
        let event = self
            .event("LeaveAckComplete", |e| {
                matches!(e, ServerEvent::LeaveAckComplete { group: g, member: m, .. } if *g == group && *m == member)
            })
            .await?;
        match event {
            ServerEvent::LeaveAckComplete { result: Ok(()), .. } => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Reads (and drops) events until the stream ends, as it does after a shutdown.
    async fn until_end(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while tokio::time::timeout_at(deadline, self.events.next())
            .await
            .map_err(|_| "the event stream did not end".to_owned())?
            .is_some()
        {}
        Ok(())
    }

    /// Reads one event, filing it as pending or as a client's report.
    async fn read(&mut self, deadline: tokio::time::Instant, what: &str) -> Result<(), String> {
        let event = tokio::time::timeout_at(deadline, self.events.next())
            .await
            .map_err(|_| format!("no {what} in time"))?
            .ok_or("the server shut down")?;
        match event {
            ServerEvent::Message { from, payload, .. } => match decode::<Seen>(&payload) {
                Ok(seen) => self.seen.push((from, seen)),
                Err(error) => println!("    {from} sent something else: {error}"),
            },
            other => self.pending.push(other),
        }
        Ok(())
    }
}
