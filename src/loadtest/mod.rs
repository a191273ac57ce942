//! `portcullis loadtest`: measures how many sign-ins per second (or signed-in page views)
//! a running portcullis answers, and how fast, the way browsers would drive it.
//!
//! Each virtual user has its own HTTP client (so its own keep-alive connection, opened
//! before the clock starts) and its own cookie jar. In `logins` mode it repeats: GET the
//! login form, read its hidden fields (csrf, next), POST it, and counts a login only on a
//! 303 to the expected target with a new session cookie. It then simply forgets its cookies
//! (as a browser whose window closes) instead of signing out: a sign-out is a second page
//! view and a durable store write that would make the figure about logouts as much as
//! logins. The server purges those sessions at their idle timeout. The latency recorded is
//! the POST /login round trip (the request that carries the password check). One sign-in
//! before the clock starts (not counted) stops the run with the reason when the server
//! refuses for good: a wrong password, a demanded captcha, a quota, a CSRF refusal.
//!
//! In `views` mode each virtual user signs in once, then repeats GET / with its session
//! cookie and counts 200s. In `verify` mode it signs in once, then asks
//! `GET /api/authz/auth-request` about `--target` (as nginx's `auth_request` does, so the
//! machine running this must be in the server's `trusted_proxies`) and counts 200s. In `get`
//! mode it only repeats GET `--url` (no sign-in), to compare with another server, such as
//! nginx serving a small static file, with the same client. With `--probe-rate R`, GET /healthz is sent R times a second on a
//! separate connection, at fixed times whatever the answers, and its latency is measured
//! from the moment each probe was due (so a stalled server cannot hide its stall).
//!
//! Anything else (another status, a connection error, a form without its fields) is an
//! error, counted by kind. After one a virtual user pauses as a person would: for the
//! `Retry-After` of a 429 or 503 (at most 1 s), otherwise 10 ms, so the test measures a busy
//! server rather than a storm of instant retries (an attack, which the quotas are for).
//! Work still in flight when the duration ends is not counted.

pub mod audit_bench;
pub mod verify_rate;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::time::Instant;

/// What the virtual users do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sign in over and over (GET /login, POST /login)
    Logins,
    /// Sign in once, then view the home page over and over (GET / with the session cookie)
    Views,
    /// Sign in once, then ask the forward-auth endpoint about --target over and over
    Verify,
    /// GET --url over and over, without signing in (a baseline: any server, any file)
    Get,
}

/// `portcullis loadtest` flags.
#[derive(clap::Args, Debug)]
pub struct LoadtestArgs {
    /// The server, e.g. https://127.0.0.1:4000 (a path such as /login?next=/x is kept)
    #[arg(long)]
    pub url: String,
    /// The account to sign in as (every mode signs in but get without --sign-in-url)
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password as one line from standard input instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
    /// Virtual users, each with its own connection and cookie jar (1 to 10000)
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How long to measure, e.g. 10s or 1m (whole s, m, h or d, as in the settings; at most 1d)
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// Trust only this CA (PEM) for the server's certificate
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Do not check the server's certificate
    #[arg(long)]
    pub insecure: bool,
    /// Print one JSON object on standard output
    #[arg(long)]
    pub json: bool,
    /// Meanwhile send GET /healthz this many times a second on a separate connection
    #[arg(long, value_name = "R")]
    pub probe_rate: Option<f64>,
    /// logins (the default), views (signed-in page views), verify (forward-auth verifies) or
    /// get (plain GETs of --url)
    #[arg(long, value_enum, default_value_t = Mode::Logins)]
    pub mode: Mode,
    /// In verify mode: the gated address asked about (default: --url's origin + /)
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// In get mode: sign in once at this portcullis first and send its cookies with every GET
    /// (to measure an application gated by forward auth, through its proxy)
    #[arg(long, value_name = "URL")]
    pub sign_in_url: Option<String>,
    /// Allow a server that is not on this machine (127.0.0.0/8, ::1, localhost)
    #[arg(long)]
    pub i_own_this_server: bool,
    /// Speak HTTP/1.1 only, as a reverse proxy in front of portcullis does (default: HTTP/2
    /// when the server offers it, as browsers do)
    #[arg(long)]
    pub http1: bool,
}

/// How to check the server's certificate.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The platform's roots.
    System,
    /// Only these PEM certificates.
    Ca(Vec<u8>),
    /// Anything (testing only).
    Insecure,
}

/// How progress is shown on standard error while the test runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    None,
    /// One line a second.
    Lines,
    /// One line rewritten in place (a terminal).
    Terminal,
}

