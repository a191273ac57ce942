//! CSRF tokens: HMAC-SHA256 under a server secret, bound either to the visitor's pre-login
//! cookie (login form) or to the session (every signed-in form).
//!
//! The pre-login state is the `__Host-portcullis-pre` cookie itself plus the time inside the
//! token, so it costs the server no memory per visitor (bounded by construction) and expires
//! after [`LOGIN_TOKEN_LIFETIME`].
//!
//! Only pre-login values the server issued are accepted ([`Csrf::prelogin`]): each is the time
//! it was issued, a random id and an HMAC tag over both, so a client cannot choose its own
//! value (OWASP CSRF Prevention Cheat Sheet, "signed double-submit cookie"), and each expires
//! after [`PRELOGIN_LIFETIME`]. A successful sign-in retires its value's id in the
//! [`crate::brute_force::BruteForceState`], so the pair of cookie and token cannot sign in a
//! second time; in memory ([`RetiredSet`]) retired ids are kept until they would have expired
//! anyway, at most [`MAX_RETIRED`] of them.
//!
//! The same secret signs device cookies ([`Csrf::issue_device_cookie`]): each sign-in gives the
//! browser a token bound to the username, and a later login form from that browser for that
//! username waits in the hash pool's known lane ([`crate::password::Lane::Known`]), out of the
//! way of a flood from elsewhere (OWASP, "Slow Down Online Guessing Attacks with Device
//! Cookies"). Like a pre-login value each token is the time it was issued, a random id and a
//! tag, and costs the server no memory; one cookie holds the tokens of the last
//! [`DEVICE_COOKIE_USERS`] usernames signed in with that browser.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The pre-login cookie: a random value that login-form tokens are bound to.
pub const PRELOGIN_COOKIE: &str = "__Host-portcullis-pre";

/// How long a login form stays valid.
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(2 * 3600);

/// How long past a pre-login value's expiry its retirement is kept (see
/// [`PreLogin::retired_until_ms`]): longer than any sign-in takes, queue included.
pub const RETIREMENT_SLACK: Duration = Duration::from_secs(300);

/// How long a pre-login value is accepted: twice a form's lifetime, and a value older than
/// one form lifetime is replaced when the next form is drawn, so every form shown stays valid
/// for its whole [`LOGIN_TOKEN_LIFETIME`].
pub const PRELOGIN_LIFETIME: Duration = Duration::from_secs(2 * LOGIN_TOKEN_LIFETIME.as_secs());

/// Most retired pre-login ids kept. Sign-ins are bounded by the hash pool's rate, so this
/// covers about 17 per second for a whole [`PRELOGIN_LIFETIME`]; past it the retired ids closest
/// to expiry are forgotten first (32 bytes each, 8 MiB in all).
pub const MAX_RETIRED: usize = 250_000;

/// The device cookie: set at every sign-in, for the username signed in
/// ([`Csrf::issue_device_cookie`]).
pub const DEVICE_COOKIE: &str = "__Host-portcullis-device";

/// How long a device cookie's token is good for after the sign-in that made it, and the
/// cookie's `Max-Age`. Every sign-in makes a new one, so a browser used at least this often
/// stays known.
pub const DEVICE_COOKIE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Usernames one device cookie keeps a token for (a shared or an administrator's browser signs
/// in as several): the newest first; a sign-in as a sixth pushes out the oldest.
pub const DEVICE_COOKIE_USERS: usize = 5;

/// Bytes in a [`Stamp`]: issue time (8), random id (16), tag (16).
const STAMP_BYTES: usize = 40;

/// Characters in a [`Stamp`]: [`STAMP_BYTES`] in unpadded base64url.
const STAMP_CHARS: usize = 54;

/// A pre-login cookie value this server issued, not expired and not retired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreLogin {
    value: String,
    id: [u8; 16],
    issued: u64,
}

impl PreLogin {
    /// The cookie value, which login tokens and captcha challenges are bound to.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Unix time in seconds after which the value is no longer accepted.
    pub fn expires_at(&self) -> u64 {
        self.issued.saturating_add(PRELOGIN_LIFETIME.as_secs())
    }

    /// The random id, which retiring the value records.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Until when (Unix ms) a retirement of this value must be kept: past its expiry by
    /// [`RETIREMENT_SLACK`], since a sign-in judged valid just before the expiry retires the
    /// value only after its password check, which can wait seconds in the hash queue; a
    /// retirement already lapsed then would let a second sign-in with the same form through.
    pub fn retired_until_ms(&self) -> u64 {
        self.expires_at().saturating_add(RETIREMENT_SLACK.as_secs()).saturating_mul(1000)
    }

