//! argon2id on a bounded pool: a fixed number of worker threads (one per core by default)
//! behind two bounded queues, its [`Lane`]s. A flood of logins waits in its queue and, past it,
//! is refused with [`PoolError::Overloaded`], so neither the async workers nor memory are ever
//! swamped: at most `workers × argon2 memory` is in use for hashing at any moment.
//!
//! Checks for callers the server already knows ([`Lane::Known`]: a browser with a device
//! cookie for the username typed, a signed-in user, the administrator) have a queue of their
//! own, and workers take from it first. A flood from many addresses fills the open queue
//! only, so people signing in again from their own browsers still get through (OWASP,
//! "Slow Down Online Guessing Attacks with Device Cookies"). What enters the known queue is
//! bounded by the quotas its callers spend (`login_quota_per_user` for each username a device
//! cookie or a session is held for, the per-address one behind it) and by the administrator.
//!
//! The pool counts the argon2 work its checks have done ([`HashPool::verify_work`]), so tests
//! can compare what a known and an unknown username cost without timing them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

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

/// Which queue a job waits in. Workers take every job waiting in [`Lane::Known`] before
/// any in [`Lane::Open`]; each queue holds up to `hash_queue` jobs, and a known job that finds
/// its queue full waits in the open one if that has room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Anyone: a login form from a browser the server does not know.
    Open = 0,
    /// A caller the server already knows: a browser that presents a device cookie for the
    /// username it types ([`crate::csrf::Csrf::is_known_device`]), a signed-in user, or the
    /// administrator.
    Known = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Open, Lane::Known];

    /// Its name in metrics (`portcullis_password_hash_queued{lane}`).
    pub fn label(self) -> &'static str {
        match self {
            Lane::Open => "open",
            Lane::Known => "known",
        }
    }
}

enum Job {
    Verify { password: Password, phc: Option<String>, reply: oneshot::Sender<Verified> },
    Hash { password: Password, reply: oneshot::Sender<Result<String, PoolError>> },
}

/// The two queues (indexed by [`Lane`]), and whether the pool has stopped taking jobs.
#[derive(Default)]
struct Queues {
    lanes: [VecDeque<(Job, tracing::Span)>; 2],
    stopped: bool,
}

impl Queues {
    fn len(&self, lane: Lane) -> usize {
        self.lanes[lane as usize].len()
    }

    /// The queue a job for `lane` would wait in now, each holding `bound`: its own, or for a
    /// known job whose own is full the open one; `None` when neither has room.
    fn room(&self, lane: Lane, bound: usize) -> Option<Lane> {
        let fallback = match lane {
            Lane::Known => Some(Lane::Open),
            Lane::Open => None,
        };
        std::iter::once(lane).chain(fallback).find(|l| self.len(*l) < bound)
    }

    /// The next job: the known lane's first.
    fn next(&mut self) -> Option<(Job, tracing::Span)> {
        let [open, known] = &mut self.lanes;
        known.pop_front().or_else(|| open.pop_front())
    }
}

/// What the handles and the workers share: the queues, the signal of a job or the stop, and
/// the argon2 memory the workers hold.
#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    arrived: Condvar,
    /// Bytes of argon2 buffers the workers hold now ([`HashPool::held_bytes`]).
    held: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Only pushes, pops and the stop flag happen under the lock, none of which leaves the
        // queues half changed if a thread panics: a poisoned lock is safe to carry on with.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// Jobs queued or running, in both lanes.
    waiting: AtomicUsize,
    /// Jobs each lane's queue holds (`hash_queue`).
    queue_bound: usize,
    workers: usize,
    work: Arc<AtomicU64>,
    /// Where each run's time goes (`portcullis_password_hash_seconds`), once metrics are on.
    runs: OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

