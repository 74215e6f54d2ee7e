//! The peergroup command-line tools: the `peergroup-server` binary, which runs the server
//! library with the built-in rooms application, and the `peergroup` client CLI (`chat`,
//! `rooms`, `probe`). The libraries (`peergroup-server`, `peergroup-client`) carry none of
//! what only these commands need (argument parsing, JSON output, log formatting).
//!
//! # Layout
//! - [`rooms`]: the rooms application `peergroup-server` runs (rooms joined by name, with
//!   optional passwords), a plain struct over the server's group operations.
//! - [`hub`]: the event hub that fans the server's events out to the rooms application,
//!   the admin API's waiters and the metrics.
//! - [`settings`]: the server command's configuration file and flags.
//! - [`admin`]: the admin HTTP API (JSON under `/v1`) and the status page.
//! - [`metrics`]: the Prometheus endpoint.
//! - `src/bin/peergroup-server.rs`: the server command.
//! - `src/bin/peergroup.rs` and `src/bin/peergroup/`: the client command and its
//!   subcommands.

pub mod admin;
pub mod hub;
pub mod metrics;
pub mod rooms;
pub mod settings;
