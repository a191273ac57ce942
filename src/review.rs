//! Reviewing failed logins: the filters `portcullis audit` and `/admin/failed-logins` share,
//! summaries (totals by reason, top addresses and usernames, counts per hour), and their text
//! and SVG renderings.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::audit::{rfc3339, FailureReason};
use crate::config::escape_controls;
use crate::domain::normalise_key;
use crate::store::{Cursor, FailureQuery, FailureRecord};
use crate::text::{columns, pad, printable, printable_name};

/// Most records a summary reads (newest first); beyond, it says it is partial.
pub const SUMMARY_SCAN_LIMIT: usize = 200_000;

/// Largest `--limit` (records in one answer): the command holds them all in its memory (a
/// running server sends them in pages of `admin_socket::RECORDS_PER_ANSWER`), so a larger
/// value is refused rather than quietly cut.
pub const MAX_LIMIT: usize = 1_000_000;

/// Whether `n` is a `--limit` a review may be asked for: 1 to [`MAX_LIMIT`] (0 would mean
/// "no limit" to the store).
pub fn is_allowed_limit(n: usize) -> bool {
    (1..=MAX_LIMIT).contains(&n)
}

pub const HOUR_MS: u64 = 3_600_000;
/// Hours of a summary's per-hour series (and so of the admin page's chart).
pub const SUMMARY_HOURS: u64 = 48;

/// Filters as typed on the command line or in the page's form, before parsing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FilterArgs {
    pub since: Option<String>,
    pub until: Option<String>,
    pub user: Option<String>,
    pub ip: Option<String>,
    pub reason: Option<String>,
    pub limit: Option<usize>,
    /// Keyset cursor of the page before (opaque).
    pub before: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--since/--until: `{0}` is neither a duration like 2h or 1d12h (s, m, h, d), `now`, nor an RFC 3339 time such as 2026-01-31T00:00:00Z")]
    Time(String),
    #[error("--ip: {0}")]
    Ip(String),
    #[error("--reason: `{0}` is not one of {names}", names = FailureReason::ALL.map(FailureReason::as_str).join(", "))]
    Reason(String),
    #[error("--since/--until: `{0}` is outside the years 1970 to 9999")]
    OutOfRange(String),
    #[error("--since/--until: `{0}` is not a valid RFC 3339 time: {1}")]
    BadDate(String, String),
    /// A date-time without its seconds, offset or time (`2026-12-01T10:00`): RFC 3339 needs
    /// all three, and the store's times are UTC.
    #[error("--since/--until: `{0}` is not a full RFC 3339 time: write `{1}` for UTC, or give another offset")]
    Incomplete(String, String),
    #[error("--user: the username is empty or too long")]
    User,
    #[error("--limit: `{0}` is not a whole number from 1 to {1}")]
    Limit(String, usize),
    #[error("the page cursor is invalid")]
    Cursor,
    /// `--since` later than `--until`: no record can be in between (`10d` is before `20d`
    /// is not, which is the easy slip).
    #[error("--since/--until: the start `{0}` is after the end `{1}`, so nothing is in between")]
    Reversed(String, String),
}
// The values quoted in these messages are escaped (`escape_controls`): they come from the
// command line, the admin page or the admin socket, and an error must stay one line.

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `2h` (that long before `now`) or an RFC 3339 time, as Unix milliseconds.
///
/// No arithmetic here wraps or truncates: a duration reaching back before 1970 means "since
/// the beginning" (no record is older), which is 0 exactly; an RFC 3339 time outside 1970 to
/// 9999 is refused with its own message, since it names an instant the store cannot hold.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, FilterError> {
    Ok(u64::try_from(signed_time(s, now_ms)?.max(0)).unwrap_or(0))
}

/// [`parse_time`] before a duration reaching back past 1970 is clamped to it, so that two such
/// times still compare as typed (`--since 100000d --until 200000d` is reversed too).
fn signed_time(s: &str, now_ms: u64) -> Result<i128, FilterError> {
    if let Some(ms) = relative_time(s, now_ms) {
        return Ok(ms);
    }
    let t = parse_rfc3339(s)?;
    // `time` reads four-digit years only, but an offset can still carry the last one past
    // 9999 in UTC (`9999-12-31T23:59:59-23:59`), as it carries the first before 1970: both
    // ends are checked in UTC.
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms <= LAST_MS_OF_9999)
        .map(i128::from)
        .ok_or_else(|| FilterError::OutOfRange(escape_controls(s)))
}

/// The time `s` means at `now_ms` when it is relative to it: `now` (what the page's Until
/// field shows when empty) or a duration back from it; `None` for anything else.
fn relative_time(s: &str, now_ms: u64) -> Option<i128> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Some(i128::from(now_ms));
    }
    // A sum past `u64` seconds (`99999999999999999999h`) is a typing slip, not "all time":
    // refused with the format's message, as the general parser did.
    let d = crate::config::whole_units(s).filter(|d| d.as_secs() != u64::MAX)?;
    Some(i128::from(now_ms) - i128::try_from(d.as_millis()).unwrap_or(i128::MAX / 2))
}

/// 9999-12-31T23:59:59.999Z in Unix milliseconds.
const LAST_MS_OF_9999: u64 = 253_402_300_799_999;

