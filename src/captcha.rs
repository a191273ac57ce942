//! Image challenges (the `captcha` crate), bound to the visitor's pre-login cookie. The server
//! keeps only a keyed hash of the answer; a challenge is single-use, expires after
//! [`CHALLENGE_TTL`], and is compared case-insensitively in constant time. Open challenges live in
//! the [`BruteForceState`] (so every instance sees them); in memory the table is bounded
//! ([`MAX_CHALLENGES`]) and pruned, so abandoned visitors cost nothing for long. Drawing stays here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::brute_force::{BruteForceState, StateError};

pub const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);

/// Most open challenges; past it the oldest are dropped.
pub const MAX_CHALLENGES: usize = 100_000;

/// Characters that survive the distortion without look-alikes (case is ignored when
/// checking, so only one case of each letter is offered).
const CHARS: &[char] = &[
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'k', 'm', 'n', 'p', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', '2', '3', '4',
    '5', '6', '7', '8', '9',
];

#[derive(Debug, thiserror::Error)]
pub enum CaptchaError {
    #[error("could not draw a captcha")]
    Render,
    #[error("cannot keep the challenge")]
    State(#[from] StateError),
}

/// The open challenges of one process (the in-memory [`BruteForceState`]): each visitor's
/// slot holds the keyed hash of the answer and its expiry, bounded by [`MAX_CHALLENGES`].
#[derive(Default)]
pub struct ChallengeTable {
    open: Mutex<Open>,
}

/// Slot → (keyed answer hash, expiry in Unix ms).
type Open = HashMap<[u8; 32], ([u8; 32], u64)>;

impl ChallengeTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A poisoned lock leaves a plain map of hashes and times: carry on with it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens (or replaces) the challenge in `slot`; `now_ms` and `expires_at_ms` are Unix ms.
    pub fn open(&self, slot: [u8; 32], answer_hash: [u8; 32], expires_at_ms: u64, now_ms: u64) {
        let mut open = self.lock();
        if open.len() >= MAX_CHALLENGES && !open.contains_key(&slot) {
            open.retain(|_, c| c.1 > now_ms);
            if open.len() >= MAX_CHALLENGES {
                // Still full of live challenges: drop the ones closest to expiry.
                let mut by_age: Vec<_> = open.iter().map(|(k, c)| (c.1, *k)).collect();
                by_age.sort_unstable();
                for (_, k) in by_age.into_iter().take(MAX_CHALLENGES / 10) {
                    open.remove(&k);
                }
            }
        }
        open.insert(slot, (answer_hash, expires_at_ms));
    }

    /// Takes the challenge out of `slot` under the lock (so of requests sending one answer
    /// at once only one gets it); `None` if there is none or it has expired at `now_ms`.
    pub fn take(&self, slot: &[u8; 32], now_ms: u64) -> Option<[u8; 32]> {
        let (hash, expires_at) = self.lock().remove(slot)?;
        (expires_at > now_ms).then_some(hash)
    }

