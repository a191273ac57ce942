//! `spawn_app()`: the real server on 127.0.0.1:0 (HTTPS and the HTTP redirector) with a
//! temporary data, certificate and log directory, and a browser-like client that trusts the
//! generated certificate, keeps cookies and does not follow redirects.

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis::app::{AppState, Application};
use portcullis::config::{HashParams, Settings};
use portcullis::password::Password;
use tokio::sync::oneshot;

/// A password that passes the policy.
pub const GOOD_PASSWORD: &str = "correct plum tractor velvet";

pub struct TestApp {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The metrics listener, when `metrics_addr` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub state: Arc<AppState>,
    pub admin_password: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings for a test: temporary directories, port 0, argon2 parameters small enough for
/// a debug build.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    Settings {
        https_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: dir.join("data"),
        cert_dir: dir.join("certs"),
        log_dir: dir.join("logs"),
        argon2: HashParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    configure(&mut settings);
    spawn_in(dir, settings).await
}

/// Puts `from_data_dir`'s `factor.key` into `to_data_dir` (made, private, if need be), as an
/// operator does for every instance on one database before its first start (README,
/// "Several instances on PostgreSQL").
pub fn share_factor_key(from_data_dir: &std::path::Path, to_data_dir: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(to_data_dir).unwrap();
    std::fs::copy(from_data_dir.join("factor.key"), to_data_dir.join("factor.key")).unwrap();
}

/// Starts another instance beside `first` (its own directory, `first`'s factor key),
/// configured by `configure` (the database URL, certificates … are the caller's to set).
pub async fn spawn_beside(first: &TestApp, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    share_factor_key(&first.settings.data_dir, &settings.data_dir);
    configure(&mut settings);
    spawn_in(dir, settings).await
}

/// `Application::build(settings)`, or why it failed (the whole chain, one line). A restart in
/// the same process: a connection task of the stopped server may still hold the sled store
/// for a moment after `stop` (a new process, as in production, never meets this), so a build
/// refused for that is tried again, a bounded while, rather than fail on a loaded machine.
pub async fn build_when_released(settings: &Settings) -> Result<Application, String> {
    let mut tries = 0;
    loop {
        match Application::build(settings.clone()).await {
            Err(e) if tries < 100 && format!("{e:#}").contains("in use by another process") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other.map_err(|e| format!("{e:#}")),
        }
    }
}

/// Starts a server on an existing directory (for restart tests).
pub async fn spawn_in(dir: tempfile::TempDir, settings: Settings) -> TestApp {
    let app = build_when_released(&settings).await.unwrap_or_else(|e| panic!("server builds: {e}"));
    let admin_password = app.initial_admin_password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
    let addr = app.https_addr();
    let http_addr = app.http_addr().unwrap_or(addr);
    let metrics_addr = app.metrics_addr();
    let state = app.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let base = format!("https://{addr}");
    let client = browser(&settings.cert_dir);
    TestApp {
        addr,
        http_addr,
        metrics_addr,
        base,
        client,
        dir,
        settings,
        state,
        admin_password,
        stop: Some(stop),
        handle: Some(handle),
    }
}

/// A client like a browser: trusts our certificate, keeps cookies, never follows redirects.
pub fn browser(cert_dir: &std::path::Path) -> reqwest::Client {
    browser_builder(cert_dir).build().unwrap()
}

