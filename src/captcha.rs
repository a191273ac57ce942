//! Image challenges (the `captcha` crate), bound to the visitor's pre-login cookie. The server
//! keeps only a keyed hash of the answer; a challenge is single-use, expires after
//! [`CHALLENGE_TTL`], and is compared case-insensitively in constant time. The table is bounded
//! ([`MAX_CHALLENGES`]) and pruned, so abandoned visitors cost nothing for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

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
}

struct Challenge {
    answer_hash: [u8; 32],
    expires_at: u64,
    #[cfg(debug_assertions)]
    answer: String,
}

pub struct Captchas {
    key: [u8; 32],
    open: Mutex<HashMap<[u8; 32], Challenge>>,
    drawing: Arc<Semaphore>,
}

impl Captchas {
    pub fn new(key: [u8; 32]) -> Self {
        let cores = crate::config::cores();
        Captchas { key, open: Mutex::new(HashMap::new()), drawing: Arc::new(Semaphore::new(cores)) }
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
    pub async fn issue(&self, prelogin: &str, now_ms: u64) -> Result<String, CaptchaError> {
        let _permit = self.drawing.acquire().await.map_err(|_| CaptchaError::Render)?;
        let (answer, png) = tokio::task::spawn_blocking(draw).await.map_err(|_| CaptchaError::Render)??;
        let challenge = Challenge {
            answer_hash: self.answer_hash(&answer),
            expires_at: now_ms + CHALLENGE_TTL.as_millis() as u64,
            #[cfg(debug_assertions)]
            answer,
        };
        let slot = self.slot(prelogin);
        if let Ok(mut open) = self.open.lock() {
            if open.len() >= MAX_CHALLENGES {
                open.retain(|_, c| c.expires_at > now_ms);
                if open.len() >= MAX_CHALLENGES {
                    // Still full of live challenges: drop the ones closest to expiry.
                    let mut by_age: Vec<_> = open.iter().map(|(k, c)| (c.expires_at, *k)).collect();
                    by_age.sort_unstable();
                    for (_, k) in by_age.into_iter().take(MAX_CHALLENGES / 10) {
                        open.remove(&k);
                    }
                }
            }
            open.insert(slot, challenge);
        }
        Ok(format!("data:image/png;base64,{}", STANDARD.encode(png)))
    }

    /// Checks an answer against the visitor's open challenge and consumes it either way. The
    /// challenge is taken out of the table under its lock before it is judged, so requests
    /// sending the same answer at once get one acceptance between them.
    pub fn check(&self, prelogin: &str, answer: &str, now_ms: u64) -> bool {
        let slot = self.slot(prelogin);
        let Some(challenge) = self.open.lock().ok().and_then(|mut open| open.remove(&slot)) else { return false };
        if challenge.expires_at <= now_ms {
            return false;
        }
        bool::from(challenge.answer_hash.ct_eq(&self.answer_hash(answer)))
    }

    pub fn prune(&self, now_ms: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, c| c.expires_at > now_ms);
            open.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plaintext answer of a visitor's open challenge: for tests only, compiled out of
    /// release builds.
    #[cfg(debug_assertions)]
    pub fn answer_for_tests(&self, prelogin: &str) -> Option<String> {
        self.open.lock().ok()?.get(&self.slot(prelogin)).map(|c| c.answer.clone())
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

    #[tokio::test]
    async fn an_answer_works_once_in_any_case_and_only_for_its_visitor() {
        let c = Captchas::new([1; 32]);
        let uri = c.issue("visitor", 1000).await.unwrap();
        assert!(uri.starts_with("data:image/png;base64,"));
        let answer = c.answer_for_tests("visitor").unwrap();
        assert!(!c.check("someone-else", &answer, 1001));
        assert!(c.check("visitor", &format!(" {} ", answer.to_uppercase()), 1001));
        assert!(!c.check("visitor", &answer, 1002), "single use");
    }

    #[tokio::test]
    async fn a_wrong_or_late_answer_consumes_the_challenge() {
        let c = Captchas::new([1; 32]);
        c.issue("v", 1000).await.unwrap();
        let answer = c.answer_for_tests("v").unwrap();
        assert!(!c.check("v", "wrong", 1001));
        assert!(!c.check("v", &answer, 1002));
        c.issue("v", 1000).await.unwrap();
        let answer = c.answer_for_tests("v").unwrap();
        assert!(!c.check("v", &answer, 1000 + CHALLENGE_TTL.as_millis() as u64));
        c.issue("w", 0).await.unwrap();
        c.prune(CHALLENGE_TTL.as_millis() as u64 + 1);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn one_answer_sent_by_many_requests_at_once_is_accepted_once() {
        let c = std::sync::Arc::new(Captchas::new([1; 32]));
        c.issue("v", 1000).await.unwrap();
        let answer = c.answer_for_tests("v").unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (c, barrier, answer) = (c.clone(), barrier.clone(), answer.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    c.check("v", &answer, 1001)
                })
            })
            .collect();
        let accepted = handles.into_iter().map(|h| h.join().unwrap()).filter(|&ok| ok).count();
        assert_eq!(accepted, 1, "the challenge is taken out under the lock, then judged");
    }
}