    /// Whether a form drawn now with this value stays valid for a whole form lifetime.
    pub fn lasts_a_form(&self, now_secs: u64) -> bool {
        now_secs.saturating_sub(self.issued) < PRELOGIN_LIFETIME.as_secs() - LOGIN_TOKEN_LIFETIME.as_secs()
    }
}

/// Why a pre-login value could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CsrfError {
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

/// Bytes of [`Csrf::seal_ceremony`]'s tag (128 bits, as the pre-login value's).
const CEREMONY_TAG_BYTES: usize = 16;

/// Longest sealed ceremony cookie opened: webauthn-rs's discoverable state is a few hundred
/// bytes; a browser keeps cookies up to 4 KiB.
const MAX_CEREMONY_COOKIE_CHARS: usize = 4096;

/// The first [`DEVICE_COOKIE_USERS`] tokens of a device cookie's value (more are ignored,
/// so a cookie a client wrote itself costs at most that many checks).
fn device_tokens(cookie: &str) -> impl Iterator<Item = &str> {
    cookie.split('.').take(DEVICE_COOKIE_USERS)
}

/// What pre-login values and device tokens are made of: the time it was issued, a random id
/// and a 128-bit tag over both (and whatever else its kind binds), [`STAMP_CHARS`] characters
/// of unpadded base64url. Only what the tag covers differs between the kinds.
struct Stamp {
    issued: u64,
    id: [u8; 16],
    tag: [u8; 16],
}

impl Stamp {
    /// A stamp issued at `issued` with a new random id, tagged with `mac` over the two.
    fn issue(issued: u64, mac: impl FnOnce(&[u8; 8], &[u8; 16]) -> Hmac<Sha256>) -> Result<Self, CsrfError> {
        let mut id = [0u8; 16];
        crate::random::fill(&mut id)?;
        let full = mac(&issued.to_be_bytes(), &id).finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        Ok(Stamp { issued, id, tag })
    }

    fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(STAMP_BYTES);
        bytes.extend_from_slice(&self.issued.to_be_bytes());
        bytes.extend_from_slice(&self.id);
        bytes.extend_from_slice(&self.tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a stamp's fields; its tag is not checked yet ([`Stamp::is_tagged_by`]).
    fn parse(value: &str) -> Option<Self> {
        if value.len() != STAMP_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (issued, rest) = bytes.split_first_chunk::<8>()?;
        let (id, tag) = rest.split_first_chunk::<16>()?;
        Some(Stamp { issued: u64::from_be_bytes(*issued), id: *id, tag: tag.try_into().ok()? })
    }

    /// Whether its tag is `mac`'s over its time and id (in constant time).
    fn is_tagged_by(&self, mac: impl FnOnce(&[u8; 8], &[u8; 16]) -> Hmac<Sha256>) -> bool {
        mac(&self.issued.to_be_bytes(), &self.id).verify_truncated_left(&self.tag).is_ok()
    }

    /// Less than `lifetime` old at `now_secs`.
    fn is_younger_than(&self, lifetime: Duration, now_secs: u64) -> bool {
        now_secs.saturating_sub(self.issued) < lifetime.as_secs()
    }

    /// Issued no more than the forms' 60 s of clock skew ahead of `now_secs`.
    fn is_not_ahead_of(&self, now_secs: u64) -> bool {
        self.issued <= now_secs.saturating_add(60)
    }

    /// [`Stamp::is_younger_than`] of a stamp whose time is in milliseconds (a device token's).
    fn is_younger_than_ms(&self, lifetime: Duration, now_ms: u64) -> bool {
        u128::from(now_ms.saturating_sub(self.issued)) < lifetime.as_millis()
    }

    /// [`Stamp::is_not_ahead_of`] of a stamp whose time is in milliseconds.
    fn is_not_ahead_of_ms(&self, now_ms: u64) -> bool {
        self.issued <= now_ms.saturating_add(60_000)
    }
}

#[derive(Clone)]
pub struct Csrf {
    key: [u8; 32],
    /// This process's own value in the pre-login values' and sealed ceremonies' tags, when
    /// retired pre-login ids are kept in its memory: see [`Csrf::of_this_process`].
    process_epoch: Option<[u8; 16]>,
}

impl Csrf {
    pub fn new(key: [u8; 32]) -> Self {
        Csrf { key, process_epoch: None }
    }