/// A full RFC 3339 date-time (§5.6: any offset, `T`/`t` or a space between date and time,
/// `Z`/`z`, fractions, leap seconds), by the `time` crate's parser.
///
/// # Errors
/// [`FilterError::BadDate`] with the parser's own reason when `s` starts like a date
/// (`2026-02-30T10:00:00Z`: the day is out of range), [`FilterError::Time`] otherwise.
fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, FilterError> {
    use time::format_description::well_known::Rfc3339;
    // RFC 3339 §5.6 allows a space for the `T`; the `time` parser reads only `T` or `t`.
    let spaced = s.as_bytes().get(10) == Some(&b' ');
    let with_t = if spaced { Cow::Owned(format!("{}T{}", &s[..10], &s[11..])) } else { Cow::Borrowed(s) };
    time::OffsetDateTime::parse(&with_t, &Rfc3339).map_err(|e| {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let looks_like_a_date = digits >= 4 && s.as_bytes().get(digits) == Some(&b'-');
        // `time` reads four-digit years only: a fifth digit is a year past 9999, not a typo.
        if looks_like_a_date && digits > 4 {
            return FilterError::OutOfRange(escape_controls(s));
        }
        let completed = [":00Z", "Z", "T00:00:00Z"]
            .iter()
            .map(|end| format!("{with_t}{end}"))
            .find(|full| time::OffsetDateTime::parse(full, &Rfc3339).is_ok());
        if let (true, Some(full)) = (looks_like_a_date, completed) {
            FilterError::Incomplete(escape_controls(s), escape_controls(&full))
        } else if looks_like_a_date {
            FilterError::BadDate(escape_controls(s), e.to_string())
        } else {
            FilterError::Time(escape_controls(s))
        }
    })
}

/// A page size typed as text (the admin page's form): a whole number from 1 to `max`, in
/// digits only (Rust's parser would take `+5` too).
pub fn parse_limit(s: &str, max: usize) -> Result<usize, FilterError> {
    let digits = s.trim();
    Some(digits)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| FilterError::Limit(escape_controls(s), max))
}

pub fn parse_reason(s: &str) -> Result<FailureReason, FilterError> {
    FailureReason::parse(s).ok_or_else(|| FilterError::Reason(escape_controls(s)))
}

impl FilterArgs {
    /// These filters with a relative `since` or `until` (`1h`) written as the RFC 3339 time it
    /// means at `now_ms`, so that pages asked for one after another read the same window.
    /// Anything else, a time that does not parse included, is left for [`FilterArgs::to_query`].
    pub fn with_times_fixed(&self, now_ms: u64) -> FilterArgs {
        let mut fixed = self.clone();
        for time in [&mut fixed.since, &mut fixed.until].into_iter().flatten() {
            if relative_time(time, now_ms).is_some() {
                if let Ok(ms) = parse_time(time, now_ms) {
                    *time = rfc3339(ms);
                }
            }
        }
        fixed
    }

    /// The store query these filters mean. `default_limit` applies when no limit was given; a
    /// limit outside 1..=[`MAX_LIMIT`] is refused (never wrapped to "no limit" or clamped).
    pub fn to_query(&self, now_ms: u64, default_limit: usize) -> Result<FailureQuery, FilterError> {
        let limit = match self.limit {
            None => default_limit,
            Some(n) if is_allowed_limit(n) => n,
            Some(n) => return Err(FilterError::Limit(n.to_string(), MAX_LIMIT)),
        };
        let since = non_empty(&self.since).map(|s| signed_time(s, now_ms)).transpose()?;
        let until = non_empty(&self.until).map(|s| signed_time(s, now_ms)).transpose()?;
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                let shown = |s: &Option<String>| escape_controls(s.as_deref().unwrap_or("").trim());
                return Err(FilterError::Reversed(shown(&self.since), shown(&self.until)));
            }
        }
        let clamped = |t: Option<i128>| t.map(|t| u64::try_from(t.max(0)).unwrap_or(0));
        let (since, until) = (clamped(since), clamped(until));
        let ip = non_empty(&self.ip)
            // Refused, not widened, with bits set past the prefix (`127.0.0.5/8`): every filter
            // applies exactly or is refused (review 150).
            .map(|s| crate::config::parse_trusted_net(s).map_err(|e| FilterError::Ip(escape_controls(&e))))
            .transpose()?;
        let reason = non_empty(&self.reason).map(parse_reason).transpose()?;
        let user_key = match non_empty(&self.user) {
            Some(u) => {
                let key = normalise_key(u);
                if key.is_empty() || key.chars().count() > 256 {
                    return Err(FilterError::User);
                }
                Some(key)
            }
            None => None,
        };
        let before = non_empty(&self.before).map(|c| Cursor::parse(c).ok_or(FilterError::Cursor)).transpose()?;
        Ok(FailureQuery { since, until, user_key, ip, reason, before, limit })
    }
}

/// What a review asks for: a page of records, or a summary.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Newest first; `next` is the cursor of the following page, if any.
    Records {
        records: Vec<RecordView>,
        next: Option<String>,
    },
    Summary {
        summary: Summary,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The summary's worker thread ended without an answer (a bug: it panicked).
    #[error("the summary could not be made")]
    Stopped,
}

/// Runs a review against the audit store: a page of at most `limit` records (default
/// `default_limit`), or a summary of everything matching (ignoring the limit) with hourly
/// buckets ending at `--until` or now: from the hour of `--since`, at most 48.
pub async fn review(
    audit: &crate::audit::Audit,
    args: &FilterArgs,
    summary: bool,
    default_limit: usize,
    now_ms: u64,
) -> Result<Answer, ReviewError> {
    let mut q = args.to_query(now_ms, default_limit)?;
    if summary {
        let end = q.until.unwrap_or(now_ms);
        // The hours the filter spans, at most SUMMARY_HOURS: an hour before `--since` has no
        // records because none were asked for, not because there were none.
        let hours = q.since.map_or(SUMMARY_HOURS, |since| (end / HOUR_MS + 1).saturating_sub(since / HOUR_MS));
        let hours = hours.clamp(1, SUMMARY_HOURS) as usize;
        let summary = summarise_in_batches(audit, q, end, hours).await?;
        crate::memory::give_back_freed_off_the_workers();
        return Ok(Answer::Summary { summary });
    }
    // `to_query` bounds the limit, so one more (to know whether a next page exists) fits; and
    // 0 would mean "no limit" to the store.
    let limit = q.limit.clamp(1, MAX_LIMIT);
    q.limit = limit + 1;
    let mut found = audit.failures(&q).await?;
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|(k, _)| k.encode())
    } else {
        None
    };
    let records: Vec<RecordView> = found.iter().map(|(_, r)| RecordView::from(r)).collect();
    drop(found);
    // A page of the socket's size is thousands of records; the admin page's 100 are nothing.
    if records.len() > 1000 {
        crate::memory::give_back_freed_off_the_workers();
    }
    Ok(Answer::Records { records, next })
}

