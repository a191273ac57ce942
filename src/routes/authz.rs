//! `GET /api/authz/forward-auth` (Traefik ForwardAuth, Caddy `forward_auth`) and
//! `GET /api/authz/auth-request` (nginx `auth_request`): a reverse proxy asks whether a
//! request may go through to an application, and as whom (SPEC.md, "Gating other
//! applications"). On the hot path of every gated request: a verify does no password hashing,
//! and writes only the session's activity time, at most once per `session_idle_timeout / 20`
//! (30 s at most) per session (see `session::Sessions::resolve`).

use poem::http::{header, HeaderValue, StatusCode};
use poem::{handler, Request, Response};

use crate::access::{Decision, Policy, Subject, Target};
use crate::app::AppState;
use crate::audit::AuthEvent;
use crate::forward_auth::{wants_page, AuthzResult, Described, Flavour, Gate, TargetError};
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
async fn counted(req: &Request, state: &AppState, flavour: Flavour) -> Response {
    let started = std::time::Instant::now();
    let (resp, result) = verify(req, state, flavour).await;
    state.metrics.record_authz(result, started.elapsed());
    resp
}

/// The whole verify: the answer to send and what it was (the hook for metrics).
pub async fn verify(req: &Request, state: &AppState, flavour: Flavour) -> (Response, AuthzResult) {
    let peer = req.remote_addr().as_socket_addr().map(|a| crate::client::canonical(a.ip()));
    if !peer.is_some_and(|ip| state.settings.trusted_proxies.iter().any(|n| n.contains(&ip))) {
        // Only a trusted proxy may ask: anyone else could probe who is signed in, or read
        // identity headers meant for an application.
        return (status(StatusCode::FORBIDDEN), AuthzResult::Forbidden);
    }
    let gate = Gate::new(&state.settings);
    let target = match described(req).and_then(|d| gate.target(flavour, &d)) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "forward-auth request refused");
            return (status(StatusCode::BAD_REQUEST), AuthzResult::BadRequest);
        }
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
    let client = crate::client::client(req, &state.settings.trusted_proxies);
    let groups = session.as_ref().map(|s| s.user.effective_groups()).unwrap_or_default();
    let subject = session.as_ref().map(|s| Subject { user_key: &s.user.key, groups: &groups });
    let t = Target {
        host: &target.host,
        path_and_query: &target.path_and_query,
        method: &target.method,
        client: client.ip,
    };
    let decision = state.settings.access.decide(&t, subject.as_ref());
    let factors = session.as_ref().map(|s| s.record.factors);
    let allowed = allowed_for(decision, factors);
    // Applications read paths differently (some decode, merge and drop `;params` before they
    // route, some route on the path as sent, some ignore case): where the readings would get
    // different answers, no answer is safe for every application.
    let access = &state.settings.access;
    let apart = target.reading_apart(|reading, ignoring_case| {
        let other = Target { path_and_query: reading, ..t };
        let decision = match ignoring_case {
            false => access.decide(&other, subject.as_ref()),
            true => access.decide_ignoring_case(&other, subject.as_ref()),
        };
        allowed_for(decision, factors)
    });
    if apart.is_some() {
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
            state.audit.record(&AuthEvent::AuthzDenied {
                username,
                client: &client,
                host: &target.host,
                path,
                rule: &by,
            });
            (status(StatusCode::FORBIDDEN), AuthzResult::Forbidden)
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

/// The value of a header given at most once, as text.
fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
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
