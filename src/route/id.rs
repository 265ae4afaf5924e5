//! `WorkspaceId`: the canonical, validated form of the `{id}` a host or path carries.
//! Called by route matching (`request_filter`) before anything asks Redis.

use std::fmt;

/// Crockford base32 as ULIDs use it: no I, L, O or U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
pub const ULID_LEN: usize = 26;
/// For each byte: its upper-case form when that is in `ALPHABET`, else 0.
const CANONICAL: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        let c = ALPHABET[i];
        t[c as usize] = c;
        t[c.to_ascii_lowercase() as usize] = c;
        i += 1;
    }
    t
};

/// An upper-case ULID: 26 Crockford base32 characters whose first is 0–7 (128 bits).
///
/// Lower case is accepted on the way in (DNS lowercases hosts) and upper-cased; the Crockford
/// aliases (`I`/`L` for 1, `O` for 0) are *rejected* rather than mapped, so one workspace has
/// exactly one spelling per case-folding and cookie paths cannot be split across aliases.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkspaceId([u8; ULID_LEN]);

impl WorkspaceId {
    pub fn parse(raw: &str) -> Option<WorkspaceId> {
        let bytes = raw.as_bytes();
        if bytes.len() != ULID_LEN {
            return None;
        }
        let mut out = [0u8; ULID_LEN];
        for (o, &b) in out.iter_mut().zip(bytes) {
            let up = CANONICAL[b as usize];
            if up == 0 {
                return None;
            }
            *o = up;
        }
        // The first character carries only the top 3 bits of 128.
        if out[0] > b'7' {
            return None;
        }
        Some(WorkspaceId(out))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII from ALPHABET is ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkspaceId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_canonicalisation_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                Some("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            ),
            (
                "01arz3ndektsv4rrffq69g5fav",
                Some("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            ),
            (
                "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
                Some("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            ),
            ("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", None),  // > 128 bits
            ("01ARZ3NDEKTSV4RRFFQ69G5FA", None),   // 25
            ("01ARZ3NDEKTSV4RRFFQ69G5FAVV", None), // 27
            ("01ARZ3NDEKTSV4RRFFQ69G5FAI", None),  // alias I
            ("01ARZ3NDEKTSV4RRFFQ69G5FAL", None),  // alias L
            ("01ARZ3NDEKTSV4RRFFQ69G5FAO", None),  // alias O
            ("01ARZ3NDEKTSV4RRFFQ69G5FAU", None),  // U
            ("01ARZ3NDEKTSV4RRFFQ69G5F%2", None),
            ("01ARZ3NDEKTSV4RRFFQ69G5F..", None),
            ("", None),
            ("01ARZ3NDEKTSV4RRFFQ69G5FAé", None),
        ];
        for (raw, want) in cases {
            let got = WorkspaceId::parse(raw).map(|id| id.to_string());
            assert_eq!(got.as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn every_ascii_byte_is_accepted_exactly_when_its_upper_case_is_in_the_alphabet() {
        for b in 0u8..128 {
            let mut raw = "0".repeat(ULID_LEN - 1);
            raw.push(b as char);
            let want = ALPHABET.contains(&b.to_ascii_uppercase());
            assert_eq!(WorkspaceId::parse(&raw).is_some(), want, "byte {b}");
        }
    }
}