pub fn browser_builder(cert_dir: &std::path::Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(cert_dir.join("cert.pem")).unwrap();
    let cert = reqwest::Certificate::from_pem(&pem).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("portcullis-tests/1.0")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A second browser with its own cookie jar.
    pub fn new_browser(&self) -> reqwest::Client {
        browser(&self.settings.cert_dir)
    }

    /// The valid sessions of the user stored under `key`, newest first (as `/account` lists them).
    /// The user `key`'s credential generation now (what a session of theirs would be in).
    pub async fn generation(&self, key: &str) -> u64 {
        self.state.store.users.get(key).await.unwrap().expect("a user of that name").password_changed_at
    }

    pub async fn sessions_of(&self, key: &str) -> Vec<portcullis::store::StoredSession> {
        let user = self.state.store.users.get(key).await.unwrap().expect("a user of that name");
        self.state.sessions.list(&user).await.unwrap()
    }

    pub async fn add_user(&self, name: &str, password: &str, admin: bool) {
        self.state.users.add(name, Password::new(password), admin, "test").await.unwrap();
    }

    /// GET /login with `client` and return the CSRF token from the form.
    pub async fn login_csrf(&self, client: &reqwest::Client) -> String {
        let body = client.get(self.url("/login")).send().await.unwrap().text().await.unwrap();
        hidden_field(&body, "csrf").expect("login form has a csrf field")
    }

    /// The whole sign-in as a browser does it: GET the form, POST it.
    pub async fn login_with(&self, client: &reqwest::Client, username: &str, password: &str) -> reqwest::Response {
        let csrf = self.login_csrf(client).await;
        client
            .post(self.url("/login"))
            .form(&[("username", username), ("password", password), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.login_with(&self.client, username, password).await
    }

    /// The CSRF token of the signed-in home page.
    pub async fn home_csrf(&self, client: &reqwest::Client) -> String {
        let body = client.get(self.url("/")).send().await.unwrap().text().await.unwrap();
        hidden_field(&body, "csrf").expect("home page has a csrf field")
    }

    pub async fn logout_with(&self, client: &reqwest::Client) -> reqwest::Response {
        let csrf = self.home_csrf(client).await;
        client.post(self.url("/logout")).form(&[("csrf", csrf.as_str())]).send().await.unwrap()
    }

    /// Every JSON line the server wrote to its auth log.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.settings.log_dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
            }
        }
        out
    }

    /// Failed-login records in the store, newest first.
    pub async fn records(&self, query: portcullis::store::FailureQuery) -> Vec<portcullis::store::FailureRecord> {
        self.state.audit.failures(&query).await.unwrap().into_iter().map(|(_, r)| r).collect()
    }

    /// Everything the server wrote to its log directory, as text.
    pub fn log_text(&self) -> String {
        std::fs::read_dir(&self.settings.log_dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }

    /// Graceful shutdown; returns the directory so a test can start again on it.
    pub async fn stop(mut self) -> (tempfile::TempDir, Settings) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
        // Let the last handles on the store go before someone reopens it.
        let TestApp { dir, settings, state, client, .. } = self;
        drop(client);
        drop(state);
        (dir, settings)
    }
}

/// A free port on 127.0.0.1 (taken and let go: the server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The value of `<input type="hidden" name="NAME" value="...">` in a page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

/// The `Set-Cookie` headers of a response.
pub fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

/// The value a `Set-Cookie` header gives the named cookie.
pub fn cookie_value(resp: &reqwest::Response, name: &str) -> Option<String> {
    set_cookies(resp)
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap_or("").to_string()))
}

/// A visitor whose cookies the test manages by hand and who can claim any client address
/// through X-Forwarded-For (believed only when the server trusts 127.0.0.1 as a proxy).
pub struct Visitor<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
    pub ip: Option<String>,
    pub user_agent: String,
}

impl<'a> Visitor<'a> {
    pub fn new(app: &'a TestApp, ip: Option<&str>) -> Self {
        let client = browser_builder(&app.settings.cert_dir).cookie_store(false).build().unwrap();
        Visitor {
            app,
            client,
            cookies: Default::default(),
            ip: ip.map(str::to_string),
            user_agent: "visitor/1.0".into(),
        }
    }

