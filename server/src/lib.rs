//! The peergroup server: authenticates clients, owns P2P groups and relays between members.
//!
//! A game server embeds it: it decides who may connect (the [`AuthHook`]), creates groups
//! and moves hosts in and out of them ([`Server::create_group`], [`Server::join_group`],
//! ...), and reads what happens from [`ServerEvents`]. Members of a group can message each
//! other at once through the relay; the server stamps every sender and refuses to relay
//! between hosts that share no group.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use peergroup_server::{GroupOptions, Identity, Server, ServerConfig, ServerEvent};
//! let identity = Identity::load_or_generate("server-identity".as_ref())?;
//! let config = ServerConfig::new("0.0.0.0:7700".parse()?, identity);
//! let (server, mut events) = Server::start(config).await?;
//! println!("clients pin {}", server.fingerprint());
//! let lobby = server.create_group(&[], GroupOptions::default(), "")?;
//! while let Some(event) = events.next().await {
//!     if let ServerEvent::ClientConnected { host, .. } = event {
//!         server.join_group(lobby, host, "welcome")?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `registry/`: the sans-IO core (hosts, groups, join acks, pairs, relay rules), driven
//!   by `handle_*(.., now)` and drained with `poll_action`/`poll_timeout`.
//! - `shared.rs`: the lock around the core and the one place its actions are carried out.
//! - `outbound.rs`: each client's send queue (notices first, then messages by priority,
//!   latest values replaced in place) and the back-pressure on whoever fills it.
//! - `admission.rs`: what a connection may cost before login (handshake caps per source,
//!   address validation, client limits checked before the hello).
//! - `connection.rs`: one task per client (handshake, hello, auth, read loops, writer).
//! - `server.rs`: the [`Server`] handle, the accept loop and the timer task.
//! - `drain.rs`: graceful shutdown ([`Server::shutdown_gracefully`]).
//! - `metrics.rs`: counters for operators, read through [`Server::stats`].
//! - `tls.rs`, `identity.rs`: rustls/quinn setup and the server certificate.
//!
//! The `peergroup-server` command and its rooms application live in the
//! `peergroup-cli` crate. The feature `unstable-registry` makes `registry` public, for
//! benchmarks and tests of the core; it is not a stable API.

mod admission;
mod app_events;
mod auth;
mod backlog;
mod config;
mod connection;
mod drain;
mod drain_state;
mod error;
mod events;
mod identity;
mod manage;
mod metrics;
mod notices;
mod outbound;
#[cfg(feature = "unstable-registry")]
pub mod registry;
#[cfg(not(feature = "unstable-registry"))]
mod registry;
mod server;
mod shared;
mod tls;
mod websocket;
mod wire;
mod writer;

pub use admission::Admission;
pub use app_events::ServerEvents;
pub use auth::{AuthDecision, AuthHook, LoginRequest};
pub use config::{Limits, ResumeConfig, ServerConfig, Timeouts, WebSocketListen};
pub use drain::DrainReport;
pub use error::{GroupError, SendError};
pub use events::{DisconnectReason, JoinAckError, LeaveAckError, ServerEvent};
pub use identity::{fingerprint_of, Identity, IdentityError};
pub use manage::HostInfo;
pub use metrics::{AckLatency, RelayByDelivery, RelayCount};
pub use peergroup_protocol::typed::{decode, encode, TypedError};
pub use peergroup_protocol::{
    Delivery, Fingerprint, GroupId, HostId, ParseIdError, Priority, SendOptions,
};
pub use peergroup_protocol::{PairPath, PathReason};
pub use peergroup_transport::Transport;
pub use registry::{
    BatchError, ChangeOutcome, GroupInfo, GroupOptions, JoinOutcome, MembershipBatch,
    MembershipChange, PairStats, PunchConfig, PunchStart, PunchStats,
};
pub use server::{Server, ServerStats, ServerTarget, StartError};
pub use tokio_util::sync::CancellationToken;
