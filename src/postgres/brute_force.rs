//! The brute-force state of `POST /login` in PostgreSQL, shared by every instance on one
//! database (SPEC.md, "Several instances, one truth"): the GCRA quotas, the failure counts
//! that demand a captcha with their reservations, open captcha challenges, and retired
//! pre-login ids. Each operation is one statement (one round trip); where atomicity spans
//! two keys it is a function in the schema (`bf_reserve`, `bf_fail`, migration 1), and so are
//! the steps a sign-in always takes together (`bf_begin_check`, `bf_end_check`, migration 8,
//! whose commits do not wait for the WAL flush: it says why).
//!
//! Times are Unix milliseconds passed in by the caller (`now_ms`), never read here from the
//! database's clock, so the same rules hold as in memory and tests can move time; the shared
//! state ([`super::state::PgBruteForce`]) moves each instance's times to the database's clock. Keys are bytes: the
//! caller passes [`address_key`] and [`username_key`], the same keys the in-memory tables use.

use crate::client::AddressKey;
use crate::config::Rate;

pub use super::db::Statements;
use super::PgError;

/// The connection the functions here run on: a pooled one ([`super::db::Conn`]) or a plain
/// driver connection (tools, tests), every statement bounded by [`super::db::TIMEOUT`].
type Client = dyn Statements;

