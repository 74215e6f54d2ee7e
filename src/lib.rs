//! peergroup: server-authoritative peer-to-peer groups for online games.
//!
//! This facade re-exports the three crates. The root package also owns the workspace's
//! examples and end-to-end tests.

pub use peergroup_client as client;
pub use peergroup_protocol as protocol;
pub use peergroup_server as server;

/// The README's code, compiled as doctests so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
