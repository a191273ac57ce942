//! Faults of the store and the shared state in the server log, bounded: the first of each
//! kind at once, then at most one line per kind per [`INTERVAL`] saying how many like it were
//! left out, and one line when the store (and the authentication log) works again.
//!
//! Why: while the database is down every request fails the same way, and a line for each
//! (100 requests/s, 100 ERROR lines/s) buries the one that matters and fills the disk. The
//! responses do not change (503 with `Retry-After`, `routes::error_page`); only the log does.
//! Errors are still formatted by the terminal log's escaping field formatter
//! (`telemetry::escaped_fields`), so attacker-controlled text in them stays escaped.
//!
//! The state is one per process, as the log it guards is (the `tracing` subscriber is
//! global too). [`Limiter`] is the arithmetic, with the clock passed in so it is tested
//! without sleeping; [`report`] and [`spawn_watch`] are its use.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per kind of fault per this long (the first of an outage at once).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// How often the watch task writes counts that are due and checks whether the store answers.
pub const TICK: Duration = Duration::from_secs(1);

/// How much a fault matters in the log: `Error` for what a person must look at (a request
/// failed), `Warn` for what only says the store is away (`/readyz`, a best-effort write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warn,
}

/// What to do with one fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write a line; `suppressed` faults of the same kind were left out in the `since` before.
    Log { suppressed: u64, since: Duration },
    /// Count it; a later line says how many.
    Suppress,
}

/// A line owed for faults that were counted but not written (no fault of that kind has come
/// since to carry the count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    pub kind: &'static str,
    pub severity: Severity,
    pub suppressed: u64,
    pub since: Duration,
    /// The last of the faults left out, so the line that counts them says why (empty when
    /// none was noted).
    pub error: String,
}

/// The end of an outage: how long it lasted (first unavailable fault to recovery) and how
/// many faults it caused, written or not; and the counts still owed, written with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub lasted: Duration,
    pub faults: u64,
    pub owed: Vec<Owed>,
}

#[derive(Debug)]
struct Kind {
    what: &'static str,
    severity: Severity,
    last_line: Instant,
    suppressed: u64,
    /// The error of the last fault left out ([`Limiter::note_error`]).
    last_error: String,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    last_fault: Instant,
    faults: u64,
}

/// The rate arithmetic. Kinds are the `what` texts of the call sites (static strings, so a
/// few dozen at most: the state is bounded without eviction).
#[derive(Debug)]
pub struct Limiter {
    interval: Duration,
    kinds: Vec<Kind>,
    outage: Option<Outage>,
}

