//! `portcullis bench-verify` (hidden): the raw argon2id verify rate of this machine, on one
//! thread and on every core, for the bare crate (fresh memory per verify) and for the pool's
//! reused [`Workspace`] as its workers run it under a flood (jobs back to back, wiped once
//! idle). `benches/report.sh` divides the server's logins per second
//! by the best all-core rate measured here in the same run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use serde::Serialize;

use crate::password::Workspace;

/// `portcullis bench-verify` flags.
#[derive(clap::Args, Debug)]
pub struct BenchVerifyArgs {
    /// Seconds to measure each of the four cases
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// argon2id memory (KiB) [default: the server's argon2_memory_kib default]
    #[arg(long)]
    pub memory_kib: Option<u32>,
    /// argon2id iterations [default: the server's argon2_iterations default]
    #[arg(long)]
    pub iterations: Option<u32>,
    /// Threads for the all-core case (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Skip the one-thread cases
    #[arg(long)]
    pub all_cores_only: bool,
}

/// Verifies per second (wall clock), and CPU milliseconds per verify (the threads' own CPU
/// time, which other load on the machine disturbs far less).
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    /// `argon2::PasswordVerifier::verify_password`: fresh memory each time.
    pub crate_per_sec: f64,
    /// [`Workspace::verify`]: one buffer per thread, reused (wiped once idle, as the pool does).
    pub reused_per_sec: f64,
    pub crate_cpu_ms: f64,
    pub reused_cpu_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyRate {
    pub memory_kib: u32,
    pub iterations: u32,
    pub threads: usize,
    /// One thread (a copy of `all_threads` with `--all-cores-only`).
    pub one_thread: Rates,
    pub all_threads: Rates,
    /// The faster of the two all-thread rates: the raw rate the server is compared with.
    pub raw_all_cores_per_sec: f64,
    /// Milliseconds per verify on one thread, the faster way.
    pub one_verify_ms: f64,
    /// CPU milliseconds per verify on one thread, the faster way: what a login cannot cost
    /// less than.
    pub one_verify_cpu_ms: f64,
    /// CPU milliseconds per verify with every core busy (memory bandwidth shared), the
    /// faster way.
    pub all_cores_verify_cpu_ms: f64,
    /// How much of the reused buffer the kernel backs with huge pages (KiB), the main reason
    /// it can beat fresh memory.
    pub reused_huge_page_kib: usize,
}

const PASSWORD: &[u8] = b"correct plum tractor velvet";

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    super::cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Verifies on `threads` threads for `seconds`; returns verifies per second and CPU
/// milliseconds per verify.
fn rate(phc: &str, argon2: &Argon2<'_>, threads: usize, seconds: f64, reuse: bool) -> (f64, f64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let (total, cpu): (u64, Duration) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let Ok(hash) = PasswordHash::new(phc) else { return (0, Duration::ZERO) };
                    let cpu = thread_cpu();
                    let mut ws = Workspace::wiped_when_idle();
                    let mut n = 0u64;
                    while Instant::now() < until {
                        let ok = if reuse {
                            ws.verify(PASSWORD, &hash)
                        } else {
                            argon2.verify_password(PASSWORD, &hash).is_ok()
                        };
                        n += u64::from(ok);
                    }
                    (n, thread_cpu().saturating_sub(cpu))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, Duration::ZERO)))
            .fold((0, Duration::ZERO), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let cpu_ms = if total > 0 { cpu.as_secs_f64() * 1000.0 / total as f64 } else { 0.0 };
    (total as f64 / start.elapsed().as_secs_f64(), cpu_ms)
}

/// Measures the four cases, one after the other.
pub fn measure(
    memory_kib: u32,
    iterations: u32,
    threads: usize,
    seconds: f64,
    all_cores_only: bool,
) -> anyhow::Result<VerifyRate> {
    let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let phc = argon2.hash_password(PASSWORD).map_err(|e| anyhow::anyhow!("hashing: {e}"))?.to_string();
    let threads = threads.max(1);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let rates = |threads: usize| {
        let (crate_per_sec, crate_cpu_ms) = rate(&phc, &argon2, threads, seconds, false);
        let (reused_per_sec, reused_cpu_ms) = rate(&phc, &argon2, threads, seconds, true);
        Rates {
            crate_per_sec: round(crate_per_sec),
            reused_per_sec: round(reused_per_sec),
            crate_cpu_ms: round(crate_cpu_ms),
            reused_cpu_ms: round(reused_cpu_ms),
        }
    };
    let reused_huge_page_kib = {
        let mut ws = Workspace::wiped_when_idle();
        let hash = PasswordHash::new(&phc).map_err(|e| anyhow::anyhow!("hash: {e}"))?;
        ws.verify(PASSWORD, &hash);
        ws.huge_page_bytes() / 1024
    };
    let all_threads = rates(threads);
    let one_thread = if all_cores_only { all_threads.clone() } else { rates(1) };
    let best_one = one_thread.crate_per_sec.max(one_thread.reused_per_sec);
    let positive_min = |a: f64, b: f64| if a > 0.0 && b > 0.0 { a.min(b) } else { a.max(b) };
    Ok(VerifyRate {
        memory_kib,
        iterations,
        threads,
        raw_all_cores_per_sec: all_threads.crate_per_sec.max(all_threads.reused_per_sec),
        one_verify_ms: if best_one > 0.0 { round(1000.0 / best_one) } else { 0.0 },
        one_verify_cpu_ms: positive_min(one_thread.crate_cpu_ms, one_thread.reused_cpu_ms),
        all_cores_verify_cpu_ms: positive_min(all_threads.crate_cpu_ms, all_threads.reused_cpu_ms),
        reused_huge_page_kib,
        one_thread,
        all_threads,
    })
}

/// `portcullis bench-verify`.
pub fn main(args: BenchVerifyArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(crate::config::cores);
    // The server's own defaults, so the raw rate is measured at the cost a login pays.
    let defaults = crate::config::Settings::default().argon2;
    let memory_kib = args.memory_kib.unwrap_or(defaults.memory_kib);
    let iterations = args.iterations.unwrap_or(defaults.iterations);
    let r = measure(memory_kib, iterations, threads, args.seconds, args.all_cores_only)?;
    if args.json {
        println!("{}", serde_json::to_string(&r).context("cannot encode the result")?);
    } else {
        println!(
            "argon2id m={} KiB t={} p=1 (reused buffer: {} KiB on huge pages)",
            r.memory_kib, r.iterations, r.reused_huge_page_kib
        );
        println!(
            "1 thread:   crate {:.1}/s  reused {:.1}/s  ({:.1} ms, {:.1} CPU ms per verify)",
            r.one_thread.crate_per_sec, r.one_thread.reused_per_sec, r.one_verify_ms, r.one_verify_cpu_ms
        );
        println!(
            "{} threads: crate {:.1}/s  reused {:.1}/s  (raw all-core rate {:.1}/s)",
            r.threads, r.all_threads.crate_per_sec, r.all_threads.reused_per_sec, r.raw_all_cores_per_sec
        );
    }
    Ok(())
}