    /// This service, its pre-login values ([`Csrf::issue_prelogin`]) and sealed ceremonies
    /// ([`Csrf::seal_ceremony`]) good only in this process. For a brute-force state kept in
    /// memory (sled): a form signs in once because its pre-login value is retired, and a
    /// restart forgets the retirements, so a sign-in form re-sent after a restart (a browser's
    /// history resubmitting it, review 189) or a passkey finish request replayed (with an
    /// authenticator that keeps no signature counter, as synced passkeys do not) would sign
    /// in again. A restart voids the open forms instead: their sign-in is refused as an
    /// expired form (403), which comes back with a new one. With a shared state every instance
    /// must take every other's, and the retirements survive restarts.
    ///
    /// # Errors
    /// [`CsrfError::Random`] when the system's random source fails.
    pub fn of_this_process(mut self) -> Result<Self, CsrfError> {
        let mut epoch = [0u8; 16];
        crate::random::fill(&mut epoch)?;
        self.process_epoch = Some(epoch);
        Ok(self)
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

    /// A new pre-login value, issued at `now_secs`.
    ///
    /// # Errors
    /// [`CsrfError::Random`] when the system's random source fails: without it every visitor
    /// would share one id, and one sign-in would retire everyone's forms.
    pub fn issue_prelogin(&self, now_secs: u64) -> Result<PreLogin, CsrfError> {
        let stamp = Stamp::issue(now_secs, |issued, id| self.prelogin_mac(issued, id))?;
        Ok(PreLogin { value: stamp.encode(), id: stamp.id, issued: now_secs })
    }

    fn prelogin_mac(&self, issued: &[u8; 8], id: &[u8; 16]) -> Hmac<Sha256> {
        match &self.process_epoch {
            Some(epoch) => self.mac(&[b"prelogin", epoch, issued, id]),
            // As before there were epochs: a shared state's values outlive an upgrade.
            None => self.mac(&[b"prelogin", issued, id]),
        }
    }

    /// Parses a pre-login cookie value: `None` unless this server issued it (the tag checks,
    /// in constant time) and it has not expired at `now_secs`. Whether it was retired is the
    /// brute-force state's to say (`is_retired` with [`PreLogin::id`]).
    pub fn prelogin(&self, cookie: &str, now_secs: u64) -> Option<PreLogin> {
        let stamp = Stamp::parse(cookie).filter(|s| s.is_tagged_by(|issued, id| self.prelogin_mac(issued, id)))?;
        // Valid while younger than the lifetime, never at it: its retirement, if it signed in,
        // is kept until `expires_at`, and is pruned from that second on.
        if !stamp.is_not_ahead_of(now_secs) || !stamp.is_younger_than(PRELOGIN_LIFETIME, now_secs) {
            return None;
        }
        Some(PreLogin { value: cookie.to_string(), id: stamp.id, issued: stamp.issued })
    }

    /// A device cookie's new value after a sign-in, at `now_ms` (Unix milliseconds), of the
    /// user whose key (`normalise_key` of the username) is `user_key`: a new token for that user
    /// (the time in milliseconds, a random id and a 128-bit tag over both and the key; the
    /// username itself is not in it), then the tokens of `previous` (the browser's cookie) for
    /// other users that have not expired, [`DEVICE_COOKIE_USERS`] in all, joined by `.`. The
    /// time is kept to the millisecond so that a token issued in the second of a change of the
    /// user's credentials, just before it, is not taken for one issued after (review 185).
    ///
    /// # Errors
    /// [`CsrfError::Random`] when the system's random source fails.
    pub fn issue_device_cookie(
        &self,
        user_key: &str,
        previous: Option<&str>,
        now_ms: u64,
    ) -> Result<String, CsrfError> {
        let mut value = Stamp::issue(now_ms, |issued, id| self.device_mac(user_key, issued, id))?.encode();
        // Another user's token cannot be checked without their key: kept while it is shaped
        // like one and not too old, at most a cookie's worth. One issued ahead of this clock
        // (by an instance whose clock runs fast) is kept too: keeping grants nothing.
        let others = device_tokens(previous.unwrap_or(""))
            .filter(|t| {
                Stamp::parse(t).is_some_and(|d| {
                    d.is_younger_than_ms(DEVICE_COOKIE_LIFETIME, now_ms)
                        && !self.is_device_token_for(&d, user_key, now_ms)
                })
            })
            .take(DEVICE_COOKIE_USERS - 1);
        for token in others {
            value.push('.');
            value.push_str(token);
        }
        Ok(value)
    }

    /// Whether `cookie` holds a device token this server issued for `user_key` (the tag
    /// checks, in constant time) within [`DEVICE_COOKIE_LIFETIME`] of `now_ms`. Anything
    /// else, a token for another username included, is `false`.
    pub fn is_known_device(&self, cookie: &str, user_key: &str, now_ms: u64) -> bool {
        self.known_device_issued(cookie, user_key, now_ms).is_some()
    }

    /// When the newest device token in `cookie` for `user_key` that [`Csrf::is_known_device`]
    /// would accept was issued (Unix milliseconds), so the caller can refuse one from before
    /// the user's last change of credentials; `None` without such a token. (A token of a build
    /// that kept whole seconds reads as one from 1970, long expired.)
    pub fn known_device_issued(&self, cookie: &str, user_key: &str, now_ms: u64) -> Option<u64> {
        device_tokens(cookie)
            .filter_map(Stamp::parse)
            .filter(|d| self.is_device_token_for(d, user_key, now_ms))
            .map(|d| d.issued)
            .max()
    }

    /// Whether `token` is one this server issued for `user_key` and valid at `now_ms`.
    fn is_device_token_for(&self, token: &Stamp, user_key: &str, now_ms: u64) -> bool {
        token.is_not_ahead_of_ms(now_ms)
            && token.is_younger_than_ms(DEVICE_COOKIE_LIFETIME, now_ms)
            && token.is_tagged_by(|issued, id| self.device_mac(user_key, issued, id))
    }

    fn device_mac(&self, user_key: &str, issued: &[u8; 8], id: &[u8; 16]) -> Hmac<Sha256> {
        self.mac(&[b"device", user_key.as_bytes(), issued, id])
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

    /// A discoverable passkey sign-in's server state (`state`, webauthn-rs's, as JSON) as the
    /// browser keeps it until the finish, in the ceremony cookie: the state and its expiry
    /// (`expires_at_secs`) with a 128-bit HMAC tag binding them to the pre-login value `pre`.
    /// Nothing is stored, so beginning sign-ins costs the server no store (a flood of begins
    /// from many addresses once filled it), and any instance with the secret can finish one.
    /// The state holds nothing secret (its challenge is in the options the page gets); the
    /// tag keeps a client from choosing it. A ceremony is used once because its pre-login
    /// value is: a sign-in retires it ([`crate::brute_force::BruteForceState::succeed`]).
    pub fn seal_ceremony(&self, pre: &PreLogin, state: &str, expires_at_secs: u64) -> String {
        let expires = expires_at_secs.to_be_bytes();
        let tag = self.ceremony_mac(pre, &expires, state.as_bytes()).finalize().into_bytes();
        let mut out = Vec::with_capacity(8 + state.len() + CEREMONY_TAG_BYTES);
        out.extend_from_slice(&expires);
        out.extend_from_slice(state.as_bytes());
        out.extend_from_slice(&tag[..CEREMONY_TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The state [`Csrf::seal_ceremony`] sealed into `cookie` for `pre`, if the tag checks (in
    /// constant time) and it has not expired at `now_secs`; `None` for anything else (another
    /// form's, altered, expired, or no sealed ceremony at all).
    pub fn open_ceremony(&self, pre: &PreLogin, cookie: &str, now_secs: u64) -> Option<String> {
        if cookie.len() > MAX_CEREMONY_COOKIE_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        let (expires, rest) = bytes.split_first_chunk::<8>()?;
        let (state, tag) = rest.split_at_checked(rest.len().checked_sub(CEREMONY_TAG_BYTES)?)?;
        self.ceremony_mac(pre, expires, state).verify_truncated_left(tag).ok()?;
        if now_secs >= u64::from_be_bytes(*expires) {
            return None;
        }
        String::from_utf8(state.to_vec()).ok()
    }

    /// The MAC over a sealed ceremony: its expiry and state, bound to the form's pre-login id
    /// and, when there is one, this process's own value.
    fn ceremony_mac(&self, pre: &PreLogin, expires: &[u8; 8], state: &[u8]) -> Hmac<Sha256> {
        let epoch = self.process_epoch.as_ref().map_or(&[][..], |e| &e[..]);
        self.mac(&[b"passkey sign-in", epoch, &pre.id, expires, state])
    }

    /// The hidden-field token for forms shown to a signed-in user.
    pub fn session_token(&self, session_hash: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"session", session_hash]).finalize().into_bytes())
    }

    pub fn check_session(&self, session_hash: &[u8; 32], token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else { return false };
        self.mac(&[b"session", session_hash]).verify_slice(&tag).is_ok()
    }

    /// A tag binding `payload` (a one-time notice) to the session it was made for, so that a
    /// client can neither write its own notice nor carry one to another session.
    pub fn notice_tag(&self, session_hash: &[u8; 32], payload: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"notice", session_hash, payload]).finalize().into_bytes())
    }