impl Limiter {
    /// A limiter writing at most one line per kind per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Limiter { interval, kinds: Vec::new(), outage: None }
    }

    /// One fault of kind `what` at `now`; `unavailable` when it is the store (or the shared
    /// state) not answering, which starts or continues an outage.
    pub fn fault(&mut self, what: &'static str, severity: Severity, unavailable: bool, now: Instant) -> Verdict {
        if unavailable {
            let outage = self.outage.get_or_insert(Outage { since: now, last_fault: now, faults: 0 });
            outage.faults += 1;
            outage.last_fault = outage.last_fault.max(now);
        }
        let Some(kind) = self.kinds.iter_mut().find(|k| k.what == what) else {
            self.kinds.push(Kind { what, severity, last_line: now, suppressed: 0, last_error: String::new() });
            return Verdict::Log { suppressed: 0, since: Duration::ZERO };
        };
        let since = now.saturating_duration_since(kind.last_line);
        if since >= self.interval {
            let suppressed = std::mem::take(&mut kind.suppressed);
            kind.last_line = now;
            Verdict::Log { suppressed, since }
        } else {
            kind.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// The counts due at `now`: kinds with faults left out and no line for an interval. Each
    /// then counts as written at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Owed> {
        let interval = self.interval;
        let mut owed = Vec::new();
        for kind in &mut self.kinds {
            let since = now.saturating_duration_since(kind.last_line);
            if kind.suppressed > 0 && since >= interval {
                let error = std::mem::take(&mut kind.last_error);
                owed.push(Owed { kind: kind.what, severity: kind.severity, suppressed: kind.suppressed, since, error });
                kind.suppressed = 0;
                kind.last_line = now;
            }
        }
        owed
    }

    /// Keeps `error` as the last of kind `what`'s faults left out, for the line that will count
    /// them ([`Owed::error`]).
    pub fn note_error(&mut self, what: &'static str, error: &dyn std::fmt::Display) {
        if let Some(kind) = self.kinds.iter_mut().find(|k| k.what == what) {
            use std::fmt::Write as _;
            kind.last_error.clear();
            let _ = write!(kind.last_error, "{error}");
        }
    }

    /// Whether an outage is going on (an unavailable fault since the last recovery).
    pub fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// The end of the outage, when there is one, the store answered (`answers`) and no
    /// unavailable fault came in the `quiet` before `now` (a request that failed while the
    /// check ran would otherwise be followed by "works again" and then its own error).
    /// Every count still owed comes with it, and the next fault of any kind is written at
    /// once, as the first of a new outage should be.
    pub fn recovered(&mut self, answers: bool, quiet: Duration, now: Instant) -> Option<Recovery> {
        let outage = self.outage.as_ref()?;
        if !answers || now.saturating_duration_since(outage.last_fault) < quiet {
            return None;
        }
        let outage = self.outage.take()?;
        let owed = std::mem::take(&mut self.kinds)
            .into_iter()
            .filter(|k| k.suppressed > 0)
            .map(|k| Owed {
                kind: k.what,
                severity: k.severity,
                suppressed: k.suppressed,
                since: now.saturating_duration_since(k.last_line),
                error: k.last_error,
            })
            .collect();
        Some(Recovery { lasted: now.saturating_duration_since(outage.since), faults: outage.faults, owed })
    }
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter::new(INTERVAL));

fn limiter() -> std::sync::MutexGuard<'static, Limiter> {
    // A panic while holding it leaves plain counters, still usable.
    LIMITER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`report`] of `error` with its sources (`text::error_chain`): "the brute-force state cannot
