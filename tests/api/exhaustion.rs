//! Resource exhaustion: idle connections by the thousand, slowloris, running out of file
//! descriptors, a flood of logins far beyond the hash pool, thousands of visitors who never
//! submit, and a full disk (or an unwritable log). In each the server must keep memory
//! bounded and fail closed with clear errors, and keep answering `/healthz` and a signed-in
//! user, but for a store that can no longer write, where it stops to be restarted.
//!
//! No assertion is about time (this runs on small shared machines): latencies and memory are
//! printed for the record (`cargo test exhaustion -- --nocapture`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::child::{self, rss_of, ServerProcess};
use crate::helpers::{spawn_app, spawn_app_with, TestApp, GOOD_PASSWORD};

/// Past this something is wrong, not slow.
const PATIENCE: Duration = Duration::from_secs(60);

/// Resident memory of this process (server and clients together), in KiB.
pub fn rss_kib() -> u64 {
    crate::child::rss_of(std::process::id())
}

/// Raises this process's open-file limit to its hard limit (thousands of sockets ahead).
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own process with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A TCP connection to `addr` from the loopback address `source` (any 127.x.y.z works on
/// Linux), so that an attacker and a legitimate client can be told apart by address.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// A TLS client that trusts the server's certificate and offers `alpn`.
pub fn tls_connector(app: &TestApp, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    portcullis::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(app.settings.cert_dir.join("cert.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn tls_connect(app: &TestApp, source: IpAddr) -> Tls {
    let tcp = connect_from(source, app.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tls_connector(app, &[b"http/1.1"]).connect(name, tcp).await.unwrap()
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from a raw stream.
async fn read_response(stream: &mut Tls) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                return Ok((status, body));
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `/healthz` on a fresh connection and `/` for a signed-in browser: both must answer.
/// Returns their latencies.
async fn probe(app: &TestApp, signed_in: &reqwest::Client) -> (Duration, Duration) {
    let started = Instant::now();
    let fresh = app.new_browser();
    let resp = tokio::time::timeout(PATIENCE, fresh.get(app.url("/healthz")).send())
        .await
        .expect("healthz answers in the end")
        .expect("healthz answers");
    assert_eq!(resp.status(), 200);
    let health = started.elapsed();
    let started = Instant::now();
    let resp = tokio::time::timeout(PATIENCE, signed_in.get(app.url("/")).send())
        .await
        .expect("the signed-in user is answered in the end")
        .expect("the signed-in user is answered");
    assert_eq!(resp.status(), 200, "the signed-in user lost their session");
    (health, started.elapsed())
}

async fn signed_in_user(app: &TestApp) -> reqwest::Client {
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let browser = app.new_browser();
    assert_eq!(app.login_with(&browser, "alice", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    browser
}

// --- slowloris ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_off_and_keep_alive_still_works() {
    let app = spawn_app_with(|s| {
        s.header_read_timeout = Duration::from_secs(2);
        s.max_connections = 64;
        // All 40 come from one address.
        s.max_connections_per_ip = 64;
    })
    .await;
    let alice = signed_in_user(&app).await;
    let app = Arc::new(app);

    // 40 clients complete TLS, then send a request head one byte every 250 ms: the full head
    // would take 30 s.
    let head = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\r\n", "a".repeat(60));
    let mut loris = JoinSet::new();
    for _ in 0..40 {
        let app = Arc::clone(&app);
        let head = head.clone();
        loris.spawn(async move {
            let mut tls = tls_connect(&app, "127.0.0.3".parse().unwrap()).await;
            let started = Instant::now();
            for (sent, byte) in head.bytes().enumerate() {
                if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
                    return (sent, started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                // A closed connection shows as end of stream on the read side.
                let mut b = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), tls.read(&mut b)).await {
                    return (sent + 1, started.elapsed());
                }
            }
            (head.len(), started.elapsed())
        });
    }

    // Meanwhile everyone else is served. 40 of the 64 slots are held, so fresh connections fit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (health, home) = probe(&app, &alice).await;
    println!("slowloris: healthz {health:?}, signed-in GET / {home:?} while 40 clients dribble headers");

    let mut cut = Vec::new();
    while let Some(r) = loris.join_next().await {
        let (sent, after) = r.unwrap();
        assert!(sent < head.len(), "a slowloris client delivered its whole head over {after:?}");
        cut.push(after);
    }
    cut.sort();
    println!("slowloris: all 40 cut off; after {:?} (first) to {:?} (last)", cut[0], cut[cut.len() - 1]);

    // A slow but honest client (the head in 1 s) is served.
    let mut tls = tls_connect(&app, "127.0.0.1".parse().unwrap()).await;
    for chunk in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".chunks(5) {
        tls.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_response(&mut tls).await.unwrap(), (200, "ok".to_string()));

    // Keep-alive: idle longer than the header deadline between requests, on one connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut tls).await.unwrap(), (200, "ok".to_string()), "second request after idling");
    // A request with a body, then idle again, then another request.
    tls.write_all(b"POST /logout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\ncsrf=x").await.unwrap();
    assert_eq!(read_response(&mut tls).await.unwrap().0, 303);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut tls).await.unwrap(), (200, "ok".to_string()), "request after a POST and idling");

    // HTTP/2 connections are not timed after their preface: alice's stays usable after idling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (health, home) = probe(&app, &alice).await;
    println!("slowloris: afterwards healthz {health:?}, signed-in GET / {home:?}");
}

// --- idle connections -----------------------------------------------------------------------

/// Opens `n` TCP connections from `sources` (round robin) that never send a byte; each task
/// resolves, once the server closes its connection, to how long that took.
fn idle_connections(addr: SocketAddr, sources: &[IpAddr], n: usize) -> JoinSet<Result<Duration, String>> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let source = sources[i % sources.len()];
        set.spawn(async move {
            let started = Instant::now();
            let mut stream = tokio::time::timeout(PATIENCE, connect_from(source, addr))
                .await
                .map_err(|_| "connect never completed".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            let mut b = [0u8; 1];
            match tokio::time::timeout(PATIENCE, stream.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Ok(started.elapsed()),
                Ok(Ok(_)) => Err("the server sent bytes to a client that said nothing".into()),
                Err(_) => Err("the server kept an idle connection open".into()),
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_take_every_connection_slot() {
    // Each connection the server keeps costs this process two descriptors, each it closes one.
    let n = 1000.min(raise_fd_limit().saturating_sub(400) as usize);
    let app = spawn_app_with(|s| {
        s.max_connections = 256;
        s.max_connections_per_ip = 64;
        // Long, so that the connections the cap lets in stay open for the whole test.
        s.handshake_timeout = Duration::from_secs(120);
    })
    .await;
    let alice = signed_in_user(&app).await;
    let rss_before = rss_kib();

    // 1000 connections from one address that never send a byte.
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect_from(attacker, app.addr).await.unwrap());
    }
    // The server closes all but its share at once...
    let until = Instant::now() + PATIENCE;
    let mut open = held.len();
    while open > 64 {
        assert!(Instant::now() < until, "{open} connections from one address are still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut still = Vec::new();
        for mut s in held.drain(..) {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                _ => still.push(s),
            }
        }
        held = still;
        open = held.len();
    }
    // ...and keeps exactly its share, while everyone else is served at once.
    assert_eq!(open, 64);
    let (health, home) = probe(&app, &alice).await;
    println!(
        "one host, {n} idle connections: {} closed at once, 64 held; healthz {health:?}, signed-in GET / {home:?}; \
         RSS {} -> {} KiB",
        n - 64,
        rss_before,
        rss_kib()
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_wait_for_a_slot_and_are_dropped_after_the_handshake_timeout() {
    let fds = raise_fd_limit();
    // Each idle connection costs this process two descriptors (client and server side). 1200
    // fit in the 256 slots plus the listen backlog (1024): past that the kernel drops SYNs and
    // clients retry on their own schedule, which tests the kernel rather than the server.
    let n = 1200.min((fds.saturating_sub(400) / 2) as usize);
    let app = spawn_app_with(|s| {
        s.max_connections = 256;
        s.max_connections_per_ip = 64;
        s.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let alice = signed_in_user(&app).await;
    let rss_before = rss_kib();

    // 30 addresses, 40 connections each: within the per-address cap, far past the global one.
    let sources: Vec<IpAddr> = (1..=30).map(|i| format!("127.0.1.{i}").parse().unwrap()).collect();
    let started = Instant::now();
    let mut idle = idle_connections(app.addr, &sources, n);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The signed-in user's connection holds its slot; a fresh client queues behind the idle
    // ones and is served once handshake timeouts give slots back.
    let (health, home) = probe(&app, &alice).await;
    let rss_during = rss_kib();
    println!("{n} idle connections, 256 slots: fresh healthz after {health:?}, signed-in GET / {home:?}");

    let mut closed = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = idle.join_next().await {
        match r.unwrap() {
            Ok(d) => closed.push(d),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "{} of {n} idle connections: {:?}", errors.len(), errors.first());
    // Slots come back in waves, one handshake timeout apart.
    let mut waves = std::collections::BTreeMap::new();
    for d in &closed {
        *waves.entry(d.as_secs()).or_insert(0) += 1;
    }
    println!("idle connections dropped per second since they connected: {waves:?}");
    closed.sort();
    println!(
        "all {n} idle connections dropped by the server, the last after {:?} (total {:?}); RSS {} -> {} -> {} KiB",
        closed[closed.len() - 1],
        started.elapsed(),
        rss_before,
        rss_during,
        rss_kib()
    );
    let (health, home) = probe(&app, &alice).await;
    println!("afterwards: healthz {health:?}, signed-in GET / {home:?}");
}

/// A client without a cookie jar (cookies are sent by hand) that trusts `cert_dir`.
fn bare_client(cert_dir: &std::path::Path) -> reqwest::Client {
    crate::helpers::browser_builder(cert_dir).cookie_store(false).build().unwrap()
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_neither_spins_nor_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    // 64 descriptors: the store, logs, listener and admin socket take a few dozen; idle
    // connections take the rest, and accept() then fails with EMFILE.
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(&d, &child::quick_with(&[("--handshake-timeout", "3s")]), |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    });
    let pid = server.child.id();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(server.url("").trim_start_matches("https://")).await.unwrap());
    }
    // Accepting is now failing for want of descriptors. Measure what that costs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - ticks;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    println!(
        "out of descriptors: the server used {} ms of CPU in {:?} with 100 connections waiting",
        used * 1000 / per_second,
        started.elapsed()
    );
    drop(idle);
    // Once the idle connections are gone (or timed out), it serves again.
    let client = bare_client(&d.join("certs"));
    let until = Instant::now() + PATIENCE;
    loop {
        match client.get(server.url("/healthz")).send().await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break;
            }
            Err(e) => assert!(Instant::now() < until, "the server never recovered: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.terminate();
}

/// `n` bare clients, each with its HTTP/2 connection already open: a burst of requests on a
/// cold client would open a connection per request (ALPN is not known yet), and the server
/// caps connections per address.
pub async fn warm_clients(cert_dir: &std::path::Path, healthz: &str, n: usize) -> Vec<reqwest::Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = bare_client(cert_dir);
        let resp = client.get(healthz).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        clients.push(client);
    }
    clients
}

/// `/healthz` on a fresh connection and `/` for a signed-in browser, against a child server.
async fn probe_child(server: &ServerProcess, signed_in: &reqwest::Client) -> (Duration, Duration) {
    let started = Instant::now();
    let resp = server.browser().get(server.url("/healthz")).send().await.expect("healthz answers");
    assert_eq!(resp.status(), 200);
    let health = started.elapsed();
    let started = Instant::now();
    let resp = signed_in.get(server.url("/")).send().await.expect("the signed-in user is answered");
    assert_eq!(resp.status(), 200, "the signed-in user lost their session");
    (health, started.elapsed())
}

// --- logins far beyond the hash pool ----------------------------------------------------------

/// Samples a process's resident memory until dropped; `peak()` is the highest seen.
struct RssSampler {
    pid: u32,
    peak: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_of(pid)));
        let p = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_of(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssSampler { pid, peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed).max(rss_of(self.pid))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child server with alice signed in on the returned browser.
async fn child_with_alice(
    dir: &std::path::Path,
    flags: &[(&'static str, &'static str)],
) -> (ServerProcess, reqwest::Client) {
    let args = child::quick_with(flags);
    let server = tokio::task::block_in_place(|| ServerProcess::start(dir, &args));
    let run = child::cli(dir, &["user", "add", "alice", "--password-stdin"], Some(GOOD_PASSWORD)).await;
    assert!(run.ok, "{run:?}");
    let alice = server.browser();
    assert_eq!(child::login(&server, &alice, "alice", GOOD_PASSWORD).await.0, 303);
    (server, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_far_beyond_the_hash_pool_is_refused_with_503_in_bounded_memory() {
    const FLOOD: usize = 2000;
    const ARGON2_KIB: u64 = 4096;
    const QUEUE: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (server, alice) = child_with_alice(
        dir.path(),
        &[
            ("--argon2-memory-kib", "4096"),
            ("--argon2-iterations", "2"),
            ("--hash-workers", "1"),
            ("--hash-queue", "16"),
        ],
    )
    .await;

    // One visitor's form (cookie and token), posted over and over on 8 connections.
    let certs = dir.path().join("certs");
    let resp = bare_client(&certs).get(server.url("/login")).send().await.unwrap();
    let pre = crate::helpers::cookie_value(&resp, "__Host-portcullis-pre").unwrap();
    let csrf = crate::helpers::hidden_field(&resp.text().await.unwrap(), "csrf").unwrap();
    let cookie = format!("__Host-portcullis-pre={pre}");
    let clients = warm_clients(&certs, &server.url("/healthz"), 8).await;

    // Two identical floods: the first shows the bound, the second that it does not creep.
    let rss_before = server.rss_kib();
    let sampler = RssSampler::start(server.child.id());
    let mut peaks = Vec::new();
    for round in 1..=2 {
        let started = Instant::now();
        let mut flood = JoinSet::new();
        for i in 0..FLOOD {
            let (client, url, cookie, csrf) =
                (clients[i % 8].clone(), server.url("/login"), cookie.clone(), csrf.clone());
            flood.spawn(async move {
                let form = [("username", "alice"), ("password", "not the password at all"), ("csrf", csrf.as_str())];
                let resp = client.post(url).header("cookie", cookie).form(&form).send().await?;
                let status = resp.status().as_u16();
                let retry = resp.headers().contains_key("retry-after");
                resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, retry))
            });
        }

        // While the flood is on, the cheap routes and the signed-in user are answered.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (health, home) = probe_child(&server, &alice).await;

        let mut counts = std::collections::BTreeMap::new();
        while let Some(r) = flood.join_next().await {
            let (status, retry) = r.unwrap().expect("every attempt gets an answer");
            if status == 503 {
                assert!(retry, "503 without Retry-After");
            }
            *counts.entry(status).or_insert(0) += 1;
        }
        let peak = sampler.peak();
        println!(
            "login flood {round}: {FLOOD} attempts in {:?}: {counts:?} (401 = checked and wrong, 503 = hash pool \
             full); during it healthz {health:?}, signed-in GET / {home:?}; server RSS {rss_before} KiB before the \
             first flood, peak so far {peak} KiB (+{} KiB)",
            started.elapsed(),
            peak.saturating_sub(rss_before),
        );
        assert_eq!(counts.keys().copied().filter(|s| *s != 401 && *s != 503).count(), 0, "{counts:?}");
        assert!(counts.get(&503).copied().unwrap_or(0) > 0, "the pool never overflowed: {counts:?}");
        peaks.push(peak);
    }
    println!(
        "login flood: bound: 1 worker x {ARGON2_KIB} KiB argon2, {QUEUE} queued checks, at most 8 x 64 requests in \
         flight; after both floods RSS {} KiB",
        server.rss_kib()
    );
    // Holding every attempt's hash at once would take FLOOD x 4 MiB = 8 GiB; and a second
    // flood reuses the first one's memory instead of adding to it.
    assert!(peaks[0].saturating_sub(rss_before) < 128 * 1024, "server memory grew by {} KiB", peaks[0] - rss_before);
    assert!(peaks[1].saturating_sub(peaks[0]) < 32 * 1024, "the second flood added {} KiB", peaks[1] - peaks[0]);
    let (health, home) = probe_child(&server, &alice).await;
    println!("login flood: afterwards healthz {health:?}, signed-in GET / {home:?}");
    server.terminate();
}

// --- visitors who never submit ----------------------------------------------------------------

pub fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// GETs /login `n` times from clients without cookies; every visitor must get the form and
/// a fresh pre-login cookie.
async fn visit(clients: &[reqwest::Client], url: &str, n: usize) {
    let mut visits = JoinSet::new();
    for i in 0..n {
        let (client, url) = (clients[i % clients.len()].clone(), url.to_string());
        visits.spawn(async move {
            let resp = client.get(url).send().await?;
            let status = resp.status();
            let fresh_cookie = crate::helpers::cookie_value(&resp, "__Host-portcullis-pre").is_some();
            resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, fresh_cookie))
        });
    }
    while let Some(r) = visits.join_next().await {
        let (status, fresh_cookie) = r.unwrap().expect("every visitor gets the form");
        assert_eq!(status, 200);
        assert!(fresh_cookie, "a cookie-less visitor got no pre-login cookie");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_visitors_who_never_submit_cost_the_server_nothing() {
    const VISITORS: usize = 5000;

    // In-process, to look inside: no table gains an entry.
    let app = spawn_app().await;
    let alice = signed_in_user(&app).await;
    let state = &app.state;
    let tables = |s: &portcullis::app::AppState| s.in_memory.as_ref().expect("the state is in memory").sizes();
    let before = tables(state);
    let clients = warm_clients(&app.settings.cert_dir, &app.url("/healthz"), 8).await;
    visit(&clients, &app.url("/login"), VISITORS).await;
    let (health, home) = probe(&app, &alice).await;
    // (A key may also go: the limiter forgets addresses back at a full bucket.)
    let after = tables(state);
    let grew = after.0 > before.0
        || after.1 .0 > before.1 .0
        || after.1 .1 > before.1 .1
        || after.2 > before.2
        || after.3 > before.3;
    assert!(!grew, "(captchas, failure counters, address quota keys, username quota keys): {before:?} -> {after:?}");
    assert!(state
        .audit
        .failures(&portcullis::store::FailureQuery { limit: 1, ..Default::default() })
        .await
        .unwrap()
        .is_empty());
    println!(
        "{VISITORS} visitors who never submit: server tables unchanged {before:?}; healthz {health:?}, GET / {home:?}"
    );

    // As a separate process, to measure the server alone: memory and disk do not grow.
    let dir = tempfile::tempdir().unwrap();
    let (server, alice) = child_with_alice(dir.path(), &[]).await;
    let certs = dir.path().join("certs");
    let clients = warm_clients(&certs, &server.url("/healthz"), 8).await;
    // A first round warms allocator caches and connection buffers; the second is the measure.
    visit(&clients, &server.url("/login"), 1000).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (store_before, logs_before) = (dir_size(&dir.path().join("data")), dir_size(&dir.path().join("logs")));
    let rss_before = server.rss_kib();
    let sampler = RssSampler::start(server.child.id());
    let started = Instant::now();
    visit(&clients, &server.url("/login"), VISITORS).await;
    let elapsed = started.elapsed();
    let (health, home) = probe_child(&server, &alice).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (peak, rss_after) = (sampler.peak(), server.rss_kib());
    let (store_after, logs_after) = (dir_size(&dir.path().join("data")), dir_size(&dir.path().join("logs")));
    println!(
        "{VISITORS} more visitors in {elapsed:?}: server RSS {rss_before} KiB before, peak {peak} KiB, after {rss_after} KiB \
         ({} bytes per visitor); store {store_before} -> {store_after} bytes, logs {logs_before} -> {logs_after} bytes; \
         healthz {health:?}, signed-in GET / {home:?}",
        rss_after.saturating_sub(rss_before) * 1024 / VISITORS as u64
    );
    assert_eq!(logs_after, logs_before, "visitors who never submit were logged");
    assert!(store_after <= store_before + 64 * 1024, "the store grew from {store_before} to {store_after} bytes");
    // Stateless: nothing is kept per visitor. (Allocator noise allowed; 5000 kept forms would
    // show as several MiB.)
    assert!(rss_after.saturating_sub(rss_before) < 4 * 1024, "server memory grew by {} KiB", rss_after - rss_before);
    server.terminate();
}

// --- a full disk ------------------------------------------------------------------------------

/// A tmpfs mounted for the length of a test (unmounted when dropped).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB at `at`, when this process may (root); `None` otherwise.
    /// `PORTCULLIS_TEST_NO_TMPFS=1` skips the mount, to try the other way.
    pub fn mount(at: &std::path::Path, kib: u64) -> Option<Tmpfs> {
        if std::env::var_os("PORTCULLIS_TEST_NO_TMPFS").is_some() {
            return None;
        }
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, kib: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k"), "tmpfs"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Makes writes past `bytes` fail in the child (EFBIG) instead of killing it (SIGXFSZ).
fn file_size_limit(cmd: &mut std::process::Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// A full disk: what the server acknowledged stays, what it cannot record is refused (503,
/// never a 401 or a session), and once the store itself cannot write the server stops by
/// itself with one line saying why, for its supervisor to start it again. sled refuses every
/// write after a failed one, and a read may then retry a node split for ever (review 135:
/// a worker spinning, 30 MB/s more memory a second, SIGTERM unheard); with room again the
/// store opens and has everything it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_it_cannot_record_and_stops_the_server_for_a_restart() {
    const DISK_KIB: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    // The store and the logs on a 1 MiB filesystem (symlinked where the layout expects them),
    // or, without the right to mount, under a 1 MiB file-size limit.
    let tmpfs = Tmpfs::mount(&d.join("small"), DISK_KIB);
    if let Some(fs) = &tmpfs {
        for sub in ["data", "logs"] {
            std::fs::create_dir(fs.0.join(sub)).unwrap();
            std::os::unix::fs::symlink(fs.0.join(sub), d.join(sub)).unwrap();
        }
    }
    let how = if tmpfs.is_some() { "a 1 MiB tmpfs (ENOSPC)" } else { "a 1 MiB file-size limit (EFBIG)" };
    let limited = tmpfs.is_none();
    // No free-space reserve, so that refusals really fill the disk (tests/api/disk.rs has
    // the reserve); a metrics listener, whose session count read the store every few seconds
    // (what spun in the review); room for the flood's connections from one address.
    let flags = child::quick_with(&[
        ("--disk-reserve-mib", "0"),
        ("--max-connections-per-ip", "512"),
        ("--metrics-addr", "127.0.0.1:0"),
    ]);
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(&d, &flags, |cmd| {
            if limited {
                file_size_limit(cmd, DISK_KIB * 1024);
            }
        })
    });
    assert!(child::cli(&d, &["user", "add", "alice", "--password-stdin"], Some(GOOD_PASSWORD)).await.ok);
    let alice = server.browser();
    assert_eq!(child::login(&server, &alice, "alice", GOOD_PASSWORD).await.0, 303);
    let sampler = RssSampler::start(server.child.id());

    // Fill it: wrong passwords (each stored on its own, unlike CSRF refusals, which are
    // counted per address and minute) are recorded in the store and the log; a right
    // password now and then must sign in for real or be refused.
    let browsers: Vec<reqwest::Client> = (0..4).map(|_| server.browser()).collect();
    let (long_name, long_agent) = ("u".repeat(250), "a".repeat(250));
    let mut counts = std::collections::BTreeMap::new();
    let mut sent = 0;
    let mut server = server;
    let exited = loop {
        if server.child.try_wait().unwrap().is_some() {
            break tokio::task::block_in_place(|| server.wait_for_exit(Duration::ZERO));
        }
        assert!(sent < 20_000, "the server never stopped: {counts:?}\n{}", server.output());
        let mut batch = JoinSet::new();
        for i in 0..32 {
            let (client, origin) = (browsers[i % browsers.len()].clone(), server.origin.clone());
            let (name, agent) = (format!("{long_name}{sent}-{i}"), long_agent.clone());
            batch.spawn(async move { crate::disk::wrong_password_if_answered(&client, &origin, &name, &agent).await });
        }
        while let Some(r) = batch.join_next().await {
            *counts.entry(r.unwrap()).or_insert(0) += 1;
        }
        sent += 32;
        let newcomer = server.browser();
        let resp = child::login_response_if_answered(&server, &newcomer, "alice", GOOD_PASSWORD).await;
        if let Some(resp) = resp {
            let status = resp.status().as_u16();
            let cookie = crate::helpers::cookie_value(&resp, "__Host-portcullis");
            assert!(status == 503 || (status == 303 && cookie.is_some()), "a right password on a full disk: {status}");
        }
        if counts.get(&None).copied().unwrap_or(0) > 0 {
            // Not answered: stopping or stopped.
            break tokio::task::block_in_place(|| server.wait_for_exit(Duration::from_secs(30)));
        }
    };
    let peak = sampler.peak();
    let stderr = server.output();
    println!("disk full ({how}) after {sent} refused attempts: {counts:?} (Some(401) = recorded, Some(503) = could not record, None = stopped); exit {exited}; peak RSS {peak} KiB");
    assert!(!exited.success(), "{stderr}");
    assert!(stderr.contains("stopped because the store could not write"), "{stderr}");
    assert!(!counts.contains_key(&Some(500)), "{counts:?}");
    assert!(peak < 200 * 1024, "the server grew to {peak} KiB");
    drop(server);

    // Administrative changes on the stopped store fail with one clear line (the file-size
    // limit is the server's alone).
    if tmpfs.is_some() {
        let run = child::cli(&d, &["user", "add", "carol", "--password-stdin"], Some(GOOD_PASSWORD)).await;
        assert!(!run.ok, "a user was added to a full disk: {run:?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
        // A start on the still-full disk is one line that says which store it could not open
        // (review 136: only "IO error: No space left on device").
        let start = child::cli(&d, &flags, None).await;
        assert!(!start.ok, "{start:?}");
        let line = start.assert_one_line_failure("serve on a full disk");
        assert!(line.contains("cannot open the store in") && line.contains("data"), "{line}");
    }

    // With room again, the store opens and has everything it acknowledged.
    if let Some(fs) = &tmpfs {
        fs.resize(16 * 1024);
    }
    let server = tokio::task::block_in_place(|| ServerProcess::start(&d, &flags));
    assert_eq!(child::login(&server, &server.browser(), "alice", GOOD_PASSWORD).await.0, 303);
    let run = child::cli(&d, &["audit", "--json", "--limit", "100000"], None).await;
    assert!(run.ok, "{run:?}");
    let recorded = run.stdout.lines().count();
    println!("disk full: after a restart with room, {recorded} refused attempts on record");
    assert!(recorded >= counts.get(&Some(401)).copied().unwrap_or(0), "acknowledged refusals were lost");
    server.terminate();
}

#[tokio::test]
async fn logins_that_cannot_be_written_to_the_auth_log_are_refused() {
    // Today's (and tomorrow's) log file is /dev/full: every line fails as on a full disk.
    let logs = tempfile::tempdir().unwrap();
    let now = portcullis::store::now_ms();
    for ms in [now, now + 86_400_000] {
        let day = &portcullis::audit::rfc3339(ms)[..10];
        std::os::unix::fs::symlink("/dev/full", logs.path().join(format!("auth.log.{day}"))).unwrap();
    }
    let log_dir = logs.path().to_path_buf();
    let app = spawn_app_with(move |s| s.log_dir = log_dir).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;

    let browser = app.new_browser();
    let resp = app.login_with(&browser, "alice", GOOD_PASSWORD).await;
    assert_eq!(resp.status(), 503, "a login that could not be logged went through");
    assert!(crate::helpers::cookie_value(&resp, "__Host-portcullis").is_none());
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 303);
    assert!(app.sessions_of("alice").await.is_empty(), "the unrecorded session was kept");
    // Nor is a right password that only opens the second step (its line says it was right).
    app.add_user("bob", GOOD_PASSWORD, false).await;
    let totp = portcullis::store::TotpFactor { sealed_secret: vec![1, 2, 3], created_at: 1 };
    assert!(app.state.store.factors.set_totp("bob", &totp, None).await.unwrap());
    let resp = app.login_with(&app.new_browser(), "bob", GOOD_PASSWORD).await;
    assert_eq!(resp.status(), 503, "an unlogged right password was answered with the second step");
    assert!(crate::helpers::cookie_value(&resp, "__Host-portcullis-mfa").is_none());
    let far = portcullis::store::now_ms() + 3_600_000;
    assert_eq!(app.state.store.factors.purge_pending(far).await.unwrap(), 0, "the pending sign-in was kept");

    let resp = app.login_with(&app.new_browser(), "alice", "not the password at all").await;
    assert_eq!(resp.status(), 503, "a failed login that could not be logged was answered as usual");
    assert!(resp.headers().contains_key("retry-after"));
    // It is still in the store: the durable record does not depend on the log.
    let records = app.records(portcullis::store::FailureQuery { limit: 10, ..Default::default() }).await;
    assert_eq!(records.len(), 1);
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    // Not ready for a load balancer: every sign-in here is a 503 (review 135).
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 503);
    // Counted for metrics, and said with the system's own error, not a guess (review 215:
    // "is the disk full" was said of a read-only directory).
    assert!(app.state.audit.log_write_failures() >= 3, "{}", app.state.audit.log_write_failures());
    assert!(
        app.state.audit.last_log_error().contains("No space left on device"),
        "{}",
        app.state.audit.last_log_error()
    );
}
