//! The thin async driver of direct paths: punch tasks, the probe dispatcher, direct
//! connections in both directions, and moving a peer's traffic between paths.
//!
//! The decisions live in sans-IO code ([`PunchSession`](crate::punch::PunchSession),
//! [`Session`](crate::session::Session)); these files only move bytes and timers. A
//! peer's path changes under the same lock that sends take, so no message can slip
//! between the old path and the new.
//!
//! How a punch goes, file by file:
//! - `punch.rs`: [`Inner::flush`](crate::driver::shared::Inner::flush) registers each
//!   punch order the session gives and hands it to [`run_punches`], which starts one task
//!   per attempt: it probes until a candidate pair validates, then the controlling side
//!   dials;
//! - `probes.rs`: probes arriving on the shared socket go to their attempt's task;
//! - `dial.rs` (the controlling side) and `accept.rs` (the other side) open the direct
//!   QUIC connection and check the peer's hello;
//! - `link.rs`: the connection becomes the peer's path and is read until it ends, and then
//!   the peer's traffic goes back to the relay.

mod accept;
mod dial;
mod link;
mod probes;
mod punch;

pub(crate) use accept::accept_peers;
pub(crate) use probes::dispatch_probes;
pub(crate) use punch::run_punches;

use std::time::Duration;

/// How long the QUIC handshake may take after a candidate pair validated.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(5);