    /// Whether `tag` is [`Csrf::notice_tag`] for this session and payload (constant time).
    pub fn check_notice(&self, session_hash: &[u8; 32], payload: &[u8], tag: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else { return false };
        self.mac(&[b"notice", session_hash, payload]).verify_slice(&tag).is_ok()
    }
}

/// Ids of pre-login values that have signed someone in, with their expiry (Unix ms): the
/// in-memory part of the brute-force state, bounded by [`MAX_RETIRED`].
#[derive(Default)]
pub struct RetiredSet {
    ids: Mutex<HashMap<[u8; 16], u64>>,
}

impl RetiredSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], u64>> {
        // A poisoned lock leaves a plain map of ids, consistent after any panic: carry on.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Retires `id` until `expires_at_ms`; returns `false` if it was already retired (two
    /// sign-ins with the same form at once: only one may proceed). The test and the insertion
    /// are one critical section.
    pub fn retire(&self, id: [u8; 16], expires_at_ms: u64, now_ms: u64) -> bool {
        let mut retired = self.lock();
        if retired.len() >= MAX_RETIRED && !retired.contains_key(&id) {
            retired.retain(|_, &mut expires| expires > now_ms);
            if retired.len() >= MAX_RETIRED {
                let mut by_expiry: Vec<_> = retired.iter().map(|(id, &e)| (e, *id)).collect();
                by_expiry.sort_unstable();
                for (_, id) in by_expiry.into_iter().take(MAX_RETIRED / 10) {
                    retired.remove(&id);
                }
            }
        }
        retired.insert(id, expires_at_ms).is_none()
    }

