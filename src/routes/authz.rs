//! `GET /api/authz/forward-auth` (Traefik ForwardAuth, Caddy `forward_auth`) and
//! `GET /api/authz/auth-request` (nginx `auth_request`): a reverse proxy asks whether a
//! request may go through to an application, and as whom (SPEC.md, "Gating other
//! applications"). On the hot path of every gated request: a verify does no password hashing,
//! and writes only the session's activity time, at most once per `session_idle_timeout / 20`
//! (30 s at most) per session (see `session::Sessions::resolve`).

use poem::http::{header, HeaderValue, StatusCode};
use poem::{handler, Request, Response};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

use crate::access::{Decision, Policy, Subject, Target};
use crate::app::AppState;
use crate::client::AddressKey;
use crate::forward_auth::{wants_page, AuthzResult, Described, Flavour, Gate, TargetError, TargetRequest};
use crate::routes::{current_session, must_enrol, store_error, State};
use crate::store::Factors;

/// On `auth-request`'s 401s: `1` when the request is a page (a browser navigation, by
/// [`wants_page`]), so nginx answers with the redirect to `Location`, `0` when it is not, so
/// nginx answers 401. The contrib configuration reads it with `auth_request_set`.
pub const PAGE_HEADER: &str = "portcullis-page";

#[handler]
pub async fn forward_auth(req: &Request, state: State<'_>) -> Response {
    counted(req, &state, Flavour::ForwardAuth).await
}

#[handler]
pub async fn auth_request(req: &Request, state: State<'_>) -> Response {
    counted(req, &state, Flavour::AuthRequest).await
}

/// [`verify`], counted in `portcullis_authz_requests_total` and timed in
/// `portcullis_authz_duration_seconds`.
async fn counted(req: &Request, state: &Arc<AppState>, flavour: Flavour) -> Response {
    // A peer that may not ask is no decision: counted as one, any client on the network
    // could raise the `forbidden` series at will and hide the denials an alert is for
    // (review 194). `http_requests_total` counts its 403.
    if !from_trusted_proxy(req, state) {
        untrusted_peer_said(req);
        return status(StatusCode::FORBIDDEN);
    }
    let started = std::time::Instant::now();
    let (resp, result) = verify(req, state, flavour).await;
    state.metrics.record_authz(result, started.elapsed());
    resp
}

/// Most peers not in `trusted_proxies` said per minute ([`untrusted_peer_said`]).
const UNTRUSTED_PEERS_SAID: usize = 8;

/// Says, once a minute for each of up to [`UNTRUSTED_PEERS_SAID`] peers, that a peer not in
/// `trusted_proxies` asked for a decision: a proxy left out of the list gets a bare 403 for
/// every gated request, and nothing else told its operator why (review 213). Per peer, so a
/// client asking faster cannot keep the proxy's address out of the line (review 216); bounded,
/// so no number of clients can fill the log with it.
fn untrusted_peer_said(req: &Request) {
    static SAID: std::sync::Mutex<(u64, Vec<std::net::IpAddr>)> = std::sync::Mutex::new((0, Vec::new()));
    let Some(peer) = req.remote_addr().as_socket_addr().map(|a| crate::client::canonical(a.ip())) else { return };
    let minute = crate::store::now_ms() / 60_000;
    {
        // A poisoned lock only means a panic elsewhere mid-note: the list is still a list.
        let mut said = SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if said.0 != minute {
            *said = (minute, Vec::new());
        }
        if said.1.contains(&peer) || said.1.len() >= UNTRUSTED_PEERS_SAID {
            return;
        }
        said.1.push(peer);
    }
    tracing::warn!(
        peer = %peer,
        "a forward-auth request came from a peer not in trusted_proxies and was refused (403); if it is your \
         proxy, add its address to trusted_proxies (said once a minute per peer, for at most 8 peers)"
    );
}

/// Whether `req`'s TCP peer is in `trusted_proxies`, the only ones that may ask.
fn from_trusted_proxy(req: &Request, state: &AppState) -> bool {
    let peer = req.remote_addr().as_socket_addr().map(|a| crate::client::canonical(a.ip()));
    peer.is_some_and(|ip| state.settings.trusted_proxies.iter().any(|n| n.contains(&ip)))
}

