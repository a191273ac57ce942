//! Passwords: a secret type that is wiped on drop, the creation policy, and argon2id hashing
//! on a bounded pool of worker threads (see [`pool`]).

pub mod pool;
pub mod workspace;

use std::collections::HashSet;
use std::sync::OnceLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

pub use pool::{HashPool, Lane, PoolError, Verified};
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
    /// A control character (Unicode's Cc: NUL, a tab, a line break, DEL, C1): no sign-in
    /// form's field takes one, so an administrator could set a password nobody can type
    /// (review 141). NIST SP 800-63B rev 4 §3.1.1.2 asks verifiers to accept printing
    /// characters and spaces, which these are not.
    #[error("the password holds a control character (such as a tab, a line break or NUL), which a sign-in form cannot take; use letters, digits, spaces and symbols")]
    ControlCharacter,
    #[error("the password is too easy to guess: {0}")]
    Guessable(Guessable),
}

/// What makes a password guessable, from the strength estimate's weakest part. NIST SP
/// 800-63B rev 4 §3.1.1.2 names repetitive or sequential characters and context-specific
/// words (the username, the service's name) as values to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Guessable {
    #[error("it contains the username or the service's name; use words that have nothing to do with either")]
    ContextWords,
    #[error("it repeats characters or words (like \"aaa\" or \"abcabc\"); use several different words")]
    Repetition,
    #[error("it is a sequence (like \"abcd\" or \"6543\"); use several different words")]
    Sequence,
    #[error("it follows a row or pattern of keys on the keyboard; use several different words")]
    KeyboardPattern,
    #[error("it is built from dates or years; use several different words")]
    Dates,
    #[error("it is built from common words, names or passwords; add another uncommon word or two")]
    CommonWords,
    #[error("it is too predictable; add another uncommon word or two")]
    Predictable,
}

/// The name of the service, refused inside passwords like the username (NIST SP 800-63B rev 4
/// §3.1.1.2, "context-specific words").
pub const SERVICE_NAME: &str = "portcullis";

/// Only this many characters are given to the strength estimator, NIST's 64 (the length every
/// verifier must accept): its matching grows faster than linearly with the length, and a
/// crafted password of l33t symbols costs 0.17-0.37 s of CPU at 64 characters against
/// 0.4-1.5 s at zxcvbn's own cut of 100 (zxcvbn built optimised, busy 2-core machine). A
/// password whose first 64 characters are guessable is refused whatever follows; one whose
/// first 64 are not is at least as hard to guess as they are.
pub const ESTIMATE_CHARS: usize = 64;

/// The least zxcvbn score a new password needs: 4, more than 10^10 guesses, zxcvbn's "very
/// unguessable" mark. Score 3 starts at exactly 10^8, which a common word with a digit run and
/// a symbol reaches (`password1234567!`, `sunshine2026!!!!`) at the 15-character minimum;
/// passphrases of a few uncommon words and generated passwords score far above 10^10.
pub const MIN_SCORE: zxcvbn::Score = zxcvbn::Score::Four;

/// The rules for a new password (NIST SP 800-63B rev 4 §3.1.1.2): a minimum length, a
/// generous maximum, a block-list of common passwords, a strength estimate (zxcvbn) that
/// refuses repetitive, sequential and context-specific passwords, and no composition rules.
#[derive(Clone, Copy, Debug)]
pub struct PasswordPolicy {
    pub min_length: usize,
}

impl PasswordPolicy {
    /// Checks a new password for the user whose normalised name is `username_key`.
    ///
    /// # Errors
    /// [`WeakPassword`], with the reason to show the person choosing it. The cost is bounded:
    /// at most [`MAX_PASSWORD_CHARS`] characters are read and [`ESTIMATE_CHARS`] estimated.
    pub fn check(&self, password: &Password, username_key: &str) -> Result<(), WeakPassword> {
        let chars = password.char_count();
        if chars < self.min_length {
            return Err(WeakPassword::TooShort { min: self.min_length });
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(WeakPassword::TooLong { max: MAX_PASSWORD_CHARS });
        }
        if password.expose().chars().any(char::is_control) {
            return Err(WeakPassword::ControlCharacter);
        }
        // What every rule below judges: the password case-folded, NFKC again (folding can
        // de-normalise) and trimmed, as usernames are keyed; a copy wiped when this check ends.
        // Judging the typed form let `Alice...` or a leading space slip past the rules.
        let whole = zeroize::Zeroizing::new(fold(password.expose()));
        // A password of spaces alone is judged whole (and refused as a repeat).
        let folded: &str = if whole.trim().is_empty() { &whole } else { whole.trim() };
        if folded == username_key {
            return Err(WeakPassword::SameAsUsername);
        }
        if contains_context_word(folded, username_key) {
            return Err(WeakPassword::Guessable(Guessable::ContextWords));
        }
        if common_passwords().contains(folded) || holds_a_published_example(folded) {
            return Err(WeakPassword::Common);
        }
        let head = zeroize::Zeroizing::new(folded.chars().take(ESTIMATE_CHARS).collect::<String>());
        // zxcvbn keeps pieces of what it matched in the estimate, which it gives no way to
        // wipe: they live only until this function returns.
        let estimate = zxcvbn::zxcvbn(&head, &[username_key, SERVICE_NAME]);
        if estimate.score() < MIN_SCORE {
            return Err(WeakPassword::Guessable(why_guessable(&estimate, username_key)));
        }
        Ok(())
    }
}