/// be used" or "store error" alone does not say why.
pub fn report_error(
    what: &'static str,
    severity: Severity,
    unavailable: bool,
    error: &(dyn std::error::Error + 'static),
) {
    report(what, severity, unavailable, &crate::text::error_chain(error));
}

/// Logs one fault of kind `what` (a fixed text saying what could not be done) with its
/// `error`, or counts it when a line of that kind was written less than [`INTERVAL`] ago.
/// `unavailable` is the error's `is_unavailable()`: the store or shared state did not answer
/// (the request got 503), as opposed to a fault of the server's own (500).
pub fn report(what: &'static str, severity: Severity, unavailable: bool, error: &dyn std::fmt::Display) {
    let mut limiter = limiter();
    let verdict = limiter.fault(what, severity, unavailable, Instant::now());
    if verdict == Verdict::Suppress {
        limiter.note_error(what, error);
    }
    drop(limiter);
    match verdict {
        Verdict::Suppress => {}
        Verdict::Log { suppressed: 0, .. } => match severity {
            Severity::Error => tracing::error!(error = %error, "{what}"),
            Severity::Warn => tracing::warn!(error = %error, "{what}"),
        },
        Verdict::Log { suppressed, since } => {
            let secs = since.as_secs();
            match severity {
                Severity::Error => {
                    tracing::error!(error = %error, suppressed, "{what} (and {suppressed} more like it in the last {secs} s)")
                }
                Severity::Warn => {
                    tracing::warn!(error = %error, suppressed, "{what} (and {suppressed} more like it in the last {secs} s)")
                }
            }
        }
    }
}

fn write_owed(owed: &Owed) {
    let Owed { kind, severity, suppressed, since, error } = owed;
    let secs = since.as_secs();
    // The last one's error, so a line that only counts still says why; named apart from a
    // written fault's `error`, since this line is none.
    let last_error = (!error.is_empty()).then_some(error.as_str());
    match severity {
        Severity::Error => {
            tracing::error!(last_error, suppressed, "{kind} (and {suppressed} more like it in the last {secs} s)")
        }
        Severity::Warn => {
            tracing::warn!(last_error, suppressed, "{kind} (and {suppressed} more like it in the last {secs} s)")
        }
    }
}

/// Every [`TICK`]: writes the counts that are due, and during an outage asks the store
/// whether it answers (`Store::ready`) and the authentication log whether it takes lines
/// (`Audit::log_unwritable`); when both do, writes one WARN line saying so (`recovery_line`),
/// how long the outage lasted and how many faults it caused. `quiet` is how long no fault must
/// have come before that: short on PostgreSQL, whose check is real, and [`INTERVAL`] on sled,
/// whose check always passes (a full disk shows only in writes).
pub fn spawn_watch(
    store: crate::store::Store,
    log: crate::audit::Audit,
    quiet: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(TICK);
        // Whether the log could not be written at some tick of this outage: a sign-in whose
        // line failed is a fault like a store's, and the end of such an outage is not the
        // store's to announce (review 136). The log's hold (`LOG_FAILURE_HOLD`, 30 s) is
        // longer than a tick, so no such outage passes unseen.
        let mut log_failed = false;
        loop {
            ticker.tick().await;
            let due = limiter().due(Instant::now());
            due.iter().for_each(write_owed);
            if !limiter().in_outage() {
                continue;
            }
            let log_writable = !log.log_unwritable();
            log_failed |= !log_writable;
            let answers = log_writable && store.ready().await.is_ok();
            let recovery = limiter().recovered(answers, quiet, Instant::now());
            if let Some(Recovery { lasted, faults, owed }) = recovery {
                owed.iter().for_each(write_owed);
                tracing::warn!(faults, outage_secs = lasted.as_secs(), "{}", recovery_line(log_failed, lasted, faults));
                log_failed = false;
            }
        }
    })
}