    /// The cookies this visitor holds, as a `Cookie` header's value.
    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, self.app.url(path)).header("user-agent", &self.user_agent);
        if let Some(ip) = &self.ip {
            rb = rb.header("x-forwarded-for", ip);
        }
        if !self.cookies.is_empty() {
            rb = rb.header("cookie", self.cookie_header());
        }
        rb
    }

    fn keep_cookies(&mut self, resp: &reqwest::Response) {
        for c in set_cookies(resp) {
            let Some((name, rest)) = c.split_once('=') else { continue };
            let value = rest.split(';').next().unwrap_or("");
            if value.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// POSTs `fields` as a form to `path`; returns the status (cookies kept).
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> reqwest::StatusCode {
        let resp = self.request(reqwest::Method::POST, path).form(fields).send().await.unwrap();
        self.keep_cookies(&resp);
        resp.status()
    }

    /// POSTs `fields` as a form to `path`; returns the response (cookies kept).
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let resp = self.request(reqwest::Method::POST, path).form(fields).send().await.unwrap();
        self.keep_cookies(&resp);
        resp
    }

    /// POSTs `fields` as a form to `path` with this visitor's cookies, keeping none it is sent
    /// (so several can be in flight at once).
    pub async fn post_form_as_is(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.request(reqwest::Method::POST, path).form(fields).send().await.unwrap()
    }

    pub async fn get(&mut self, path: &str) -> (reqwest::StatusCode, String) {
        let resp = self.request(reqwest::Method::GET, path).send().await.unwrap();
        self.keep_cookies(&resp);
        (resp.status(), resp.text().await.unwrap())
    }

    /// POSTs the login form as the page asked for it; returns the response (cookies kept).
    pub async fn submit(
        &mut self,
        page: &str,
        username: &str,
        password: &str,
        captcha: Option<&str>,
    ) -> reqwest::Response {
        let csrf = hidden_field(page, "csrf").unwrap_or_default();
        let mut fields = vec![("username", username), ("password", password), ("csrf", csrf.as_str())];
        if let Some(c) = captcha {
            fields.push(("captcha", c));
        }
        let resp = self.request(reqwest::Method::POST, "/login").form(&fields).send().await.unwrap();
        self.keep_cookies(&resp);
        resp
    }

    /// GET the form, then POST it.
    pub async fn attempt(
        &mut self,
        username: &str,
        password: &str,
        captcha: Option<&str>,
    ) -> (reqwest::StatusCode, String) {
        let (_, page) = self.get("/login").await;
        let resp = self.submit(&page, username, password, captcha).await;
        (resp.status(), resp.text().await.unwrap())
    }

    /// The answer to this visitor's open captcha (a test-only hook, absent in release builds).
    pub fn captcha_answer(&self) -> Option<String> {
        let pre = self.cookies.get("__Host-portcullis-pre")?;
        self.app.state.captchas.answer_for_tests(pre)
    }

    /// The answer to this visitor's pending sign-in's captcha (the second step past the
    /// threshold; a test-only hook, absent in release builds).
    pub fn second_step_captcha_answer(&self) -> Option<String> {
        let token = portcullis::session::SessionToken::parse(self.cookies.get("__Host-portcullis-mfa")?)?;
        self.app.state.captchas.answer_for_tests(&portcullis::sign_in::pending_captcha_key(&token.hash()))
    }

    pub fn has_session(&self) -> bool {
        self.cookies.contains_key("__Host-portcullis")
    }
}

/// Whether a page shows a captcha challenge.
pub fn shows_captcha(page: &str) -> bool {
    page.contains("name=\"captcha\"") && page.contains("data:image/png;base64,")
}

/// Whether this test runs as root, which it needs `for_what` (to give directories to another
/// user, or run commands as one); if not, it says it skips, and fails under
/// `PORTCULLIS_REQUIRE_ALL` (`.ci/run` runs as root).
pub fn root_or_skip(for_what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var_os(crate::pg::REQUIRE_ALL).is_none(), "this test needs root under .ci/run: {for_what}");
    eprintln!("skipped: needs root, {for_what}");
    false
}

/// A check the pool takes most of a second over (64 MiB, 24 passes: the parameters are read
/// from the hash checked), matching no password: what a flood keeps the pool busy with.
pub const SLOW_CHECK: &str =
    "$argon2id$v=19$m=65536,t=24,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// One [`SLOW_CHECK`] on `pool`, waiting in `lane`.
pub fn slow_check(
    pool: &portcullis::password::HashPool,
    lane: portcullis::password::Lane,
) -> tokio::task::JoinHandle<Result<portcullis::password::Verified, portcullis::password::PoolError>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.verify(Password::new("guess"), Some(SLOW_CHECK.into()), lane).await })
}

/// Waits until `done` says so of `pool`, checking every 5 ms.
pub async fn until(pool: &portcullis::password::HashPool, done: impl Fn(&portcullis::password::HashPool) -> bool) {
    while !done(pool) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Strangers' slow checks holding a pool of one worker: one running, and its open queue full.
pub async fn flood_one_worker(
    pool: &portcullis::password::HashPool,
) -> Vec<tokio::task::JoinHandle<Result<portcullis::password::Verified, portcullis::password::PoolError>>> {
    use portcullis::password::Lane;
    // Idle first: a job still running from the start would pass for the first check.
    until(pool, |p| p.waiting() == 0).await;
    let mut flood = vec![slow_check(pool, Lane::Open)];
    until(pool, |p| p.waiting() == 1 && p.queued(Lane::Open) == 0).await;
    while pool.has_room(Lane::Open) {
        flood.push(slow_check(pool, Lane::Open));
        until(pool, |p| p.waiting() == flood.len()).await;
    }
    flood
}