/// Passphrases published as examples of good ones, as their letters (XKCD 936): attackers
/// try them first, with any separators, padding and common substitutions.
const PUBLISHED_EXAMPLES: &[&str] = &["correcthorsebatterystaple"];

/// Whether the folded password holds a [`PUBLISHED_EXAMPLES`] phrase once read as letters
/// alone, digits read as the letters they stand for (`0` as `o`, `3` as `e`, `4` and `@` as
/// `a`, `5` and `$` as `s`, `7` as `t`, `1` as `l`): `correct horse battery staple 2024`,
/// `c0rrect,h0rse,battery,staple` (review 143 passed these past the list's exact match).
/// The copy is wiped.
fn holds_a_published_example(folded: &str) -> bool {
    let letters: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        folded
            .chars()
            .filter_map(|c| match c {
                '0' => Some('o'),
                '3' => Some('e'),
                '4' | '@' => Some('a'),
                '5' | '$' => Some('s'),
                '7' => Some('t'),
                '1' => Some('l'),
                c if c.is_alphabetic() => Some(c),
                _ => None,
            })
            .collect(),
    );
    PUBLISHED_EXAMPLES.iter().any(|phrase| letters.contains(phrase))
}

/// Shortest username key refused inside a password: a shorter name (`al`, `bob`) turns up
/// inside too many good passphrases to refuse by itself; zxcvbn still weighs it as a user input.
pub const MIN_CONTEXT_NAME_CHARS: usize = 4;

/// Whether two passwords are one as the rules judge passwords ([`PasswordPolicy::check`]):
/// case-folded, without invisible characters, trimmed. For a new password that would be the
/// current one again with only its case or surrounding spaces changed (review 137: README
/// says every rule judges the folded, trimmed form). The copies are wiped.
pub fn same_when_folded(a: &Password, b: &Password) -> bool {
    let (a, b) = (zeroize::Zeroizing::new(fold(a.expose())), zeroize::Zeroizing::new(fold(b.expose())));
    a.trim() == b.trim()
}

/// `text` case-folded the way username keys are (NFKC, lower case, NFKC again).
fn fold(text: &str) -> String {
    // Invisible characters (a soft hyphen inside `al\u{ad}ice`) add nothing a person sees, so
    // the rules judge the password without them.
    text.nfkc().collect::<String>().to_lowercase().nfkc().filter(|c| !crate::text::is_hidden(*c)).collect()
}

/// Whether the folded password holds the username key (when at least
/// [`MIN_CONTEXT_NAME_CHARS`] long) or [`SERVICE_NAME`] anywhere inside it: NIST SP 800-63B
/// rev 4 §3.1.1.2 asks to refuse context-specific words, and zxcvbn alone passes them once
/// enough other characters surround them (`aliceportcullis2026`).
fn contains_context_word(folded: &str, username_key: &str) -> bool {
    folded.contains(SERVICE_NAME)
        || (username_key.chars().count() >= MIN_CONTEXT_NAME_CHARS && folded.contains(username_key))
}