/// A load test to run.
pub struct Options {
    pub url: Url,
    pub username: String,
    pub password: SecretString,
    pub concurrency: usize,
    pub duration: Duration,
    pub trust: Trust,
    pub probe_rate: Option<f64>,
    pub mode: Mode,
    /// `--i-own-this-server`.
    pub allow_remote: bool,
    pub progress: Progress,
    /// `--http1`.
    pub http1: bool,
    /// `--target` (verify mode).
    pub target: Option<Url>,
    /// `--sign-in-url` (get mode).
    pub sign_in_url: Option<Url>,
}

/// Latency percentiles of one kind of request, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeReport {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The result; `--json` prints it as one object.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub concurrency: usize,
    pub duration_s: f64,
    /// The HTTP version the server answered with: "HTTP/2.0" or "HTTP/1.1".
    pub protocol: String,
    /// Successful sign-ins (in `views` and `verify` modes: the one sign-in per virtual user at
    /// setup; 0 in `get` mode).
    pub logins: u64,
    pub errors: u64,
    /// Sign-ins per second (`null` in `views` mode, where sign-ins are not measured).
    pub logins_per_sec: Option<f64>,
    /// Requests answered 200 in `views` (home pages), `verify` (verifies) and `get` modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub views: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub views_per_sec: Option<f64>,
    /// Latency of the measured request (POST /login, or GET / in `views` mode).
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Errors by HTTP status ("401", "429", "503", ...) or kind ("connect", "timeout",
    /// "request", "no_form", "wrong_redirect", "no_session_cookie", "sign_in",
    /// "captcha_required").
    pub errors_by_kind: BTreeMap<String, u64>,
    /// GET /healthz at `--probe-rate`, on its own connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_p99_ms: Option<f64>,
    /// CPU time this load generator used during the run (all its threads): on a machine it
    /// shares with the server, what it took away from the server.
    pub client_cpu_ms: f64,
}

/// Refuses anything but a loopback server unless the caller says they own it.
pub fn check_target(url: &Url, allow_remote: bool) -> anyhow::Result<()> {
    if !matches!(url.scheme(), "https" | "http") {
        bail!("--url must be an https:// (or http://) URL");
    }
    if allow_remote || is_loopback(url) {
        return Ok(());
    }
    bail!(
        "refusing to load-test {}: it is not on this machine (127.0.0.0/8, ::1, localhost). \
         Load-testing a server you do not own is an attack; if it is yours, add --i-own-this-server",
        url.host_str().unwrap_or("?")
    )
}

/// Whether the URL names this machine: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    })
}

/// The hidden inputs of the first form in `html` that posts to /login, values unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let form = html.find("action=\"/login\"").map_or(html, |i| &html[i..]);
    let form = form.find("</form>").map_or(form, |end| &form[..end]);
    let mut out = Vec::new();
    let mut rest = form;
    while let Some(start) = rest.find("<input") {
        let tag_and_more = &rest[start..];
        let end = tag_and_more.find('>').unwrap_or(tag_and_more.len());
        let tag = &tag_and_more[..end];
        if attribute(tag, "type").is_some_and(|t| t.eq_ignore_ascii_case("hidden")) {
            if let Some(name) = attribute(tag, "name") {
                out.push((unescape(name), unescape(attribute(tag, "value").unwrap_or(""))));
            }
        }
        rest = &tag_and_more[end..];
    }
    out
}

/// The double-quoted value of `name="..."` in a tag.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let marker = format!(" {name}=\"");
    let start = tag.find(&marker)? + marker.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Undoes the HTML escaping askama applies to attribute values.
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A histogram of latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5).
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let us = if quantile >= 1.0 { h.max() } else { h.value_at_quantile(quantile) };
    us as f64 / 1000.0
}

/// What one virtual user (or the probe) counted.
struct Tally {
    ok: u64,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally { ok: 0, latency: histogram(), errors: BTreeMap::new() }
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        let _ = self.latency.add(&other.latency);
        add_counts(&mut self.errors, &other.errors);
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency percentiles in milliseconds: p50, p90, p99, max.
    fn percentiles(&self) -> (f64, f64, f64, f64) {
        let h = &self.latency;
        (ms(h, 0.50), ms(h, 0.90), ms(h, 0.99), ms(h, 1.0))
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Live counters for the progress line.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "request".into()
    }
}