/// Records read from the store at a time while summarising: a summary holds its tallies
/// and one batch, not every record it counts (read at once, 100,000 records with
/// 300-character fields took a server to 843 MB, a review measured).
const SUMMARY_BATCH: usize = 5_000;

/// A review run in a task of its own (so a panic in it is an error answer, not a lost
/// connection), aborted when whoever awaits it goes away: a page view or a socket request
/// that is closed must not go on counting summaries other reviews wait their turn for.
pub struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T> Spawned<T> {
    /// Spawns `work` on the runtime.
    pub fn new(work: impl std::future::Future<Output = T> + Send + 'static) -> Self
    where
        T: Send + 'static,
    {
        Spawned(tokio::spawn(work))
    }

    /// Its result; `Err` when it panicked.
    pub async fn finished(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        // Nothing once it has finished.
        self.0.abort();
    }
}

/// Summaries counted at once in this process; more wait their turn. A summary's tallies
/// hold one entry per distinct address and username (tens of MB over 100,000 records of long
/// attacker-chosen names), so sixteen admin page views at once took a server from 266 to
/// 634 MB (a review measured); in turn, an admin waits a little longer instead.
const SUMMARIES_AT_ONCE: usize = 2;

/// The turns of [`SUMMARIES_AT_ONCE`].
fn summary_turns() -> &'static tokio::sync::Semaphore {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SUMMARIES_AT_ONCE);
    &TURNS
}

/// The summary of up to [`SUMMARY_SCAN_LIMIT`] records matching `q` (newest first), read in
/// batches of [`SUMMARY_BATCH`] and counted off the async workers; partial when more match.
/// At most [`SUMMARIES_AT_ONCE`] are counted at a time.
async fn summarise_in_batches(
    audit: &crate::audit::Audit,
    mut q: FailureQuery,
    end: u64,
    hours: usize,
) -> Result<Summary, ReviewError> {
    // The semaphore is never closed, so acquiring fails only if it were.
    let _turn = summary_turns().acquire().await.map_err(|_| ReviewError::Stopped)?;
    q.before = None;
    let mut tally = Tally::new(end, hours);
    let mut counted = 0;
    loop {
        // One more than the scan limit is asked for in all, to know whether there are more.
        q.limit = SUMMARY_BATCH.min(SUMMARY_SCAN_LIMIT + 1 - counted);
        let mut batch = audit.failures(&q).await?;
        let exhausted = batch.len() < q.limit;
        let partial = counted + batch.len() > SUMMARY_SCAN_LIMIT;
        batch.truncate(SUMMARY_SCAN_LIMIT - counted);
        counted += batch.len();
        q.before = batch.last().map(|(cursor, _)| *cursor);
        tally = tokio::task::spawn_blocking(move || {
            for (_, r) in &batch {
                tally.add(r);
            }
            tally
        })
        .await
        .map_err(|_| ReviewError::Stopped)?;
        if partial || exhausted {
            return Ok(tally.finish(partial));
        }
    }
}

/// A record as shown to people and printed as JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordView {
    pub time: String,
    pub ip: String,
    /// The identity checked (see [`FailureRecord::username`]).
    pub username: String,
    pub reason: String,
    pub user_agent: String,
    /// How many attempts the record stands for (refusals from one address counted per
    /// minute); 1 for records from before counting, and when absent from JSON.
    #[serde(default = "one")]
    pub count: u64,
    /// What was typed, when it differs from `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed: Option<String>,
    /// The `instance_name` of the server that recorded it; absent for records made before
    /// instances were kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The attempt came from a browser with a device token for the username (see
    /// [`FailureRecord::known_browser`]); absent from JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub known_browser: bool,
}

fn one() -> u64 {
    1
}

impl RecordView {
    /// The fields with invisible and control characters escaped, for pages and terminals
    /// (HTML escaping alone shows `admin` + U+2060 as `admin`), and in the name and the user
    /// agent a run of spaces, which a page draws as one ([`crate::text::printable_cell`];
    /// review 192 saw a typed `ad  min` drawn as the user `ad min`).
    pub fn shown(&self) -> RecordView {
        RecordView {
            time: printable(&self.time).into_owned(),
            ip: printable(&self.ip).into_owned(),
            username: crate::text::printable_cell(&self.username).into_owned(),
            reason: printable(&self.reason).into_owned(),
            user_agent: crate::text::printable_cell(&self.user_agent).into_owned(),
            count: self.count,
            typed: self.typed.as_deref().map(|t| printable_name(t).into_owned()),
            instance: printable(&self.instance).into_owned(),
            known_browser: self.known_browser,
        }
    }
}

impl From<&FailureRecord> for RecordView {
    fn from(r: &FailureRecord) -> Self {
        RecordView {
            time: rfc3339(r.time),
            ip: r.ip.clone(),
            username: r.username.clone(),
            reason: r.reason.as_str().to_string(),
            user_agent: r.user_agent.clone(),
            count: r.count.max(1),
            typed: r.typed.clone(),
            instance: r.instance.clone(),
            known_browser: r.known_browser,
        }
    }
}

/// A name with its count and when it was first and last seen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Top {
    pub value: String,
    pub count: usize,
    pub first_seen: String,
    pub last_seen: String,
    /// When the last record is one counted per minute (issue 11): how many refusals it
    /// stands for. Only the first one's time is stored, so `last_seen` is the first of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_of: Option<u64>,
}

/// " (first of N in that minute)" when the last record counted several refusals.
fn first_of(n: Option<u64>) -> String {
    n.map(|n| format!(" (first of {n} in that minute)")).unwrap_or_default()
}