/// The line that ends an outage: what works again (the store, and the authentication log when
/// `log_failed` during it), after how long and how many failed operations.
fn recovery_line(log_failed: bool, lasted: Duration, faults: u64) -> String {
    let what = if log_failed { "the store and the authentication log work" } else { "the store works" };
    format!("{what} again, after {} s and {faults} failed operations", lasted.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_end_of_an_outage_names_the_log_only_when_the_log_failed() {
        assert_eq!(recovery_line(false, 42 * S, 4210), "the store works again, after 42 s and 4210 failed operations");
        let both = recovery_line(true, 31 * S, 3);
        assert_eq!(both, "the store and the authentication log work again, after 31 s and 3 failed operations");
    }

    #[test]
    fn the_first_fault_is_written_at_once_and_the_rest_of_the_interval_only_counted() {
        let mut l = Limiter::new(10 * S);
        let t0 = Instant::now();
        assert_eq!(l.fault("a", Severity::Error, true, t0), Verdict::Log { suppressed: 0, since: Duration::ZERO });
        for i in 1..=812u64 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(l.fault("a", Severity::Error, true, at), Verdict::Suppress, "{i}");
        }
        // Another kind has its own interval: its first line is not held back by "a".
        assert!(matches!(l.fault("b", Severity::Error, true, t0 + 2 * S), Verdict::Log { suppressed: 0, .. }));
        // The first fault of "a" after the interval carries the count and how long it covers.
        assert_eq!(l.fault("a", Severity::Error, true, t0 + 10 * S), Verdict::Log { suppressed: 812, since: 10 * S });
        assert_eq!(l.fault("a", Severity::Error, true, t0 + 11 * S), Verdict::Suppress);
        assert_eq!(l.fault("a", Severity::Error, true, t0 + 25 * S), Verdict::Log { suppressed: 1, since: 15 * S });
    }

    #[test]
    fn one_line_per_kind_per_interval_however_many_faults() {
        let mut l = Limiter::new(10 * S);
        let t0 = Instant::now();
        let mut lines = 0;
        let mut counted = 0;
        // 100 faults a second for a minute.
        for i in 0..6000u64 {
            match l.fault("a", Severity::Error, true, t0 + Duration::from_millis(i * 10)) {
                Verdict::Log { suppressed, .. } => {
                    lines += 1;
                    counted += suppressed;
                }
                Verdict::Suppress => {}
            }
        }
        let owed: u64 = l.due(t0 + 70 * S).iter().map(|o| o.suppressed).sum();
        assert_eq!(lines, 6, "one at once, then one per 10 s");
        assert_eq!(lines + counted + owed, 6000, "every fault is written or counted");
    }

    #[test]
    fn counts_with_no_later_fault_to_carry_them_are_due_after_the_interval() {
        let mut l = Limiter::new(10 * S);
        let t0 = Instant::now();
        l.fault("a", Severity::Warn, true, t0);
        l.fault("a", Severity::Warn, true, t0 + S);
        l.fault("a", Severity::Warn, true, t0 + 2 * S);
        assert_eq!(l.due(t0 + 9 * S), vec![], "not yet");
        let owed = l.due(t0 + 10 * S);
        let error = String::new();
        assert_eq!(owed, vec![Owed { kind: "a", severity: Severity::Warn, suppressed: 2, since: 10 * S, error }]);
        // A count owed says why, with the last left-out fault's error.
        assert_eq!(l.fault("a", Severity::Warn, true, t0 + 12 * S), Verdict::Suppress);
        l.note_error("a", &"connection refused");
        let owed = l.due(t0 + 25 * S);
        assert_eq!(owed.iter().map(|o| o.error.as_str()).collect::<Vec<_>>(), ["connection refused"]);
        assert_eq!(l.due(t0 + 30 * S), vec![], "written once");
        // The count's line counts as the kind's line: the next fault waits for its interval.
        assert_eq!(l.fault("a", Severity::Warn, true, t0 + 15 * S), Verdict::Suppress);
    }

    #[test]
    fn recovery_is_written_once_when_the_store_answers_and_ends_with_the_counts_owed() {
        let mut l = Limiter::new(10 * S);
        let t0 = Instant::now();
        assert!(!l.in_outage());
        assert_eq!(l.recovered(true, S, t0), None, "no outage, nothing to say");
        // A fault of the server's own (a 500) is no outage.
        l.fault("bug", Severity::Error, false, t0);
        assert!(!l.in_outage());
        for i in 0..50u64 {
            l.fault("a", Severity::Error, true, t0 + Duration::from_millis(i * 100));
        }
        assert!(l.in_outage());
        let last = t0 + Duration::from_millis(4900);
        assert_eq!(l.recovered(false, S, last + 3 * S), None, "the store does not answer");
        assert_eq!(l.recovered(true, S, last + S / 2), None, "a fault came too recently");
        let r = l.recovered(true, S, last + S).expect("recovered");
        assert_eq!(r.faults, 50);
        assert_eq!(r.lasted, Duration::from_millis(5900));
        let (since, error) = (last + S - t0, String::new());
        assert_eq!(r.owed, vec![Owed { kind: "a", severity: Severity::Error, suppressed: 49, since, error }]);
        assert_eq!(l.recovered(true, S, last + 2 * S), None, "said once");
        // The next outage's first fault is written at once, whatever the interval.
        assert!(matches!(l.fault("a", Severity::Error, true, last + 2 * S), Verdict::Log { suppressed: 0, .. }));
    }

    #[test]
    fn a_clock_that_goes_back_counts_no_negative_time() {
        let mut l = Limiter::new(10 * S);
        let t1 = Instant::now() + 100 * S;
        l.fault("a", Severity::Error, true, t1);
        assert_eq!(l.fault("a", Severity::Error, true, t1 - 50 * S), Verdict::Suppress);
        assert_eq!(l.due(t1 - 60 * S), vec![]);
        assert_eq!(l.recovered(true, S, t1 - 60 * S), None);
    }
}
