//! A thread's CPU time, and an allowance of it that long work checks as it goes: forward
//! auth's judging of a target stops once it has spent [`crate::forward_auth::MAX_JUDGING`].

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// The CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`); zero should the clock fail.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; the clock id is a constant Linux knows.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    match ok {
        true => Duration::new(now.tv_sec.unsigned_abs(), now.tv_nsec.clamp(0, 999_999_999) as u32),
        false => Duration::ZERO,
    }
}

/// An allowance of the CPU time of the thread that made it, counted from then. CPU time, not
/// the clock, so that work waiting for a core under load (other threads' floods) is not
/// counted against it (review 162). Not `Send`: another thread's clock would not measure it.
#[derive(Debug)]
pub struct CpuAllowance {
    /// [`thread_cpu_time`] past which it is spent.
    until: Duration,
    /// When the thread's CPU clock is next read: it costs a system call (0.4 µs here, where the
    /// monotonic clock, read without one, costs 22 ns), so it is read at most once a
    /// millisecond of the clock, which a thread's CPU time cannot outrun.
    next_look: Cell<Instant>,
    on_this_thread: PhantomData<*const ()>,
}

/// How often, at most, [`CpuAllowance::spent`] reads the thread's CPU clock.
const LOOK_EVERY: Duration = Duration::from_millis(1);

impl CpuAllowance {
    /// `limit` of this thread's CPU time from now.
    pub fn new(limit: Duration) -> Self {
        CpuAllowance {
            until: thread_cpu_time().saturating_add(limit),
            next_look: Cell::new(Instant::now()),
            on_this_thread: PhantomData,
        }
    }

    /// Whether the allowance is spent. It may answer up to a millisecond late (`LOOK_EVERY`);
    /// once it says so, it always does.
    pub fn spent(&self) -> bool {
        let now = Instant::now();
        if now < self.next_look.get() {
            return false;
        }
        if thread_cpu_time() >= self.until {
            // Read the clock every time from now on: a spent allowance stays spent.
            self.next_look.set(now);
            return true;
        }
        self.next_look.set(now + LOOK_EVERY);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spent once the thread has used the limit, and not before; and work on another
    /// thread does not spend it.
    #[test]
    fn an_allowance_is_spent_by_this_threads_work_only() {
        let allowance = CpuAllowance::new(Duration::from_millis(30));
        assert!(!allowance.spent());
        std::thread::spawn(|| {
            let started = thread_cpu_time();
            while thread_cpu_time() - started < Duration::from_millis(60) {}
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!allowance.spent(), "another thread's CPU time and sleeping spent it");
        let started = Instant::now();
        while !allowance.spent() {
            assert!(started.elapsed() < Duration::from_secs(10), "never spent");
        }
        assert!(allowance.spent(), "spent stays spent");
        assert!(thread_cpu_time() >= allowance.until);
    }

    #[test]
    fn no_allowance_is_spent_at_once() {
        assert!(CpuAllowance::new(Duration::ZERO).spent());
    }
}
