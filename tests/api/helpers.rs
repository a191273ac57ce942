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

/// Starts a server on an existing directory (for restart tests).
pub async fn spawn_in(dir: tempfile::TempDir, settings: Settings) -> TestApp {
    let app = Application::build(settings.clone()).await.expect("server builds");
    let admin_password = app.initial_admin_password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
    let addr = app.https_addr();
    let http_addr = app.http_addr().unwrap_or(addr);
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
