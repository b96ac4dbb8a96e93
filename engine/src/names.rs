//! Stable short names for objects ibex creates (delta tables, temporary
//! key tables, plugin roles, pid files): FNV-1a hashes, the same on every
//! release and platform (std's hasher is neither), and readable prefixes.

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes.into_iter().fold(0x811c_9dc5, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `name` lowercased, with anything but ASCII letters, digits and `_` as
/// `_`, at most `max` characters: safe inside an unquoted identifier.
pub fn readable(name: &str, max: usize) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The reference FNV-1a test vectors: names already in databases depend on them.
        assert_eq!(fnv1a32(*b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(*b"a"), 0xe40c_292c);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(readable("Odd Name\"x", 5), "odd_n");
    }
}
