//! The async driver behind [`Client`](crate::Client): it moves bytes between QUIC and the
//! sans-IO session (`session.rs`), and owns every task a client runs.

pub(crate) mod shared;
pub(crate) mod writer;
