//! Prometheus metrics (SPEC.md, "Operations"): what is counted, and the `GET /metrics`
//! endpoint on its own plain-HTTP listener (`metrics_addr`).
//!
//! Every label takes its values from a fixed list (a route pattern from [`ROUTES`], a status
//! code, a result, a reason from [`FailureReason::ALL`]): never a username, an address or a
//! raw path, so no client can grow the number of series. Counting is a lookup in a small map
//! under a read lock plus an atomic add; label sets are `&'static str`s, so nothing is
//! allocated per request. With `metrics_addr = "off"` nothing is counted at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{get, handler, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::audit::FailureReason;
use crate::password::{HashPool, Lane};
use crate::store::Store;

/// The route patterns `portcullis_http_requests_total{route}` may carry; a pattern not in
/// this list is counted as `other`, a request that matched no route as `unmatched`. The
/// list includes the routes SPEC.md names for the branches built beside this one, so they
/// are counted by name once merged.
pub const ROUTES: &[&str] = &[
    "/",
    "/login",
    "/login/second-factor",
    "/logout",
    "/sessions/end-others",
    "/sessions/end",
    "/account",
    "/account/password",
    "/account/confirm",
    "/account/totp",
    "/account/totp/remove",
    "/account/recovery-codes",
    "/account/passkeys",
    "/account/passkeys/begin",
    "/account/passkeys/rename",
    "/account/passkeys/remove",
    "/login/passkey",
    "/login/passkey/begin",
    "/login/second-factor/passkey/begin",
    "/admin/failed-logins",
    "/admin/unlock",
    "/api/authz/forward-auth",
    "/api/authz/auth-request",
    "/healthz",
    "/readyz",
    "/static/:file",
];

/// Route label of a request that matched a route outside [`ROUTES`].
const OTHER_ROUTE: &str = "other";
/// Route label of a request that matched no route (a 404).
const UNMATCHED_ROUTE: &str = "unmatched";

/// How often the count of stored sessions behind `portcullis_sessions_active` is refreshed.
/// Counting is a scan on both engines (sled's `len`, PostgreSQL's `count(*)`), so it runs
/// at this pace in the background, never per scrape.
pub const SESSIONS_REFRESH: Duration = Duration::from_secs(15);

/// At most this many connections on the metrics listener at once (a scraper or two).
pub const MAX_CONNECTIONS: usize = 16;
/// At most this many from one address.
pub const MAX_CONNECTIONS_PER_IP: usize = 4;

/// A forward-auth decision: the `result` label of `portcullis_authz_requests_total`
/// (SPEC's four, and `unavailable` for a verify the store could not judge).
pub use crate::forward_auth::AuthzResult;

/// How a sign-in attempt ended, for `portcullis_login_attempts_total{result,reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    Success,
    /// Refused with this reason: `refused` when the attempt was turned away before anything
    /// typed was checked (quota, CSRF, captcha demanded), `failure` when what was typed was
    /// checked and wrong (username, password, captcha answer, or a disabled account).
    Refused(FailureReason),
}

impl LoginResult {
    fn labels(self) -> LoginLabels {
        match self {
            LoginResult::Success => LoginLabels { result: "success", reason: "none" },
            LoginResult::Refused(reason) => {
                let result = match reason {
                    FailureReason::RateLimited | FailureReason::Csrf | FailureReason::CaptchaRequired => "refused",
                    _ => "failure",
                };
                LoginLabels { result, reason: metric_reason(reason) }
            }
        }
    }
}

/// The `reason` label of a refusal: the record's reason, but one label for an unknown user,
/// a wrong password and a disabled account. The client is answered alike for the three
/// (SECURITY.md, "User enumeration"), and whoever reads the metrics (every local user, on the
/// loopback default) must not tell them apart either, one attempt at a time: review 138 told
/// an existing name, and a right password of a disabled account, from the counter's step.
/// The log and the store keep which it was.
fn metric_reason(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::UnknownUser | FailureReason::BadPassword | FailureReason::Disabled => "bad_credentials",
        other => other.as_str(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

struct Inner {
    registry: Registry,
    login_attempts: Family<LoginLabels, Counter>,
    login_duration: Histogram,
    authz_requests: Family<AuthzLabels, Counter>,
    authz_duration: Histogram,
    http_requests: Family<HttpLabels, Counter>,
    hash_queue_depth: Gauge<i64, AtomicI64>,
    hash_queued: Family<LaneLabels, Gauge<i64, AtomicI64>>,
    sessions_active: Gauge<i64, AtomicI64>,
    pool: HashPool,
}

/// `portcullis_audit_log_lines_dropped_total` and `portcullis_audit_records_dropped_total`,
/// read from the audit sink's own counts at each scrape (counters of ours beside them would
/// only be kept in step with them).
struct AuditDrops(crate::audit::Audit);

impl std::fmt::Debug for AuditDrops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditDrops")
    }
}

