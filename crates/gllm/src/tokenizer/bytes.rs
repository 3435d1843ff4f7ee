//! The GPT-2 byte ↔ character table of byte-level BPE.
//!
//! Byte-level vocabularies never store raw bytes: each of the 256 byte values
//! is written as one printable Unicode character so that every token is a
//! valid string. The printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`)
//! stand for themselves; the other 68 bytes, in increasing order, are written
//! as U+0100, U+0101, ... (so the space 0x20 is `Ġ` U+0120 and `\n` is `Ċ`).

/// Whether `b` is one of the 188 bytes that the table maps to the same code point.
const fn is_direct(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Byte → character, built once at compile time.
const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let code = if is_direct(b as u8) {
            b as u32
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
};

/// The character that stands for byte `b` in a byte-level vocabulary.
pub(crate) fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// Character code (below 256 + 68) → byte, or `NONE`: the inverse table.
const CHAR_TO_BYTE: [u16; 256 + 68] = {
    let mut table = [NONE; 256 + 68];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as u16;
        b += 1;
    }
    table
};

/// Marks a code point of [`CHAR_TO_BYTE`] that stands for no byte.
const NONE: u16 = u16::MAX;

/// The byte a vocabulary character stands for, or `None` for a character
/// outside the table (such a token is not byte-level text).
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    match CHAR_TO_BYTE.get(c as usize) {
        Some(&b) if b != NONE => Some(b as u8),
        _ => None,
    }
}

/// The raw bytes a byte-level token string stands for, or `None` if one of
/// its characters is outside the table.
pub(crate) fn decode_byte_level(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_with_the_known_anchors() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        assert_eq!(byte_to_char(0x00), 'Ā');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c), "byte {b} maps to a duplicate char");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(decode_byte_level("ĠhelloĊ").as_deref(), Some(&b" hello\n"[..]));
    }
}
