//! CSRF tokens: HMAC-SHA256 under a server secret, bound either to the visitor's pre-login
//! cookie (login form) or to the session (every signed-in form).
//!
//! The pre-login state is the `__Host-portcullis-pre` cookie itself plus the time inside the
//! token, so it costs the server no memory per visitor (bounded by construction) and expires
//! after [`LOGIN_TOKEN_LIFETIME`].

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The pre-login cookie: a random value that login-form tokens are bound to.
pub const PRELOGIN_COOKIE: &str = "__Host-portcullis-pre";

/// How long a login form stays valid.
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(2 * 3600);

#[derive(Clone)]
pub struct Csrf {
    key: [u8; 32],
}

impl Csrf {
    pub fn new(key: [u8; 32]) -> Self {
        Csrf { key }
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// A fresh random value for the pre-login cookie.
    ///
    /// # Errors
    /// [`RandomError`](crate::random::RandomError) when the random source fails: every visitor
    /// would then share one value (and its captcha slot), so no form is served instead.
    pub fn new_prelogin() -> Result<String, crate::random::RandomError> {
        let mut bytes = [0u8; 32];
        crate::random::fill(&mut bytes)?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The hidden-field token for a login form, bound to the pre-login cookie and the time.
    pub fn login_token(&self, prelogin: &str, now_secs: u64) -> String {
        let tag = self.mac(&[b"login", prelogin.as_bytes(), &now_secs.to_be_bytes()]).finalize().into_bytes();
        let mut out = now_secs.to_be_bytes().to_vec();
        out.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Checks a login-form token against the visitor's cookie, in constant time.
    pub fn check_login(&self, prelogin: &str, token: &str, now_secs: u64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(token) else { return false };
        if bytes.len() != 40 {
            return false;
        }
        let (time, tag) = bytes.split_at(8);
        let issued = u64::from_be_bytes(time.try_into().unwrap_or_default());
        if issued > now_secs.saturating_add(60) || now_secs.saturating_sub(issued) > LOGIN_TOKEN_LIFETIME.as_secs() {
            return false;
        }
        self.mac(&[b"login", prelogin.as_bytes(), time]).verify_slice(tag).is_ok()
    }

    /// The hidden-field token for forms shown to a signed-in user.
    pub fn session_token(&self, session_hash: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"session", session_hash]).finalize().into_bytes())
    }

    pub fn check_session(&self, session_hash: &[u8; 32], token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else { return false };
        self.mac(&[b"session", session_hash]).verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_works_only_with_its_cookie_and_only_for_a_while() {
        let csrf = Csrf::new([7; 32]);
        let t = csrf.login_token("cookie-a", 1_000_000);
        assert!(csrf.check_login("cookie-a", &t, 1_000_100));
        assert!(!csrf.check_login("cookie-b", &t, 1_000_100));
        assert!(!csrf.check_login("cookie-a", &t, 1_000_000 + LOGIN_TOKEN_LIFETIME.as_secs() + 1));
        assert!(!Csrf::new([8; 32]).check_login("cookie-a", &t, 1_000_100));
        assert!(!csrf.check_login("cookie-a", "", 1_000_100));
        assert!(!csrf.check_login("cookie-a", "%%%", 1_000_100));
    }

    #[test]
    fn times_at_the_ends_of_the_clock_neither_overflow_nor_verify_forever() {
        // Found by the csrf fuzz target: `now + 60` overflowed (a panic in debug builds).
        let csrf = Csrf::new([7; 32]);
        let t = csrf.login_token("cookie-a", u64::MAX);
        assert!(csrf.check_login("cookie-a", &t, u64::MAX));
        assert!(!csrf.check_login("cookie-a", &t, 0));
        let t = csrf.login_token("cookie-a", 0);
        assert!(!csrf.check_login("cookie-a", &t, u64::MAX));
    }

    #[test]
    fn a_session_token_is_bound_to_its_session() {
        let csrf = Csrf::new([7; 32]);
        let t = csrf.session_token(&[1; 32]);
        assert!(csrf.check_session(&[1; 32], &t));
        assert!(!csrf.check_session(&[2; 32], &t));
    }
}
