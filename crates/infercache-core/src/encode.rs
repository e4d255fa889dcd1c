//! Length-prefixed fields: how every canonical byte form of the workspace (cache keys,
//! canonical inputs, KServe rows) writes a variable-length field.
//!
//! A field is `length (u64, little-endian) | bytes`. Because each field carries its length,
//! no two different sequences of fields share an encoding (`"ab" + "c"` and `"a" + "bc"`
//! differ), which is what lets a digest over the encoding stand for the fields.

/// Appends `field` as `length (u64 LE) | bytes`.
pub fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    put_u64(out, field.len() as u64);
    out.extend_from_slice(field);
}

/// Appends `n` as 8 little-endian bytes (a count or a dimension beside the fields).
pub fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_carry_their_length_so_concatenations_differ() {
        let encode = |fields: &[&[u8]]| {
            let mut out = Vec::new();
            for f in fields {
                put_field(&mut out, f);
            }
            out
        };
        assert_eq!(encode(&[b"ab"]), [&2u64.to_le_bytes()[..], b"ab"].concat());
        assert_ne!(encode(&[b"ab", b"c"]), encode(&[b"a", b"bc"]));
        assert_ne!(encode(&[b"", b"a"]), encode(&[b"a"]));
    }
}