impl Drop for Inner {
    /// Stops the workers. Jobs still queued are dropped unrun (their passwords wiped): with
    /// the last handle gone nobody waits for their answers.
    fn drop(&mut self) {
        let mut queues = self.shared.lock();
        queues.stopped = true;
        let orphans = std::mem::take(&mut queues.lanes);
        drop(queues);
        drop(orphans);
        self.shared.arrived.notify_all();
    }
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
    /// Starts `workers` threads behind two queues ([`Lane`]s) of `queue` jobs each.
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
        let shared = Arc::new(Shared::default());
        let inner = Arc::new(Inner {
            shared: Arc::clone(&shared),
            waiting: AtomicUsize::new(0),
            queue_bound: queue.max(1),
            workers,
            work,
            runs: OnceLock::new(),
        });
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            let hasher = Arc::clone(&hasher);
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&shared, &hasher, &inner))
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

    /// Jobs queued or running, in both lanes.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Whether a job submitted now to `lane` would likely be taken (a queue it may wait in is
    /// not full). A hint, not a promise: the queue may fill before the job comes. A sign-in
    /// asks first, so that in a flood it answers 503 before it spends the client's quotas on
    /// a check that would not run.
    pub fn has_room(&self, lane: Lane) -> bool {
        self.inner.shared.lock().room(lane, self.inner.queue_bound).is_some()
    }

    /// Bytes of argon2 memory the workers hold now: a buffer each after a check, wiped at
    /// once and given back after `KEEP_BUFFER_WHEN_IDLE` without work, so an idle server
    /// holds none.
    pub fn held_bytes(&self) -> usize {
        self.inner.shared.held.load(Ordering::Relaxed)
    }

    /// Jobs waiting in `lane`'s queue (not running).
    pub fn queued(&self, lane: Lane) -> usize {
        self.inner.shared.lock().len(lane)
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
    /// the stored hashes were made with other parameters. It waits in `lane`'s queue (a known
    /// check in the open one when its own is full).
    ///
    /// # Errors
    /// [`PoolError::Overloaded`] when no queue it may wait in has room; [`PoolError::Stopped`]
    /// if the pool stops before answering.
    pub async fn verify(&self, password: Password, phc: Option<String>, lane: Lane) -> Result<Verified, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, phc, reply }, lane)?;
        answer.await.map_err(|_| PoolError::Stopped)
    }

    /// Hashes a new password with the current parameters. New passwords come only from
    /// callers the server knows (a signed-in user, the administrator): [`Lane::Known`].
    ///
    /// # Errors
    /// [`PoolError::Overloaded`] when both queues are full; [`PoolError::Hash`] when argon2
    /// fails (the random salt included); [`PoolError::Stopped`] if the pool stops first.
    pub async fn hash(&self, password: Password) -> Result<String, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply }, Lane::Known)?;
        answer.await.map_err(|_| PoolError::Stopped)?
    }

    fn submit(&self, job: Job, lane: Lane) -> Result<(), PoolError> {
        // Not stopped: that happens only once the last handle, like `self`, is gone.
        let mut queues = self.inner.shared.lock();
        let Some(lane) = queues.room(lane, self.inner.queue_bound) else { return Err(PoolError::Overloaded) };
        queues.lanes[lane as usize].push_back((job, tracing::Span::current()));
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        drop(queues);
        self.inner.shared.arrived.notify_one();
        Ok(())
    }
}

/// How long an idle worker keeps its argon2 buffer before freeing it.
const KEEP_BUFFER_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What a worker waiting for a job gets.
enum Received {
    Job((Job, tracing::Span)),
    /// A second passed without a job.
    Quiet,
    /// The pool stopped and its queues are empty.
    Stopped,
}

fn receive(shared: &Shared) -> Received {
    let mut queues = shared.lock();
    loop {
        if let Some(job) = queues.next() {
            return Received::Job(job);
        }
        if queues.stopped {
            return Received::Stopped;
        }
        let (guard, waited) =
            shared.arrived.wait_timeout(queues, KEEP_BUFFER_WHEN_IDLE).unwrap_or_else(|e| e.into_inner());
        queues = guard;
        if waited.timed_out() {
            return queues.next().map_or(Received::Quiet, Received::Job);
        }
    }
}

