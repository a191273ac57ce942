//! What forward auth's judging of one target costs against many path patterns: every reading
//! of the target ([`portcullis::forward_auth::reading_apart`]) asked of the rules as a
//! case-keeping and a case-ignoring application routes, for an ordinary target and for a
//! crafted one whose readings come near the 4 MiB bound and one that begins every pattern in
//! turn, with 21 and 453 path patterns of the usual kinds; and a short and the crafted target
//! with 100, 450 and 2,000 of review 160's costliest kind (`heavy patterns`).
//! Reading alone (every answer the same) is measured beside it, so the judging's part shows.
//!
//! `cargo bench --bench judging`.

use std::cell::Cell;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::access::{Access, Decision, Target};
use portcullis::forward_auth::reading_apart;

/// `[access]` with `patterns` path patterns over `patterns / 4` rules (and one more pattern), of the kinds operators
/// write: anchored prefixes, extensions, a query parameter, a segment anywhere.
fn access(patterns: usize) -> Access {
    let mut rules = String::new();
    for i in 0..patterns / 4 {
        rules.push_str(&format!(
            "[[access.rules]]\npath = ['^/app{i}/admin', '\\.bak{i}$', '^/export{i}.*\\?(.*&)?fmt=csv(&|$)', '(^|/)secret{i}(/|$)']\npolicy = '{}'\n",
            if i % 2 == 0 { "deny" } else { "one_factor" }
        ));
    }
    rules.push_str("[[access.rules]]\npath = ['\\.(css|js|png)$']\npolicy = 'bypass'\n");
    let table: toml::Table = rules.parse().expect("the rules are TOML");
    Access::from_file(&table).expect("the rules load")
}

/// `[access]` with `patterns` of review 160's costliest kind, a segment anywhere with bounded
/// repetitions, ignoring case: each byte costs microseconds once hundreds are matched together.
fn heavy_access(patterns: usize) -> Access {
    let mut rules = String::new();
    for i in 0..patterns {
        rules.push_str(&format!(
            "[[access.rules]]\npath = ['(?i)(^|/)[a-z]{{0,10}}secret{i}[a-z]{{0,10}}(/|\\.|$)']\npolicy = 'deny'\n"
        ));
    }
    let table: toml::Table = rules.parse().expect("the rules are TOML");
    Access::from_file(&table).expect("the rules load")
}

/// Review 152's kind of target: accents, trimmed segments and a PHP script's name in the path,
/// and a query whose parameters each read several ways; `repeat` sets its size.
fn crafted(repeat: usize) -> String {
    format!(
        "//x/%C5%BF.php%20./{}/i.php%3Bx/{}.phpadmin%20.?{}",
        "%EF%BD%85%20.%E2%88%95".repeat(repeat),
        "%C3%A9%3B%2B".repeat(repeat),
        "a.b[c]=%2563%20+%EF%B7%BA&!d=%EF%BD%83%C2%A0&".repeat(repeat)
    )
}

/// A 4,000-byte target that begins (nearly) every pattern of [`access`]'s rules in turn, so
/// that matching them together walks through as many states as they have.
fn naming_every_pattern() -> String {
    let mut target = String::new();
    for i in 0..113 {
        target.push_str(&format!("/secre{i}/app{i}/admi/x.bak{i}x/export{i}"));
    }
    target.truncate(3000);
    target.push_str("?a=");
    for i in 0..113 {
        target.push_str(&format!("fmt=cs{i}&"));
    }
    target.truncate(4000);
    target
}

/// The readings' text of `target`, in bytes, or `None` when it is refused.
fn readings_bytes(target: &str) -> Option<usize> {
    let bytes = Cell::new(0);
    reading_apart(target, |r, _| bytes.set(bytes.get() + r.len())).ok()?;
    Some(bytes.get())
}

/// The rules' answer for every reading of `target`, as `Asked::judge` in `routes::authz` asks.
fn judge(access: &Access, target: &str) -> Decision {
    fn t(path_and_query: &str) -> Target<'_> {
        Target { host: "app.example.com", path_and_query, method: "GET", client: IpAddr::V4(Ipv4Addr::LOCALHOST) }
    }
    let decision = access.decide(&t(target), None);
    let apart = reading_apart(target, |reading, ignoring_case| access.decide_reading(&t(reading), None, ignoring_case));
    black_box(apart.ok());
    decision
}

fn bench(c: &mut Criterion) {
    let largest = (1..40).take_while(|&n| readings_bytes(&crafted(n)).is_some()).last().unwrap_or(1);
    let targets = [
        ("ordinary", "/app3/list?page=2&sort=name".to_string()),
        ("crafted", crafted(largest)),
        ("naming every pattern", naming_every_pattern()),
    ];
    for (name, target) in &targets {
        eprintln!(
            "{name}: {} bytes, readings {} bytes",
            target.len(),
            readings_bytes(target).expect("the target is read")
        );
    }
    let mut group = c.benchmark_group("judging");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for (name, target) in &targets {
        group.bench_with_input(BenchmarkId::new("reading only", name), target, |b, target| {
            b.iter(|| reading_apart(black_box(target), |_, _| ()).ok())
        });
        for patterns in [20, 452] {
            let access = access(patterns);
            assert_eq!(access.path_patterns(), patterns + 1);
            let id = BenchmarkId::new(format!("{} patterns", access.path_patterns()), name);
            group.bench_with_input(id, target, |b, target| b.iter(|| judge(&access, black_box(target))));
        }
    }
    let short = ("short", "/wiki/some/ordinary/page/about/secrets/and/more?x=1&y=two".to_string());
    for patterns in [100, 450, 2000] {
        let access = heavy_access(patterns);
        for (name, target) in [&short, &targets[1]] {
            let id = BenchmarkId::new(format!("{patterns} heavy patterns"), name);
            group.bench_with_input(id, target, |b, target| b.iter(|| judge(&access, black_box(target))));
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
