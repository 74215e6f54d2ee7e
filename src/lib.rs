//! peergroup facade.