/// The bytes an address is counted under: its [`AddressKey`] (an IPv4 address, or the /64
/// of an IPv6 one) in network order, 4 or 16 bytes.
pub fn address_key(address: AddressKey) -> Vec<u8> {
    match address.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The bytes a username is counted under: [`crate::rate_limit::username_digest`] of its
/// normalised key, 16 bytes whatever was typed.
pub fn username_key(user_key: &str) -> Vec<u8> {
    crate::rate_limit::username_digest(user_key).to_be_bytes().to_vec()
}

fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Takes one unit of the GCRA quota `quota` (a name such as `per_address`) for `key` at
/// `now_ms`: `Ok(Ok(()))` when allowed, `Ok(Err(seconds))` when not, with how long until the
/// next unit (rounded up, at least 1), as [`crate::rate_limit::Limiter::check`] answers.
///
/// GCRA (ITU-T I.371 §4.4.2's virtual scheduling, as governor): each key keeps a theoretical
/// arrival time `tat`; a unit is allowed when `max(tat, now) + T - now <= burst × T`, with
/// `T = period / burst`, and then `tat` becomes `max(tat, now) + T`. The test and the update
/// are one `INSERT … ON CONFLICT DO UPDATE … WHERE`, which PostgreSQL applies to the row's
/// latest version under its row lock: concurrent takes on one key serialise, so exactly
/// `burst` of any number at once are allowed. A refusal writes nothing.
///
/// # Errors
/// [`PgError`] when the database cannot answer (the caller refuses the attempt: fail closed).
pub async fn take_quota(
    client: &Client,
    quota: &str,
    key: &[u8],
    rate: Rate,
    now_ms: u64,
) -> Result<Result<(), u64>, PgError> {
    Ok(take_quota_ms(client, quota, key, rate, now_ms).await?.map_err(|ms| ms.div_ceil(1000).max(1)))
}

/// As [`take_quota`], with the wait in milliseconds (at least 1), as
/// [`crate::brute_force::Wait`] holds it.
///
/// # Errors
/// As [`take_quota`].
pub async fn take_quota_ms(
    client: &Client,
    quota: &str,
    key: &[u8],
    rate: Rate,
    now_ms: u64,
) -> Result<Result<(), u64>, PgError> {
    let burst = i64::from(rate.burst.max(1));
    let interval = (ms(rate.period.as_millis() as u64) / burst).max(1);
    let limit = interval.saturating_mul(burst);
    let now = ms(now_ms);
    let taken = client
        .query(
            "INSERT INTO bf_quotas AS q (quota, key, tat_ms) VALUES ($1::text, $2::bytea, $3::bigint + $4::bigint)
             ON CONFLICT (quota, key) DO UPDATE SET tat_ms = GREATEST(q.tat_ms, $3) + $4
             WHERE GREATEST(q.tat_ms, $3) + $4 - $3 <= $5::bigint
             RETURNING tat_ms",
            &[&quota, &key, &now, &interval, &limit],
        )
        .await?;
    if !taken.is_empty() {
        return Ok(Ok(()));
    }
    // Refused, against the newest row (the conflict waits for a take committing at once). Its
    // tat is read by a statement of its own: one in the same statement reads that statement's
    // snapshot, taken before, and under a burst of takes an older, lower tat told refused
    // clients to come back in 1 s where the wait was 90 (reviews 163 and 165: a snapshot one
    // take behind, with the instances' clocks milliseconds apart, still gave a wait of 1).
    let newest = client
        .query("SELECT tat_ms FROM bf_quotas WHERE quota = $1::text AND key = $2::bytea", &[&quota, &key])
        .await?;
    // Gone since (a purge of a full bucket): one interval is a lower bound of the wait.
    let refused_tat = newest.first().map_or(now + limit, |row| row.get::<_, i64>(0));
    let wait = refused_tat.saturating_add(interval).saturating_sub(limit).saturating_sub(now);
    Ok(Err(wait.max(1) as u64))
}

/// How long a reserved password check holds its place when its end never comes (an instance
/// killed mid-check, a release lost to a database outage): the same lifetime as in memory,
/// [`crate::failures::RESERVATION_HOLD`], which says what bounds a check.
pub const RESERVATION_HOLD_MS: u64 = crate::failures::RESERVATION_HOLD_MS;

/// A password check running without a captcha, counted for its address and username until
/// [`fail_check`] or [`release_check`] (or, if neither comes, for
/// [`RESERVATION_HOLD_MS`]).
#[derive(Debug)]
#[must_use]
pub struct Reservation {
    ids: Vec<i64>,
}

/// Reserves a password check for `address` and `username` at `now_ms`, or says a captcha is
/// demanded (`Ok(None)`): the address's and the username's failures within the window plus
/// checks in flight must both be below `threshold` (`captcha_after_failures`). Test and
/// reservation are atomic across instances, so of any number of attempts at once at most
/// `threshold` checks run before a captcha is demanded (the race of the faults issue, fixed
/// across instances).
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn reserve_check(
    client: &Client,
    address: &[u8],
    username: &[u8],
    now_ms: u64,
    threshold: u32,
) -> Result<Option<Reservation>, PgError> {
    let threshold = threshold as i32;
    let hold = ms(RESERVATION_HOLD_MS);
    let row = client
        .query_one("SELECT bf_reserve($1, $2, $3, $4, $5)", &[&address, &username, &ms(now_ms), &threshold, &hold])
        .await?;
    Ok(row.get::<_, Option<Vec<i64>>>(0).map(|ids| Reservation { ids }))
}

/// Records a failed password check at `now_ms` for `address` and `username`: the
/// reservation's places become failures that count for `window_ms` (`failure_window`);
/// without a reservation (the check ran with a solved captcha) the failures are added.
/// Returns whether this failure made either count reach `threshold` from below (OWASP
/// `authn_login_fail_max`, once per crossing).
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn fail_check(
    client: &Client,
    address: &[u8],
    username: &[u8],
    reservation: Option<Reservation>,
    now_ms: u64,
    window_ms: u64,
    threshold: u32,
) -> Result<bool, PgError> {
    let ids = reservation.map(|r| r.ids).unwrap_or_default();
    let row = client
        .query_one(
            "SELECT bf_fail($1, $2, $3, $4, $5, $6)",
            &[&address, &username, &ids, &ms(now_ms), &ms(window_ms), &(threshold as i32)],
        )
        .await?;
    Ok(row.get(0))
}

/// Gives a reservation's places back: the check succeeded, or ended without a verdict.
///
/// # Errors
/// [`PgError`] when the database cannot answer (the places then lapse after
/// [`RESERVATION_HOLD_MS`]).
pub async fn release_check(client: &Client, reservation: Reservation) -> Result<(), PgError> {
    client.execute("DELETE FROM bf_attempts WHERE id = ANY($1) AND pending", &[&reservation.ids]).await?;
    Ok(())
}

/// Records a failed password check that holds a reservation known only by its keys (the
/// trait's [`crate::failures::Reservation`] carries no row ids): one place in flight of
/// `address` and one of `username` become failures counting for `window_ms`. Under the same
/// locks as [`reserve_check`] (`bf_fail_held`, migration 2), so concurrent ends never take
/// one place twice. Returns whether either count of failures reached `threshold` from below.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn fail_held(
    client: &Client,
    address: &[u8],
    username: &[u8],
    now_ms: u64,
    window_ms: u64,
    threshold: u32,
) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT bf_fail_held($1, $2, $3, $4, $5)",
            &[&address, &username, &ms(now_ms), &ms(window_ms), &(threshold as i32)],
        )
        .await?;
    Ok(row.get(0))
}

/// Gives back one place in flight of `address` and one of `username` (a reservation known by
/// its keys: see [`fail_held`]), under the same locks.
///
/// # Errors
/// [`PgError`] when the database cannot answer (the places then lapse after
/// [`RESERVATION_HOLD_MS`]).
pub async fn release_held(client: &Client, address: &[u8], username: &[u8]) -> Result<(), PgError> {
    client.execute("SELECT bf_release_held($1, $2)", &[&address, &username]).await?;
    Ok(())
}