fn worker(shared: &Shared, hasher: &Hasher, inner: &std::sync::Weak<Inner>) {
    lower_priority();
    let mut workspace = Workspace::wiped_when_idle();
    // What this worker last counted into `shared.held`.
    let mut counted = 0;
    let mut count = |workspace: &Workspace| {
        let now = workspace.held_bytes();
        shared.held.fetch_add(now, Ordering::Relaxed);
        shared.held.fetch_sub(counted, Ordering::Relaxed);
        counted = now;
    };
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            // Wait for work at most a second at a time, each worker on its own clock: an idle
            // worker then gives its (already wiped) buffer back, so an idle server holds no
            // argon2 memory.
            None => match receive(shared) {
                Received::Job(job) => job,
                Received::Quiet => {
                    if workspace.held_bytes() > 0 {
                        workspace.release();
                        count(&workspace);
                        crate::memory::give_back_freed();
                    }
                    continue;
                }
                Received::Stopped => {
                    workspace.release();
                    count(&workspace);
                    return;
                }
            },
        };
        let started = std::time::Instant::now();
        run(job, hasher, &mut workspace);
        count(&workspace);
        if let Some(inner) = inner.upgrade() {
            inner.waiting.fetch_sub(1, Ordering::Relaxed);
            if let Some(runs) = inner.runs.get() {
                runs.observe(started.elapsed().as_secs_f64());
            }
        }
        // A job waiting already: its argon2 pass overwrites the buffer. None: wipe now,
        // before sleeping on the queue.
        next = shared.lock().next();
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
        assert!(
            pool.verify(Password::new("plum tractor velvet orbit"), Some(phc.clone()), Lane::Open).await.unwrap().valid
        );
        assert!(!pool.verify(Password::new("plum tractor velvet orbiT"), Some(phc), Lane::Open).await.unwrap().valid);
        assert!(!pool.verify(Password::new("anything"), None, Lane::Open).await.unwrap().valid);
        assert!(!pool.verify(Password::new("anything"), Some("garbage".into()), Lane::Open).await.unwrap().valid);
    }

    #[tokio::test]
    async fn hashes_with_older_parameters_are_upgraded_after_a_good_password() {
        let old = HashPool::start(HashParams { memory_kib: 32, ..TINY }, 1, 4).unwrap();
        let phc = old.hash(Password::new("plum tractor velvet orbit")).await.unwrap();
        let new = HashPool::start(TINY, 1, 4).unwrap();
        let wrong = new.verify(Password::new("wrong wrong wrong wrong"), Some(phc.clone()), Lane::Open).await.unwrap();
        assert!(wrong.upgraded_hash.is_none());
        let right = new.verify(Password::new("plum tractor velvet orbit"), Some(phc), Lane::Open).await.unwrap();
        let upgraded = right.upgraded_hash.unwrap();
        assert!(upgraded.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let again = new.verify(Password::new("plum tractor velvet orbit"), Some(upgraded), Lane::Open).await.unwrap();
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
            match pool.submit(Job::Hash { password: Password::new("x"), reply: oneshot::channel().0 }, Lane::Open) {
                Ok(()) => pending.push(()),
                Err(PoolError::Overloaded) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused >= 17, "only {refused} refused");
    }

    /// A flood that fills the open queue leaves the known lane its own room, and the worker
    /// takes a known job before every open one that waited longer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_known_job_gets_past_a_full_open_queue_and_is_taken_first() {
        let slow = HashParams { memory_kib: 32 * 1024, iterations: 8, parallelism: 1 };
        let pool = HashPool::start(slow, 1, 2).unwrap();
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let run = |lane: Lane, name: &'static str| {
            let (pool, done) = (pool.clone(), done.clone());
            let (reply, answer) = oneshot::channel();
            let submitted = pool.submit(Job::Verify { password: Password::new("x"), phc: None, reply }, lane);
            tokio::spawn(async move {
                if answer.await.is_ok() {
                    let _ = done.send(name);
                }
            });
            submitted
        };
        run(Lane::Open, "open 1").unwrap();
        // The worker has taken the first (the queue is empty again) before two more wait in
        // the open queue, and then a fourth does not fit.
        while pool.queued(Lane::Open) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for name in ["open 2", "open 3"] {
            run(Lane::Open, name).unwrap();
        }
        assert!(!pool.has_room(Lane::Open));
        assert!(matches!(run(Lane::Open, "refused"), Err(PoolError::Overloaded)));
        assert!(pool.has_room(Lane::Known));
        run(Lane::Known, "known").unwrap();
        let mut order = Vec::new();
        while order.len() < 4 {
            order.push(finished.recv().await.unwrap());
        }
        let known = order.iter().position(|n| *n == "known").unwrap();
        let waited = |n| order.iter().position(|o| *o == n).unwrap();
        assert_eq!(order[0], "open 1", "{order:?}");
        assert!(known < waited("open 2") && known < waited("open 3"), "{order:?}");
        // A worker answers before it counts the job done.
        while pool.waiting() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Every worker gives its buffer back after a quiet second, not only the one that waited
    /// first (before 40faa63 the workers took turns at one receiver's lock, which the waiting
    /// one kept taking back: a new server still held the first hash's 19 MiB 6 s later).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_idle_worker_gives_its_argon2_memory_back() {
        let params = HashParams { memory_kib: 8 * 1024, iterations: 2, parallelism: 1 };
        let pool = HashPool::start(params, 2, 4).unwrap();
        assert_eq!(pool.held_bytes(), 0);
        let checks: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.verify(Password::new("x"), None, Lane::Open).await })
            })
            .collect();
        for c in checks {
            c.await.unwrap().unwrap();
        }
        assert!(pool.held_bytes() >= 8 * 1024 * 1024, "held just after: {}", pool.held_bytes());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.held_bytes() > 0 {
            assert!(std::time::Instant::now() < deadline, "still held: {}", pool.held_bytes());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The workers stop when the last handle goes, and what was queued is not run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_workers_stop_when_the_last_handle_is_dropped() {
        let slow = HashParams { memory_kib: 32 * 1024, iterations: 8, parallelism: 1 };
        let pool = HashPool::start(slow, 2, 8).unwrap();
        let shared = Arc::downgrade(&pool.inner.shared);
        for _ in 0..6 {
            let job = Job::Verify { password: Password::new("x"), phc: None, reply: oneshot::channel().0 };
            pool.submit(job, Lane::Open).unwrap();
        }
        let work = Arc::clone(&pool.inner.work);
        drop(pool);
        // Each worker holds the queues until it returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while shared.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "the workers did not stop");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // A check takes far longer than the drop: at most the two running had started.
        let one = 32 * 1024 * 8;
        assert!(work.load(Ordering::Relaxed) <= 2 * one, "{} checks ran", work.load(Ordering::Relaxed) / one);
    }

    /// Known jobs past their own queue wait with strangers' while that has room; past both,
    /// they are refused too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_known_job_past_its_full_queue_waits_in_the_open_one() {
        let slow = HashParams { memory_kib: 32 * 1024, iterations: 8, parallelism: 1 };
        let pool = HashPool::start(slow, 1, 1).unwrap();
        let submit = |lane| pool.submit(Job::Hash { password: Password::new("x"), reply: oneshot::channel().0 }, lane);
        submit(Lane::Known).unwrap();
        while pool.queued(Lane::Known) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        submit(Lane::Known).unwrap();
        assert_eq!((pool.queued(Lane::Known), pool.queued(Lane::Open)), (1, 0));
        assert!(pool.has_room(Lane::Known), "the open queue has room");
        submit(Lane::Known).unwrap();
        assert_eq!((pool.queued(Lane::Known), pool.queued(Lane::Open)), (1, 1));
        assert!(!pool.has_room(Lane::Known) && !pool.has_room(Lane::Open));
        assert!(matches!(submit(Lane::Known), Err(PoolError::Overloaded)));
        assert!(matches!(submit(Lane::Open), Err(PoolError::Overloaded)));
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
                let v = pool.verify(Password::new("plum tractor velvet orbit"), p, Lane::Open).await.unwrap();
                (pool.verify_work() - before, v.valid)
            }
        };
        assert_eq!(cost(Some(phc)).await, (32 * 3, true));
        assert_eq!(cost(Some(dummy)).await, (32 * 3, false));
        assert_eq!(cost(None).await, (64, false), "the pool's own dummy has the current parameters");
        assert!(dummy_like("garbage").is_none());
    }
}
