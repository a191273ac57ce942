//! argon2id on a bounded pool: a fixed number of worker threads (one per core by default)
//! behind a bounded queue. A flood of logins waits in the queue and, past it, is refused with
//! [`PoolError::Overloaded`], so neither the async workers nor memory are ever swamped: at
//! most `workers × argon2 memory` is in use for hashing at any moment.
//!
//! The pool counts the argon2 work its checks have done ([`HashPool::verify_work`]), so tests
//! can compare what a known and an unknown username cost without timing them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, Version};
use tokio::sync::oneshot;

use super::{Password, Workspace};
use crate::config::HashParams;

/// The outcome of a password check.
#[derive(Debug)]
pub struct Verified {
    pub valid: bool,
    /// A new hash with the current parameters, when the password was right but its stored
    /// hash used older ones.
    pub upgraded_hash: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("too many password checks are waiting; try again shortly")]
    Overloaded,
    #[error("the hashing pool has stopped")]
    Stopped,
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

enum Job {
    Verify { password: Password, phc: Option<String>, reply: oneshot::Sender<Verified> },
    Hash { password: Password, reply: oneshot::Sender<Result<String, PoolError>> },
}

struct Inner {
    sender: SyncSender<(Job, tracing::Span)>,
    waiting: AtomicUsize,
    /// Jobs the pool takes at once: the queue and one running per worker.
    capacity: usize,
    workers: usize,
    work: Arc<AtomicU64>,
    /// Where each run's time goes (`portcullis_password_hash_seconds`), once metrics are on.
    runs: OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

/// A handle to the pool; cheap to clone. The workers stop when the last handle is dropped.
#[derive(Clone)]
pub struct HashPool {
    inner: Arc<Inner>,
}

/// What each worker needs: the parameters for new hashes and the dummy hash that unknown
/// users are checked against, so that their answer takes as long as a real one.
struct Hasher {
    argon2: Argon2<'static>,
    params: Params,
    dummy: String,
    /// KiB × passes of every check run (see [`HashPool::verify_work`]).
    work: Arc<AtomicU64>,
}

impl HashPool {
    /// Starts `workers` threads behind a queue of `queue` jobs.
    pub fn start(params: HashParams, workers: usize, queue: usize) -> Result<Self, PoolError> {
        let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(|e| PoolError::Params(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut random = [0u8; 32];
        crate::random::fill(&mut random)?;
        let dummy = argon2.hash_password(&random).map_err(|e| PoolError::Hash(e.to_string()))?.to_string();
        let work = Arc::new(AtomicU64::new(0));
        let hasher = Arc::new(Hasher { argon2, params, dummy, work: Arc::clone(&work) });

        let workers = workers.max(1);
        let (sender, receiver) = sync_channel::<(Job, tracing::Span)>(queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let capacity = queue.max(1) + workers;
        let inner =
            Arc::new(Inner { sender, waiting: AtomicUsize::new(0), capacity, workers, work, runs: OnceLock::new() });
        for i in 0..workers {
            let receiver = Arc::clone(&receiver);
            let hasher = Arc::clone(&hasher);
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&receiver, &hasher, &inner))
                .map_err(|e| PoolError::Hash(format!("cannot start worker: {e}")))?;
        }
        Ok(HashPool { inner })
    }

    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Records how long each later hash or verification takes on its worker into `runs`
    /// (the first histogram given stays).
    pub fn observe_runs(&self, runs: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.inner.runs.set(runs);
    }

    /// Jobs queued or running.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Whether a job submitted now would likely be taken (fewer than the queue plus the
    /// workers are waiting or running). A hint, not a promise: the pool may fill before the
    /// job comes. A sign-in asks first, so that in a flood it answers 503 before it spends
    /// the client's quotas on a check that would not run.
    pub fn has_room(&self) -> bool {
        self.inner.waiting.load(Ordering::Relaxed) < self.inner.capacity
    }

    /// The argon2 work all password checks have done since start, in KiB × passes (the
    /// memory cost times the time cost of each hash checked). What a check costs depends on
    /// these two and nothing an attacker controls, so comparing this figure before and
    /// after a check says what the check cost without measuring time.
    pub fn verify_work(&self) -> u64 {
        self.inner.work.load(Ordering::Relaxed)
    }

    /// Checks `password` against a stored PHC string, or against the pool's dummy hash (made
    /// with the current parameters) when there is none. For unknown users, pass a dummy
    /// shaped like the stored hashes ([`dummy_like`]), so both take the same work even when
    /// the stored hashes were made with other parameters.
    pub async fn verify(&self, password: Password, phc: Option<String>) -> Result<Verified, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, phc, reply })?;
        answer.await.map_err(|_| PoolError::Stopped)
    }

    /// Hashes a new password with the current parameters.
    pub async fn hash(&self, password: Password) -> Result<String, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer.await.map_err(|_| PoolError::Stopped)?
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        match self.inner.sender.try_send((job, tracing::Span::current())) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(PoolError::Overloaded),
                    TrySendError::Disconnected(_) => Err(PoolError::Stopped),
                }
            }
        }
    }
}