/// Targets longer than this, in bytes, are read on the blocking pool, on at most half the
/// cores at a time ([`in_turn`]), within [`crate::forward_auth::MAX_READING_BYTES`]: every
/// reading of a crafted 4 KB target takes up to about 50 ms of CPU in a release build, which
/// on an async worker held every request queued behind it (review 152: a few clients kept
/// `/login` waiting seconds).
const INLINE_TARGET_BYTES: usize = 512;

/// A shorter target is read where it arrives while its readings come to at most this much
/// text, in bytes (about a millisecond of CPU at worst); past it, it is read again on the
/// blocking pool, since a crafted 500-byte target costs as much as a 4 KB one (review 154).
/// An ordinary target, read in microseconds, never leaves.
const READ_INLINE_BYTES: usize = 64 * 1024;

/// Readings whose text, in bytes, times the rules' path patterns comes to more than this are
/// judged on the blocking pool as long targets are read ([`in_turn`]). The patterns are
/// matched together, one pass per reading (`access`), so this errs on the side of the pool:
/// more patterns make each pass slower, if far less than in proportion (`cargo bench --bench
/// judging`: 3 ns per byte of readings with 21 patterns, 7 with 453).
const JUDGE_INLINE_WORK: usize = 512 * 1024;

/// The CPU time a judging where the target arrives may take before it is handed to the
/// blocking pool to be judged again there, whole ([`in_turn`]): some rule sets make even a
/// short target's few readings cost milliseconds (3,000 patterns of
/// `(?i)[^/?]{1,20}[0-9a-f]{4,12}xN[[:alnum:]]{0,16}`: 50 ms for a 20-byte target, where
/// [`JUDGE_INLINE_WORK`] judged it here), which on an async worker held every request queued
/// behind it. An ordinary target is judged in microseconds.
const JUDGE_INLINE_CPU: std::time::Duration = std::time::Duration::from_millis(2);

/// How many long targets of anonymous clients are read at once, and how many of signed-in
/// users: half the cores each, so that a flood of crafted ones from either leaves the rest to
/// every other request.
fn reading_turns() -> usize {
    (crate::config::cores() / 2).max(1)
}

/// Whose long target it is, for its turns ([`in_turn`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Whose {
    /// A signed-in user's (by user key): one at a time per user, in the signed-in users' turns.
    User(String),
    /// An anonymous client's: one at a time per address, in the anonymous clients' turns.
    Anonymous(AddressKey),
}

/// Long targets waiting for a turn or being read, per user or client address, with the one
/// turn that user's or address's targets take one at a time: see [`in_turn`].
type ClientTurns = std::sync::Mutex<HashMap<Whose, (Arc<Semaphore>, usize)>>;

fn client_turns() -> &'static ClientTurns {
    static CLIENTS: OnceLock<ClientTurns> = OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

/// A client's place among [`client_turns`]: counted from its making (before any wait, so a
/// verify dropped while it waits still leaves), and the address forgotten when its last
/// target is done.
struct ClientTurn {
    key: Whose,
    turn: Arc<Semaphore>,
}

impl ClientTurn {
    fn enter(key: Whose) -> Self {
        // A panic while the map was held cannot leave it half-changed: each change is one call.
        let mut clients = client_turns().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = clients.entry(key.clone()).or_insert_with(|| (Arc::new(Semaphore::new(1)), 0));
        entry.1 += 1;
        ClientTurn { key, turn: Arc::clone(&entry.0) }
    }
}

impl Drop for ClientTurn {
    fn drop(&mut self) {
        let mut clients = client_turns().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = clients.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

/// `work` on the blocking pool when `long`, else here; `None` if its thread failed.
///
/// Long work runs on at most [`reading_turns`] threads at once for anonymous clients and as
/// many for signed-in users, and one at a time per client address or per user (`whose`): a
/// flood from one address, over any number of connections, waits behind its own targets, so
/// another client's long target waits for at most one per address ahead of it, and a signed-in
/// user's for none of an anonymous client's. Both turns go with the work to its thread and are
/// given back when it ends, not when the verify does: a client that hung up once its target
/// was handed over would otherwise free the turn while the reading still ran, and a loop of
/// such requests would read on every thread of the pool.
async fn in_turn<T: Send + 'static>(long: bool, whose: Whose, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static ANONYMOUS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    static SIGNED_IN: OnceLock<Arc<Semaphore>> = OnceLock::new();
    if !long {
        return Some(work());
    }
    let turns = match whose {
        Whose::User(_) => &SIGNED_IN,
        Whose::Anonymous(_) => &ANONYMOUS,
    };
    let place = ClientTurn::enter(whose);
    // Never closed, so acquiring only waits.
    let mine = Arc::clone(&place.turn).acquire_owned().await.ok()?;
    let turn =
        Arc::clone(turns.get_or_init(|| Arc::new(Semaphore::new(reading_turns())))).acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let held = (turn, mine, place);
        let done = work();
        drop(held);
        done
    })
    .await
    .ok()
}

