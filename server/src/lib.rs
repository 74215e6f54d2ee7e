//! peergroup server.
#![allow(missing_docs)]
pub mod error;
pub mod events;
pub mod registry;