/// What [`begin_check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    /// The form's pre-login id is retired: nothing was reserved.
    Retired,
    /// A captcha is demanded: nothing was reserved.
    CaptchaDemanded,
    /// A place was reserved for `address` and `username` (ended by key: [`fail_held`],
    /// [`end_check`]).
    Reserved,
}

/// The start of a password check in one round trip (`bf_begin_check`, migration 8): whether
/// the form's pre-login id `prelogin` (if any) is retired, and if not, [`reserve_check`]'s
/// test and reservation. A reservation commits without waiting for the WAL flush: it guards
/// only against concurrent attempts, which a crash ends too (the migration says why; a
/// failure is always flushed).
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn begin_check(
    client: &Client,
    prelogin: Option<&[u8; 16]>,
    address: &[u8],
    username: &[u8],
    username_counts: bool,
    now_ms: u64,
    threshold: u32,
) -> Result<Begun, PgError> {
    let prelogin = prelogin.map(|id| &id[..]);
    let row = client
        .query_one(
            "SELECT bf_begin_check($1, $2, $3, $4, $5, $6, $7)",
            &[
                &prelogin,
                &address,
                &username,
                &ms(now_ms),
                &(threshold as i32),
                &ms(RESERVATION_HOLD_MS),
                &username_counts,
            ],
        )
        .await?;
    Ok(match row.get::<_, i16>(0) {
        0 => Begun::Retired,
        1 => Begun::CaptchaDemanded,
        _ => Begun::Reserved,
    })
}

/// The end of a password check that did not fail, in one round trip (`bf_end_check`,
/// migration 8): the place held for `held` (address and username keys; `None`: no
/// reservation) given back, the pre-login id `retire` (with when it lapses, Unix ms) retired,
/// and the failures of the username key `tally` counted (not forgotten: migration 20), each
/// when given. `None` when the id was already retired, otherwise how many failures `tally`
/// has within the window at `now_ms` (0 without it).
/// Commits without waiting for the WAL flush: a sign-in that reports success has flushed it
/// since (its session); see the migration.
///
/// # Errors
/// [`PgError`] when the database cannot answer (a reservation then lapses after
/// [`RESERVATION_HOLD_MS`]).
pub async fn end_check(
    client: &Client,
    held: Option<(&[u8], &[u8])>,
    retire: Option<(&[u8; 16], u64)>,
    tally: Option<&[u8]>,
    now_ms: u64,
) -> Result<Option<u64>, PgError> {
    let (address, username) = (held.map(|h| h.0), held.map(|h| h.1));
    let (id, expires) = (retire.map(|r| &r.0[..]), retire.map(|r| ms(r.1)));
    let row = client
        .query_one(
            "SELECT bf_end_check($1, $2, $3, $4, $5, $6)",
            &[&address, &username, &id, &expires, &tally, &ms(now_ms)],
        )
        .await?;
    Ok(row.get::<_, Option<i64>>(0).map(|n| n.max(0) as u64))
}

/// Records a failed password check at `now_ms` (as [`fail_held`] when `held`, else as
/// [`fail_check`] without a reservation) and says, in the same round trip
/// (`bf_fail_counted`, migration 8), whether the threshold was reached from below and whether
/// attempts from `address` or for `username` must now carry a captcha ([`needs_captcha`]).
/// Synchronous: a failure is durable before it is reported. `username` `None` counts the
/// failure for the address alone (never with `held`; schema v12).
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn fail_counted(
    client: &Client,
    address: &[u8],
    username: Option<&[u8]>,
    held: bool,
    now_ms: u64,
    window_ms: u64,
    threshold: u32,
) -> Result<(bool, bool), PgError> {
    let row = client
        .query_one(
            "SELECT reached, demanded FROM bf_fail_counted($1, $2, $3, $4, $5, $6)",
            &[&address, &username, &held, &ms(now_ms), &ms(window_ms), &(threshold as i32)],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Whether attempts from `address` or for `username` must carry a captcha at `now_ms`
/// (failures within the window plus checks in flight have reached `threshold`).
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn needs_captcha(
    client: &Client,
    address: &[u8],
    username: &[u8],
    now_ms: u64,
    threshold: u32,
) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE scope = 'address' AND key = $1) >= $4
                 OR count(*) FILTER (WHERE scope = 'username' AND key = $2) >= $4
             FROM bf_attempts
             WHERE ((scope = 'address' AND key = $1) OR (scope = 'username' AND key = $2))
               AND expires_at_ms > $3",
            &[&address, &username, &ms(now_ms), &i64::from(threshold)],
        )
        .await?;
    Ok(row.get(0))
}

