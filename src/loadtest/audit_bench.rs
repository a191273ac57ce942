//! `portcullis bench-audit` (hidden): how long the audit review takes over many failed-login
//! records on the configured PostgreSQL store (`database_url`), through the same code as
//! `portcullis audit` and the admin page (`review::review`). It fills an EMPTY `failures`
//! table with `INSERT … SELECT generate_series` (refusing one that holds records, so it
//! never mixes with a deployment's own), then times a 100-row page over the last hour, by
//! username and by address, and the summary over the last 24 hours. For
//! `benches/engines.sh`; the records stay (the script's database is thrown away).

use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::config::Settings;
use crate::review::{self, Answer, FilterArgs};

/// `portcullis bench-audit` flags.
#[derive(clap::Args, Debug)]
pub struct BenchAuditArgs {
    /// Records to fill the empty table with
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Hours the records are spread over, evenly, ending now
    #[arg(long, default_value_t = 720)]
    pub hours: u64,
    /// Times each query is run (the median and the slowest are printed)
    #[arg(long, default_value_t = 21)]
    pub repeat: usize,
}

/// One query's timings, in milliseconds, and what it returned.
#[derive(Debug, Serialize)]
struct Timing {
    query: &'static str,
    median_ms: f64,
    max_ms: f64,
    /// Rows of the page, or records the summary counted.
    rows: usize,
    /// The summary read only the newest `review::SUMMARY_SCAN_LIMIT` records.
    partial: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    records: u64,
    hours: u64,
    fill_s: f64,
    timings: Vec<Timing>,
}

/// Runs the benchmark and prints one JSON object.
///
/// # Errors
/// No `database_url`, a `failures` table that is not empty, or any database error.
pub async fn main(settings: Settings, args: BenchAuditArgs) -> anyhow::Result<()> {
    let Some(url) = settings.database_url.clone() else {
        bail!("bench-audit needs database_url (PostgreSQL)");
    };
    if args.records == 0 || args.hours == 0 || args.repeat == 0 {
        bail!("--records, --hours and --repeat must be at least 1");
    }
    let services = crate::app::Services::open(&settings, 1).await?;
    let db = crate::postgres::connect::connect(&url).await.context("cannot connect")?;
    let existing: i64 = db.query_one("SELECT count(*) FROM failures", &[]).await?.get(0);
    if existing != 0 {
        bail!("the failures table holds {existing} records; bench-audit fills an empty one only");
    }
    let now = crate::store::now_ms();
    let span_ms = args.hours * crate::review::HOUR_MS;
    let started = Instant::now();
    // Newest at `now`, evenly back over the span; 5,000 usernames and 65,536 addresses in
    // turn, the reasons of a real flood (mostly unknown users and bad passwords).
    db.execute(
        "INSERT INTO failures (time_ms, ip, username, user_key, reason, user_agent, instance)
         SELECT $1::bigint - (i * $2::bigint / $3::bigint),
                ('10.' || (i % 256) || '.' || ((i / 256) % 256) || '.1')::inet,
                'user' || (i % 5000), 'user' || (i % 5000),
                (ARRAY['unknown_user', 'bad_password', 'bad_password', 'captcha_required'])[1 + i % 4],
                'Mozilla/5.0 (X11; Linux x86_64) bench', 'bench'
         FROM generate_series(0::bigint, $3::bigint - 1) AS i",
        &[&(now as i64), &(span_ms as i64), &(args.records as i64)],
    )
    .await
    .context("cannot fill the failures table")?;
    db.batch_execute("ANALYZE failures").await?;
    let fill_s = started.elapsed().as_secs_f64();

    let last_hour = FilterArgs { since: Some("1h".into()), ..FilterArgs::default() };
    let cases: [(&'static str, FilterArgs, bool); 4] = [
        ("page of 100, last hour", last_hour.clone(), false),
        (
            "page of 100, one username, 30 days",
            FilterArgs { since: Some("30d".into()), user: Some("user42".into()), ..FilterArgs::default() },
            false,
        ),
        (
            "page of 100, one address, 30 days",
            FilterArgs { since: Some("30d".into()), ip: Some("10.42.0.1".into()), ..FilterArgs::default() },
            false,
        ),
        ("summary, last 24 h", FilterArgs { since: Some("24h".into()), ..FilterArgs::default() }, true),
    ];
    let mut timings = Vec::new();
    for (query, filters, summary) in cases {
        let mut times = Vec::with_capacity(args.repeat);
        let (mut rows, mut partial) = (0, false);
        for _ in 0..args.repeat {
            let t = Instant::now();
            let answer = review::review(&services.audit, &filters, summary, 100, crate::store::now_ms()).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            (rows, partial) = match answer {
                Answer::Records { records, .. } => (records.len(), false),
                Answer::Summary { summary } => (summary.total, summary.partial),
            };
        }
        times.sort_by(f64::total_cmp);
        timings.push(Timing {
            query,
            median_ms: times[times.len() / 2],
            max_ms: times[times.len() - 1],
            rows,
            partial,
        });
    }
    let report = Report { records: args.records, hours: args.hours, fill_s, timings };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