/// One HTTP client per virtual user: its own connection pool (one keep-alive connection
/// in practice), no redirects followed, cookies kept by hand in [`VirtualUser`].
fn client(trust: &Trust, http1: bool) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis-loadtest/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(8);
    match trust {
        Trust::System => {}
        Trust::Ca(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem).context("reading the --ca certificates")?;
            // A key or any other file parses as a bundle of none, and every request then fails
            // as an unknown issuer, which names the server instead of the file (review 148).
            if certs.is_empty() {
                bail!("--ca holds no PEM certificate (-----BEGIN CERTIFICATE-----): name the server's certificate or its CA");
            }
            b = b.tls_certs_only(certs);
        }
        Trust::Insecure => b = b.tls_danger_accept_invalid_certs(true),
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().context("cannot build the HTTP client")
}

/// A browser: one client, one cookie jar.
struct VirtualUser {
    client: reqwest::Client,
    jar: BTreeMap<String, String>,
    /// The `Retry-After` of the last refusal.
    retry_after: Option<u64>,
}

/// A failed step, named for the error breakdown.
type Failure = String;

/// The error kind of a sign-in refused for want of a captcha (HTTP 401 with the form's
/// demand for one): nothing was checked, and the run cannot solve it.
const CAPTCHA_REQUIRED: &str = "captcha_required";

fn contains(body: &[u8], text: &str) -> bool {
    body.windows(text.len()).any(|w| w == text.as_bytes())
}

/// Whether trying again may mend a failure of this kind: a 5xx (a full queue, a store away)
/// or the connection, not an answer about the sign-in or the request.
fn passing(kind: &str) -> bool {
    kind.starts_with('5') || matches!(kind, "connect" | "timeout" | "request")
}

/// Why the server refused a sign-in for good, as a line for the terminal; `None` for what
/// trying again may mend ([`passing`]).
fn refusal(kind: &str, username: &str, retry_after: Option<u64>) -> Option<String> {
    Some(match kind {
        "401" => format!("cannot sign in as {username:?} (HTTP 401): check the username and password"),
        CAPTCHA_REQUIRED => format!(
            "the server demands a captcha of {username:?} or of this address (captcha_after_failures), which a load \
             test cannot solve: run the server with --captcha-after-failures 1000 for the test, or wait out its \
             failure_window (`portcullis user unlock NAME` clears the username's count)"
        ),
        "429" => format!(
            "the server's quota refuses sign-ins from this address or as {username:?} for now (HTTP 429{}): run the \
             server with --login-quota-per-ip off --login-quota-per-user off for the test",
            retry_after.map(|s| format!(", Retry-After {s} s")).unwrap_or_default()
        ),
        "403" => format!("cannot sign in as {username:?} (HTTP 403: the form's CSRF check refused it)"),
        "no_form" => "the sign-in page has no form to fill in (is --url a portcullis server?)".to_string(),
        "wrong_redirect" | "no_session_cookie" => {
            format!("signing in as {username:?} did not end in a session ({kind}): is --url a portcullis server?")
        }
        _ if passing(kind) => return None,
        _ => format!("cannot sign in as {username:?} (HTTP {kind})"),
    })
}

/// Why the forward-auth endpoint refused a verify of `target` for good (see [`refusal`]).
fn verify_refusal(kind: &str, target: &str) -> Option<String> {
    Some(match kind {
        "400" => format!(
            "the forward-auth endpoint refused --target {target} (HTTP 400): its host must be one portcullis gates \
             (public_url's host, or one under cookie_domain; an IP address is none): give --target https://HOST/PATH"
        ),
        "403" => format!(
            "the forward-auth endpoint answered 403 for --target {target}: this machine is not in the server's \
             trusted_proxies, or its rules deny the user there"
        ),
        "401" => format!("the forward-auth endpoint answered 401 for --target {target}: the session was not accepted"),
        _ if passing(kind) => return None,
        _ => format!("the forward-auth endpoint answered HTTP {kind} for --target {target}"),
    })
}

/// What a virtual user does once before the clock starts ([`VirtualUser::before_the_clock`]).
#[derive(Clone, Copy)]
enum Step<'a> {
    /// Sign in at the form.
    SignIn { form_url: &'a Url, username: &'a str, password: &'a SecretString },
    /// Ask the forward-auth endpoint `url` about `target`.
    Verify { url: &'a Url, target: &'a str },
}

