//! A whole-system simulator for peergroup: many client sessions and the server's registry,
//! wired together over simulated links on a virtual clock, driven through thousands of
//! seeded random scenarios whose every guarantee is checked.
//!
//! # Model
//! - **Clock**: one real `Instant` taken at start plus a simulated offset
//!   ([`net::Clock`]); every `handle_*`/`poll_*` of the registry and the sessions gets
//!   `now` from it, so a run takes as long as its events do to compute, not its
//!   simulated seconds, and depends on nothing but its seed.
//! - **Events**: one queue ordered by delivery time, ties by insertion
//!   ([`net::EventQueue`]). The loop takes the earliest of the next event, the registry's
//!   `poll_timeout` and every session's `poll_timeout`, runs it, and lets every writer
//!   take what its link allows (the quinn-proto `Pair` harness style: both ends in one
//!   thread, stepping a shared clock).
//! - **Client ↔ server**: each client has a main and a control stream up (separate QUIC
//!   streams, so they may overtake each other) and one stream down, each a
//!   [`net::StreamWriter`]: the shared scheduler's queue (notices first, priorities by
//!   deficit round robin, latest values replaced in place) drained at the link's
//!   bandwidth, frames arriving in order after latency and jitter, never lost. Datagrams
//!   both ways are lost at the link's rate and may overtake each other.
//! - **Server driver**: the registry's actions carried out as `server/src/shared.rs`
//!   does: notices gathered into one frame per host and queued ahead of messages or
//!   behind the senders' (or all) messages as their order says, `PeerDown` behind its
//!   peer's messages, punch orders with start delays from both RTTs, sequenced datagrams
//!   numbered per receiver.
//! - **Client driver**: each session's uploads go to the queue the real driver uses:
//!   control, main, datagram, direct queue (with the sent-order
//!   log handed to the session before each ack, and replaced latest values reported with
//!   `forget_replaced`), direct datagrams. Stalled links and ended pairs close their
//!   connection; a reader the session pauses holds its arrivals until resumed.
//! - **Punching**: each host sits behind a NAT ([`world::Nat`]: open, port-restricted cone
//!   or symmetric). When both sides of an attempt have their order, the punch succeeds
//!   (90 %) unless the NATs cannot be punched (symmetric with symmetric or cone), so some
//!   pairs never go direct; a side that does not get through reports `NoResponse` after
//!   the window. Some hosts decline punching.
//! - **Direct paths**: a connection per pair with its own stream per direction and
//!   datagrams. A path can die (at random, or by the scenario): everything in flight is
//!   lost, and each side finds out after its own idle time and falls back to the relay,
//!   where the session resends what was not acked. A side that closes its end (stalled,
//!   pair ended, not needed) tells the other one latency later if the path lives.
//! - **Scenarios** ([`world::World::new`]): 2–6 clients, 1–3 groups at start, then for a
//!   few simulated seconds random sends in every mode, channel and priority (to groups
//!   and to single peers, some in bursts, some large), messages from the server
//!   application, joins, leaves, group creation and destruction, direct path deaths and
//!   the odd disconnect; then a quiet drain long enough for fallbacks, resends, linger and
//!   acks to settle (extended while a link is backlogged or an operation waits for acks).
//!
//! # Checks ([`check::Oracle`] and [`world::World`])
//! - Each message arrives only at a destination it was sent to, as sent (sender, group,
//!   mode, channel), **at most once** in every mode.
//! - `ReliableOrdered`: in send order per (sender, receiver, channel). `Latest`: never an
//!   older value after a newer one per (sender, receiver, key). `UnreliableSequenced`:
//!   never older than one delivered per (sender, receiver, channel).
//! - At the end, every `ReliableOrdered` and `ReliableUnordered` message arrived, and the
//!   last `Latest` value per key, wherever sender and receiver were both in the group (both
//!   sharing a group, for a message to a host) at the server when it was sent, under the
//!   pair and the memberships the server had then, and neither left the group (or, for a
//!   message to a host, anything) or disconnected since: a message crossing a leave, or
//!   sent under a membership or pair that had ended, may be dropped, as documented. The
//!   server application's messages must reach every client that stays connected.
//! - Membership as each client's events tell it: a message for a group arrives only while
//!   the receiver is in it and knows the sender as a member; join and leave notices come
//!   once each, a client's own leave last; at the end each client's view (from its events
//!   and from its session) equals the registry's.
//! - Every join and leave completes exactly once, `Ok` unless a leave, destroy or
//!   disconnect explains the error; none is left waiting for acks.
//! - Pairs (registry): hosts sharing a group have one; one that shares none keeps it for
//!   exactly the linger time. At the end each client's peers are exactly the hosts it
//!   shares a group with.
//! - No protocol violation anywhere (registry, session, direct peer), no peer ignored, no
//!   disconnect by the registry.
//!
//! A failure names its seed; `SIM_SEED=<n> cargo test -p peergroup-sim` replays that
//! seed alone (`SIM_TRACE=1` prints every event), and `SIM_SCENARIOS=<n>` runs more (or
//! fewer) seeds. A run depends on its seed only: every map iterated in an order that
//! matters is ordered, and the session's peers map has a fixed hasher under `fuzzing`.

pub mod check;
pub mod net;
pub mod world;

pub use world::RunStats;
use world::World;

/// Runs scenario `seed`; returns the violations (empty when every check passed) and its
/// numbers.
pub fn run_seed(seed: u64) -> (Vec<String>, RunStats) {
    World::new(seed).run()
}
