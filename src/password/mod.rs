//! Passwords: a secret type that is wiped on drop, the creation policy, and argon2id hashing
//! on a bounded pool of worker threads (see [`pool`]).

pub mod pool;
pub mod workspace;

use std::collections::HashSet;
use std::sync::OnceLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

pub use pool::{HashPool, PoolError, Verified};
pub use workspace::Workspace;

/// Longest password accepted, in characters: far above NIST's floor of 64, low enough that a
/// request cannot make argon2 pre-hash megabytes.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// A plaintext password, NFKC-normalised, never truncated, wiped from memory when dropped, and
/// printed as `[REDACTED]` by `Debug`.
pub struct Password(SecretString);

impl Password {
    /// Normalises what was typed (NFKC, as NIST SP 800-63B asks) without trimming or cutting it.
    pub fn new(typed: &str) -> Self {
        Password(SecretString::from(typed.nfkc().collect::<String>()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn char_count(&self) -> usize {
        self.expose().chars().count()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

/// Why a new password was refused; the message is shown to the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error(
        "the password is too short: use at least {min} characters (a phrase of several words is easy to remember)"
    )]
    TooShort { min: usize },
    #[error("the password is too long: use at most {max} characters")]
    TooLong { max: usize },
    #[error("the password is on the list of commonly used passwords that attackers try first")]
    Common,
    #[error("the password must not be the username")]
    SameAsUsername,
}

/// The rules for a new password (NIST SP 800-63B rev 4): a minimum length, a generous maximum,
/// a block-list of common passwords, and no composition rules.
#[derive(Clone, Copy, Debug)]
pub struct PasswordPolicy {
    pub min_length: usize,
}

impl PasswordPolicy {
    pub fn check(&self, password: &Password, username_key: &str) -> Result<(), WeakPassword> {
        let chars = password.char_count();
        if chars < self.min_length {
            return Err(WeakPassword::TooShort { min: self.min_length });
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(WeakPassword::TooLong { max: MAX_PASSWORD_CHARS });
        }
        // A copy of the plaintext: wiped when this check ends.
        let lowered = zeroize::Zeroizing::new(password.expose().to_lowercase());
        if lowered.trim() == username_key {
            return Err(WeakPassword::SameAsUsername);
        }
        if common_passwords().contains(lowered.as_str()) {
            return Err(WeakPassword::Common);
        }
        Ok(())
    }
}

/// The built-in block-list, shipped in the binary.
fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("common-passwords.txt").lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect()
    })
}

/// Number of entries in the built-in list of common passwords.
pub fn common_password_count() -> usize {
    common_passwords().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: PasswordPolicy = PasswordPolicy { min_length: 15 };

    #[test]
    fn short_long_common_and_username_passwords_are_refused_with_a_reason() {
        assert_eq!(POLICY.check(&Password::new("short"), "bob"), Err(WeakPassword::TooShort { min: 15 }));
        assert_eq!(POLICY.check(&Password::new(&"x".repeat(1025)), "bob"), Err(WeakPassword::TooLong { max: 1024 }));
        assert_eq!(POLICY.check(&Password::new("123456789123456"), "bob"), Err(WeakPassword::Common));
        assert_eq!(POLICY.check(&Password::new("ManchesterUnited"), "bob"), Err(WeakPassword::Common));
        assert_eq!(
            POLICY.check(&Password::new("averylongusername"), "averylongusername"),
            Err(WeakPassword::SameAsUsername)
        );
        assert!(POLICY.check(&Password::new("plum tractor velvet orbit"), "bob").is_ok());
    }

    #[test]
    fn sixty_four_characters_and_more_are_accepted_untruncated() {
        let long = "a fairly long passphrase that keeps going and going, well past 64 chars".to_string();
        assert!(long.chars().count() > 64);
        let p = Password::new(&long);
        assert!(POLICY.check(&p, "bob").is_ok());
        assert_eq!(p.expose(), long);
    }

    #[test]
    fn passwords_are_nfkc_normalised() {
        // "ﬁ" (U+FB01) is NFKC-equivalent to "fi"; full-width digits to ASCII digits.
        assert_eq!(Password::new("ﬁ１").expose(), "fi1");
    }

    #[test]
    fn the_list_holds_at_least_ten_thousand_entries() {
        assert!(common_password_count() >= 10_000);
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        assert!(!format!("{:?}", Password::new("hunter2hunter2hunter2")).contains("hunter2"));
    }
}