/// The headers nginx's `auth_request` sends about `target`.
fn verify_headers(target: &str) -> [(&'static str, &str); 2] {
    [("x-original-url", target), ("x-original-method", "GET")]
}

/// How long to wait after a failure: the server's `Retry-After` for 429 and 503, capped.
fn pause_after(kind: &str, retry_after: Option<u64>) -> Duration {
    match (kind, retry_after) {
        ("429" | "503", Some(secs)) => Duration::from_secs(secs.min(1)),
        ("429" | "503", None) => Duration::from_millis(100),
        _ => Duration::from_millis(10),
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

impl VirtualUser {
    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, url);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rb = rb.header(reqwest::header::COOKIE, cookies.join("; "));
        }
        rb
    }

    /// Keeps the cookies a response sets (and forgets those it clears). Returns the names
    /// of cookies it set to a value.
    fn keep_cookies(&mut self, resp: &reqwest::Response) -> Vec<String> {
        let mut set = Vec::new();
        for header in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            let Some((name, rest)) = text.split_once('=') else { continue };
            let value = rest.split(';').next().unwrap_or("").trim();
            let cleared = value.is_empty() || text.to_ascii_lowercase().contains("max-age=0");
            if cleared {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_string(), value.to_string());
                set.push(name.trim().to_string());
            }
        }
        set
    }

    /// GET the form, POST it; `Ok(latency of the POST)` on a 303 to the target with a new
    /// session cookie.
    async fn sign_in(&mut self, form_url: &Url, username: &str, password: &SecretString) -> Result<Duration, Failure> {
        let resp = self.request(Method::GET, form_url.clone()).send().await.map_err(|e| error_kind(&e))?;
        self.keep_cookies(&resp);
        let status = resp.status();
        self.retry_after = retry_after(&resp);
        let page = resp.text().await.map_err(|e| error_kind(&e))?;
        if status != StatusCode::OK {
            return Err(status.as_u16().to_string());
        }
        let hidden = hidden_fields(&page);
        if !hidden.iter().any(|(k, _)| k == "csrf") {
            return Err("no_form".into());
        }
        let target = hidden.iter().find(|(k, _)| k == "next").map_or("/", |(_, v)| v.as_str());
        let target = form_url.join(target).map_err(|_| Failure::from("no_form"))?;
        let mut fields: Vec<(&str, &str)> = vec![("username", username), ("password", password.expose_secret())];
        fields.extend(hidden.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let post_url = form_url.join("/login").map_err(|_| Failure::from("no_form"))?;

        let started = Instant::now();
        let resp = self.request(Method::POST, post_url).form(&fields).send().await.map_err(|e| error_kind(&e))?;
        let set = self.keep_cookies(&resp);
        let status = resp.status();
        self.retry_after = retry_after(&resp);
        let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.bytes().await.map_err(|e| error_kind(&e))?;
        let latency = started.elapsed();
        if status == StatusCode::UNAUTHORIZED && contains(&body, crate::routes::login::CAPTCHA_REQUIRED) {
            // Nothing was checked: not a wrong password, and no retry will do without a picture.
            return Err(CAPTCHA_REQUIRED.into());
        }
        if status != StatusCode::SEE_OTHER {
            return Err(status.as_u16().to_string());
        }
        if location.and_then(|l| form_url.join(&l).ok()) != Some(target) {
            return Err("wrong_redirect".into());
        }
        if set.is_empty() {
            return Err("no_session_cookie".into());
        }
        Ok(latency)
    }

    /// Does `step` once before the clock starts, trying again (20 times, 100 ms apart) after
    /// what may pass, such as a 503. Returns `None` once it succeeded, or the kind of the last
    /// failure when every try failed so.
    ///
    /// # Errors
    /// When the server refuses for good ([`refusal`], [`verify_refusal`]: the message says
    /// why, and what to do).
    async fn before_the_clock(&mut self, step: Step<'_>) -> anyhow::Result<Option<Failure>> {
        let mut last = None;
        for _ in 0..20 {
            let result = match step {
                Step::SignIn { form_url, username, password } => self.sign_in(form_url, username, password).await,
                Step::Verify { url, target } => self.get_with(url, &verify_headers(target)).await,
            };
            let Err(kind) = result else { return Ok(None) };
            let why = match step {
                Step::SignIn { username, .. } => refusal(&kind, username, self.retry_after),
                Step::Verify { target, .. } => verify_refusal(&kind, target),
            };
            if let Some(why) = why {
                bail!(why);
            }
            last = Some(kind);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(last)
    }

    /// GET `url` (with `headers`); `Ok(latency)` on a 200.
    async fn view(&mut self, url: &Url) -> Result<Duration, Failure> {
        self.get_with(url, &[]).await
    }

    async fn get_with(&mut self, url: &Url, headers: &[(&str, &str)]) -> Result<Duration, Failure> {
        let started = Instant::now();
        let mut rb = self.request(Method::GET, url.clone());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.map_err(|e| error_kind(&e))?;
        self.keep_cookies(&resp);
        let status = resp.status();
        self.retry_after = retry_after(&resp);
        let _ = resp.bytes().await.map_err(|e| error_kind(&e))?;
        if status != StatusCode::OK {
            return Err(status.as_u16().to_string());
        }
        Ok(started.elapsed())
    }
}

/// Runs the load test and returns what it measured.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    check_target(&opts.url, opts.allow_remote)?;
    if let Some(url) = &opts.sign_in_url {
        check_target(url, opts.allow_remote)?;
        // The other modes sign in at --url (found by a review: it was ignored without a word).
        if opts.mode != Mode::Get {
            bail!("--sign-in-url is for --mode get; the other modes sign in at --url");
        }
    }
    // Each virtual user holds a connection (and the client a descriptor): far more than any
    // server's per-address cap only measures refusals (review 133: 100000 accepted, then a
    // timeout that blamed the server).
    if !(1..=MAX_CONCURRENCY).contains(&opts.concurrency) {
        bail!("--concurrency must be between 1 and {MAX_CONCURRENCY}");
    }
    if opts.duration.is_zero() || opts.duration > MAX_DURATION {
        bail!("--duration must be more than 0s and at most 1d");
    }
    if let Some(r) = opts.probe_rate {
        if !(r > 0.0 && r <= 100_000.0) {
            bail!("--probe-rate must be more than 0 and at most 100000 per second");
        }
    }
    crate::tls::install_crypto_provider();
    let form_url = if opts.url.path() == "/" && opts.url.query().is_none() {
        opts.url.join("/login").context("bad --url")?
    } else {
        opts.url.clone()
    };
    let home_url = opts.url.join("/").context("bad --url")?;
    let verify_url = opts.url.join("/api/authz/auth-request").context("bad --url")?;
    let target = Arc::new(opts.target.clone().unwrap_or_else(|| home_url.clone()).to_string());
    let get_url = opts.url.clone();
    let health_url = opts.url.join("/healthz").context("bad --url")?;

    // Open every connection (TLS handshake included) before the clock starts.
    let mut users = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency {
        users.push(VirtualUser { client: client(&opts.trust, opts.http1)?, jar: BTreeMap::new(), retry_after: None });
    }
    let mut protocol = String::new();
    for user in &users {
        let r =
            user.client.get(health_url.clone()).send().await.with_context(|| format!("cannot reach {health_url}"))?;
        protocol = format!("{:?}", r.version());
        let _ = r.bytes().await;
    }

    // Views: every virtual user signs in once (not timed). Logins: one sign-in before the
    // clock, so that a wrong password or a server that demands a captcha is said at once, not
    // after a run of refusals that each left a failed-login record (found by a review).
    let mut setup = Tally::new();
    let signs_in_once = matches!(opts.mode, Mode::Views | Mode::Verify) || opts.sign_in_url.is_some();
    let form_url = match (&opts.sign_in_url, opts.mode) {
        (Some(url), Mode::Get) if url.path() == "/" && url.query().is_none() => {
            url.join("/login").context("bad --sign-in-url")?
        }
        (Some(url), Mode::Get) => url.clone(),
        _ => form_url,
    };
    let unavailable = |kind: Failure| {
        anyhow!("the sign-in before the run failed 20 times in 2 s (the last: {kind}): is the server overloaded?")
    };
    let sign_in = Step::SignIn { form_url: &form_url, username: &opts.username, password: &opts.password };
    if signs_in_once {
        for user in &mut users {
            match user.before_the_clock(sign_in).await? {
                None => setup.ok += 1,
                // Not one signed in: said now, not after a run of nothing (found by a review:
                // 8 virtual users took 17 s to fail one by one).
                Some(kind) if setup.ok == 0 => return Err(unavailable(kind)),
                Some(_) => setup.error("sign_in".into()),
            }
        }
    } else if opts.mode == Mode::Logins {
        if let Some(kind) = users[0].before_the_clock(sign_in).await? {
            return Err(unavailable(kind));
        }
        users[0].jar.clear();
    }
    // Verify: one verify before the clock, so a target the endpoint refuses (an IP address,
    // say: the default's origin) is said at once rather than as a run of 400s (found by a
    // review).
    if opts.mode == Mode::Verify {
        if let Some(user) = users.iter_mut().find(|u| !u.jar.is_empty()) {
            if let Some(kind) = user.before_the_clock(Step::Verify { url: &verify_url, target: &target }).await? {
                bail!("the verify before the run failed 20 times in 2 s (the last: {kind})");
            }
        }
    }

    let probe_client = match opts.probe_rate {
        Some(_) => {
            let c = client(&opts.trust, opts.http1)?;
            let _ = c.get(health_url.clone()).send().await.with_context(|| format!("cannot reach {health_url}"))?;
            Some(c)
        }
        None => None,
    };

    let live = Arc::new(Live::default());
    let start = Instant::now();
    let cpu_at_start = process_cpu();
    let deadline = start + opts.duration;
    let password = Arc::new(opts.password);
    let username = Arc::new(opts.username);
    let mut tasks = Vec::with_capacity(users.len());
    for mut user in users.into_iter().filter(|u| !signs_in_once || !u.jar.is_empty()) {
        let live = Arc::clone(&live);
        let (form_url, home_url) = (form_url.clone(), home_url.clone());
        let (verify_url, get_url, target) = (verify_url.clone(), get_url.clone(), Arc::clone(&target));
        let (password, username) = (Arc::clone(&password), Arc::clone(&username));
        let mode = opts.mode;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let step = async {
                    match mode {
                        Mode::Logins => {
                            let r = user.sign_in(&form_url, &username, &password).await;
                            // Forget the session, as a closed browser would (see the module doc).
                            user.jar.clear();
                            r
                        }
                        Mode::Views => user.view(&home_url).await,
                        Mode::Verify => user.get_with(&verify_url, &verify_headers(&target)).await,
                        Mode::Get => user.view(&get_url).await,
                    }
                };
                match tokio::time::timeout_at(deadline, step).await {
                    Err(_) => break,
                    Ok(Ok(latency)) => {
                        tally.ok += 1;
                        record(&mut tally.latency, latency);
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(kind)) => {
                        let pause = pause_after(&kind, user.retry_after.take());
                        tally.error(kind);
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
                    }
                }
            }
            tally
        }));
    }

    let probe = probe_client.zip(opts.probe_rate).map(|(c, rate)| tokio::spawn(probe(c, health_url, rate, deadline)));
    let done = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(opts.progress, opts.mode, Arc::clone(&live), start, opts.duration, Arc::clone(&done));

    let mut total = Tally::new();
    for t in tasks {
        total.merge(t.await.context("a virtual user failed")?);
    }
    let elapsed = start.elapsed().max(opts.duration).as_secs_f64();
    let client_cpu = process_cpu().saturating_sub(cpu_at_start);
    let probe = match probe {
        Some(p) => Some(p.await.context("the probe failed")?),
        None => None,
    };
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }

    let mut errors_by_kind = setup.errors.clone();
    add_counts(&mut errors_by_kind, &total.errors);
    let errors = errors_by_kind.values().sum();
    let (p50_ms, p90_ms, p99_ms, max_ms) = total.percentiles();
    let per_sec = |n: u64| ((n as f64 / elapsed) * 100.0).round() / 100.0;
    let (logins, logins_per_sec, views, views_per_sec) = match opts.mode {
        Mode::Logins => (total.ok, Some(per_sec(total.ok)), None, None),
        Mode::Views | Mode::Verify => (setup.ok, None, Some(total.ok), Some(per_sec(total.ok))),
        Mode::Get => (setup.ok, None, Some(total.ok), Some(per_sec(total.ok))),
    };
    Ok(Report {
        mode: opts.mode,
        concurrency: opts.concurrency,
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        protocol,
        logins,
        errors,
        logins_per_sec,
        views,
        views_per_sec,
        p50_ms,
        p90_ms,
        p99_ms,
        max_ms,
        errors_by_kind,
        probe_p50_ms: probe.as_ref().map(|p| p.p50_ms),
        probe_p99_ms: probe.as_ref().map(|p| p.p99_ms),
        probe,
        client_cpu_ms: (client_cpu.as_secs_f64() * 10_000.0).round() / 10.0,
    })
}

