//! Close codes to and from quinn, and closing with them.
//!
//! A [`CloseCode`] travels as QUIC's application error code, a variable-length integer of
//! at most 2^62 - 1 (RFC 9000, section 16). Every code this build names fits; only a
//! [`CloseCode::Unknown`] holding a larger number cannot, and for it there is one rule:
//! it is sent as [`quinn::VarInt::MAX`], which reads back as an unknown code, never as a
//! known one. (Sending 0 instead would dress an error up as [`CloseCode::Normal`].)

use peergroup_protocol::CloseCode;

/// The longest close text sent, in bytes: a close frame must fit in one packet, so the
/// text is cut (at a character boundary) to leave room for the frame's other fields.
pub const MAX_CLOSE_TEXT: usize = 512;

/// `code` as quinn's application error code; a code above 2^62 - 1 becomes
/// [`quinn::VarInt::MAX`] (see the [module docs](self)).
pub fn to_varint(code: CloseCode) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.to_u64()).unwrap_or(quinn::VarInt::MAX)
}

/// The close code quinn reported; numbers this build does not know become
/// [`CloseCode::Unknown`].
pub fn from_varint(code: quinn::VarInt) -> CloseCode {
    CloseCode::from_u64(code.into_inner())
}

/// The longest close reason a WebSocket close frame carries, in bytes: a control frame's
/// 125 bytes less the two of its status code (RFC 6455, section 5.5).
pub const MAX_WS_CLOSE_TEXT: usize = 123;

/// `text` cut to at most [`MAX_CLOSE_TEXT`] bytes, at a character boundary.
pub fn close_text(text: &str) -> &[u8] {
    cut(text, MAX_CLOSE_TEXT)
}

/// `text` cut to at most [`MAX_WS_CLOSE_TEXT`] bytes, at a character boundary.
pub fn close_text_ws(text: &str) -> &[u8] {
    cut(text, MAX_WS_CLOSE_TEXT)
}

fn cut(text: &str, max: usize) -> &[u8] {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// Closes `connection` with `code` and readable `text` (cut by [`close_text`]). Data the
/// other side has not acknowledged yet is lost (RFC 9000, section 10.2).
pub fn close(connection: &quinn::Connection, code: CloseCode, text: &str) {
    connection.close(to_varint(code), close_text(text));
}

/// Closes every connection of `endpoint` with `code` and `text` (cut by [`close_text`]),
/// and refuses new ones.
pub fn close_endpoint(endpoint: &quinn::Endpoint, code: CloseCode, text: &str) {
    endpoint.close(to_varint(code), close_text(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_range_go_out_as_themselves_and_come_back() {
        for code in [
            CloseCode::Normal,
            CloseCode::ProtocolViolation,
            CloseCode::FrameTooLarge,
            CloseCode::ServerShutdown,
            CloseCode::Kicked,
            CloseCode::Unknown(77),
            CloseCode::Unknown((1 << 62) - 1),
        ] {
            let wire = to_varint(code);
            assert_eq!(wire.into_inner(), code.to_u64());
            assert_eq!(from_varint(wire), code);
        }
        assert_eq!(to_varint(CloseCode::FrameTooLarge).into_inner(), 4);
    }

    #[test]
    fn a_code_out_of_range_goes_out_as_the_largest_varint_and_reads_back_as_unknown() {
        for raw in [1u64 << 62, u64::MAX] {
            let wire = to_varint(CloseCode::Unknown(raw));
            assert_eq!(wire, quinn::VarInt::MAX);
            assert_eq!(
                from_varint(wire),
                CloseCode::Unknown(quinn::VarInt::MAX.into_inner()),
                "never mistaken for a known code such as Normal"
            );
        }
    }

    #[test]
    fn close_text_is_cut_at_a_character_boundary() {
        assert_eq!(close_text("bye"), b"bye");
        let long = "é".repeat(MAX_CLOSE_TEXT); // two bytes each
        let cut = close_text(&long);
        assert_eq!(cut.len(), MAX_CLOSE_TEXT);
        assert!(std::str::from_utf8(cut).is_ok());
        let odd = format!("a{long}");
        let cut = close_text(&odd);
        assert_eq!(cut.len(), MAX_CLOSE_TEXT - 1, "not inside the last é");
        assert!(std::str::from_utf8(cut).is_ok());
    }
}