impl prometheus_client::collector::Collector for AuditDrops {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let counters = [
            (
                "audit_log_lines_dropped",
                "Failed-login and forward-auth denial lines left out of the auth log past audit_log_mib_per_day or its quarter (failed logins are kept in the store)",
                self.0.log_lines_dropped(),
            ),
            (
                "audit_log_write_failures",
                "Lines the auth log file could not take (a full disk, a read-only directory): those failed-login lines are in the store only, and sign-ins that needed one were answered 503",
                self.0.log_write_failures(),
            ),
            (
                "audit_records_dropped",
                "Oldest failed-login records dropped from the store past audit_max_records by this instance",
                self.0.records_dropped(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = prometheus_client::metrics::counter::ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// `portcullis_tls_certificate_not_after_seconds`, read from the certificate in service at
/// each scrape (a reload replaces it; one refused leaves the old one, still counting down).
struct CertificateEnd(Arc<crate::tls::CertResolver>);

impl std::fmt::Debug for CertificateEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateEnd")
    }
}

impl prometheus_client::collector::Collector for CertificateEnd {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Some(end) = self.0.not_after_unix() else { return Ok(()) };
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(end);
        let help = "When the TLS certificate in service ends (its notAfter), in seconds since the Unix epoch";
        let metric = encoder.encode_descriptor("tls_certificate_not_after_seconds", help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

/// The server's metrics; cheap to clone. [`Metrics::off`] counts nothing (metrics_addr off).
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

/// Buckets from 1 ms to about 33 s, doubling: a sign-in takes one argon2 check (tens of
/// milliseconds) plus the store's fsync, and a queue behind the pool can stretch it to seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

impl Metrics {
    /// Counts nothing and has nothing to show.
    pub fn off() -> Self {
        Metrics(None)
    }

    /// Registers every metric SPEC.md names, each series of the login and forward-auth
    /// counters already at zero (so a rate over one that has not moved yet is 0, not absent;
    /// `http_requests_total`'s status is open-ended, so its series come as they are counted).
    /// Hands the pool the histogram of its argon2 runs.
    pub fn new(pool: &HashPool, audit: &crate::audit::Audit, certificate: Arc<crate::tls::CertResolver>) -> Self {
        let mut root = Registry::default();
        // Prometheus's own name, unprefixed as client libraries write it: a restart shows as
        // its change (with sled, a restart also forgets the quotas and failure counts, which
        // live in memory), and the counters' resets line up with it.
        let started = Gauge::<f64, AtomicU64>::default();
        started
            .set(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
        root.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            started,
        );
        let registry = root.sub_registry_with_prefix("portcullis");
        let login_attempts = Family::<LoginLabels, Counter>::default();
        registry.register(
            "login_attempts",
            "Judged sign-in steps (POST /login, /login/second-factor, /login/passkey) by result (success, failure, refused) and reason",
            login_attempts.clone(),
        );
        for labels in std::iter::once(LoginResult::Success)
            .chain(FailureReason::ALL.into_iter().map(LoginResult::Refused))
            .map(LoginResult::labels)
        {
            let _ = login_attempts.get_or_create(&labels);
        }
        let login_duration = Histogram::new(latency_buckets());
        registry.register("login_duration_seconds", "Time to answer POST /login", login_duration.clone());
        let password_hash = Histogram::new(exponential_buckets(0.002, 2.0, 12));
        registry.register(
            "password_hash_seconds",
            "Time one argon2id hash or verification takes on a pool worker",
            password_hash.clone(),
        );
        pool.observe_runs(password_hash);
        let hash_queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "password_hash_queue_depth",
            "Password checks and hashes queued or running on the argon2 pool",
            hash_queue_depth.clone(),
        );
        let hash_queued = Family::<LaneLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "password_hash_queued",
            "Password checks waiting for an argon2 worker, by queue: open (strangers) or known (a \
             browser with a device cookie for the username typed, a signed-in user)",
            hash_queued.clone(),
        );
        for lane in Lane::ALL {
            let _ = hash_queued.get_or_create(&LaneLabels { lane: lane.label() });
        }
        let sessions_active = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "sessions_active",
            "Sessions in the store (counted every 15 s; expired ones count until the next purge)",
            sessions_active.clone(),
        );
        registry.register_collector(Box::new(AuditDrops(audit.clone())));
        registry.register_collector(Box::new(CertificateEnd(certificate)));
        let authz_requests = Family::<AuthzLabels, Counter>::default();
        registry.register("authz_requests", "Forward-auth decisions (/api/authz/*) by result", authz_requests.clone());
        for result in AuthzResult::ALL {
            let _ = authz_requests.get_or_create(&AuthzLabels { result: result.as_str() });
        }
        let authz_duration = Histogram::new(latency_buckets());
        registry.register("authz_duration_seconds", "Time to decide a forward-auth request", authz_duration.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTPS requests answered, by route pattern and status",
            http_requests.clone(),
        );
        registry.register(
            "build",
            "The running version (always 1)",
            Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION") }),
        );
        Metrics(Some(Arc::new(Inner {
            registry: root,
            login_attempts,
            login_duration,
            authz_requests,
            authz_duration,
            http_requests,
            hash_queue_depth,
            hash_queued,
            sessions_active,
            pool: pool.clone(),
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Counts one sign-in attempt that was judged (a form that could not be read, or an
    /// attempt that could not be judged, is counted in `http_requests` only).
    pub fn login_attempt(&self, result: LoginResult) {
        if let Some(m) = &self.0 {
            m.login_attempts.get_or_create(&result.labels()).inc();
        }
    }

    /// Records one forward-auth decision and how long it took to reach (SPEC.md, "Gating
    /// other applications": the four answers map to the four results).
    pub fn record_authz(&self, result: AuthzResult, elapsed: Duration) {
        if let Some(m) = &self.0 {
            m.authz_requests.get_or_create(&AuthzLabels { result: result.as_str() }).inc();
            m.authz_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one answered request under its route pattern (as poem's router matched it)
    /// and status; the time of `POST /login` goes into its histogram too.
    fn http_request(&self, pattern: Option<&str>, method: &Method, status: StatusCode, elapsed: Duration) {
        let Some(m) = &self.0 else { return };
        let route = route_label(pattern);
        m.http_requests.get_or_create(&HttpLabels { route, status: status.as_u16() }).inc();
        if route == "/login" && method == Method::POST {
            m.login_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric, read now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.0 {
            m.hash_queue_depth.set(i64::try_from(m.pool.waiting()).unwrap_or(i64::MAX));
            for lane in Lane::ALL {
                let queued = i64::try_from(m.pool.queued(lane)).unwrap_or(i64::MAX);
                m.hash_queued.get_or_create(&LaneLabels { lane: lane.label() }).set(queued);
            }
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry);
        }
        out
    }

    /// Keeps `portcullis_sessions_active` current: counts the stored sessions now and every
    /// [`SESSIONS_REFRESH`]. A failed count keeps the last value (and is logged).
    pub fn spawn_session_count(&self, store: Store) -> Option<JoinHandle<()>> {
        let gauge = self.0.as_ref()?.sessions_active.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SESSIONS_REFRESH);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.sessions.count().await {
                    Ok(n) => {
                        gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot count the sessions for the metrics"),
                }
            }
        }))
    }
}

/// The label for a matched route pattern: itself when in [`ROUTES`], else `other`; no
/// pattern (nothing matched) is `unmatched`.
fn route_label(pattern: Option<&str>) -> &'static str {
    match pattern {
        None => UNMATCHED_ROUTE,
        Some(p) => ROUTES.iter().copied().find(|r| *r == p).unwrap_or(OTHER_ROUTE),
    }
}

/// Wraps the router: counts every answer by route pattern and status. Sits inside
/// `security_headers`, where poem's routing errors (404, 405) are still `Err`s carrying the
/// pattern, and counts them with the status they will be answered with.
pub async fn count<E: Endpoint>(metrics: &Metrics, ep: &E, req: Request) -> poem::Result<Response> {
    if !metrics.is_on() {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let started = Instant::now();
    let method = req.method().clone();
    let result = ep.call(req).await.map(IntoResponse::into_response);
    let (pattern, status) = match &result {
        Ok(resp) => (resp.data::<poem::PathPattern>(), resp.status()),
        Err(e) => (e.data::<poem::PathPattern>(), e.status()),
    };
    metrics.http_request(pattern.map(|p| &*p.0), &method, status, started.elapsed());
    result
}

/// `GET /metrics` (and HEAD); 405 with `Allow` for other methods on it, 404 elsewhere.
pub fn endpoint(metrics: Metrics) -> impl Endpoint<Output = Response> {
    Route::new()
        .at(
            "/metrics",
            get(scrape).around(|ep, req| async move {
                match ep.call(req).await {
                    Err(e) if e.status() == StatusCode::METHOD_NOT_ALLOWED => Ok(Response::builder()
                        .status(StatusCode::METHOD_NOT_ALLOWED)
                        .header(header::ALLOW, "GET, HEAD")
                        .content_type("text/plain; charset=utf-8")
                        .body("method not allowed\n")),
                    other => other.map(IntoResponse::into_response),
                }
            }),
        )
        .data(metrics)
        .around(|ep, req| async move {
            let mut resp = match ep.call(req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            };
            // Nothing here is for a browser: no caching, no sniffing.
            let h = resp.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            Ok(resp)
        })
}

#[handler]
fn scrape(metrics: poem::web::Data<&Metrics>) -> Response {
    Response::builder().content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE).body(metrics.render())
}

/// The metrics listener's limits: small caps of its own, so a scraper can never take the
/// descriptors the HTTPS side needs, and the same header deadline as the others.
pub fn limits(settings: &crate::config::Settings) -> crate::tls::Limits {
    crate::tls::Limits {
        max_connections: MAX_CONNECTIONS,
        max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
        exempt: settings.trusted_proxies.clone(),
        handshake_timeout: settings.handshake_timeout,
        header_read_timeout: settings.header_read_timeout,
    }
}

/// Where the metrics listener is, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_the_router_serves_has_its_own_label() {
        // The router's patterns, read from its source: a route added there without a label
        // here would be counted as `other`.
        let source = include_str!("routes/mod.rs");
        // Routes mounted by a constant, and what the constant says.
        let constants =
            [("login::second_factor::PATH", "/login/second-factor"), ("account::confirm::PATH", "/account/confirm")];
        let served: Vec<&str> = source
            .split(".at(")
            .skip(1)
            .map(|rest| {
                let rest = rest.trim_start();
                match rest.strip_prefix('"') {
                    Some(r) => r.split('"').next().unwrap_or_default(),
                    None => {
                        constants.iter().find(|(name, _)| rest.starts_with(name)).map(|(_, path)| *path).unwrap_or_else(
                            || panic!("a route mounted by a constant this test does not know: {rest:.40}"),
                        )
                    }
                }
            })
            .collect();
        for route in served {
            assert!(ROUTES.contains(&route), "{route} is served but not in metrics::ROUTES");
        }
    }

    use super::*;

    #[test]
    fn route_labels_come_only_from_the_fixed_list() {
        assert_eq!(route_label(Some("/login")), "/login");
        assert_eq!(route_label(Some("/static/:file")), "/static/:file");
        assert_eq!(route_label(Some("/static/style.css")), "other");
        assert_eq!(route_label(Some("/anything/someone/typed")), "other");
        assert_eq!(route_label(None), "unmatched");
    }

    #[test]
    fn quota_csrf_and_captcha_demands_are_refusals_and_wrong_answers_failures() {
        let result = |r| LoginResult::Refused(r).labels().result;
        assert_eq!(result(FailureReason::RateLimited), "refused");
        assert_eq!(result(FailureReason::Csrf), "refused");
        assert_eq!(result(FailureReason::CaptchaRequired), "refused");
        assert_eq!(result(FailureReason::BadPassword), "failure");
        assert_eq!(result(FailureReason::UnknownUser), "failure");
        assert_eq!(result(FailureReason::BadCaptcha), "failure");
        assert_eq!(LoginResult::Success.labels(), LoginLabels { result: "success", reason: "none" });
    }

    #[test]
    fn metrics_off_count_nothing_and_show_nothing() {
        let m = Metrics::off();
        m.login_attempt(LoginResult::Success);
        m.record_authz(AuthzResult::Allowed, Duration::from_millis(1));
        assert_eq!(m.render(), "");
    }
}