/// CPU time of this process so far (every thread, user and system).
fn process_cpu() -> Duration {
    cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time on `clock` (a CPU-time clock: this process's or this thread's).
pub(crate) fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer; on failure it is
    // left at zero, which only makes the CPU figure unavailable.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// GET /healthz every 1/rate seconds until `deadline`, each on its own task so a slow
/// answer does not delay the next probe; latency counts from when the probe was due.
async fn probe(client: reqwest::Client, url: Url, rate: f64, deadline: Instant) -> ProbeReport {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    let mut sent = 0;
    loop {
        let due = ticker.tick().await;
        if due >= deadline {
            break;
        }
        sent += 1;
        let (client, url) = (client.clone(), url.clone());
        inflight.push(tokio::spawn(async move {
            match client.get(url).send().await {
                Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
                    Ok(_) => Ok(due.elapsed()),
                    Err(e) => Err(error_kind(&e)),
                },
                Ok(resp) => Err(resp.status().as_u16().to_string()),
                Err(e) => Err(error_kind(&e)),
            }
        }));
    }
    let mut t = Tally::new();
    for task in inflight {
        match task.await {
            Ok(Ok(latency)) => {
                t.ok += 1;
                record(&mut t.latency, latency);
            }
            Ok(Err(kind)) => t.error(kind),
            Err(_) => {} // a probe task that panicked: nothing to count
        }
    }
    let (p50_ms, p90_ms, p99_ms, max_ms) = t.percentiles();
    ProbeReport { sent, ok: t.ok, errors: t.error_count(), p50_ms, p90_ms, p99_ms, max_ms }
}

