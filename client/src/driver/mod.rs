//! The async driver behind [`Client`](crate::Client): it moves bytes between QUIC and the
//! sans-IO session (`session.rs`), and owns every task a client runs.
//!
//! Layering, so that no two files import each other:
//! - `wire.rs`: the server connection over either carrier, QUIC or WebSocket
//!   (`ServerWire`, `ServerSend`). It imports nothing else in the driver.
//! - `shared.rs`: the state all of it shares ([`Inner`](shared::Inner) with the
//!   [`Core`](shared::Core) under the client's one lock, direct links, punch handles).
//!   It imports nothing else in the driver but `wire.rs`.
//! - `flush.rs` (carrying out the session's output) and `event_pipe.rs` (handing the
//!   session's events to the application) add `Inner`'s methods; every task calls them.
//! - One file per task: `server_reader.rs`, `writer.rs` (one per stream), `timer.rs`,
//!   the emitter in `event_pipe.rs`, and the direct paths in `direct/` (punches, probes,
//!   accepting and dialling peers, serving a direct link).
//! - `reconnect.rs`: resuming the session on a new connection after a loss, called by
//!   the server reader when its connection ends.
//! - `connect.rs` (with `login.rs`) sets the connection up, builds the shared state and
//!   starts the tasks; it is the only file that knows them all.

pub(crate) mod connect;
mod direct;
mod event_pipe;
mod flush;
mod login;
mod reconnect;
mod server_reader;
pub(crate) mod shared;
mod timer;
mod wire;
mod writer;