/// How long an idle worker keeps its argon2 buffer before freeing it.
const KEEP_BUFFER_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

fn worker(receiver: &Mutex<Receiver<(Job, tracing::Span)>>, hasher: &Hasher, inner: &std::sync::Weak<Inner>) {
    lower_priority();
    let mut workspace = Workspace::wiped_when_idle();
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                // Wait for work at most a second at a time, holding the queue only while
                // waiting: then every idle worker gets its turn to notice the quiet, and gives
                // its (already wiped) buffer back, so an idle server holds no argon2 memory.
                let received = match receiver.lock() {
                    Ok(rx) => rx.recv_timeout(KEEP_BUFFER_WHEN_IDLE),
                    Err(_) => return,
                };
                match received {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        if workspace.held_bytes() > 0 {
                            workspace.release();
                            crate::memory::give_back_freed();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let started = std::time::Instant::now();
        run(job, hasher, &mut workspace);
        if let Some(inner) = inner.upgrade() {
            inner.waiting.fetch_sub(1, Ordering::Relaxed);
            if let Some(runs) = inner.runs.get() {
                runs.observe(started.elapsed().as_secs_f64());
            }
        }
        // A job waiting already: its argon2 pass overwrites the buffer. None: wipe now,
        // before sleeping on the queue.
        next = receiver.lock().ok().and_then(|rx| rx.try_recv().ok());
        if next.is_none() {
            workspace.wipe();
        }
    }
}

fn run((job, span): (Job, tracing::Span), hasher: &Hasher, workspace: &mut Workspace) {
    let _entered = span.enter();
    match job {
        Job::Verify { password, phc, reply } => {
            let _ = reply.send(hasher.verify(workspace, &password, phc.as_deref()));
        }
        Job::Hash { password, reply } => {
            let _ = reply.send(hasher.hash(workspace, &password));
        }
    }
}

/// Hashing threads run at a lower priority (nice 10) than the async workers, so request
/// handling preempts hashing at once and /healthz stays fast while every core hashes.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // this thread's nice value, and failure (e.g. a sandbox forbidding it) is harmless.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

impl Hasher {
    fn verify(&self, workspace: &mut Workspace, password: &Password, phc: Option<&str>) -> Verified {
        // No user, or a stored hash that does not parse: the dummy takes as long, and fails.
        let (hash, known) = match phc.and_then(|p| PasswordHash::new(p).ok()) {
            Some(hash) => (hash, true),
            None => (self.dummy_hash(), false),
        };
        let valid = workspace.verify(password.expose().as_bytes(), &hash) && known;
        if let Ok(p) = Params::try_from(&hash) {
            self.work.fetch_add(u64::from(p.m_cost()) * u64::from(p.t_cost()), Ordering::Relaxed);
        }
        workspace.trim(&self.params);
        let upgraded_hash = if valid && self.is_outdated(&hash) { self.hash(workspace, password).ok() } else { None };
        Verified { valid, upgraded_hash }
    }

    fn dummy_hash(&self) -> PasswordHash {
        // The dummy was produced by this hasher at start-up, so it always parses.
        #[allow(clippy::expect_used)]
        PasswordHash::new(&self.dummy).expect("dummy hash parses")
    }

    fn is_outdated(&self, hash: &PasswordHash) -> bool {
        if hash.algorithm.as_str() != "argon2id" || hash.version != Some(Version::V0x13.into()) {
            return true;
        }
        match Params::try_from(hash) {
            Ok(p) => {
                p.m_cost() != self.params.m_cost()
                    || p.t_cost() != self.params.t_cost()
                    || p.p_cost() != self.params.p_cost()
            }
            Err(_) => true,
        }
    }

    fn hash(&self, workspace: &mut Workspace, password: &Password) -> Result<String, PoolError> {
        workspace.hash(&self.argon2, password.expose().as_bytes())
    }
}

/// A stand-in for `stored`, for checking the passwords of unknown users: the same algorithm,
/// version, parameters and output length, so checking it costs the same work, with a zero salt
/// and output that no password produces. `None` if `stored` is not a PHC string with a salt
/// and an output.
pub fn dummy_like(stored: &str) -> Option<String> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use base64::Engine;
    let hash = PasswordHash::new(stored).ok()?;
    let (salt, output) = (hash.salt?, hash.hash?);
    // `$alg$v=..$params` is everything before the last two fields (salt and output).
    let shape = stored.rsplitn(3, '$').nth(2)?;
    let salt_len = salt.len();
    let dummy = format!(
        "{shape}${}${}",
        STANDARD_NO_PAD.encode(vec![0u8; salt_len.max(8)]),
        STANDARD_NO_PAD.encode(vec![0u8; output.len()])
    );
    PasswordHash::new(&dummy).ok()?;
    Some(dummy)
}

