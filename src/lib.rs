//! peergroup: server-authoritative peer-to-peer groups for online games, in the style of
//! ProudNet.
//!
//! A game server authenticates clients and gives each a [`HostId`](protocol::HostId). It
//! creates P2P groups and moves hosts in and out of them; every member is told of each join
//! and leave, and the server hears when all of them have acknowledged. Members message each
//! other at once through the server's relay over QUIC; in the background the server
//! coordinates UDP hole punching between each pair, and a pair that punches through moves to
//! a direct, mutually authenticated QUIC path, with no reliable message lost, duplicated or
//! reordered by the move (or by the move back when the path dies).
//!
//! This crate re-exports the three libraries a game uses:
//! - [`server`] ([`peergroup_server`]): the game server's side. Start with
//!   [`Server::start_with_auth`](server::Server::start_with_auth), read
//!   [`ServerEvents`](server::ServerEvents), and manage groups with
//!   [`create_group`](server::Server::create_group),
//!   [`join_group`](server::Server::join_group), [`leave_group`](server::Server::leave_group)
//!   and, once per tick, [`change_membership`](server::Server::change_membership) with a
//!   [`MembershipBatch`](server::MembershipBatch). Host and group data
//!   ([`set_host_data`](server::Server::set_host_data),
//!   [`set_group_data`](server::Server::set_group_data)) tell members who is who.
//! - [`client`] ([`peergroup_client`]): a player's side. [`Client::connect`](client::Client::connect),
//!   then [`send`](client::Client::send) to a [`Target`](client::Target) with a
//!   [`Delivery`](client::Delivery) mode, and read [`ClientEvents`](client::ClientEvents)
//!   (or poll them once per frame with `try_next`; engines without an async runtime use
//!   [`BlockingClient`](client::blocking::BlockingClient)).
//! - [`protocol`] ([`peergroup_protocol`]): what both sides agree on: ids, messages,
//!   delivery modes, and [`typed`](protocol::typed) messages (your own serde types).
//!
//! # A tour through the examples
//! Each example runs a server and its clients in one process with one command, can run
//! split across machines (`--server-only`, then `--connect ADDR --server-cert PATH`), and
//! has a `--demo` mode that checks itself and ends with a JSON summary:
//! - `examples/mmo_view`: MMO view-group syncing. One view group per character, areas of
//!   interest from a spatial grid every tick, applied as one membership batch; positions
//!   with `Delivery::Latest`. Read `server.rs`, then `bot.rs`.
//!   `cargo run --release --example mmo_view`
//! - `examples/chat`: in-game chat: rooms, invite-only parties, whispers, nicknames as host
//!   data, moderation, and history in SQLite. `cargo run --release --example chat`
//! - `examples/lobby`: a 1v1 lobby: names, open games with passwords, a matchmaker that
//!   pairs players into groups of two with just-in-time hole punching and reports each
//!   match's path. `cargo run --release --example lobby`
//! - `examples/admin`: the server-side management API as a walkthrough, step by step.
//!   `cargo run --release --example admin`
//!
//! The repository's `README.md` has the guides, the semantics in full, the delivery modes,
//! the measured benchmarks and the command-line tools; `ARCHITECTURE.md` explains how it
//! works inside.

pub use peergroup_client as client;
pub use peergroup_protocol as protocol;
pub use peergroup_server as server;

/// The README's code, compiled as doctests so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