fn spawn_progress(
    progress: Progress,
    mode: Mode,
    live: Arc<Live>,
    start: Instant,
    duration: Duration,
    done: Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if progress == Progress::None {
        return None;
    }
    let noun = match mode {
        Mode::Logins => "logins",
        Mode::Views => "views",
        Mode::Verify => "verifies",
        Mode::Get => "requests",
    };
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let finished = done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().min(duration.as_secs_f64()).max(0.001);
            let ok = live.ok.load(Ordering::Relaxed);
            let line = format!(
                "loadtest: {secs:.0}s/{:.0}s  {noun} {ok} ({:.1}/s)  errors {}",
                duration.as_secs_f64(),
                ok as f64 / secs,
                live.errors.load(Ordering::Relaxed)
            );
            let mut err = std::io::stderr().lock();
            let _ = match progress {
                Progress::Terminal if finished => writeln!(err, "\r\x1b[K{line}"),
                Progress::Terminal => write!(err, "\r\x1b[K{line}"),
                _ => writeln!(err, "{line}"),
            };
            let _ = err.flush();
            if finished || secs >= duration.as_secs_f64() {
                if progress == Progress::Terminal && !finished {
                    let _ = writeln!(err);
                }
                return;
            }
        }
    }))
}

/// Reads the password: one line from standard input, or a prompt without echo. What was read
/// is wiped on every path, a failed read included.
fn read_password(from_stdin: bool) -> anyhow::Result<SecretString> {
    let mut line = zeroize::Zeroizing::new(String::new());
    if from_stdin {
        crate::files::read_bounded_line(std::io::stdin().lock(), &mut line)
            .context("cannot read the password from standard input")?;
    } else if std::io::stdin().is_terminal() {
        *line = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    } else {
        bail!("no terminal to prompt for the password; use --password-stdin");
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
    if trimmed.is_empty() {
        bail!("no password given");
    }
    Ok(SecretString::from(trimmed))
}

/// `portcullis loadtest`: parse the flags, run, print.
pub async fn main(args: LoadtestArgs) -> anyhow::Result<()> {
    let url = Url::parse(&args.url).with_context(|| format!("--url {:?} is not a URL", args.url))?;
    // Refuse before asking for a password.
    check_target(&url, args.i_own_this_server)?;
    let trust = match (&args.ca, args.insecure) {
        (Some(path), _) => Trust::Ca(
            crate::files::read_small(path, crate::files::MAX_PEM_BYTES)
                .with_context(|| format!("cannot read --ca {}", path.display()))?,
        ),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::System,
    };
    // `get` without `--sign-in-url` only GETs: no account, no password asked for.
    let (username, password) = match (args.mode, &args.sign_in_url, args.username) {
        (Mode::Get, None, _) => (String::new(), SecretString::from(String::new())),
        (_, _, Some(name)) => (name, read_password(args.password_stdin)?),
        (_, _, None) => bail!("--username is needed: every mode signs in but get without --sign-in-url"),
    };
    let progress = if std::io::stderr().is_terminal() { Progress::Terminal } else { Progress::Lines };
    let report = run(Options {
        url,
        username,
        password,
        concurrency: args.concurrency,
        duration: args.duration,
        trust,
        probe_rate: args.probe_rate,
        mode: args.mode,
        allow_remote: args.i_own_this_server,
        progress,
        http1: args.http1,
        target: match &args.target {
            Some(t) => Some(Url::parse(t).with_context(|| format!("--target {t:?} is not a URL"))?),
            None => None,
        },
        sign_in_url: match &args.sign_in_url {
            Some(u) => Some(Url::parse(u).with_context(|| format!("--sign-in-url {u:?} is not a URL"))?),
            None => None,
        },
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report).context("cannot encode the report")?);
    } else {
        print!("{}", human(&report));
    }
    let succeeded = report.views.unwrap_or(report.logins);
    if succeeded == 0 {
        bail!("nothing succeeded ({} errors: {:?}){}", report.errors, report.errors_by_kind, redirect_hint(&report));
    }
    Ok(())
}