impl Top {
    /// The value with invisible and control characters escaped, and a run of spaces (as
    /// [`RecordView::shown`]), for pages.
    pub fn shown(&self) -> String {
        crate::text::printable_cell(&self.value).into_owned()
    }

    /// `MM-DD HH:MM:SS` of the last sighting, for narrow table cells.
    pub fn last_seen_short(&self) -> String {
        let at = self.last_seen.get(5..19).unwrap_or(&self.last_seen).replace('T', " ");
        format!("{at}{}", first_of(self.last_seen_of))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Attempts (a record counted per minute adds its `count`).
    pub total: usize,
    /// True when more records matched than [`SUMMARY_SCAN_LIMIT`].
    pub partial: bool,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// As [`Top::last_seen_of`], for `last_seen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_of: Option<u64>,
    pub by_reason: Vec<(String, usize)>,
    pub top_addresses: Vec<Top>,
    pub top_usernames: Vec<Top>,
    /// (hour start, RFC 3339; count), oldest first, every hour of the span.
    pub per_hour: Vec<(String, usize)>,
}

#[derive(Default)]
struct Seen {
    count: usize,
    first: u64,
    last: u64,
    /// The count of the record at `last`.
    last_count: u64,
}

impl Seen {
    fn add(&mut self, t: u64, n: usize) {
        if self.count == 0 || t < self.first {
            self.first = t;
        }
        if self.count == 0 || t >= self.last {
            self.last = t;
            self.last_count = n as u64;
        }
        self.count += n;
    }

    /// [`Top::last_seen_of`] for what was seen.
    fn last_of(&self) -> Option<u64> {
        (self.last_count > 1).then_some(self.last_count)
    }
}

fn top(map: HashMap<String, Seen>, n: usize) -> Vec<Top> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
    v.into_iter()
        .take(n)
        .map(|(value, s)| Top {
            value,
            count: s.count,
            first_seen: rfc3339(s.first),
            last_seen: rfc3339(s.last),
            last_seen_of: s.last_of(),
        })
        .collect()
}

/// Summarises records. `hours_until` is the end of the per-hour series (its last bucket
/// holds that instant); the series covers `hours` hours.
pub fn summarise(records: &[FailureRecord], partial: bool, hours_until: u64, hours: usize) -> Summary {
    let mut tally = Tally::new(hours_until, hours);
    for r in records {
        tally.add(r);
    }
    tally.finish(partial)
}

/// A summary being counted, one record at a time ([`Tally::add`]), so records can be read in
/// batches and dropped: its memory is one entry per distinct address and username.
pub struct Tally {
    reasons: HashMap<&'static str, usize>,
    ips: HashMap<String, Seen>,
    users: HashMap<String, Seen>,
    first_bucket: u64,
    last_bucket: u64,
    buckets: Vec<usize>,
    all: Seen,
    total: usize,
    records: usize,
}

impl Tally {
    /// An empty tally whose per-hour series ends with the hour of `hours_until` (Unix ms)
    /// and covers `hours` hours.
    pub fn new(hours_until: u64, hours: usize) -> Self {
        let last_bucket = hours_until / HOUR_MS;
        Tally {
            reasons: HashMap::new(),
            ips: HashMap::new(),
            users: HashMap::new(),
            first_bucket: (last_bucket + 1).saturating_sub(hours as u64),
            last_bucket,
            buckets: vec![0; hours],
            all: Seen::default(),
            total: 0,
            records: 0,
        }
    }

    /// Counts one record (a record counted per minute stands for `count` attempts).
    pub fn add(&mut self, r: &FailureRecord) {
        let n = usize::try_from(r.count.max(1)).unwrap_or(usize::MAX);
        self.records += 1;
        self.total = self.total.saturating_add(n);
        *self.reasons.entry(r.reason.as_str()).or_default() += n;
        add_seen(&mut self.ips, &r.ip, r.time, n);
        // A record standing for counted refusals (`count` > 1) knows only its first attempt's
        // username: the repeats' went unread (they checked nothing about any user), so the
        // username is credited with that one attempt, not with the address's count (review 133).
        add_seen(&mut self.users, &r.username, r.time, 1);
        let b = r.time / HOUR_MS;
        if b >= self.first_bucket && b <= self.last_bucket {
            self.buckets[(b - self.first_bucket) as usize] += n;
        }
        self.all.add(r.time, n);
    }

    /// The summary of what was added; `partial` when more records matched than were added.
    pub fn finish(self, partial: bool) -> Summary {
        let Tally { reasons, ips, users, first_bucket, buckets, all, total, records, .. } = self;
        let mut by_reason: Vec<(String, usize)> = reasons.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        by_reason.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Summary {
            total,
            partial,
            first_seen: (records > 0).then(|| rfc3339(all.first)),
            last_seen: (records > 0).then(|| rfc3339(all.last)),
            last_seen_of: all.last_of(),
            by_reason,
            top_addresses: top(ips, 10),
            top_usernames: top(users, 10),
            per_hour: buckets
                .into_iter()
                .enumerate()
                .map(|(i, c)| (rfc3339((first_bucket + i as u64) * HOUR_MS), c))
                .collect(),
        }
    }
}

/// Adds to `key`'s entry, copying the key only the first time it is seen.
fn add_seen(map: &mut HashMap<String, Seen>, key: &str, t: u64, n: usize) {
    match map.get_mut(key) {
        Some(seen) => seen.add(t, n),
        None => map.entry(key.to_string()).or_default().add(t, n),
    }
}

/// `s` escaped ([`printable_name`]) and fitted to `width` terminal columns ([`columns`]: a wide character takes
/// two), cut before an escape rather than inside one (`…z\u{2…` hid which character was
/// there).
fn cut(s: &str, width: usize) -> String {
    let p = crate::text::printable_cell(s);
    if columns(&p) <= width {
        return pad(&p, width);
    }
    let mut t = String::new();
    let mut used = 0;
    for unit in escape_units(&p) {
        let n = columns(unit);
        if used + n > width.saturating_sub(1) {
            break;
        }
        t.push_str(unit);
        used += n;
    }
    t.push('…');
    pad(&t, width)
}

