//! The peergroup client: joins server-owned P2P groups and messages their members.
//!
//! A client connects to a `peergroup-server`, logs in through the server's auth hook and
//! gets a [`HostId`]. The server puts it into groups; the client hears every join and
//! leave ([`ClientEvent::MemberJoined`], [`ClientEvent::MemberLeft`], acknowledged
//! automatically) and can message members at once with [`Client::send`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use peergroup_client::{Client, ClientConfig, ClientEvent, Delivery, ServerTrust, Target};
//! let trust = ServerTrust::from_cert_file("peergroup-identity/cert.pem".as_ref())?;
//! let mut config = ClientConfig::new("127.0.0.1:7700".parse()?, trust);
//! config.login = "alice".into();
//! let (client, mut events) = Client::connect(config).await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         ClientEvent::MemberJoined { group, member, .. } if member == client.host_id() => {
//!             client.send(Target::Group(group), "hello", Delivery::ReliableOrdered).await?;
//!         }
//!         ClientEvent::Message { from, payload, path, .. } => {
//!             println!("{from} via {path:?}: {payload:?}");
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Delivery
//! Each send names a [`Delivery`] mode, or [`SendOptions`] with a channel and a
//! [`Priority`]; every mode keeps its guarantee on the relay, on the direct path and
//! across a switch between them (the README's "Delivery modes" says when to use which):
//! - [`Delivery::ReliableOrdered`]: exactly once, in order per (pair, channel).
//! - [`Delivery::ReliableUnordered`]: exactly once, handed over on arrival.
//! - [`Delivery::Unreliable`]: one QUIC datagram (RFC 9221); may be lost, never
//!   duplicated. Too large for the path is an error, never a silent drop.
//! - [`Delivery::UnreliableSequenced`]: a datagram, dropped if older than one already
//!   delivered on its (pair, channel).
//! - [`Delivery::Latest`]: reliable latest value per key; a queued older value is
//!   replaced, and an older value never follows a newer one.
//!
//! Typed messages: any serde type, encoded with postcard ([`encode`], [`decode`],
//! [`Client::send_message`]).
//!
//! # Game loops
//! [`ClientEvents::try_next`] never waits: call it until it returns `None` once per frame.
//! [`ClientEvents`] is also a `futures_core::Stream`. An engine without an async runtime
//! uses [`blocking::BlockingClient`], which runs the client on a thread of its own and
//! needs no `.await` anywhere.
//!
//! # Layout
//! - `session.rs`, `receive.rs`, `sequencing.rs`: the sans-IO core (groups, peers, lanes,
//!   reordering and duplicate removal per mode).
//! - `clock.rs`, `ping.rs`: sans-IO server clock estimate and per-peer RTT and loss.
//! - `outbound.rs`: the send queues (priorities, latest-value replacement, back-pressure).
//! - `client.rs`: the [`Client`] handle (sends, queries, close);
//!   `client_events.rs`: [`ClientEvents`], the application's end of the event pipe.
//! - `driver/`: the async driver behind them, in layers so that no two files import each
//!   other. `shared.rs` holds the state every part shares (`Inner`, and under its one lock
//!   the `Core`: session, direct links, punches) and imports nothing else of the driver;
//!   `flush.rs` carries out what the session produced (queues, datagrams, punch orders,
//!   wake-ups) and `event_pipe.rs` hands its events over in order (with the emitter
//!   task); one file per task: `server_reader.rs`, `writer.rs`, `timer.rs`, and in
//!   `direct/` the punch tasks (`punch.rs`), the probe dispatcher (`probes.rs`), both ends
//!   of a direct connection (`dial.rs`, `accept.rs`) and a direct link's reader
//!   (`link.rs`); `connect.rs` and `login.rs` set the connection up and start the tasks.
//! - `socket.rs`: the one UDP socket, shared by QUIC and punch probes.
//! - `punch.rs`: the sans-IO punch attempt; `connect_failure.rs`: naming why a connect
//!   failed.
//! - `blocking.rs`: [`blocking::BlockingClient`], the same client for game loops without
//!   an async runtime (its own runtime thread; no `.await`).
//! - `tls.rs`: server pinning and the client's identity certificate.
//! - `config.rs`, `events.rs`, `error.rs`: plain data.

pub mod blocking;
mod client;
mod client_events;
mod clock;
mod config;
mod connect_failure;
mod driver;
mod error;
mod event_batches;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod outbound;
mod ping;
mod punch;
mod receive;
mod sequencing;
mod session;
mod socket;
mod tls;

pub use client::Client;
pub use client_events::ClientEvents;
pub use clock::ServerTime;
pub use config::{ClientConfig, DirectConfig, Limits, Timeouts, TransportChoice, WEBSOCKET_DELAY};
pub use error::{ConnectError, SendError};
pub use events::{ClientEvent, DisconnectReason, PeerFault};
pub use peergroup_protocol::typed::{decode, encode, TypedError};
pub use peergroup_protocol::{
    CloseCode, Delivery, Fingerprint, GroupId, HostId, PairPath, ParseIdError, Path, PathReason,
    PeerInfo, Priority, RefuseReason, SendOptions,
};
pub use peergroup_transport::Transport;
pub use session::{ModeCounters, PathCounters, PeerStats, Target};
pub use session::{MAX_HELD_ARRIVALS, MAX_HELD_ARRIVAL_BYTES};
pub use tls::{fingerprint_of, raw_quic_client_config, raw_tls_client_config, ServerTrust};
