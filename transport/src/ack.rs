//! How often the peer acknowledges: every tenth ack-eliciting packet instead of every
//! second, through QUIC's acknowledgement-frequency extension (draft-ietf-quic-ack-frequency,
//! which quinn implements and both of our sides speak).
//!
//! A flood of small messages is mostly full packets in GSO batches; acknowledging every
//! second one made the server send a small ACK packet, one system call each, for every two
//! packets a sender uploaded (35.7k of them in a quick 1→1 run, against 10.5k with this
//! setting). Sparse traffic is unchanged: a lone packet was already acknowledged only
//! after the peer's `max_ack_delay` (RFC 9000, section 13.2.1), which loss detection
//! already allows for, and a packet arriving out of order is still acknowledged at once.

/// Ack-eliciting packets the peer may receive before it must acknowledge: 9, so an ACK
/// goes at least every tenth packet (RFC 9000's default is every second).
pub const ACK_ELICITING_THRESHOLD: u8 = 9;

/// Asks the peer of every connection made with `transport` to acknowledge at least every
/// [`ACK_ELICITING_THRESHOLD`] + 1 ack-eliciting packets, or after its `max_ack_delay`
/// (25 ms by default). A peer without the extension ignores the request.
pub fn ack_less_often(transport: &mut quinn::TransportConfig) {
    let mut frequency = quinn::AckFrequencyConfig::default();
    frequency.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    transport.ack_frequency_config(Some(frequency));
}