/// Forgets a username's failures and checks in flight (`user unlock`: one stranded by an
/// outage kept the captcha demanded for a minute after it, review 200). Returns how many
/// failures still counted at `now_ms`.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn clear_username(client: &Client, username: &[u8], now_ms: u64) -> Result<u64, PgError> {
    let row = client
        .query_one(
            "WITH gone AS (DELETE FROM bf_attempts WHERE scope = 'username' AND key = $1
                           RETURNING expires_at_ms, pending)
             SELECT count(*) FILTER (WHERE expires_at_ms > $2 AND NOT pending) FROM gone",
            &[&username, &ms(now_ms)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// How many failures the username key has within the window at `now_ms` (checks in flight
/// not counted).
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn username_failures(client: &Client, username: &[u8], now_ms: u64) -> Result<u64, PgError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM bf_attempts
             WHERE scope = 'username' AND key = $1 AND NOT pending AND expires_at_ms > $2",
            &[&username, &ms(now_ms)],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Opens a captcha challenge in `slot` (a keyed hash of the visitor's pre-login id), replacing
/// any open one, answerable until `expires_at_ms`.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn put_captcha(
    client: &Client,
    slot: &[u8; 32],
    answer_hash: &[u8; 32],
    expires_at_ms: u64,
) -> Result<(), PgError> {
    client
        .execute(
            "INSERT INTO bf_captchas (slot, answer_hash, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (slot) DO UPDATE SET answer_hash = EXCLUDED.answer_hash,
                                              expires_at_ms = EXCLUDED.expires_at_ms",
            &[&&slot[..], &&answer_hash[..], &ms(expires_at_ms)],
        )
        .await?;
    Ok(())
}

/// Takes the challenge in `slot` out, whatever the answer will be: its answer hash when it
/// was open and not expired at `now_ms`. One `DELETE … RETURNING`, so of any number of
/// requests at once (on any instances) at most one gets it.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn take_captcha(client: &Client, slot: &[u8; 32], now_ms: u64) -> Result<Option<[u8; 32]>, PgError> {
    let row = client
        .query_opt("DELETE FROM bf_captchas WHERE slot = $1 RETURNING answer_hash, expires_at_ms", &[&&slot[..]])
        .await?;
    Ok(row.and_then(|row| {
        let expires: i64 = row.get(1);
        let hash: Vec<u8> = row.get(0);
        if expires > ms(now_ms) {
            hash.try_into().ok()
        } else {
            None
        }
    }))
}

/// Retires a pre-login id after it signed someone in, until `expires_at_ms` (when the id
/// would expire anyway). Returns `false` when it was already retired and still is at
/// `now_ms` (a lapsed row not yet purged is taken over): of two sign-ins with one form at
/// once, on any instances, only one may proceed.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn retire_prelogin(client: &Client, id: &[u8; 16], expires_at_ms: u64, now_ms: u64) -> Result<bool, PgError> {
    let n = client
        .execute(
            "INSERT INTO bf_retired_prelogins AS r (id, expires_at_ms) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms WHERE r.expires_at_ms <= $3",
            &[&&id[..], &ms(expires_at_ms), &ms(now_ms)],
        )
        .await?;
    Ok(n == 1)
}

/// Whether a pre-login id has been retired.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn is_retired(client: &Client, id: &[u8; 16]) -> Result<bool, PgError> {
    let row = client.query_one("SELECT EXISTS (SELECT 1 FROM bf_retired_prelogins WHERE id = $1)", &[&&id[..]]).await?;
    Ok(row.get(0))
}

/// Rows of brute-force state removed by [`purge_expired`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub quotas: u64,
    pub attempts: u64,
    pub captchas: u64,
    pub retired: u64,
}

/// Drops what no longer counts at `now_ms`: quota rows back at a full bucket (`tat` past,
/// the same as no row), failures and reservations past their time, expired challenges and
/// retired ids. One statement; run it on a timer from any instance.
///
/// # Errors
/// [`PgError`] when the database cannot answer.
pub async fn purge_expired(client: &Client, now_ms: u64) -> Result<Purged, PgError> {
    let row = client
        .query_one(
            "WITH q AS (DELETE FROM bf_quotas WHERE tat_ms <= $1 RETURNING 1),
                  a AS (DELETE FROM bf_attempts WHERE expires_at_ms <= $1 RETURNING 1),
                  c AS (DELETE FROM bf_captchas WHERE expires_at_ms <= $1 RETURNING 1),
                  r AS (DELETE FROM bf_retired_prelogins WHERE expires_at_ms <= $1 RETURNING 1)
             SELECT (SELECT count(*) FROM q), (SELECT count(*) FROM a),
                    (SELECT count(*) FROM c), (SELECT count(*) FROM r)",
            &[&ms(now_ms)],
        )
        .await?;
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    Ok(Purged { quotas: n(0), attempts: n(1), captchas: n(2), retired: n(3) })
}