/// The reason to give for a low estimate: the username or service name when either was
/// matched, else what zxcvbn warns of.
fn why_guessable(estimate: &zxcvbn::Entropy, username_key: &str) -> Guessable {
    use zxcvbn::feedback::Warning;
    let parts = estimate.sequence();
    let context = [username_key.to_lowercase(), SERVICE_NAME.to_string()];
    if parts.iter().any(|m| names_context(m, &context)) {
        return Guessable::ContextWords;
    }
    // zxcvbn's own warning names the weakest part.
    match estimate.feedback().and_then(|f| f.warning()) {
        Some(Warning::RepeatsLikeAaaAreEasyToGuess | Warning::RepeatsLikeAbcAbcAreOnlySlightlyHarderToGuess) => {
            Guessable::Repetition
        }
        Some(Warning::SequencesLikeAbcAreEasyToGuess) => Guessable::Sequence,
        Some(Warning::StraightRowsOfKeysAreEasyToGuess | Warning::ShortKeyboardPatternsAreEasyToGuess) => {
            Guessable::KeyboardPattern
        }
        Some(Warning::RecentYearsAreEasyToGuess | Warning::DatesAreOftenEasyToGuess) => Guessable::Dates,
        Some(_) => Guessable::CommonWords,
        None => Guessable::Predictable,
    }
}

/// Whether a recognised part is one of the context words, alone or repeated ("alicealice").
fn names_context(part: &zxcvbn::Match, context: &[String]) -> bool {
    use zxcvbn::matching::patterns::MatchPattern;
    match &part.pattern {
        MatchPattern::Dictionary(d) => context.contains(&d.matched_word),
        MatchPattern::Repeat(r) => r.base_matches.iter().any(|m| names_context(m, context)),
        _ => false,
    }
}

/// One strength estimate at a time: a crafted password costs a few hundred milliseconds of
/// CPU (see [`ESTIMATE_CHARS`]), so many at once queue here instead of taking every core.
static ESTIMATING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Why a new password could not be judged at all.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("weak password: {0}")]
    Weak(#[from] WeakPassword),
    #[error("the password check stopped unexpectedly")]
    Stopped,
}

impl PasswordPolicy {
    /// [`PasswordPolicy::check`] on a blocking thread, one at a time, so the estimate never
    /// holds an async worker; gives the password back when it passes.
    ///
    /// # Errors
    /// [`PolicyError::Weak`] with the reason, or [`PolicyError::Stopped`] if the check's
    /// thread failed (the password is then wiped).
    pub async fn check_in_turn(self, password: Password, username_key: &str) -> Result<Password, PolicyError> {
        // The semaphore is never closed, so acquiring only waits.
        let _turn = ESTIMATING.acquire().await.map_err(|_| PolicyError::Stopped)?;
        let key = username_key.to_string();
        let (password, verdict) = tokio::task::spawn_blocking(move || {
            let verdict = self.check(&password, &key);
            (password, verdict)
        })
        .await
        .map_err(|_| PolicyError::Stopped)?;
        verdict?;
        Ok(password)
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
        // Before: judged without them (folding drops hidden characters), and stored with them.
        for control in ['\0', '\t', '\n', '\r', '\u{7f}', '\u{85}', '\u{9b}'] {
            let typed = format!("plum tractor{control}velvet orbit");
            assert_eq!(POLICY.check(&Password::new(&typed), "bob"), Err(WeakPassword::ControlCharacter), "{control:?}");
        }
        assert!(
            POLICY.check(&Password::new("plum tractor\u{a0}velvet orbit é"), "bob").is_ok(),
            "a no-break space is printing"
        );
        // Published as an example of a good passphrase (XKCD 936), so among the first tried.
        for phrase in [
            "correct horse battery staple",
            "Correct Horse Battery Staple",
            "correcthorsebatterystaple",
            // However separated, padded or spelled (review 143).
            "correct horse battery staple.",
            "correct horse battery staple1",
            "correct horse  battery staple",
            "correct,horse,battery,staple",
            "c0rrect h0rse battery staple",
            "correct horse battery staple 2024",
            "my correct-horse-battery-staple!",
        ] {
            assert_eq!(POLICY.check(&Password::new(phrase), "bob"), Err(WeakPassword::Common), "{phrase}");
        }
    }

    #[test]
    fn repetitive_sequential_and_context_specific_passwords_are_refused_with_why() {
        let refused = |p: &str, user: &str| match POLICY.check(&Password::new(p), user) {
            Err(WeakPassword::Guessable(why)) => why,
            other => panic!("{p:?} for {user}: {other:?}"),
        };
        assert_eq!(refused(&" ".repeat(15), "bob"), Guessable::Repetition);
        assert_eq!(refused("aaaaaaaaaaaaaaa", "bob"), Guessable::Repetition);
        assert_eq!(refused("passwordpassword", "bob"), Guessable::Repetition);
        assert_eq!(refused("alicealicealice1", "alice"), Guessable::ContextWords);
        assert_eq!(refused("portcullisportcullis", "bob"), Guessable::ContextWords);
        assert_eq!(refused("Portcullis123456", "bob"), Guessable::ContextWords);
        assert_eq!(refused("abcdefghijklmnopq", "bob"), Guessable::Sequence);
        assert_eq!(refused("asdfghjkl;'zxcvbnm", "bob"), Guessable::KeyboardPattern);
        // The message says why, in words the person choosing can act on.
        let message = WeakPassword::Guessable(Guessable::ContextWords).to_string();
        assert!(message.contains("username"), "{message}");
    }