/// What makes two stored hashes cost the same to check: everything but the salt and output,
/// and the output's length. `None` for strings that are not PHC hashes.
pub fn shape_of(stored: &str) -> Option<(String, usize)> {
    let hash = PasswordHash::new(stored).ok()?;
    Some((stored.rsplitn(3, '$').nth(2)?.to_string(), hash.hash?.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: HashParams = HashParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[tokio::test]
    async fn a_hash_verifies_and_a_wrong_password_does_not() {
        let pool = HashPool::start(TINY, 1, 4).unwrap();
        let phc = pool.hash(Password::new("plum tractor velvet orbit")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(pool.verify(Password::new("plum tractor velvet orbit"), Some(phc.clone())).await.unwrap().valid);
        assert!(!pool.verify(Password::new("plum tractor velvet orbiT"), Some(phc)).await.unwrap().valid);
        assert!(!pool.verify(Password::new("anything"), None).await.unwrap().valid);
        assert!(!pool.verify(Password::new("anything"), Some("garbage".into())).await.unwrap().valid);
    }

    #[tokio::test]
    async fn hashes_with_older_parameters_are_upgraded_after_a_good_password() {
        let old = HashPool::start(HashParams { memory_kib: 32, ..TINY }, 1, 4).unwrap();
        let phc = old.hash(Password::new("plum tractor velvet orbit")).await.unwrap();
        let new = HashPool::start(TINY, 1, 4).unwrap();
        let wrong = new.verify(Password::new("wrong wrong wrong wrong"), Some(phc.clone())).await.unwrap();
        assert!(wrong.upgraded_hash.is_none());
        let right = new.verify(Password::new("plum tractor velvet orbit"), Some(phc)).await.unwrap();
        let upgraded = right.upgraded_hash.unwrap();
        assert!(upgraded.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let again = new.verify(Password::new("plum tractor velvet orbit"), Some(upgraded)).await.unwrap();
        assert!(again.valid && again.upgraded_hash.is_none());
    }

    #[test]
    fn a_larger_older_hash_does_not_leave_the_workspace_larger() {
        let big = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(512, 1, 1, None).unwrap());
        let phc = big.hash_password(b"plum tractor velvet orbit").unwrap().to_string();
        let hasher = Hasher {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 1, 1, None).unwrap()),
            params: Params::new(64, 1, 1, None).unwrap(),
            dummy: big.hash_password(b"x").unwrap().to_string(),
            work: Arc::default(),
        };
        let mut ws = Workspace::new();
        let v = hasher.verify(&mut ws, &Password::new("plum tractor velvet orbit"), Some(&phc));
        assert!(v.valid && v.upgraded_hash.is_some());
        assert_eq!(ws.held_bytes(), 64 * 1024);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_instead_of_growing() {
        // Heavier parameters so the single worker is still busy while we fill its queue.
        let pool = HashPool::start(HashParams { memory_kib: 8192, iterations: 4, parallelism: 1 }, 1, 2).unwrap();
        let mut pending = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            let pool = pool.clone();
            match pool.submit(Job::Hash { password: Password::new("x"), reply: oneshot::channel().0 }) {
                Ok(()) => pending.push(()),
                Err(PoolError::Overloaded) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused >= 17, "only {refused} refused");
    }

    #[tokio::test]
    async fn a_dummy_like_a_stored_hash_costs_the_same_work_and_matches_no_password() {
        let old = HashPool::start(HashParams { memory_kib: 32, iterations: 3, parallelism: 1 }, 1, 4).unwrap();
        let phc = old.hash(Password::new("plum tractor velvet orbit")).await.unwrap();
        let pool = HashPool::start(TINY, 1, 4).unwrap();
        let dummy = dummy_like(&phc).unwrap();
        assert_eq!(shape_of(&dummy), shape_of(&phc));
        let cost = |p: Option<String>| {
            let pool = pool.clone();
            async move {
                let before = pool.verify_work();
                let v = pool.verify(Password::new("plum tractor velvet orbit"), p).await.unwrap();
                (pool.verify_work() - before, v.valid)
            }
        };
        assert_eq!(cost(Some(phc)).await, (32 * 3, true));
        assert_eq!(cost(Some(dummy)).await, (32 * 3, false));
        assert_eq!(cost(None).await, (64, false), "the pool's own dummy has the current parameters");
        assert!(dummy_like("garbage").is_none());
    }
}
