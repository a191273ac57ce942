//! argon2id cost as portcullis pays it: single-thread verify at the OWASP-equivalent settings
//! (the bare crate, which allocates fresh memory each time, against the pool's reused
//! [`Workspace`], wiped after each hash or, as the pool's workers do, once idle), hashing a
//! new password, verifies per second on one thread and on every core, and the pool as the
//! server drives it (queue, worker threads, tokio) against the bare crate, so the pool's
//! overhead shows.
//!
//! `cargo bench --bench hash_verify`; one group: `cargo bench --bench hash_verify -- pool`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use portcullis::config::HashParams;
use portcullis::password::Workspace;
use portcullis::password::{HashPool, Lane, Password};

const PASSWORD: &[u8] = b"correct plum tractor velvet";

/// OWASP's equivalent argon2id settings (memory KiB, iterations), parallelism 1; the first
/// is portcullis' default.
const SETTINGS: [(u32, u32); 5] = [(19456, 2), (47104, 1), (12288, 3), (9216, 4), (7168, 5)];

fn argon2(m: u32, t: u32) -> Argon2<'static> {
    #[allow(clippy::unwrap_used)]
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(m, t, 1, None).unwrap())
}

fn label(m: u32, t: u32) -> String {
    format!("m{}MiB_t{t}", m as f64 / 1024.0)
}

/// Single-thread verify at each setting: the crate's `verify_password` (fresh memory every
/// time) against the reused, wiped workspace.
fn verify_one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_1thread");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for (m, t) in SETTINGS {
        let a = argon2(m, t);
        let phc = a.hash_password(PASSWORD).unwrap().to_string();
        let hash = PasswordHash::new(&phc).unwrap();
        g.bench_with_input(BenchmarkId::new("crate", label(m, t)), &hash, |b, h| {
            b.iter(|| a.verify_password(black_box(PASSWORD), h).is_ok())
        });
        let mut ws = Workspace::new();
        g.bench_with_input(BenchmarkId::new("reused_wiped_each", label(m, t)), &hash, |b, h| {
            b.iter(|| ws.verify(black_box(PASSWORD), h))
        });
        // As a pool worker with jobs queued back to back (it wipes once idle).
        let mut ws = Workspace::wiped_when_idle();
        g.bench_with_input(BenchmarkId::new("reused_back_to_back", label(m, t)), &hash, |b, h| {
            b.iter(|| ws.verify(black_box(PASSWORD), h))
        });
    }
    g.finish();
}

/// Hashing a new password (user add, password change, upgrade) at the default setting.
fn hash_new(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash_new");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let (m, t) = SETTINGS[0];
    let a = argon2(m, t);
    g.bench_function(BenchmarkId::new("crate", label(m, t)), |b| b.iter(|| a.hash_password(black_box(PASSWORD))));
    let mut ws = Workspace::wiped_when_idle();
    g.bench_function(BenchmarkId::new("reused_back_to_back", label(m, t)), |b| {
        b.iter(|| ws.hash(&a, black_box(PASSWORD)))
    });
    g.finish();
}

/// Verifies per second at the default setting with 1 thread and with one thread per core,
/// each thread with its own reused workspace (as the pool's workers have under a flood).
fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_throughput");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let (m, t) = SETTINGS[0];
    let phc = argon2(m, t).hash_password(PASSWORD).unwrap().to_string();
    let cores = portcullis::config::cores();
    let mut counts = vec![1];
    if cores > 1 {
        counts.push(cores);
    }
    for threads in counts {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            let hash = PasswordHash::new(&phc).unwrap();
                            let mut ws = Workspace::wiped_when_idle();
                            for _ in 0..iters {
                                black_box(ws.verify(PASSWORD, &hash));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// The pool as the server uses it: `HashPool::verify` awaited on a tokio runtime (queue,
/// worker thread, oneshot reply) against the same verify called directly.
fn pool_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let (m, t) = SETTINGS[0];
    let phc = argon2(m, t).hash_password(PASSWORD).unwrap().to_string();
    let hash = PasswordHash::new(&phc).unwrap();
    let mut ws = Workspace::wiped_when_idle();
    g.bench_function("bare_reused_1thread", |b| b.iter(|| ws.verify(black_box(PASSWORD), &hash)));
    let a = argon2(m, t);
    g.bench_function("bare_crate_1thread", |b| b.iter(|| a.verify_password(black_box(PASSWORD), &hash).is_ok()));

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let params = HashParams { memory_kib: m, iterations: t, parallelism: 1 };
    let one = rt.block_on(async { HashPool::start(params, 1, 256) }).unwrap();
    g.bench_function("pool_1worker_sequential", |b| {
        b.iter(|| {
            let v = rt
                .block_on(one.verify(Password::new("correct plum tractor velvet"), Some(phc.clone()), Lane::Open))
                .unwrap();
            assert!(v.valid);
        })
    });

    // All cores: as many workers as cores, kept busy by 2 requests per worker in flight.
    let cores = portcullis::config::cores();
    let all = rt.block_on(async { HashPool::start(params, cores, 256) }).unwrap();
    g.throughput(Throughput::Elements(cores as u64));
    g.bench_function(BenchmarkId::new("pool_all_workers", cores), |b| {
        b.iter_custom(|iters| {
            let all = all.clone();
            let phc = phc.clone();
            rt.block_on(async move {
                let total = iters as usize * cores;
                let start = Instant::now();
                let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(cores * 2));
                let mut tasks = Vec::with_capacity(total);
                for _ in 0..total {
                    let permit = std::sync::Arc::clone(&sem).acquire_owned().await.unwrap();
                    let all = all.clone();
                    let phc = phc.clone();
                    tasks.push(tokio::spawn(async move {
                        let v = all
                            .verify(Password::new("correct plum tractor velvet"), Some(phc), Lane::Open)
                            .await
                            .unwrap();
                        drop(permit);
                        assert!(v.valid);
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, verify_one_thread, hash_new, throughput, pool_overhead);
criterion_main!(benches);