    pub fn contains(&self, id: &[u8; 16]) -> bool {
        self.lock().contains_key(id)
    }

    /// Forgets retired ids that have expired anyway.
    pub fn prune(&self, now_ms: u64) {
        let mut retired = self.lock();
        retired.retain(|_, &mut expires| expires > now_ms);
        retired.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_ceremony_opens_only_for_its_form_unaltered_and_until_it_expires() {
        let csrf = Csrf::new([7; 32]);
        let now = 1_000_000;
        let (pre, other) = (csrf.issue_prelogin(now).unwrap(), csrf.issue_prelogin(now).unwrap());
        let state = r#"{"challenge":"abc"}"#;
        let sealed = csrf.seal_ceremony(&pre, state, now + 300);
        assert_eq!(csrf.open_ceremony(&pre, &sealed, now + 299).as_deref(), Some(state));
        assert_eq!(csrf.open_ceremony(&pre, &sealed, now + 300), None, "expired at the second it ends");
        assert_eq!(csrf.open_ceremony(&other, &sealed, now), None, "another form's");
        assert_eq!(Csrf::new([8; 32]).open_ceremony(&pre, &sealed, now), None, "another server's secret");
        // Any byte changed (the expiry, the state, the tag) and it does not open.
        let bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 1;
            assert_eq!(csrf.open_ceremony(&pre, &URL_SAFE_NO_PAD.encode(&altered), now), None, "byte {i}");
        }
        for junk in ["", "%%%", "AAAA", &"A".repeat(5000), &sealed[..sealed.len() - 2]] {
            assert_eq!(csrf.open_ceremony(&pre, junk, now), None, "{junk:.20}");
        }
        // Bound to this process: another one (a restart) with the same secret does not open it.
        let here = Csrf::new([7; 32]).of_this_process().unwrap();
        let sealed = here.seal_ceremony(&pre, state, now + 300);
        assert_eq!(here.open_ceremony(&pre, &sealed, now).as_deref(), Some(state));
        assert_eq!(csrf.open_ceremony(&pre, &sealed, now), None);
        assert_eq!(Csrf::new([7; 32]).of_this_process().unwrap().open_ceremony(&pre, &sealed, now), None);
    }

