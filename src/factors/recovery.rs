//! Recovery codes: ten single-use codes shown once, for when the authenticator is lost. Each
//! is 10 characters from a 32-letter alphabet (50 bits), shown as `xxxxx-xxxxx`, and kept only
//! as a keyed hash (`FactorKey::recovery_hash`): online guessing meets the sign-in quotas,
//! and offline guessing needs the key file as well as the store.

use zeroize::Zeroizing;

/// How many codes a set has.
pub const COUNT: usize = 10;
/// Characters per code.
const LEN: usize = 10;
/// Digits and lower-case letters without i, l, o, u (read alike, or rude words).
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new set of codes, as shown (`xxxxx-xxxxx`).
///
/// # Errors
/// [`crate::random::RandomError`] when the random source fails.
pub fn generate() -> Result<Vec<Zeroizing<String>>, crate::random::RandomError> {
    let mut codes = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        let mut bytes = Zeroizing::new([0u8; LEN]);
        crate::random::fill(&mut bytes[..])?;
        let mut code = Zeroizing::new(String::with_capacity(LEN + 1));
        for (i, b) in bytes.iter().enumerate() {
            if i == LEN / 2 {
                code.push('-');
            }
            // 256 is a multiple of 32: taking the low five bits is uniform.
            code.push(ALPHABET[usize::from(b & 31)] as char);
        }
        codes.push(code);
    }
    Ok(codes)
}

/// A fingerprint of a user's set of code hashes (as the store keeps them, in order): the
/// first 16 bytes of their SHA-256, in hex. A page that offers new codes carries it, so a
/// request from a page shown before the set changed (another tab made new codes since) is
/// told so instead of voiding the set just printed. Derived from keyed hashes, it says
/// nothing about the codes.
pub fn fingerprint(hashes: &[[u8; 32]]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for h in hashes {
        digest.update(h);
    }
    digest.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A code as typed, in the form it is hashed in, if it can be one: case, spaces and dashes
/// ignored, and the letters people type for the missing ones read as what they look like.
pub fn normalise(typed: &str) -> Option<Zeroizing<String>> {
    let code = super::compact_code(typed, |c| match c.to_ascii_lowercase() {
        'i' | 'l' => '1',
        'o' => '0',
        'u' => 'v',
        c => c,
    });
    (code.len() == LEN && code.bytes().all(|b| ALPHABET.contains(&b))).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_ten_distinct_and_read_back_however_typed() {
        let codes = generate().unwrap();
        assert_eq!(codes.len(), COUNT);
        let mut seen: Vec<String> = codes.iter().map(|c| normalise(c).unwrap().to_string()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), COUNT);
        let first = codes[0].as_str();
        assert_eq!(normalise(&first.to_uppercase().replace('-', " ")), normalise(first));
        assert_eq!(normalise("O1234-5678L").as_deref().map(String::as_str), Some("0123456781"));
        assert_eq!(normalise("12345"), None);
    }

    #[test]
    fn the_normalised_code_is_wiped_when_dropped() {
        // The type is the test: a plain String would leave the code in freed memory.
        let code: Option<Zeroizing<String>> = normalise("O1234-5678L");
        assert!(code.is_some());
    }
}
