//! TLS: protocol versions, ALPN, certificate reload without a restart, the first connection
//! after start, and clients that do not speak TLS at all.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// Generous: past this something is wrong, not slow.
const PATIENCE: Duration = Duration::from_secs(20);

fn client_trusting(pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
}

/// A fresh connection from a client that trusts only `pem`.
async fn healthz_trusting(app: &TestApp, pem: &str) -> Result<reqwest::StatusCode, reqwest::Error> {
    let client = client_trusting(pem).pool_max_idle_per_host(0).build().unwrap();
    client.get(app.url("/healthz")).send().await.map(|r| r.status())
}

fn current_pem(app: &TestApp) -> String {
    std::fs::read_to_string(app.settings.cert_dir.join("cert.pem")).unwrap()
}

/// A new self-signed pair for the names the tests connect to: (certificate PEM, key PEM).
fn new_pair() -> (String, String) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    (pair.cert.pem(), pair.signing_key.serialize_pem())
}

/// Replaces a file the way a careful deployment does: write beside it, then rename over it.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("pem.new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `openssl s_client` forced to one protocol version; `None` when openssl is not installed.
/// Returns whether the handshake completed, and what openssl printed.
fn s_client(addr: std::net::SocketAddr, version_flag: &str) -> Option<(bool, String)> {
    // OpenSSL 3 disables TLS 1.0/1.1 on its own side at the default security level; lower
    // it so that the client really offers the old version and the server has to refuse.
    s_client_with(addr, version_flag, "DEFAULT@SECLEVEL=0")
}

