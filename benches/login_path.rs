//! Everything a request costs except the password hash: the login form, a whole sign-in
//! (form, CSRF, quotas, session, audit line, redirect) with argon2 at its smallest
//! (8 KiB, t=1), a signed-in home page and /healthz, through the real router and middleware
//! in-process (`poem::test::TestClient`; no TLS or sockets: `portcullis loadtest` measures
//! those). A regression in the non-hash path shows up here.
//!
//! `cargo bench --bench login_path`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use poem::http::StatusCode;
use poem::test::TestClient;
use poem::Endpoint;
use portcullis::app::Application;
use portcullis::config::{HashParams, Settings};
use portcullis::password::Password;

const PASSWORD: &str = "correct plum tractor velvet";

/// `name=value` of the cookie a response sets.
fn set_cookie(resp: &poem::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap_or("").to_string())
}

fn csrf(page: &str) -> String {
    portcullis::loadtest::hidden_fields(page).into_iter().find(|(k, _)| k == "csrf").unwrap().1
}

/// GET /login, POST it as `username`; returns the session cookie.
async fn sign_in<E: Endpoint>(cli: &TestClient<E>, username: &str) -> String {
    let resp = cli.get("/login").send().await;
    resp.assert_status_is_ok();
    let pre = set_cookie(&resp.0, "__Host-portcullis-pre").unwrap();
    let page = resp.0.into_body().into_string().await.unwrap();
    let form =
        serde_urlencoded::to_string([("username", username), ("password", PASSWORD), ("csrf", &csrf(&page))]).unwrap();
    let resp = cli
        .post("/login")
        .header("cookie", &pre)
        .header("user-agent", "bench/1.0")
        .content_type("application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await;
    resp.assert_status(StatusCode::SEE_OTHER);
    set_cookie(&resp.0, "__Host-portcullis").unwrap()
}

fn login_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        https_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: None,
        data_dir: dir.path().join("data"),
        cert_dir: dir.path().join("certs"),
        log_dir: dir.path().join("logs"),
        argon2: HashParams { memory_kib: 8, iterations: 1, parallelism: 1 },
        login_quota_per_ip: None,
        login_quota_per_user: None,
        ..Settings::default()
    };
    let app = rt.block_on(Application::build(settings)).unwrap();
    let state = app.state();
    rt.block_on(state.users.add("bench", Password::new(PASSWORD), false, "bench")).unwrap();
    // The home page lists the user's sessions; the sign-in bench leaves thousands for
    // "bench", so the page views are measured as a user with one session.
    rt.block_on(state.users.add("viewer", Password::new(PASSWORD), false, "bench")).unwrap();
    let cli = TestClient::new(portcullis::routes::router(state));

    let mut g = c.benchmark_group("login_path");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    g.bench_function("get_login_form", |b| {
        b.iter(|| rt.block_on(async { cli.get("/login").send().await.0.into_body().into_bytes().await.unwrap() }))
    });
    g.bench_function("sign_in_tiny_argon2", |b| b.iter(|| black_box(rt.block_on(sign_in(&cli, "bench")))));
    let session = rt.block_on(sign_in(&cli, "viewer"));
    g.bench_function("home_signed_in", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = cli.get("/").header("cookie", &session).send().await;
                resp.assert_status_is_ok();
                resp.0.into_body().into_bytes().await.unwrap()
            })
        })
    });
    g.bench_function("healthz", |b| {
        b.iter(|| rt.block_on(async { cli.get("/healthz").send().await.0.into_body().into_bytes().await.unwrap() }))
    });
    g.finish();
    drop(app);
}

criterion_group!(benches, login_path);
criterion_main!(benches);