    pub fn prune(&self, now_ms: u64) {
        let mut open = self.lock();
        open.retain(|_, c| c.1 > now_ms);
        open.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Draws and checks challenges; the open ones are kept in the [`BruteForceState`] (only the
/// keyed hash of each answer, under a slot derived from the pre-login value).
pub struct Captchas {
    key: [u8; 32],
    state: Arc<dyn BruteForceState>,
    drawing: Arc<Semaphore>,
    /// The plaintext answers, for tests only (compiled out of release builds).
    #[cfg(debug_assertions)]
    answers: Mutex<HashMap<[u8; 32], String>>,
}

impl Captchas {
    pub fn new(key: [u8; 32], state: Arc<dyn BruteForceState>) -> Self {
        let cores = crate::config::cores();
        Captchas {
            key,
            state,
            drawing: Arc::new(Semaphore::new(cores)),
            #[cfg(debug_assertions)]
            answers: Mutex::default(),
        }
    }

    fn slot(&self, prelogin: &str) -> [u8; 32] {
        Sha256::new().chain_update(self.key).chain_update(b"slot").chain_update(prelogin).finalize().into()
    }

    fn answer_hash(&self, answer: &str) -> [u8; 32] {
        let normalised = answer.trim().to_lowercase();
        Sha256::new().chain_update(self.key).chain_update(b"answer").chain_update(normalised).finalize().into()
    }

    /// Draws a new challenge for this visitor (replacing any open one) and returns the PNG as
    /// a `data:` URI. Drawing runs on the blocking pool, a few at a time.
    ///
    /// # Errors
    /// [`CaptchaError::Render`] when drawing fails, [`CaptchaError::State`] when the
    /// challenge cannot be kept.
    pub async fn issue(&self, prelogin: &str, now_ms: u64) -> Result<String, CaptchaError> {
        let _permit = self.drawing.acquire().await.map_err(|_| CaptchaError::Render)?;
        let (answer, png) = tokio::task::spawn_blocking(draw).await.map_err(|_| CaptchaError::Render)??;
        let slot = self.slot(prelogin);
        let expires_at = now_ms + CHALLENGE_TTL.as_millis() as u64;
        self.state.open_challenge(slot, self.answer_hash(&answer), expires_at, now_ms).await?;
        #[cfg(debug_assertions)]
        {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            if answers.len() >= MAX_CHALLENGES {
                answers.clear();
            }
            answers.insert(slot, answer);
        }
        Ok(format!("data:image/png;base64,{}", STANDARD.encode(png)))
    }

    /// Checks an answer against the visitor's open challenge and consumes it either way (the
    /// state takes it out once, so requests sending the same answer at once get one
    /// acceptance between them). Compared in constant time.
    ///
    /// # Errors
    /// [`StateError`] when the open challenges cannot be reached.
    pub async fn check(&self, prelogin: &str, answer: &str, now_ms: u64) -> Result<bool, StateError> {
        let Some(hash) = self.state.take_challenge(self.slot(prelogin), now_ms).await? else { return Ok(false) };
        Ok(bool::from(hash.ct_eq(&self.answer_hash(answer))))
    }

    /// The plaintext answer of a visitor's last challenge: for tests only, compiled out of
    /// release builds.
    #[cfg(debug_assertions)]
    pub fn answer_for_tests(&self, prelogin: &str) -> Option<String> {
        self.answers.lock().ok()?.get(&self.slot(prelogin)).cloned()
    }
}

fn draw() -> Result<(String, Vec<u8>), CaptchaError> {
    use ::captcha::filters::{Dots, Noise, Wave};
    let mut c = ::captcha::Captcha::new();
    c.set_chars(CHARS)
        .add_chars(5)
        .apply_filter(Noise::new(0.15))
        .apply_filter(Wave::new(2.0, 8.0).horizontal())
        .apply_filter(Wave::new(2.0, 8.0).vertical())
        .view(220, 90)
        .apply_filter(Dots::new(6));
    c.as_tuple().ok_or(CaptchaError::Render)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brute_force::InMemory;

    fn captchas() -> Captchas {
        Captchas::new([1; 32], Arc::new(InMemory::for_tests()))
    }

    #[tokio::test]
    async fn an_answer_works_once_in_any_case_and_only_for_its_visitor() {
        let c = captchas();
        let uri = c.issue("visitor", 1000).await.unwrap();
        assert!(uri.starts_with("data:image/png;base64,"));
        let answer = c.answer_for_tests("visitor").unwrap();
        assert!(!c.check("someone-else", &answer, 1001).await.unwrap());
        assert!(c.check("visitor", &format!(" {} ", answer.to_uppercase()), 1001).await.unwrap());
        assert!(!c.check("visitor", &answer, 1002).await.unwrap(), "single use");
    }

    #[tokio::test]
    async fn a_wrong_or_late_answer_consumes_the_challenge() {
        let c = captchas();
        c.issue("v", 1000).await.unwrap();
        let answer = c.answer_for_tests("v").unwrap();
        assert!(!c.check("v", "wrong", 1001).await.unwrap());
        assert!(!c.check("v", &answer, 1002).await.unwrap());
        c.issue("v", 1000).await.unwrap();
        let answer = c.answer_for_tests("v").unwrap();
        assert!(!c.check("v", &answer, 1000 + CHALLENGE_TTL.as_millis() as u64).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_answer_sent_by_many_requests_at_once_is_accepted_once() {
        let c = Arc::new(captchas());
        c.issue("v", 1000).await.unwrap();
        let answer = c.answer_for_tests("v").unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (c, answer) = (Arc::clone(&c), answer.clone());
                tokio::spawn(async move { c.check("v", &answer, 1001).await.unwrap() })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            accepted += usize::from(t.await.unwrap());
        }
        assert_eq!(accepted, 1, "the state takes the challenge out once, then it is judged");
    }

    #[test]
    fn the_table_takes_a_challenge_once_drops_expired_ones_and_stays_under_its_cap() {
        let t = ChallengeTable::default();
        t.open([1; 32], [9; 32], 2000, 1000);
        assert_eq!(t.take(&[1; 32], 1500), Some([9; 32]));
        assert_eq!(t.take(&[1; 32], 1500), None, "taken once");
        t.open([2; 32], [9; 32], 2000, 1000);
        assert_eq!(t.take(&[2; 32], 2000), None, "expired");
        t.open([3; 32], [9; 32], 2000, 1000);
        t.prune(2000);
        assert!(t.is_empty());
        for i in 0..(MAX_CHALLENGES + 10) as u64 {
            let mut slot = [0u8; 32];
            slot[..8].copy_from_slice(&i.to_be_bytes());
            t.open(slot, [0; 32], 10_000 + i, 1000);
        }
        assert!(t.len() <= MAX_CHALLENGES);
    }
}