/// What a run answered only with redirects probably did wrong (review 133: a bare "HTTP 308").
fn redirect_hint(report: &Report) -> &'static str {
    let kinds = &report.errors_by_kind;
    if kinds.keys().any(|k| k.contains("308") || k.contains("301")) {
        ": --url answered with a redirect to HTTPS; give the https:// address"
    } else if kinds.keys().any(|k| k.contains("303") || k.contains("302")) {
        ": --url answered with a redirect (to sign in?); with --mode get, give --sign-in-url"
    } else {
        ""
    }
}

/// The most virtual users one run may have.
pub const MAX_CONCURRENCY: usize = 10_000;

/// The longest `--duration`: a day of measuring is far past any use, and far shorter spans
/// than the settings' durations allow would overflow the clock's arithmetic (a panic, not an
/// error).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The report as a few lines of text.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let what = match r.mode {
        Mode::Logins => format!(
            "logins      {} in {:.1}s = {:.1}/s  (concurrency {}, {})\n",
            r.logins,
            r.duration_s,
            r.logins_per_sec.unwrap_or(0.0),
            r.concurrency,
            r.protocol
        ),
        Mode::Views | Mode::Verify | Mode::Get => format!(
            "{}  {} in {:.1}s = {:.1}/s  (concurrency {}, {})\n",
            match r.mode {
                Mode::Verify => "verifies  ",
                Mode::Get => "requests  ",
                _ => "page views",
            },
            r.views.unwrap_or(0),
            r.duration_s,
            r.views_per_sec.unwrap_or(0.0),
            r.concurrency,
            r.protocol
        ),
    };
    s.push_str(&what);
    s.push_str(&format!(
        "latency     p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
    ));
    s.push_str(&format!("errors      {}", r.errors));
    if !r.errors_by_kind.is_empty() {
        let parts: Vec<String> = r.errors_by_kind.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        s.push_str(&format!("  ({})", parts.join(", ")));
    }
    s.push('\n');
    s.push_str(&format!("generator   {:.0} ms of CPU\n", r.client_cpu_ms));
    if let Some(p) = &r.probe {
        s.push_str(&format!(
            "/healthz    {} sent, {} ok  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
            p.sent, p.ok, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_pass_without_the_flag() {
        for ok in ["https://127.0.0.1:4000", "https://127.8.9.10/", "https://[::1]:4000", "https://LOCALHOST:1"] {
            assert!(check_target(&Url::parse(ok).unwrap(), false).is_ok(), "{ok}");
        }
        for bad in ["https://192.0.2.1", "https://example.com", "https://[2001:db8::1]", "https://localhost.evil.com"] {
            let url = Url::parse(bad).unwrap();
            assert!(check_target(&url, false).is_err(), "{bad}");
            assert!(check_target(&url, true).is_ok(), "{bad}");
        }
        assert!(check_target(&Url::parse("ftp://127.0.0.1").unwrap(), true).is_err());
    }

    #[test]
    fn hidden_fields_are_read_and_unescaped() {
        let page = r#"<form method="post" action="/logout"><input type="hidden" name="csrf" value="other"></form>
<form method="post" action="/login" autocomplete="on">
  <input type="hidden" name="csrf" value="abc.def_1">
  <input type="hidden" name="next" value="/a?b=c&amp;d=&#x27;e&#x27;">
  <input id="username" name="username" type="text" value="">
</form>"#;
        assert_eq!(
            hidden_fields(page),
            vec![("csrf".to_string(), "abc.def_1".to_string()), ("next".to_string(), "/a?b=c&d='e'".to_string())]
        );
    }

    #[test]
    fn refusals_are_retried_after_the_servers_retry_after_capped_at_a_second() {
        assert_eq!(pause_after("503", Some(1)), Duration::from_secs(1));
        assert_eq!(pause_after("429", Some(600)), Duration::from_secs(1));
        assert_eq!(pause_after("503", None), Duration::from_millis(100));
        assert_eq!(pause_after("connect", None), Duration::from_millis(10));
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us * 10));
        }
        assert!((ms(&h, 0.5) - 5.0).abs() < 0.01);
        assert!((ms(&h, 1.0) - 10.0).abs() < 0.02);
        assert_eq!(ms(&histogram(), 0.99), 0.0);
    }
}