/// The text of a target's readings besides its own, in bytes.
fn readings_bytes(target: &TargetRequest) -> usize {
    [&target.other_readings, &target.case_folded_readings].into_iter().flatten().map(String::len).sum()
}

/// Who asks, as a verify's judging needs it, owned so the judging can move to the pool.
struct Asked {
    state: Arc<AppState>,
    user_key: Option<String>,
    groups: Vec<crate::domain::Group>,
    factors: Option<Factors>,
    client: std::net::IpAddr,
}

impl Asked {
    /// The rules' decision for `target`, whether its readings are answered apart, the groups,
    /// and `target` without its readings: what a pooled verify hands back is a few hundred
    /// bytes, never the readings (review 156: up to 4 MiB each, held by every verify waiting
    /// for its turn to be judged, took the server past 2 GB under a flood).
    ///
    /// # Errors
    /// [`TargetError::TooManyReadings`] when judging every reading would take longer than
    /// [`crate::forward_auth::MAX_JUDGING`].
    fn judge(self, target: TargetRequest) -> Result<Judged, TargetError> {
        let judged = self.judge_within(&target, crate::forward_auth::MAX_JUDGING)?;
        Ok(self.handed_back(judged, target))
    }

    /// The rules' decision for `target` and whether its readings are answered apart, judged
    /// within `limit` of this thread's CPU time.
    ///
    /// # Errors
    /// [`TargetError::TooManyReadings`] when `limit` was spent first.
    fn judge_within(
        &self,
        target: &TargetRequest,
        limit: std::time::Duration,
    ) -> Result<(Decision, bool), TargetError> {
        let allowance = crate::cpu_time::CpuAllowance::new(limit);
        let subject = self.user_key.as_deref().map(|user_key| Subject { user_key, groups: &self.groups });
        let t = Target {
            host: &target.host,
            path_and_query: &target.path_and_query,
            method: &target.method,
            client: self.client,
        };
        let access = &self.state.settings.access;
        let decision = access
            .decide_reading_within(&t, subject.as_ref(), false, &allowance)
            .ok_or(crate::forward_auth::JUDGED_TOO_LONG)?;
        // Applications read paths differently (some decode, merge and drop `;params` before
        // they route, some route on the path as sent, some ignore case): where the readings
        // would get different answers, no answer is safe for every application.
        let apart = target.reading_apart_within(
            |reading, ignoring_case| {
                let other = Target { path_and_query: reading, ..t };
                let decided = access.decide_reading_within(&other, subject.as_ref(), ignoring_case, &allowance)?;
                Some(allowed_for(decided, self.factors))
            },
            &allowance,
        )?;
        Ok((decision, apart.is_some()))
    }

    /// What a judging hands back: `target` without its readings, with the groups.
    fn handed_back(self, (decision, apart): (Decision, bool), mut target: TargetRequest) -> Judged {
        target.other_readings = Vec::new();
        target.case_folded_readings = Vec::new();
        (decision, apart, self.groups, target)
    }
}

/// What [`Asked::judge`] hands back: the rules' decision, whether the readings are answered
/// apart, the groups, and the target without its readings.
type Judged = (Decision, bool, Vec<crate::domain::Group>, TargetRequest);