    #[test]
    fn the_username_or_service_name_anywhere_in_any_case_is_refused() {
        // Each passed for `alice` before (task F, item 1; the hidden characters, a later review).
        for p in [
            "al\u{ad}ice quiet meadow kettle",
            "ali\u{200b}ce quiet meadow kettle",
            "Alicealicealice1",
            " alicealicealice1",
            "aliceportcullis2026",
            "Portcullis2026!!",
            "alice@portcullis.local",
            "Alice1234567890!",
            "my friend ALICE likes plums",
            "ＡＬＩＣＥ tractor velvet orbit",
        ] {
            assert_eq!(
                POLICY.check(&Password::new(p), "alice"),
                Err(WeakPassword::Guessable(Guessable::ContextWords)),
                "{p:?}"
            );
        }
        assert_eq!(
            POLICY.check(&Password::new("   PORTCULLIS tractor velvet orbit"), "bob"),
            Err(WeakPassword::Guessable(Guessable::ContextWords))
        );
        // A short name is left to the estimate: "bob" inside a good phrase is fine.
        assert_eq!(POLICY.check(&Password::new("kebob tractor velvet orbit"), "bob"), Ok(()));
    }

    #[test]
    fn the_estimate_sees_the_password_as_the_rules_do_case_folded_and_trimmed() {
        for p in ["Password1234567!", " password1234567!", "PASSWORD1234567!", "Sunshine2026!!!!", "Monkey123456789!"] {
            assert!(
                matches!(
                    POLICY.check(&Password::new(p), "bob"),
                    Err(WeakPassword::Guessable(_) | WeakPassword::Common)
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn long_random_ish_passphrases_and_generated_passwords_are_accepted() {
        for good in [
            "correct plum tractor velvet",
            "plum tractor velvet orbit",
            "a whole new passphrase",
            "quiet meadow copper kettle",
            "Gravel-Otter-Lantern-97",
            "my cat eats spinach on tuesdays",
            "kq8Zt-w3Lm9-Xp2Rb-v7Hn4",
            "ein Satz auf Deutsch, warum nicht",
        ] {
            assert_eq!(POLICY.check(&Password::new(good), "alice"), Ok(()), "{good:?}");
        }
        for _ in 0..20 {
            let generated = crate::users::generate_password().unwrap();
            assert_eq!(POLICY.check(&generated, "admin"), Ok(()));
        }
    }

    #[test]
    fn only_the_first_hundred_characters_are_estimated_so_the_cost_is_bounded() {
        // A guessable start is refused whatever follows it, up to the longest password.
        let weak_start = format!("{}{}", "a".repeat(ESTIMATE_CHARS), "plum tractor velvet orbit ".repeat(35));
        assert!(weak_start.chars().count() <= MAX_PASSWORD_CHARS);
        assert_eq!(
            POLICY.check(&Password::new(&weak_start), "bob"),
            Err(WeakPassword::Guessable(Guessable::Repetition))
        );
        // Varied words past the estimated part: accepted, and never cut.
        let words = ["plum", "tractor", "velvet", "orbit", "gravel", "otter", "lantern", "quince", "harbour", "mosaic"];
        let strong: String = (0..120)
            .map(|i: usize| words[i.wrapping_mul(7).wrapping_add(i / 10) % words.len()])
            .collect::<Vec<_>>()
            .join(" ");
        assert!(strong.chars().count() > ESTIMATE_CHARS && strong.chars().count() <= MAX_PASSWORD_CHARS);
        assert_eq!(POLICY.check(&Password::new(&strong), "bob"), Ok(()));
    }

    #[tokio::test]
    async fn the_check_in_turn_gives_the_password_back_or_the_reason() {
        let good = POLICY.check_in_turn(Password::new("plum tractor velvet orbit"), "bob").await.unwrap();
        assert_eq!(good.expose(), "plum tractor velvet orbit");
        let weak = POLICY.check_in_turn(Password::new("aaaaaaaaaaaaaaa"), "bob").await;
        assert!(matches!(weak, Err(PolicyError::Weak(WeakPassword::Guessable(Guessable::Repetition)))));
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