/// `openssl s_client` with one protocol version and a cipher list.
fn s_client_with(addr: std::net::SocketAddr, version_flag: &str, ciphers: &str) -> Option<(bool, String)> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), version_flag, "-cipher", ciphers])
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run openssl: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let completed = out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    Some((completed, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_accepted_and_older_versions_are_refused() {
    let app = spawn_app().await;
    let pem = current_pem(&app);

    for (max, expected) in
        [(None, reqwest::tls::Version::TLS_1_3), (Some(reqwest::tls::Version::TLS_1_2), reqwest::tls::Version::TLS_1_2)]
    {
        let mut builder = client_trusting(&pem).tls_info(true);
        if let Some(max) = max {
            builder = builder.tls_version_max(max);
        }
        let resp = builder.build().unwrap().get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("tls info");
        assert_eq!(info.version(), Some(expected));
    }

    let addr = app.addr;
    let results = tokio::task::spawn_blocking(move || {
        ["-tls1_3", "-tls1_2", "-tls1_1", "-tls1"].map(|flag| (flag, s_client(addr, flag)))
    })
    .await
    .unwrap();
    for (flag, result) in results {
        let Some((completed, text)) = result else {
            println!("note: openssl is not installed; skipping the s_client checks");
            return;
        };
        match flag {
            "-tls1_3" | "-tls1_2" => assert!(completed, "{flag} refused:\n{text}"),
            _ => {
                assert!(!completed, "{flag} accepted:\n{text}");
                // The server said no (an alert), not the client's own policy.
                assert!(text.contains("SSL alert number"), "{flag}: refused, but not by the server?\n{text}");
            }
        }
    }
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn alpn_offers_h2_and_http_1_1_still_works() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    let http1 = client_trusting(&current_pem(&app)).http1_only().build().unwrap();
    let resp = http1.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
}

/// Each connection speaks the HTTP that ALPN chose (RFC 9113 §3.2): HTTP/2's preface on a
/// connection that chose http/1.1 (or offered no ALPN) is no HTTP/2, and an HTTP/1.1 request
/// on one that chose h2 gets no HTTP/1.1 answer. hyper alone serves both by their first bytes.
#[tokio::test]
async fn each_connection_speaks_what_alpn_chose() {
    let app = spawn_app().await;
    let source = "127.0.0.1".parse().unwrap();
    // The preface, then an empty SETTINGS frame: an HTTP/2 server answers with its SETTINGS.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let mut conn = crate::stalls::tls(&app.settings.cert_dir, app.addr, source, alpn).await;
        conn.write_all(&preface).await.unwrap();
        let got = crate::stalls::closed_by_server(&mut conn).await.unwrap();
        assert!(!got.starts_with(&[0, 0]), "ALPN {alpn:?}: answered as HTTP/2: {got:?}");
    }
    let mut conn = crate::stalls::tls(&app.settings.cert_dir, app.addr, source, &[b"h2"]).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let got = crate::stalls::closed_by_server(&mut conn).await.unwrap();
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"), "ALPN h2: answered as HTTP/1.1: {got:?}");
    // Both still serve what they chose.
    let mut conn = crate::stalls::tls(&app.settings.cert_dir, app.addr, source, &[b"http/1.1"]).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let got = crate::stalls::closed_by_server(&mut conn).await.unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{got:?}");
}

/// Waits (polling, bounded by [`PATIENCE`]) until a fresh client trusting only `pem` gets
/// through.
async fn wait_until_served(app: &TestApp, pem: &str) {
    let until = Instant::now() + PATIENCE;
    loop {
        match healthz_trusting(app, pem).await {
            Ok(status) => {
                assert_eq!(status, 200);
                return;
            }
            Err(e) if Instant::now() > until => panic!("the new certificate was never served: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn a_new_certificate_is_served_without_a_restart() {
    let app = spawn_app_with(|s| s.cert_check_interval = Duration::from_millis(200)).await;
    let old = current_pem(&app);
    // An existing connection made with the old certificate...
    let old_client = client_trusting(&old).build().unwrap();
    assert_eq!(old_client.get(app.url("/healthz")).send().await.unwrap().status(), 200);

    let (cert, key) = new_pair();
    std::fs::write(app.settings.cert_dir.join("key.pem"), &key).unwrap();
    std::fs::write(app.settings.cert_dir.join("cert.pem"), &cert).unwrap();
    wait_until_served(&app, &cert).await;

    // ...new connections get the new certificate only.
    assert!(healthz_trusting(&app, &old).await.is_err(), "the old certificate is still served");
    assert_eq!(healthz_trusting(&app, &cert).await.unwrap(), 200);
}

/// Collects the messages of tracing events on this thread (where a current-thread test
/// runtime also runs the server's tasks), with the moment each arrived.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(Instant, String)>>>);

impl Captured {
    fn any_since(&self, since: Instant, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|(at, msg)| *at >= since && msg.contains(needle))
    }
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push((Instant::now(), message.0));
    }
}

#[tokio::test]
async fn a_mismatched_certificate_pair_is_ignored_and_the_old_one_kept() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let app = spawn_app_with(|s| s.cert_check_interval = Duration::from_millis(100)).await;
    let old = current_pem(&app);

    // A new certificate with the key of yet another pair.
    let (cert, _) = new_pair();
    let (_, other_key) = new_pair();
    replace(&app.settings.cert_dir.join("key.pem"), &other_key);
    let before_last_write = Instant::now();
    replace(&app.settings.cert_dir.join("cert.pem"), &cert);

    // Wait until the reloader has looked at the finished pair and turned it down.
    let until = Instant::now() + PATIENCE;
    while !captured.any_since(before_last_write, "certificate change ignored") {
        assert!(Instant::now() < until, "the reloader never looked at the new files");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!captured.any_since(before_last_write, "certificate reloaded"));
    assert_eq!(healthz_trusting(&app, &old).await.unwrap(), 200, "the old pair stays in service");
    assert!(healthz_trusting(&app, &cert).await.is_err(), "half a pair is served");

    // A good pair afterwards is picked up as usual.
    let (cert, key) = new_pair();
    replace(&app.settings.cert_dir.join("key.pem"), &key);
    replace(&app.settings.cert_dir.join("cert.pem"), &cert);
    wait_until_served(&app, &cert).await;
}

#[tokio::test]
async fn the_very_first_connection_after_start_succeeds_every_time() {
    for round in 0..20 {
        let app = spawn_app().await;
        // No warm-up: the request races the server task's first accept.
        let resp = app.client.get(app.url("/healthz")).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("round {round}: first connection failed: {e:?}"));
        assert_eq!(resp.status(), 200, "round {round}");
        app.stop().await;
    }
}

/// Sends `bytes` on a raw TCP connection and reads until the server closes it.
async fn send_raw(app: &TestApp, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    // A reset instead of a clean close is fine too; hanging is not.
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept a non-TLS connection open after {bytes:.20?}");
    answer
}