/// The whole verify: the answer to send and what it was (the hook for metrics).
pub async fn verify(req: &Request, state: &Arc<AppState>, flavour: Flavour) -> (Response, AuthzResult) {
    if !from_trusted_proxy(req, state) {
        // Only a trusted proxy may ask: anyone else could probe who is signed in, or read
        // identity headers meant for an application.
        return (status(StatusCode::FORBIDDEN), AuthzResult::Forbidden);
    }
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    let gate = Gate::new(&state.settings);
    let refused = |e: TargetError| -> (Response, AuthzResult) {
        tracing::debug!(error = %e, "forward-auth request refused");
        (status(StatusCode::BAD_REQUEST), AuthzResult::BadRequest)
    };
    // A short target is read here when its readings stay small; any other is read on the pool,
    // after the session is known, and judged in the same turn ([`Asked::judge`]).
    let read = match described(req) {
        Ok(d) => {
            let length = [d.forwarded_uri, d.original_url].into_iter().flatten().map(str::len).sum::<usize>();
            match (length <= INLINE_TARGET_BYTES).then(|| gate.target_within(flavour, &d, READ_INLINE_BYTES)) {
                Some(Ok(target)) => Ok(target),
                Some(Err(TargetError::TooManyReadings(_))) | None => Err(OwnedDescribed::from(&d)),
                Some(Err(e)) => return refused(e),
            }
        }
        Err(e) => return refused(e),
    };
    let session = match current_session(req, state).await {
        Ok(s) => s,
        Err(resp) => return (resp, AuthzResult::Unavailable),
    };
    // The `second_factor` policy: a user it wants a second factor from "can use nothing else
    // until they enrol one" (SPEC.md), applications included. Such a session is answered as no
    // session at all (the sign-in redirect or 401), and `/login` then sends them to /account.
    let session = match session {
        Some(s) => match must_enrol(state, &s.user).await {
            Ok(false) => Some(s),
            Ok(true) => None,
            Err(e) => return (store_error(&e, "could not read the user's second factors"), AuthzResult::Unavailable),
        },
        None => None,
    };
    let groups = session.as_ref().map(|s| s.user.effective_groups()).unwrap_or_default();
    let user_key = session.as_ref().map(|s| s.user.key.clone());
    let factors = session.as_ref().map(|s| s.record.factors);
    let asked = Asked { state: Arc::clone(state), user_key, groups, factors, client: client.ip };
    // Judging grows with each reading's text and with the rules' patterns: past
    // `JUDGE_INLINE_WORK`, the judging goes to the pool too (review 156: 450 patterns asked
    // one by one made a 77-byte target cost 7–11 ms of an async worker).
    let patterns = state.settings.access.path_patterns().max(1);
    // A signed-in user's long targets take turns of their own, apart from anonymous clients':
    // a flood of crafted targets from many addresses, which needs no account, cannot keep a
    // signed-in user's long URL waiting (review 160: 85 s behind 40 addresses' targets).
    let whose = match &session {
        Some(s) => Whose::User(s.user.key.clone()),
        None => Whose::Anonymous(client.key()),
    };
    let judged = match read {
        Ok(target) if readings_bytes(&target).saturating_mul(patterns) <= JUDGE_INLINE_WORK => {
            match asked.judge_within(&target, JUDGE_INLINE_CPU) {
                Ok(judged) => Some(Ok(asked.handed_back(judged, target))),
                // Costlier than it looked: judged again, whole, where long targets are.
                Err(TargetError::TooManyReadings(_)) => in_turn(true, whose, move || asked.judge(target)).await,
                Err(e) => Some(Err(e)),
            }
        }
        Ok(target) => in_turn(true, whose, move || asked.judge(target)).await,
        Err(owned) => {
            let gate = gate.clone();
            in_turn(true, whose, move || {
                gate.target(flavour, &owned.described()).and_then(|target| asked.judge(target))
            })
            .await
        }
    };
    let (decision, apart, groups, target) = match judged {
        Some(Ok(judged)) => judged,
        Some(Err(e)) => return refused(e),
        None => {
            tracing::error!("judging a forward-auth target stopped unexpectedly");
            return (status(StatusCode::SERVICE_UNAVAILABLE), AuthzResult::Unavailable);
        }
    };
    let allowed = allowed_for(decision, factors);
    if apart {
        tracing::debug!("forward-auth request refused: applications' readings of the path are answered differently");
        return (status(StatusCode::BAD_REQUEST), AuthzResult::BadRequest);
    }
    match allowed {
        Some(true) => {
            let user = session.as_ref().map(|s| s.user.display_name.as_str()).unwrap_or("");
            let groups = groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(",");
            // A username may hold any letter (UTF-8 bytes are valid field content, RFC 9110
            // §5.5 obs-text); it has no control characters (domain::Username), and groups are
            // ASCII (domain::Group). Should a stored name still not fit a header, the request is
            // refused rather than let through without its identity.
            let (Ok(user_value), Ok(groups_value)) =
                (HeaderValue::from_bytes(user.as_bytes()), HeaderValue::from_str(&groups))
            else {
                tracing::error!("a username or group cannot be sent in a header");
                return (status(StatusCode::FORBIDDEN), AuthzResult::Forbidden);
            };
            let mut resp = status(StatusCode::OK);
            let h = resp.headers_mut();
            h.insert("remote-user", user_value);
            h.insert("remote-groups", groups_value);
            (resp, AuthzResult::Allowed)
        }
        Some(false) => {
            let location = gate.login_location(&target.url);
            // Several `Accept` lines are one list (RFC 9110 §5.3; review 144 saw the first alone read).
            let accept: Vec<&str> =
                req.headers().get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
            let accept = (!accept.is_empty()).then(|| accept.join(","));
            let page = wants_page(accept.as_deref(), header_str(req, "x-requested-with"));
            let code = match flavour {
                // nginx's auth_request passes on only 401 and 403: the redirect is its config's.
                Flavour::AuthRequest => StatusCode::UNAUTHORIZED,
                Flavour::ForwardAuth if !page => StatusCode::UNAUTHORIZED,
                Flavour::ForwardAuth if matches!(target.method.as_str(), "GET" | "HEAD") => StatusCode::FOUND,
                Flavour::ForwardAuth => StatusCode::SEE_OTHER,
            };
            let mut resp = status(code);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            // nginx turns the 401 into the redirect itself: this says whether to, judged as
            // for Caddy and Traefik (its own map could not read `text/html;q=0`, review 142).
            if flavour == Flavour::AuthRequest {
                resp.headers_mut().insert(PAGE_HEADER, HeaderValue::from_static(if page { "1" } else { "0" }));
            }
            (resp, AuthzResult::Unauthenticated)
        }
        None => {
            let by = match decision {
                Decision::Policy(_, by) | Decision::SignInFirst(by) => by.to_string(),
            };
            let username = session.as_ref().map(|s| s.user.display_name.as_str()).unwrap_or("");
            let path = target.path_and_query.split('?').next().unwrap_or("");
            state.audit.authz_denied(username, &client, &target.host, path, &by);
            (denied(), AuthzResult::Forbidden)
        }
    }
}

