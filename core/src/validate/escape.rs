//! The string-escape scan: how many bytes `serde_json` adds when it
//! escapes a string, eight bytes at a time, and the worst case a bound
//! assumes without scanning.

/// Extra bytes `serde_json` writes for each byte of a string, beyond the byte
/// itself: 1 for the two-character escapes (`\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t`), 5 for the other control bytes (`\u00XX`), 0 for everything
/// else (including DEL and every byte of non-ASCII UTF-8, written raw).
static ESCAPE_EXTRA: [u8; 256] = build_escape_table();

/// Builds [`ESCAPE_EXTRA`] at compile time (its indices are constants below
/// 256, so no input reaches them).
const fn build_escape_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = 5;
        byte += 1;
    }
    table[0x08] = 1; // \b
    table[0x09] = 1; // \t
    table[0x0a] = 1; // \n
    table[0x0c] = 1; // \f
    table[0x0d] = 1; // \r
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    table
}

/// The most bytes escaping adds to one byte (`\u00XX` for a control byte).
pub(super) const WORST_ESCAPE_EXTRA: usize = 5;

/// Bytes `serde_json` adds when escaping `bytes` (see [`ESCAPE_EXTRA`]).
///
/// Most text needs no escaping, so eight bytes at a time are first tested
/// for any byte below 0x20, `"` or `\` (the classic "has zero byte" word
/// tricks); only words that have one are added up through the table.
pub(super) fn escape_extra(bytes: &[u8]) -> usize {
    if bytes.len() < 16 {
        // Identifiers and keys: a plain table walk beats the word setup.
        return table_extra(bytes);
    }
    let mut words = bytes.chunks_exact(8);
    let mut extra = 0;
    for word in &mut words {
        // `chunks_exact(8)` only yields 8-byte slices; the fallback is dead.
        let x = u64::from_ne_bytes(<[u8; 8]>::try_from(word).unwrap_or([0; 8]));
        if needs_escape(x) {
            extra += table_extra(word);
        }
    }
    extra + table_extra(words.remainder())
}

/// Whether some byte of the word `x` is escaped: below 0x20, `"` or `\`
/// (exactly: no false positives, so plain text skips the table).
fn needs_escape(x: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    const CONTROL_BOUND: u64 = u64::from_ne_bytes([0x20; 8]);

    let quote = x ^ QUOTES;
    let backslash = x ^ BACKSLASHES;
    // High bit set in some byte iff some byte of `x` is below 0x20, or
    // some byte of `quote` / `backslash` is zero.
    let special = (x.wrapping_sub(CONTROL_BOUND) & !x)
        | (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash);
    special & HIGHS != 0
}

/// [`escape_extra`] byte by byte, through the table.
fn table_extra(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .map(|&b| usize::from(ESCAPE_EXTRA.get(usize::from(b)).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_scan_agrees_with_the_table_for_every_byte_and_position() {
        for special in 0u8..=255 {
            for len in 0..20 {
                for position in 0..len {
                    let mut bytes = vec![b'a'; len];
                    if let Some(slot) = bytes.get_mut(position) {
                        *slot = special;
                    }
                    // Neighbours that sit just above each boundary.
                    if let Some(slot) = bytes.get_mut(position + 1) {
                        *slot = 0x20;
                    }
                    assert_eq!(
                        escape_extra(&bytes),
                        table_extra(&bytes),
                        "byte {special:#x} at {position} of {len}"
                    );
                }
            }
        }
        let mixed: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(escape_extra(&mixed), table_extra(&mixed));
    }

    #[test]
    fn the_word_test_flags_exactly_the_words_with_a_byte_to_escape() {
        // Every byte at every position, among fillers on both sides of the
        // bounds the test uses (0x20, 0x7f/0x80, the quote, the backslash).
        for filler in [b'a', 0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
            for special in 0u8..=255 {
                for position in 0..8 {
                    let mut word = [filler; 8];
                    if let Some(slot) = word.get_mut(position) {
                        *slot = special;
                    }
                    assert_eq!(
                        needs_escape(u64::from_ne_bytes(word)),
                        table_extra(&word) > 0,
                        "byte {special:#x} at {position} among {filler:#x}"
                    );
                }
            }
        }
    }
}