/// `s` in pieces that must not be split: each `\u{…}` escape whole, every other character
/// alone.
fn escape_units(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let len = if rest.starts_with("\\u{") {
            rest.find('}').filter(|end| *end <= 10).map_or(1, |end| end + 1)
        } else {
            first.len_utf8()
        };
        let (unit, tail) = rest.split_at(len);
        rest = tail;
        Some(unit)
    })
}

/// An aligned table that fits a 120-column terminal.
pub fn text_table(records: &[RecordView]) -> String {
    let ip_w = records.iter().map(|r| r.ip.len()).max().unwrap_or(2).clamp(2, 39);
    // The longest reason's name (`bad_second_factor`), so that COUNT stays in its column.
    let reason_w = FailureReason::ALL.iter().map(|r| r.as_str().len()).max().unwrap_or(6);
    let mut out = format!(
        "{:<24}  {:<ip_w$}  {:<reason_w$}  {:>5}  {:<7}  {:<24}  USER AGENT\n",
        "TIME", "IP", "REASON", "COUNT", "BROWSER", "USERNAME"
    );
    for r in records {
        out.push_str(&format!(
            "{:<24}  {}  {:<reason_w$}  {:>5}  {:<7}  {}  {}\n",
            r.time,
            cut(&r.ip, ip_w),
            r.reason,
            r.count,
            if r.known_browser { "known" } else { "-" },
            cut(&r.username, 24),
            cut(&r.user_agent, 24).trim_end()
        ));
    }
    out
}

/// The summary as text, with counts per hour as a bar chart.
pub fn text_summary(s: &Summary) -> String {
    let mut out = format!("Failed logins: {}{}\n", s.total, if s.partial { " (newest records only)" } else { "" });
    if let (Some(f), Some(l)) = (&s.first_seen, &s.last_seen) {
        out.push_str(&format!("First seen: {f}\nLast seen:  {l}{}\n", first_of(s.last_seen_of)));
    }
    out.push_str("\nBy reason:\n");
    for (reason, n) in &s.by_reason {
        out.push_str(&format!("  {reason:<18} {n:>8}\n"));
    }
    for (title, list) in [("Top addresses", &s.top_addresses), ("Top usernames", &s.top_usernames)] {
        out.push_str(&format!("\n{title}:\n"));
        for t in list {
            out.push_str(&format!(
                "  {} {:>8}  {} .. {}{}\n",
                cut(&t.value, 32),
                t.count,
                t.first_seen,
                t.last_seen,
                first_of(t.last_seen_of)
            ));
        }
    }
    out.push_str("\nPer hour (UTC):\n");
    let max = s.per_hour.iter().map(|h| h.1).max().unwrap_or(0).max(1);
    // From the first hour with records: a quiet start says nothing.
    let first = s.per_hour.iter().position(|h| h.1 > 0).unwrap_or(s.per_hour.len().saturating_sub(1));
    for (hour, n) in &s.per_hour[first..] {
        let bar = "#".repeat((n * 50).div_ceil(max).min(50));
        out.push_str(&format!("  {} {:>7} {}\n", &hour[..16.min(hour.len())], n, bar));
    }
    out
}