/// What `decision` means for a session with `factors` (`None`: not signed in): `Some(true)`
/// allowed, `Some(false)` sign in (again) first, `None` denied.
fn allowed_for(decision: Decision, factors: Option<Factors>) -> Option<bool> {
    match decision {
        Decision::Policy(Policy::Bypass, _) => Some(true),
        Decision::Policy(Policy::OneFactor, _) => Some(factors.is_some()),
        Decision::Policy(Policy::TwoFactor, _) => Some(factors == Some(Factors::Two)),
        Decision::Policy(Policy::Deny, _) => None,
        Decision::SignInFirst(_) => Some(false),
    }
}

/// An empty answer: a proxy reads the status and headers only (and may show the body to the
/// browser, so it says nothing).
fn status(code: StatusCode) -> Response {
    Response::builder().status(code).finish()
}

/// The 403 of a rule's denial, with a line of text: Caddy and Traefik hand it to the browser
/// as it is, and an empty one showed as a blank page (review 183). Text, not one of our
/// pages: it is shown at the gated application's address, where our page's links and
/// stylesheet would name the application's paths. (nginx's `auth_request` keeps only the
/// status; contrib's configuration answers with the same line.)
fn denied() -> Response {
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .content_type("text/plain; charset=utf-8")
        .body("You do not have access to this page.\n")
}

/// The value of a header given at most once, as text.
fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// [`Described`] with its own copies of the headers, to read on another thread.
struct OwnedDescribed([Option<String>; 6]);

impl OwnedDescribed {
    fn from(d: &Described<'_>) -> Self {
        let own = |v: Option<&str>| v.map(str::to_string);
        OwnedDescribed([
            own(d.forwarded_proto),
            own(d.forwarded_host),
            own(d.forwarded_uri),
            own(d.forwarded_method),
            own(d.original_url),
            own(d.original_method),
        ])
    }