#[tokio::test]
async fn plain_http_and_garbage_on_the_https_port_do_not_harm_the_server() {
    let app = spawn_app().await;
    // A stalled handshake (a record header promising more than ever comes) holds its own
    // connection only.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01]).await.unwrap();

    let answer = send_raw(&app, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP answered on the HTTPS port");
    let mut garbage = vec![0u8; 8192];
    getrandom::fill(&mut garbage).unwrap();
    garbage[0] = 0x42; // not a TLS record type
    send_raw(&app, &garbage).await;
    // A ClientHello record that is not a ClientHello.
    send_raw(&app, &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    // Connect and leave at once, many times.
    for _ in 0..50 {
        drop(TcpStream::connect(app.addr).await.unwrap());
    }

    for _ in 0..3 {
        let resp = app.new_browser().get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    drop(stalled);
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

/// `openssl s_client` over TLS 1.2 offering only `ciphers`; whether the handshake completed.
fn s_client_tls12_with(addr: std::net::SocketAddr, ciphers: &str) -> Option<(bool, String)> {
    s_client_with(addr, "-tls1_2", ciphers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_forward_secret_cipher_suites_are_offered() {
    // From the inside: every TLS 1.2 suite the server may pick agrees keys with ECDHE (TLS 1.3
    // suites always use ephemeral key exchange).
    portcullis::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    portcullis::tls::ensure_certificate(dir.path()).unwrap();
    let resolver = portcullis::tls::CertResolver::new(portcullis::tls::load_certified_key(dir.path()).unwrap());
    let config = portcullis::tls::server_config(resolver).unwrap();
    let mut names = Vec::new();
    for suite in &config.crypto_provider().cipher_suites {
        if let rustls::SupportedCipherSuite::Tls12(s) = suite {
            assert_eq!(s.kx, rustls::crypto::KeyExchangeAlgorithm::ECDHE, "{:?} is not forward secret", s.common.suite);
        }
        names.push(format!("{:?}", suite.suite()));
    }
    println!("cipher suites offered: {names:?}");

    // From the outside: a client offering only static-RSA (no forward secrecy) suites, or
    // finite-field DHE, is refused; ECDHE is accepted.
    let app = spawn_app().await;
    let addr = app.addr;
    let results = tokio::task::spawn_blocking(move || {
        [
            ("AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256", false),
            ("DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384", false),
            ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256", true),
        ]
        .map(|(ciphers, expected)| (ciphers, expected, s_client_tls12_with(addr, ciphers)))
    })
    .await
    .unwrap();
    for (ciphers, expected, result) in results {
        let Some((completed, text)) = result else {
            println!("note: openssl is not installed; skipping the s_client checks");
            return;
        };
        assert_eq!(completed, expected, "{ciphers}:\n{text}");
        if !expected {
            assert!(text.contains("SSL alert number"), "{ciphers}: refused, but not by the server?\n{text}");
        }
    }
}

#[tokio::test]
async fn a_certificate_reload_does_not_drop_live_connections() {
    let app = spawn_app_with(|s| s.cert_check_interval = Duration::from_millis(100)).await;
    let old = current_pem(&app);
    // Two live connections made under the old certificate: HTTP/2 and HTTP/1.1 keep-alive.
    // These clients trust only the old certificate, so a request can succeed after the reload
    // only on the connection they already hold.
    let h2 = client_trusting(&old).build().unwrap();
    let h1 = client_trusting(&old).http1_only().build().unwrap();
    for c in [&h2, &h1] {
        assert_eq!(c.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    }

    let (cert, key) = new_pair();
    replace(&app.settings.cert_dir.join("key.pem"), &key);
    replace(&app.settings.cert_dir.join("cert.pem"), &cert);
    wait_until_served(&app, &cert).await;
    assert!(healthz_trusting(&app, &old).await.is_err(), "new connections still get the old certificate");

    for (name, c) in [("h2", &h2), ("http/1.1", &h1)] {
        let resp = c.get(app.url("/healthz")).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("{name}: the live connection was dropped by the reload: {e:?}"));
        assert_eq!(resp.status(), 200, "{name}");
    }
}

/// A browser coming back (a new connection, as after an idle close) resumes its TLS session
/// from a ticket instead of paying for a full handshake with a certificate signature.
#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let app = spawn_app().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(current_pem(&app).as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(app.addr).await.unwrap();
        let name = ServerName::from(app.addr.ip());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        // TLS 1.3 tickets come after the handshake: read an answer so the client has them.
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
}

/// A certificate directory that cannot serve refuses the start before the store and the log
/// are opened: nothing is left behind to clean up (review 133 found `data/` and `logs/`).
#[tokio::test]
async fn a_start_refused_for_its_certificate_makes_no_store_or_log() {
    let dir = tempfile::tempdir().unwrap();
    let settings = crate::helpers::test_settings(dir.path());
    let (cert, key) = new_pair();
    let (_, other_key) = new_pair();
    std::fs::create_dir_all(&settings.cert_dir).unwrap();
    for (files, expected) in [
        (vec![("cert.pem", &cert)], "key.pem is missing"),
        (vec![("key.pem", &key)], "cert.pem is missing"),
        (vec![("cert.pem", &cert), ("key.pem", &other_key)], ""),
    ] {
        for name in ["cert.pem", "key.pem"] {
            let _ = std::fs::remove_file(settings.cert_dir.join(name));
        }
        for (name, pem) in files {
            std::fs::write(settings.cert_dir.join(name), pem).unwrap();
        }
        let err = match crate::helpers::build_when_released(&settings).await {
            Err(e) => e,
            Ok(_) => panic!("started with a certificate it cannot serve"),
        };
        assert!(err.contains(expected), "{err}");
        assert!(!settings.data_dir.exists(), "a refused start made the store: {err}");
        assert!(!settings.log_dir.exists(), "a refused start made the log: {err}");
    }
}

/// SIGHUP, which operators and renewal hooks send to mean "reload", reads the pair again at
/// once and says the key's mode as a start does; it never stops the server (review 194: its
/// default action killed it, cutting the sign-ins in flight, and a reload put a key others
/// could read in service without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_certificate_again_and_stops_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        crate::child::ServerProcess::start_with(dir.path(), crate::child::QUICK, |cmd| {
            cmd.env("PORTCULLIS_CERT_CHECK_INTERVAL", "1h");
        })
    });
    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    let hangup = || {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    let healthz = |pem: &str| {
        let client = client_trusting(pem).pool_max_idle_per_host(0).build().unwrap();
        let url = server.url("/healthz");
        async move { client.get(url).send().await.map(|r| r.status()) }
    };
    let certs = dir.path().join("certs");
    let old = std::fs::read_to_string(certs.join("cert.pem")).unwrap();
    // From its first moments too, before it listens (review 198: a start reading many rules
    // was killed by it).
    let early = tempfile::tempdir().unwrap();
    // Many rules, read before anything else: the window that was open.
    let rules: String =
        (0..1500).map(|i| format!("[[access.rules]]\npath = [\"^/p{i}/\"]\npolicy = \"one_factor\"\n")).collect();
    std::fs::write(early.path().join("rules.toml"), rules).unwrap();
    let mut starting = crate::child::command(early.path())
        .args(["--config", "rules.toml"])
        .args(crate::child::QUICK)
        // Not /dev/null: the first start refuses to print its password there.
        .stdout(std::fs::File::create(early.path().join("out")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let starting_pid = libc::pid_t::try_from(starting.id()).unwrap();
    // Once it runs its own code: before `main`, the dynamic loader's few milliseconds are
    // the default action's still.
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(starting_pid, libc::SIGHUP) };
    }
    let status = starting.try_wait().unwrap();
    assert!(status.is_none(), "a SIGHUP while starting stopped it: {status:?}");
    let _ = starting.kill();
    let _ = starting.wait();
    hangup();
    let until = Instant::now() + PATIENCE;
    while !server.output().contains("SIGHUP: the certificate pair is read again") {
        assert!(Instant::now() < until, "{}", server.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(healthz(&old).await.unwrap(), 200, "still serving");

    // A renewed pair whose key was copied in readable by all: served at the next SIGHUP,
    // not an hour later, with the start's warning.
    let (cert, key) = new_pair();
    replace(&certs.join("key.pem"), &key);
    std::fs::set_permissions(certs.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    replace(&certs.join("cert.pem"), &cert);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(healthz(&cert).await.is_err(), "not read before the signal");
    hangup();
    let until = Instant::now() + PATIENCE;
    while healthz(&cert).await.is_err() {
        assert!(Instant::now() < until, "{}", server.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = server.output();
    assert!(
        out.contains("certificate reloaded") && out.contains("key.pem may be read by other users (mode 644)"),
        "{out}"
    );
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "{status}");
}