    #[test]
    fn a_device_cookie_is_known_only_for_its_username_unaltered_and_until_it_expires() {
        let csrf = Csrf::new([7; 32]);
        let now = 1_800_000_000_000;
        let cookie = csrf.issue_device_cookie("alice", None, now).unwrap();
        assert!(csrf.is_known_device(&cookie, "alice", now));
        assert!(!csrf.is_known_device(&cookie, "bob", now), "bound to its username");
        assert!(!Csrf::new([8; 32]).is_known_device(&cookie, "alice", now), "another key did not issue it");
        assert_ne!(cookie, csrf.issue_device_cookie("alice", None, now).unwrap(), "each is new");
        let last = now + DEVICE_COOKIE_LIFETIME.as_millis() as u64 - 1;
        assert!(csrf.is_known_device(&cookie, "alice", last));
        assert!(!csrf.is_known_device(&cookie, "alice", last + 1), "expired");
        assert!(!csrf.is_known_device(&cookie, "alice", now - 61_000), "issued in the future");
        let mut bytes = URL_SAFE_NO_PAD.decode(&cookie).unwrap();
        bytes[7] ^= 1;
        assert!(!csrf.is_known_device(&URL_SAFE_NO_PAD.encode(&bytes), "alice", now), "its time altered");
        for junk in ["", "x", ".", &cookie[1..], &format!("{cookie}A"), &"A".repeat(54), &format!("{cookie}=")] {
            assert!(!csrf.is_known_device(junk, "alice", now), "{junk}");
        }
        let pre = csrf.issue_prelogin(now / 1000).unwrap();
        assert!(!csrf.is_known_device(pre.value(), "alice", now), "a pre-login value is no device cookie");
    }

    #[test]
    fn a_device_cookie_keeps_the_last_five_usernames_once_each_and_drops_what_cannot_be_a_token() {
        let csrf = Csrf::new([7; 32]);
        let now = 1_800_000_000_000;
        let mut cookie: Option<String> = None;
        for (i, user) in ["carol", "dave", "erin", "carol", "frank", "grace", "heidi"].iter().enumerate() {
            cookie = Some(csrf.issue_device_cookie(user, cookie.as_deref(), now + i as u64 * 1000).unwrap());
        }
        let cookie = cookie.unwrap();
        assert_eq!(cookie.split('.').count(), DEVICE_COOKIE_USERS);
        let known: Vec<_> = ["carol", "dave", "erin", "frank", "grace", "heidi"]
            .into_iter()
            .filter(|u| csrf.is_known_device(&cookie, u, now + 9000))
            .collect();
        // carol signed in again after erin: her older token went, and dave is the oldest left out.
        assert_eq!(known, ["carol", "erin", "frank", "grace", "heidi"]);
        assert!(csrf.is_known_device(cookie.split('.').next().unwrap(), "heidi", now + 9000), "newest first");

        // Junk and expired tokens are not carried over.
        let old = csrf.issue_device_cookie("ivan", None, now).unwrap();
        let later = now + DEVICE_COOKIE_LIFETIME.as_millis() as u64;
        let shaped = URL_SAFE_NO_PAD.encode([&later.to_be_bytes()[..], &[9u8; 32]].concat());
        let messy = format!("junk.{old}..{shaped}");
        let renewed = csrf.issue_device_cookie("judy", Some(&messy), later).unwrap();
        assert_eq!(renewed.split('.').count(), 2, "judy's, and the token-shaped one it cannot check: {renewed}");
        assert!(!csrf.is_known_device(&renewed, "ivan", later));
        // One issued ahead of this clock (another instance's runs fast) is carried over.
        let ahead = csrf.issue_device_cookie("liam", None, now + 2 * 86_400_000).unwrap();
        let kept = csrf.issue_device_cookie("mia", Some(&ahead), now).unwrap();
        assert!(csrf.is_known_device(&kept, "liam", now + 2 * 86_400_000), "{kept}");
        // Only the first five tokens are looked at.
        let buried = format!(
            "{}.{}",
            vec!["A".repeat(54); DEVICE_COOKIE_USERS].join("."),
            csrf.issue_device_cookie("kim", None, now).unwrap()
        );
        assert!(!csrf.is_known_device(&buried, "kim", now));
    }

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