    fn described(&self) -> Described<'_> {
        let [proto, host, uri, method, original_url, original_method] = self.0.each_ref().map(Option::as_deref);
        Described {
            forwarded_proto: proto,
            forwarded_host: host,
            forwarded_uri: uri,
            forwarded_method: method,
            original_url,
            original_method,
        }
    }
}

/// The headers that describe the target; each must be given at most once and be text.
fn described(req: &Request) -> Result<Described<'_>, TargetError> {
    let one = |name: &'static str| -> Result<Option<&str>, TargetError> {
        let mut values = req.headers().get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v.to_str().map(Some).map_err(|_| TargetError::Outside),
            (Some(_), Some(_)) => Err(TargetError::Repeated(name)),
        }
    };
    Ok(Described {
        forwarded_proto: one("X-Forwarded-Proto")?,
        forwarded_host: one("X-Forwarded-Host")?,
        forwarded_uri: one("X-Forwarded-Uri")?,
        forwarded_method: one("X-Forwarded-Method")?,
        original_url: one("X-Original-URL")?,
        original_method: one("X-Original-Method")?,
    })
}

/// Whether `session` is enough for a `GET` of `url` (a checked `rd`) by this client: the
/// access rules do not ask it for more factors than it has. `GET /login?rd=` sends a signed-in
/// visitor on only then, so a one-factor session meeting a `two_factor` rule is not sent in
/// a circle between the application and the sign-in page.
pub fn session_suffices(req: &Request, state: &AppState, url: &str, session: &crate::session::ActiveSession) -> bool {
    let gate = Gate::new(&state.settings);
    // The request the browser will make: a fragment stays in the browser.
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let described = Described { original_url: Some(url), original_method: Some("GET"), ..Default::default() };
    // A target the proxy's check refuses (400) is the proxy's answer to give, as it is after
    // a sign-in: no factor would change it.
    let Ok(target) = gate.target(Flavour::AuthRequest, &described) else { return true };
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    let groups = session.user.effective_groups();
    let subject = Subject { user_key: &session.user.key, groups: &groups };
    let t = Target { host: &target.host, path_and_query: &target.path_and_query, method: "GET", client: client.ip };
    match state.settings.access.decide(&t, Some(&subject)) {
        Decision::Policy(Policy::TwoFactor, _) => session.record.factors == Factors::Two,
        // Allowed, or denied whatever the factors: going there shows the application's answer.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn key(last: u8) -> super::Whose {
        super::Whose::Anonymous(crate::client::AddressKey::of(std::net::IpAddr::from([192, 0, 2, last])))
    }

    /// A long target's reading runs off the async worker that received it, on at most half the
    /// cores at a time, one at a time per client address, and keeps its turn until it ends,
    /// whatever became of the verify; a short one runs where it arrived. One test, since the
    /// turns are the process's: tests run side by side would share them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_targets_are_read_on_the_blocking_pool_in_turns_kept_to_the_end() {
        use std::time::Duration;
        let here = std::thread::current().id();
        assert_eq!(super::in_turn(false, key(1), || std::thread::current().id()).await, Some(here));
        assert_ne!(super::in_turn(true, key(1), || std::thread::current().id()).await, Some(here));

        // At most half the cores at once, from many addresses.
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let works = (0..crate::config::cores() * 3).map(|i| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            super::in_turn(true, key(i as u8), move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        let done = futures_util::future::join_all(works).await;
        assert!(done.iter().all(Option::is_some));
        assert!(most.load(Ordering::SeqCst) <= super::reading_turns());

        // One address's flood waits behind its own targets: another address's target, sent
        // after five of them, is read second, not sixth.
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let work = |name: &'static str, address: u8| {
            let order = Arc::clone(&order);
            super::in_turn(true, key(address), move || {
                std::thread::sleep(Duration::from_millis(30));
                order.lock().unwrap().push(name);
            })
        };
        let flood = ["a1", "a2", "a3", "a4", "a5"].map(|name| work(name, 100));
        let (_, other) = futures_util::future::join(futures_util::future::join_all(flood), work("b", 101)).await;
        assert!(other.is_some());
        let order = order.lock().unwrap().clone();
        let at = |name| order.iter().position(|n| *n == name).unwrap();
        assert!(at("b") < at("a2"), "{order:?}");
        assert!(super::client_turns().lock().unwrap().is_empty(), "every address forgotten once done");

        // A verify dropped once its reading began (the client hung up) leaves the turn taken
        // until the reading ends: a loop of such requests must not read on every pool thread.
        let turns = super::reading_turns();
        let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (started_tx, started) = std::sync::mpsc::channel();
        let blocked: Vec<_> = (0..turns)
            .map(|i| {
                let (release, started_tx, running) = (Arc::clone(&release), started_tx.clone(), Arc::clone(&running));
                tokio::spawn(super::in_turn(true, key(200 + i as u8), move || {
                    running.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    let (lock, cvar) = &*release;
                    let _released = cvar.wait_while(lock.lock().unwrap(), |r| !*r).unwrap();
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for _ in 0..turns {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // Meanwhile a signed-in user's target is read in turns of the signed-in users' own,
        // not behind anonymous clients' (review 160).
        let user = super::Whose::User("carol".into());
        let read = tokio::time::timeout(Duration::from_secs(5), super::in_turn(true, user, || "read")).await;
        for task in &blocked {
            task.abort();
        }
        if read.is_err() {
            // Let the blocked readings end, so the failing test ends too.
            *release.0.lock().unwrap() = true;
            release.1.notify_all();
        }
        assert_eq!(read, Ok(Some("read")), "a signed-in user's target waited behind anonymous ones");
        let seen = Arc::clone(&running);
        let next = tokio::spawn(super::in_turn(true, key(250), move || seen.load(Ordering::SeqCst)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        assert_eq!(next.await.unwrap(), Some(0), "the next reading began only once the dropped ones ended");
    }

    /// A target is read where it arrives only within [`super::READ_INLINE_BYTES`] of readings:
    /// review 154's hill-climbed 474-byte path, which cost 53 ms of an async worker's CPU when
    /// length alone decided, passes that bound and is read on the pool; ordinary targets,
    /// accented ones included, stay within it.
    #[test]
    fn a_crafted_short_target_passes_the_inline_bound_and_ordinary_ones_do_not() {
        use crate::forward_auth::{Described, Flavour, Gate, TargetError};
        let settings = crate::config::Settings {
            public_url: Some("https://login.example.test".into()),
            cookie_domain: Some(crate::config::CookieDomain::parse("example.test").unwrap()),
            ..Default::default()
        };
        let gate = Gate::new(&settings);
        let inline = |path: &str| {
            let url = format!("https://app.example.test{path}");
            let d = Described { original_url: Some(&url), original_method: Some("GET"), ..Default::default() };
            gate.target_within(Flavour::AuthRequest, &d, super::READ_INLINE_BYTES)
        };
        let crafted = concat!(
            "/%3F?/x/[%C.4%B020+&%C3%A9//.%C4%26%B0%E2%88%952]+%262%A5]%C4[x]%25%25[x]2;//&/inde=x.php/",
            "%25%EF%B7%BA20+&%C;2%A0index.phpC5%BF25%252%E2%88%95=%252//0+&%C2%AD]ndex=%2520+&.php5x[]%C&4",
            "%Bi%C4%B0[x]=%2520+&ndex%2520x%953D3%C4%B+0..%C5%BF[!=%2520+&[]=&%20%EF%B7%BA%C3%A9+&%/.%3F%[&",
            "+&%/.%+&%/%E2%88%95.%3F%[&+&%/.%+&%/.%3F%[&+&%+%25::$DATA[&+&%/.%+&!][%E1%BA%[&+&%/.%+&!][%E1",
            "%BA%[&+&%/.%+&!][%E1%BA%9E%C2%AD%[&+&%/.%3F%[&+%C3%A9%EF%B7%BA&;C2%A03%A9%[&!%C2%A0[%3D[5%26&%[",
            "20+&%[&+&"
        );
        assert!(matches!(inline(crafted), Err(TargetError::TooManyReadings(_))), "{:?}", inline(crafted));
        for ordinary in [
            "/app/x?y=1",
            "/caf%C3%A9/%C3%89t%C3%A9?q=%C3%A9l%C3%A8ve+x&y=%C3%BC",
            "/search/%E6%9D%B1%E4%BA%AC?q=%E3%83%A9%E3%83%BC%E3%83%A1%E3%83%B3+caf%C3%A9&page=2&utm.source=x",
            "/index.php/wiki/Caf%C3%A9?action=edit&section[]=1",
        ] {
            assert!(inline(ordinary).is_ok(), "{ordinary}: {:?}", inline(ordinary));
        }
    }
}
