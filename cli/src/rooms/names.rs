//! What a room or display name may contain.
//!
//! Names are shown to other players, so text that displays as something else is refused:
//! control characters, and the invisible format characters of Unicode's general category
//! Cf (UAX #44): bidirectional overrides and isolates, which can make "evil" display as
//! "live", and zero-width characters, which make two names that look the same differ
//! (Unicode Technical Standard #39 treats both as unsafe in identifiers).

/// Checks one name: 1 to `max` bytes, nothing invisible or control. `Err` holds the
/// reason to show, naming `what`.
pub(super) fn validate_name(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if text.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    if text.chars().any(is_format_character) {
        return Err(format!(
            "{what} contains invisible formatting characters (bidirectional or zero-width)"
        ));
    }
    if text.trim().is_empty() {
        return Err(format!("{what} is blank"));
    }
    Ok(())
}

/// Unicode general category Cf (format characters), Unicode 15.1.
fn is_format_character(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidirectional_and_zero_width_characters_are_refused() {
        for name in [
            "ev\u{202E}li",  // right-to-left override
            "a\u{2066}b",    // left-to-right isolate
            "ad\u{200B}min", // zero-width space
            "ad\u{200D}min", // zero-width joiner
            "\u{FEFF}admin", // byte order mark
            "x\u{00AD}y",    // soft hyphen
        ] {
            let error = validate_name("room name", name, 64).unwrap_err();
            assert!(error.contains("invisible"), "{name:?}: {error}");
        }
    }

    #[test]
    fn ordinary_names_in_any_script_pass_and_the_other_rules_hold() {
        for name in ["lobby", "Zimmer 3", "комната", "部屋", "غرفة", "café ☕"] {
            assert_eq!(validate_name("room name", name, 64), Ok(()), "{name:?}");
        }
        assert!(validate_name("room name", "", 64)
            .unwrap_err()
            .contains("empty"));
        assert!(validate_name("room name", "   ", 64)
            .unwrap_err()
            .contains("blank"));
        assert!(validate_name("room name", "a\nb", 64)
            .unwrap_err()
            .contains("control"));
        assert!(validate_name("room name", "abc", 2)
            .unwrap_err()
            .contains("longer"));
    }
}