    /// With retirements in memory, a restart forgets which forms signed in: the forms go with
    /// the process (review 189 re-sent one after a restart of a sled server, and signed in).
    #[test]
    fn a_pre_login_value_of_this_process_is_taken_by_it_alone() {
        let now = 1_000_000;
        let shared = Csrf::new([7; 32]);
        let (here, next) = (shared.clone().of_this_process().unwrap(), shared.clone().of_this_process().unwrap());
        let pre = here.issue_prelogin(now).unwrap();
        assert_eq!(here.prelogin(pre.value(), now + 10).as_ref(), Some(&pre));
        assert!(next.prelogin(pre.value(), now + 10).is_none(), "the next process, same secret");
        assert!(shared.prelogin(pre.value(), now + 10).is_none(), "a shared state's server");
        let old = shared.issue_prelogin(now).unwrap();
        assert!(here.prelogin(old.value(), now + 10).is_none(), "one issued before epochs");
        assert!(shared.prelogin(old.value(), now + 10).is_some());
    }

    #[test]
    fn only_pre_login_values_the_server_issued_are_accepted_until_they_expire() {
        let csrf = Csrf::new([7; 32]);
        let now = 1_000_000;
        let pre = csrf.issue_prelogin(now).unwrap();
        assert_eq!(csrf.prelogin(pre.value(), now + 10).as_ref(), Some(&pre));
        assert!(Csrf::new([8; 32]).prelogin(pre.value(), now).is_none(), "another key did not issue it");
        let end = now + PRELOGIN_LIFETIME.as_secs();
        assert!(csrf.prelogin(pre.value(), end - 1).is_some());
        assert_eq!(end, pre.expires_at());
        assert!(csrf.prelogin(pre.value(), end).is_none(), "expired from the second its retirement may be pruned");
        // A form drawn with it has a token whose every second the value outlives.
        assert!(pre.lasts_a_form(now + LOGIN_TOKEN_LIFETIME.as_secs() - 1));
        assert!(!pre.lasts_a_form(now + LOGIN_TOKEN_LIFETIME.as_secs()));
        // Its retirement outlives it by longer than a sign-in can wait for its password check.
        assert_eq!(pre.retired_until_ms(), (end + RETIREMENT_SLACK.as_secs()) * 1000);
        assert!(RETIREMENT_SLACK >= std::time::Duration::from_secs(60));
        // Values of the old kind (32 random bytes) and tampered values are refused.
        assert!(csrf.prelogin(&URL_SAFE_NO_PAD.encode([9u8; 32]), now).is_none());
        let mut bytes = URL_SAFE_NO_PAD.decode(pre.value()).unwrap();
        bytes[10] ^= 1;
        assert!(csrf.prelogin(&URL_SAFE_NO_PAD.encode(&bytes), now).is_none());
        for junk in ["", "x", &"A".repeat(54), &"%".repeat(54)] {
            assert!(csrf.prelogin(junk, now).is_none(), "{junk:?}");
        }
        assert_ne!(csrf.issue_prelogin(now).unwrap(), pre, "ids are random");
    }

    #[test]
    fn retiring_twice_says_so_and_expired_ids_are_forgotten() {
        let csrf = Csrf::new([7; 32]);
        let pre = csrf.issue_prelogin(1_000).unwrap();
        let retired = RetiredSet::default();
        let expires = pre.expires_at() * 1000;
        assert!(retired.retire(pre.id(), expires, 1_001_000));
        assert!(!retired.retire(pre.id(), expires, 1_001_000), "the second sign-in with one form is refused");
        assert!(retired.contains(&pre.id()));
        retired.prune(expires + 1);
        assert!(retired.is_empty());
    }

    #[test]
    fn the_retired_set_stays_under_its_cap() {
        let retired = RetiredSet::default();
        for i in 0..(MAX_RETIRED + 10) as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            retired.retire(id, 1_000_000 + i, 1_000);
        }
        assert!(retired.len() <= MAX_RETIRED);
    }

    #[test]
    fn a_session_token_is_bound_to_its_session() {
        let csrf = Csrf::new([7; 32]);
        let t = csrf.session_token(&[1; 32]);
        assert!(csrf.check_session(&[1; 32], &t));
        assert!(!csrf.check_session(&[2; 32], &t));
    }
}