/// Counts per hour as an SVG bar chart: drawn on the server, no script, no inline CSS (so it
/// passes the Content-Security-Policy).
pub fn svg_chart(per_hour: &[(String, usize)]) -> String {
    const W: usize = 720;
    const H: usize = 160;
    const PAD: usize = 28;
    let n = per_hour.len().max(1);
    let max = per_hour.iter().map(|h| h.1).max().unwrap_or(0).max(1);
    let bar_w = (W - PAD) as f64 / n as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="Failed logins per hour, last {n} hours"><title>Failed logins per hour (max {max})</title>"##
    );
    svg.push_str(&format!(
        r##"<line x1="{PAD}" y1="{y}" x2="{W}" y2="{y}" stroke="#cbd5e1" stroke-width="1"/><text x="0" y="12" font-size="11" fill="#475569">{max}</text><text x="0" y="{y}" font-size="11" fill="#475569">0</text>"##,
        y = H - 20
    ));
    for (i, (hour, count)) in per_hour.iter().enumerate() {
        let h = (*count as f64 / max as f64) * (H - 30) as f64;
        let x = PAD as f64 + i as f64 * bar_w;
        let y = (H - 20) as f64 - h;
        svg.push_str(&format!(
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#1d4ed8"><title>{} UTC: {count}</title></rect>"##,
            escape_xml(&hour[..16.min(hour.len())]),
            w = (bar_w - 1.0).max(1.0)
        ));
        if i % 6 == 0 {
            svg.push_str(&format!(
                r##"<text x="{x:.1}" y="{}" font-size="10" fill="#475569">{}</text>"##,
                H - 6,
                escape_xml(hour.get(11..16).unwrap_or(""))
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(time: u64, ip: &str, user: &str, reason: FailureReason) -> FailureRecord {
        FailureRecord {
            time,
            ip: ip.into(),
            username: user.into(),
            reason,
            user_agent: "ua".into(),
            count: 1,
            typed: None,
            instance: String::new(),
            known_browser: false,
        }
    }

    #[test]
    fn times_are_durations_back_from_now_or_rfc3339() {
        assert_eq!(parse_time("2h", 10 * HOUR_MS).unwrap(), 8 * HOUR_MS);
        assert_eq!(parse_time("1970-01-01T01:00:00Z", 0).unwrap(), HOUR_MS);
        assert!(parse_time("yesterday", 0).is_err());
        // Just over 2^64 ms back: `as u64` made it 34 minutes.
        assert_eq!(parse_time("5124095576031h", 10 * HOUR_MS).unwrap(), 0);
        // The units settings take, in lower case: a general parser read `15M` as fifteen
        // months back and took `1w` and `2.5h`, where a setting refuses them.
        assert_eq!(parse_time("15m", 10 * HOUR_MS).unwrap(), 10 * HOUR_MS - 15 * 60_000);
        assert_eq!(parse_time("1d 2h", 30 * HOUR_MS).unwrap(), 4 * HOUR_MS);
        for bad in ["15M", "1w", "2.5h", "1y", "3 hours", "99999999999999999999h"] {
            assert!(matches!(parse_time(bad, 10 * HOUR_MS), Err(FilterError::Time(_))), "{bad}");
        }
        assert_eq!(parse_time("1969-12-31T23:00:00Z", 0), Err(FilterError::OutOfRange("1969-12-31T23:00:00Z".into())));
        assert_eq!(parse_limit("50", 500), Ok(50));
        for bad in ["0", "-1", "501", "abc", "18446744073709551616", "+5", ""] {
            assert!(matches!(parse_limit(bad, 500), Err(FilterError::Limit(..))), "{bad}");
        }
        let huge = FilterArgs { limit: Some(usize::MAX), ..Default::default() };
        assert!(matches!(huge.to_query(0, 1), Err(FilterError::Limit(..))));
    }

    #[test]
    fn counted_refusals_count_for_their_address_not_for_the_first_attempts_username() {
        let mut flood = rec(2_000, "198.51.100.7", "alice", FailureReason::RateLimited);
        flood.count = 500;
        let records = [flood, rec(1_000, "203.0.113.9", "bob", FailureReason::BadPassword)];
        let s = summarise(&records, false, 3_000, 1);
        assert_eq!(s.total, 501);
        assert_eq!((s.top_addresses[0].value.as_str(), s.top_addresses[0].count), ("198.51.100.7", 500));
        let users: Vec<_> = s.top_usernames.iter().map(|t| (t.value.as_str(), t.count)).collect();
        assert_eq!(users, [("alice", 1), ("bob", 1)]);
    }

    #[test]
    fn a_cut_never_splits_an_escape() {
        let name = format!("{}\u{2060}\u{2060}tail", "z".repeat(21));
        let shown = cut(&name, 24);
        assert_eq!(shown.chars().count(), 24, "{shown:?}");
        assert!(shown.starts_with(&"z".repeat(21)) && shown.trim_end().ends_with('…'), "{shown:?}");
        assert!(!shown.contains('\\'), "half an escape: {shown:?}");
        let shown = cut(&format!("ab\u{2060}{}", "c".repeat(40)), 12);
        assert!(shown.starts_with("ab\\u{2060}c"), "{shown:?}");
        assert_eq!(cut("short", 8), "short   ");
    }

    #[test]
    fn every_rfc3339_form_is_read_and_bad_dates_say_what_is_wrong() {
        // 2026-11-30T09:00:00Z, written five ways; each was refused before (task F, item 4).
        let nine = 1_796_029_200_000;
        for s in [
            "2026-11-30T10:00:00+01:00",
            "2026-11-30T08:00:00-01:00",
            "2026-11-30t09:00:00z",
            "2026-11-30 09:00:00Z",
            "2026-11-30T09:00:00.000Z",
        ] {
            assert_eq!(parse_time(s, 0), Ok(nine), "{s}");
        }
        for (s, why) in
            [("2026-02-30T10:00:00Z", "day"), ("2026-11-30T25:00:00Z", "hour"), ("2026-13-01T00:00:00Z", "month")]
        {
            match parse_time(s, 0) {
                Err(e @ FilterError::BadDate(..)) => assert!(e.to_string().contains(why), "{s}: {e}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(parse_time("1969-12-31T23:59:59Z", 0), Err(FilterError::OutOfRange("1969-12-31T23:59:59Z".into())));
        assert_eq!(parse_time("9999-12-31T23:59:59.999Z", 0), Ok(LAST_MS_OF_9999));
        let reversed = FilterArgs { since: Some("10d".into()), until: Some(" 20d".into()), ..FilterArgs::default() };
        assert_eq!(
            reversed.to_query(100 * 86_400_000, 50).err(),
            Some(FilterError::Reversed("10d".into(), "20d".into()))
        );
        let before_1970 =
            FilterArgs { since: Some("100000d".into()), until: Some("200000d".into()), ..FilterArgs::default() };
        assert!(matches!(before_1970.to_query(100 * 86_400_000, 50), Err(FilterError::Reversed(..))));
        let forward = FilterArgs { since: Some("20d".into()), until: Some("10d".into()), ..FilterArgs::default() };
        assert!(forward.to_query(100 * 86_400_000, 50).is_ok());
        for (s, why) in [("9999-12-31T23:59:59-23:59", "10000 in UTC"), ("1970-01-01T00:00:00+23:59", "1969 in UTC")] {
            assert_eq!(parse_time(s, 0), Err(FilterError::OutOfRange(s.into())), "{why}");
        }
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00", 5), Ok(0));
        assert!(parse_time("9999-12-31T23:59:59.999Z", 0).is_ok());
        // What is missing is said, with the time written in full (review 153).
        for (s, full) in [
            ("2026-11-30T10:00:00", "2026-11-30T10:00:00Z"),
            ("2026-11-30T10:00", "2026-11-30T10:00:00Z"),
            ("2026-11-30 10:00", "2026-11-30T10:00:00Z"),
            ("2026-11-30", "2026-11-30T00:00:00Z"),
        ] {
            assert_eq!(parse_time(s, 0), Err(FilterError::Incomplete(s.into(), full.into())), "{s}");
        }
        assert!(
            matches!(parse_time("2026-11-31", 0), Err(FilterError::BadDate(..))),
            "a day out of range still says so"
        );
        for year in ["10000-01-01T00:00:00Z", "99999-01-01"] {
            assert_eq!(parse_time(year, 0), Err(FilterError::OutOfRange(year.into())), "{year}");
        }
        assert!(matches!(parse_time("noon", 0), Err(FilterError::Time(_))));
    }

    #[test]
    fn filters_parse_into_a_query_or_a_clear_error() {
        let args = FilterArgs {
            since: Some("1h".into()),
            ip: Some("10.0.0.0/8".into()),
            user: Some(" Alice ".into()),
            reason: Some("bad_password".into()),
            ..Default::default()
        };
        let q = args.to_query(2 * HOUR_MS, 100).unwrap();
        assert_eq!(q.since, Some(HOUR_MS));
        assert_eq!(q.user_key.as_deref(), Some("alice"));
        assert_eq!(q.reason, Some(FailureReason::BadPassword));
        assert_eq!(q.limit, 100);
        let bad = FilterArgs { reason: Some("nope".into()), ..Default::default() };
        assert!(matches!(bad.to_query(0, 1), Err(FilterError::Reason(_))));
        let bad = FilterArgs { ip: Some("10.0.0.0/99".into()), ..Default::default() };
        assert!(matches!(bad.to_query(0, 1), Err(FilterError::Ip(_))));
        // Refused, not widened to its network (review 150).
        let wide = FilterArgs { ip: Some("127.0.0.5/8".into()), ..Default::default() };
        let e = wide.to_query(0, 1).unwrap_err().to_string();
        assert!(e.contains("`127.0.0.0/8`"), "{e}");
        let bad = FilterArgs { before: Some("!!".into()), ..Default::default() };
        assert_eq!(bad.to_query(0, 1).unwrap_err(), FilterError::Cursor);
        // Found by the admin_socket fuzz target: junk with control characters came back raw in
        // the one-line error.
        for bad in [
            FilterArgs { since: Some("2x\r\u{1b}[2J".into()), ..Default::default() },
            FilterArgs { ip: Some("1.2.3.4\u{1b}[0m".into()), ..Default::default() },
            FilterArgs { reason: Some("csrf\u{7}".into()), ..Default::default() },
        ] {
            let err = bad.to_query(0, 1).unwrap_err().to_string();
            assert!(!err.chars().any(char::is_control), "{err:?}");
        }
    }

    #[test]
    fn a_summary_counts_reasons_tops_and_hours() {
        let h = HOUR_MS;
        let records = vec![
            rec(10 * h + 5, "1.1.1.1", "alice", FailureReason::BadPassword),
            rec(10 * h + 6, "1.1.1.1", "bob", FailureReason::UnknownUser),
            rec(11 * h + 1, "1.1.1.1", "alice", FailureReason::BadPassword),
            rec(11 * h + 2, "2.2.2.2", "alice", FailureReason::RateLimited),
        ];
        let s = summarise(&records, false, 11 * h + 10, 3);
        assert_eq!(s.total, 4);
        assert_eq!(s.by_reason[0], ("bad_password".to_string(), 2));
        assert_eq!(s.top_addresses[0].value, "1.1.1.1");
        assert_eq!(s.top_addresses[0].count, 3);
        assert_eq!(s.top_usernames[0].value, "alice");
        assert_eq!(s.top_usernames[0].count, 3);
        assert_eq!(s.per_hour.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0, 2, 2]);
        assert_eq!(s.first_seen.as_deref(), Some(rfc3339(10 * h + 5).as_str()));
        let text = text_summary(&s);
        assert!(text.contains("bad_password") && text.contains('#'));
    }

    #[test]
    fn a_record_counted_per_minute_weighs_its_count_in_a_summary_and_shows_it_in_the_table() {
        let h = HOUR_MS;
        let mut counted = rec(10 * h, "1.1.1.1", "x", FailureReason::RateLimited);
        counted.count = 40;
        let records = vec![counted.clone(), rec(10 * h + 1, "2.2.2.2", "alice", FailureReason::BadPassword)];
        let s = summarise(&records, false, 10 * h + 10, 2);
        assert_eq!(s.total, 41);
        assert_eq!(s.by_reason[0], ("rate_limited".to_string(), 40));
        assert_eq!(s.top_addresses[0].count, 40);
        assert_eq!(s.per_hour.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0, 41]);
        let view = RecordView::from(&counted);
        assert_eq!(view.count, 40);
        let table = text_table(&[view]);
        assert!(table.lines().next().unwrap().contains("COUNT") && table.contains("   40  "), "{table}");
        // JSON from before the field reads as one attempt.
        let old: RecordView =
            serde_json::from_str(r#"{"time":"t","ip":"1.1.1.1","username":"u","reason":"csrf","user_agent":"ua"}"#)
                .unwrap();
        assert_eq!(old.count, 1);
    }

    #[test]
    fn last_seen_of_a_counted_record_says_it_is_the_first_of_its_minute() {
        let h = HOUR_MS;
        let mut counted = rec(10 * h + 5, "1.1.1.1", "x", FailureReason::RateLimited);
        counted.count = 40;
        let records = vec![rec(10 * h, "1.1.1.1", "x", FailureReason::BadPassword), counted];
        let s = summarise(&records, false, 10 * h + 10, 2);
        assert_eq!(s.last_seen_of, Some(40));
        assert_eq!(s.top_addresses[0].last_seen_of, Some(40));
        let text = text_summary(&s);
        assert!(text.contains("Last seen:  1970-01-01T10:00:00.005Z (first of 40 in that minute)"), "{text}");
        assert!(s.top_addresses[0].last_seen_short().ends_with("(first of 40 in that minute)"));
        // A single refusal last: its time is exact, nothing added.
        let s = summarise(&[rec(10 * h, "1.1.1.1", "x", FailureReason::BadPassword)], false, 10 * h, 1);
        assert_eq!(s.last_seen_of, None);
        assert!(!text_summary(&s).contains("first of"));
    }

    #[test]
    fn control_characters_are_escaped_in_text_output() {
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\u{a}c");
        assert_eq!(printable("ok ünïcode"), "ok ünïcode");
        let table = text_table(&[RecordView {
            time: "t".into(),
            ip: "1.1.1.1".into(),
            username: "eve\r\nforged".into(),
            reason: "bad_password".into(),
            user_agent: "x".into(),
            count: 1,
            typed: None,
            instance: String::new(),
            known_browser: false,
        }]);
        assert_eq!(table.lines().count(), 2, "{table}");
        // A run of spaces cannot pass for the gap before a column of its own (review 188),
        // in the records or in the summary's top names.
        let h = HOUR_MS;
        let typed = "admin               9999";
        let table = text_table(&[RecordView::from(&rec(h, "1.1.1.1", typed, FailureReason::UnknownUser))]);
        assert!(table.contains("admin \\u{20}\\u{20}"), "{table}");
        let text = text_summary(&summarise(&[rec(h, "1.1.1.1", typed, FailureReason::UnknownUser)], false, h, 1));
        assert!(text.contains("admin \\u{20}") && !text.contains("admin  "), "{text}");
    }

    #[test]
    fn wide_usernames_keep_the_table_in_line() {
        let row = |username: &str| RecordView {
            time: "2026-12-01T00:00:00.000Z".into(),
            ip: "192.0.2.1".into(),
            username: username.into(),
            reason: "bad_password".into(),
            user_agent: "curl".into(),
            count: 1,
            typed: None,
            instance: String::new(),
            known_browser: false,
        };
        // Short, cut and combining: the user agent starts in one column on every line.
        let long = "長".repeat(20);
        let table = text_table(&[row("山田"), row(&long), row("alice"), row("e\u{301}mile")]);
        let at: Vec<usize> =
            table.lines().map(|l| columns(&l[..l.find("USER AGENT").or_else(|| l.find("curl")).unwrap()])).collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{table}\n{at:?}");
        assert!(table.contains(&format!("{}…", "長".repeat(11))), "cut to 23 columns and the ellipsis: {table}");
    }

    #[test]
    fn the_count_column_stays_in_line_for_every_reason() {
        let row = |reason: &str| RecordView {
            time: "2026-12-01T00:00:00.000Z".into(),
            ip: "192.0.2.1".into(),
            username: "alice".into(),
            reason: reason.into(),
            user_agent: "x".into(),
            count: 7,
            typed: None,
            instance: String::new(),
            known_browser: false,
        };
        let rows: Vec<RecordView> = FailureReason::ALL.iter().map(|r| row(r.as_str())).collect();
        let table = text_table(&rows);
        let ends: Vec<usize> =
            table.lines().map(|l| l.find("COUNT").map_or_else(|| l.find('7').unwrap() + 1, |i| i + 5)).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{table}");
    }

    #[test]
    fn the_chart_is_one_svg_with_a_bar_per_hour_and_no_script() {
        let per_hour: Vec<(String, usize)> = (0..48).map(|i| (rfc3339(i * HOUR_MS), i as usize)).collect();
        let svg = svg_chart(&per_hour);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 48);
        assert!(!svg.contains("<script") && !svg.contains("style="));
    }

    #[test]
    fn relative_times_are_fixed_for_paging_and_the_window_stays_the_same() {
        let args =
            FilterArgs { since: Some("2h".into()), until: Some("2026-11-30T09:00:00Z".into()), ..Default::default() };
        let fixed = args.with_times_fixed(3 * HOUR_MS);
        assert_eq!(fixed.since.as_deref(), Some(rfc3339(HOUR_MS).as_str()));
        assert_eq!(fixed.until, args.until, "an RFC 3339 time is left as it is");
        let later = 5 * HOUR_MS;
        assert_eq!(fixed.to_query(later, 1).unwrap().since, args.to_query(3 * HOUR_MS, 1).unwrap().since);
        // `now`, as the page's Until field shows when empty, is the time of asking, fixed too.
        let args = FilterArgs { until: Some(" NOW ".into()), ..Default::default() };
        assert_eq!(args.to_query(later, 1).unwrap().until, Some(later));
        assert_eq!(args.with_times_fixed(later).until.as_deref(), Some(rfc3339(later).as_str()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_review_whose_asker_went_away_stops() {
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&taken);
        let spawned = Spawned::new(async move {
            let _turn = summary_turns().acquire().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(spawned);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        // Aborted at its next await, its turn (a permit, dropped with it) given back.
        assert!(!taken.load(std::sync::atomic::Ordering::SeqCst), "aborted with its asker");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn summaries_past_the_number_at_once_wait_their_turn() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("data")).unwrap();
        let audit = crate::audit::Audit::open(&dir.path().join("logs"), 1, Some(store)).unwrap();
        let args = FilterArgs::default();
        let taken = summary_turns().acquire_many(SUMMARIES_AT_ONCE as u32).await.unwrap();
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(200), review(&audit, &args, true, 100, HOUR_MS));
        assert!(waiting.await.is_err(), "every turn taken: it waits");
        drop(taken);
        assert!(matches!(review(&audit, &args, true, 100, HOUR_MS).await, Ok(Answer::Summary { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_summary_read_in_batches_is_the_summary_of_every_record_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("data")).unwrap();
        let audit = crate::audit::Audit::open(&dir.path().join("logs"), 1, Some(store.clone())).unwrap();
        // Two and a bit batches, several records per millisecond (cursors, not times, page).
        let now = 100 * HOUR_MS;
        let records: Vec<FailureRecord> = (0..2 * SUMMARY_BATCH as u64 + 7)
            .map(|i| {
                let reason = if i % 3 == 0 { FailureReason::UnknownUser } else { FailureReason::BadPassword };
                rec(now - 1 - i / 4 * 1000, &format!("10.0.{}.{}", i % 7, i % 5), &format!("u{}", i % 11), reason)
            })
            .collect();
        store.failures.import(&records).await.unwrap();
        let args = FilterArgs { since: Some("48h".into()), ..Default::default() };
        let Answer::Summary { summary } = review(&audit, &args, true, 100, now).await.unwrap() else {
            panic!("a summary")
        };
        assert_eq!(summary, summarise(&records, false, now, SUMMARY_HOURS as usize));
        assert_eq!(summary.total, records.len());
    }
}
