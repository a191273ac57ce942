//! A throwaway PostgreSQL for the tests: one cluster per run of this test binary, made with
//! Debian's `postgresql` binaries (`initdb`, `postgres`) in a temporary directory, listening
//! on a socket there and on a free loopback port with TLS (a test CA signs its certificate
//! for `localhost` and 127.0.0.1). Each test gets a fresh database of its own
//! ([`database`]), so tests run in parallel.
//!
//! As root the server runs as the `postgres` user (initdb refuses root). It is stopped when
//! the test binary exits (an `atexit` hook), and if the binary is killed instead the server
//! gets SIGQUIT from the kernel (PR_SET_PDEATHSIG, armed in a thread that lives as long as
//! the process), so no postgres outlives `cargo test`; the directory such a run leaves is
//! removed by the next run.
//!
//! Without the binaries the tests print why and pass as skipped, unless
//! `PORTCULLIS_REQUIRE_ALL` is set (as `.ci/run` does): then they fail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::helpers::free_port;
use portcullis::postgres::url::DatabaseUrl;

/// Environment variable that turns a skip (no PostgreSQL binaries) into a failure.
pub const REQUIRE_ALL: &str = "PORTCULLIS_REQUIRE_ALL";

/// The running cluster.
pub struct Cluster {
    /// Superuser `postgres` over the socket (trust: the socket's directory is private).
    pub socket_url: DatabaseUrl,
    /// Superuser `postgres` over TCP on 127.0.0.1 with its password (scram-sha-256),
    /// `sslmode=disable`; add a query to use TLS.
    pub tcp_base: String,
    /// The PEM file of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// A PEM file of another CA, which did not.
    pub other_ca_file: PathBuf,
}

struct Running {
    pid: libc::pid_t,
    dir: PathBuf,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster, started at first use; `None` (with the reason printed) when it cannot be
/// run here and [`REQUIRE_ALL`] is unset.
pub fn cluster() -> Option<&'static Cluster> {
    let result = CLUSTER.get_or_init(|| {
        // Started from a thread that never ends: the kernel's parent-death signal follows the
        // thread that forked, and test threads end after each test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-parent".into())
            .spawn(move || {
                let _ = tx.send(start());
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| e.to_string())
            .and_then(|_| rx.recv().map_err(|e| e.to_string()))
            .and_then(|r| r)
    });
    match result {
        Ok(c) => Some(c),
        Err(why) if std::env::var_os(REQUIRE_ALL).is_some() => {
            panic!("PostgreSQL tests cannot run ({why}) and {REQUIRE_ALL} is set")
        }
        Err(why) => {
            eprintln!("skipped: PostgreSQL tests need Debian's postgresql package ({why})");
            None
        }
    }
}

/// A fresh, empty database for one test, as the superuser over the socket.
pub async fn database() -> Option<DatabaseUrl> {
    let cluster = cluster()?;
    Some(cluster.socket_url.with_dbname(&create_database(cluster).await))
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// Creates a database with a name unique in this run; returns the name.
pub async fn create_database(cluster: &Cluster) -> String {
    let name = format!("t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
    let admin = portcullis::postgres::connect::connect(&cluster.socket_url.with_dbname("postgres"))
        .await
        .expect("the test cluster answers");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    name
}

/// The directory of the newest installed PostgreSQL's binaries (or `PG_BINDIR`).
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no /usr/lib/postgresql: apt-get install postgresql".to_string())?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".into())
}

/// The uid and gid to run the server as: ours, or the `postgres` user's when we are root.
fn server_user() -> Result<Option<(libc::uid_t, libc::gid_t)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: a valid C string; the result is read at once, before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root and there is no `postgres` user to run the server as".into());
    }
    // SAFETY: checked non-null above.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

fn as_server_user(cmd: &mut Command, user: Option<(libc::uid_t, libc::gid_t)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        // std drops the supplementary groups too when root sets a uid.
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env_remove("PGHOST").env_remove("PGPORT")
}

fn chown(path: &Path, user: Option<(libc::uid_t, libc::gid_t)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

fn start() -> Result<Cluster, String> {
    let bin = bin_dir()?;
    let user = server_user()?;
    remove_abandoned();
    let dir = tempfile::Builder::new().prefix("portcullis-pg-").tempdir().map_err(|e| e.to_string())?.keep();
    let started = start_in(&bin, user, &dir);
    if started.is_err() {
        stop_at_exit();
        let _ = std::fs::remove_dir_all(&dir);
    }
    started
}

fn start_in(bin: &Path, user: Option<(libc::uid_t, libc::gid_t)>, dir: &Path) -> Result<Cluster, String> {
    let dir = dir.to_path_buf();
    let (password, ca_file, other_ca_file) = init_cluster(bin, user, &dir)?;
    let port = free_port();
    let child = postgres_command(bin, user, &dir, port)?.spawn().map_err(|e| format!("cannot start postgres: {e}"))?;
    *RUNNING.lock().unwrap() = Some(Running { pid: child.id() as libc::pid_t, dir: dir.clone() });
    // SAFETY: registers a plain extern "C" function.
    unsafe { libc::atexit(stop_at_exit) };

    let socket = dir.join("socket");
    let socket_url = DatabaseUrl::parse(&format!(
        "postgres://postgres@{}:{port}/postgres",
        url::form_urlencoded::byte_serialize(socket.to_string_lossy().as_bytes()).collect::<String>()
    ))
    .map_err(|e| e.to_string())?;
    wait_until_ready(bin, &socket, port, &dir)?;
    Ok(Cluster {
        socket_url,
        tcp_base: format!("postgres://postgres:{password}@127.0.0.1:{port}"),
        ca_file,
        other_ca_file,
    })
}

/// Makes a cluster in `dir/data` (its socket directory `dir/socket`, TLS on with a test CA's
/// certificate); returns the superuser's password and the CA files (signer, stranger).
fn init_cluster(
    bin: &Path,
    user: Option<(libc::uid_t, libc::gid_t)>,
    dir: &Path,
) -> Result<(String, PathBuf, PathBuf), String> {
    let data = dir.join("data");
    let socket = dir.join("socket");
    std::fs::create_dir(&socket).map_err(|e| e.to_string())?;
    for p in [dir, &socket] {
        chown(p, user);
    }
    let password = format!("pw-{:x}", rand_u64());
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, &password).map_err(|e| e.to_string())?;
    chown(&pwfile, user);

    let out = as_server_user(&mut Command::new(bin.join("initdb")), user)
        .args(["-D".as_ref(), data.as_os_str()])
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "--auth-local=trust"])
        .args(["--auth-host=scram-sha-256", "--pwfile"])
        .arg(&pwfile)
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }

    // TLS: a test CA and a server certificate for localhost and 127.0.0.1 signed by it.
    let (ca_pem, cert_pem, key_pem) = certificates();
    let (other_ca_pem, _, _) = certificates();
    let ca_file = dir.join("ca.pem");
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&ca_file, ca_pem).map_err(|e| e.to_string())?;
    std::fs::write(&other_ca_file, other_ca_pem).map_err(|e| e.to_string())?;
    for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
        let path = data.join(name);
        std::fs::write(&path, pem).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        chown(&path, user);
    }
    Ok((password, ca_file, other_ca_file))
}

/// The postmaster of the cluster in `dir` (`data`, `socket`), on `port`, logging to
/// `server.log` there, and sent SIGQUIT by the kernel when the thread that spawns it ends.
fn postgres_command(
    bin: &Path,
    user: Option<(libc::uid_t, libc::gid_t)>,
    dir: &Path,
    port: u16,
) -> Result<Command, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin.join("postgres"));
    as_server_user(&mut cmd, user)
        .args(["-D".as_ref(), dir.join("data").as_os_str(), "-k".as_ref(), dir.join("socket").as_os_str()])
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        // A throwaway cluster: durability off for speed; the tests check logic, not disks.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .args(["-c", "ssl=on", "-c", "max_connections=200"])
        .args(stat_statements(bin))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe. Set after the uid change (which clears it).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
    Ok(cmd)
}

/// `pg_stat_statements` preloaded where it is installed (Debian's package has it), for tests
/// that count the statements a request costs (`page_views_pg.rs`); nothing otherwise.
fn stat_statements(bin: &Path) -> Vec<&'static str> {
    if bin.with_file_name("lib").join("pg_stat_statements.so").exists() {
        vec!["-c", "shared_preload_libraries=pg_stat_statements"]
    } else {
        Vec::new()
    }
}

/// A cluster of one test's own, for a test that stops the database server under running
/// instances and starts it again: same data directory, same socket, same port. Killed
/// (SIGQUIT) and removed when dropped.
pub struct PrivateCluster {
    /// Superuser `postgres` over the socket, database `postgres`.
    pub socket_url: DatabaseUrl,
    bin: PathBuf,
    user: Option<(libc::uid_t, libc::gid_t)>,
    dir: PathBuf,
    port: u16,
    pid: Option<libc::pid_t>,
}

/// Runs `job` on a thread that lives as long as the test binary: the postmasters it spawns
/// get the parent-death signal when the binary ends, not when a test's thread does.
fn on_spawner_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("postgres-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("a thread starts");
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    sender.lock().unwrap().send(job).expect("the spawner thread lives");
    rx.recv().expect("the spawner thread answers")
}

impl PrivateCluster {
    /// [`PrivateCluster::start`] with an empty database `portcullis` on it, and its URL.
    pub async fn with_database() -> Option<(PrivateCluster, DatabaseUrl)> {
        let cluster = PrivateCluster::start()?;
        let admin =
            portcullis::postgres::connect::connect(&cluster.socket_url).await.expect("the private cluster answers");
        admin.batch_execute("CREATE DATABASE portcullis").await.unwrap();
        drop(admin);
        let url = cluster.socket_url.with_dbname("portcullis");
        Some((cluster, url))
    }

    /// Makes and starts a cluster of its own; `None` (with the reason printed) as
    /// [`cluster`] when PostgreSQL cannot run here.
    pub fn start() -> Option<PrivateCluster> {
        let made = (|| -> Result<PrivateCluster, String> {
            let bin = bin_dir()?;
            let user = server_user()?;
            let dir = tempfile::Builder::new().prefix("portcullis-pg-").tempdir().map_err(|e| e.to_string())?.keep();
            let mut cluster = PrivateCluster {
                socket_url: DatabaseUrl::parse("postgres://postgres@localhost/postgres").map_err(|e| e.to_string())?,
                bin,
                user,
                dir,
                port: free_port(),
                pid: None,
            };
            init_cluster(&cluster.bin, cluster.user, &cluster.dir)?;
            cluster.socket_url = DatabaseUrl::parse(&format!(
                "postgres://postgres@{}:{}/postgres",
                url::form_urlencoded::byte_serialize(cluster.dir.join("socket").to_string_lossy().as_bytes())
                    .collect::<String>(),
                cluster.port
            ))
            .map_err(|e| e.to_string())?;
            cluster.start_server()?;
            Ok(cluster)
        })();
        match made {
            Ok(c) => Some(c),
            Err(why) if std::env::var_os(REQUIRE_ALL).is_some() => {
                panic!("PostgreSQL tests cannot run ({why}) and {REQUIRE_ALL} is set")
            }
            Err(why) => {
                eprintln!("skipped: PostgreSQL tests need Debian's postgresql package ({why})");
                None
            }
        }
    }

    /// Starts the server again (same data, socket and port) and waits until it answers.
    pub fn start_server(&mut self) -> Result<(), String> {
        assert!(self.pid.is_none(), "the server is already running");
        let cmd = postgres_command(&self.bin, self.user, &self.dir, self.port)?;
        let pid = on_spawner_thread(move || {
            let mut cmd = cmd;
            cmd.spawn().map(|c| c.id() as libc::pid_t).map_err(|e| format!("cannot start postgres: {e}"))
        })?;
        self.pid = Some(pid);
        wait_until_ready(&self.bin, &self.dir.join("socket"), self.port, &self.dir)
    }

    /// The postmaster's process id while the server runs (for tests that signal it).
    pub fn postmaster_pid(&self) -> Option<libc::pid_t> {
        self.pid
    }

    /// Stops the server (fast shutdown: its sessions are ended, then it exits) and waits
    /// until it has exited.
    pub fn stop_server(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: signalling our own child, then reaping it (on any thread: it is ours).
            unsafe {
                libc::kill(pid, libc::SIGINT);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
}

impl PrivateCluster {
    /// Stops the server and starts it again as a hot standby with no primary: it answers
    /// reads and refuses every write (in recovery), as the server a failover left a client
    /// on may, until `SELECT pg_promote()` makes it a primary again.
    pub fn restart_as_standby(&mut self) -> Result<(), String> {
        self.stop_server();
        let signal = self.dir.join("data").join("standby.signal");
        std::fs::write(&signal, "").map_err(|e| e.to_string())?;
        chown(&signal, self.user);
        self.start_server()
    }

    /// Kills the server as a crash would (SIGQUIT: immediate shutdown, no checkpoint, so only
    /// what the WAL on disk holds is there after [`PrivateCluster::start_server`]) and waits
    /// until it has exited.
    pub fn crash_server(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: as in stop_server.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: as in stop_server; SIGQUIT is the immediate shutdown.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories of earlier runs that were killed (their server died with them, by
/// the parent-death signal, but the directory stayed): older than ten minutes, so a run still
/// starting is left alone, and without a live postmaster.
fn remove_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let ours = e.file_name().to_str().is_some_and(|n| n.starts_with("portcullis-pg-"));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
        if !ours || !old {
            continue;
        }
        let live = std::fs::read_to_string(path.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<libc::pid_t>().ok())
            // SAFETY: signal 0 only checks that the process exists.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !live {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn wait_until_ready(bin: &Path, socket: &Path, port: u16, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(bin.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(socket)
            .args(["-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("postgres did not become ready: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

extern "C" fn stop_at_exit() {
    let Ok(mut running) = RUNNING.lock() else { return };
    if let Some(r) = running.take() {
        // SIGQUIT: immediate shutdown; the postmaster ends its backends, then itself.
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(r.pid, libc::SIGQUIT);
            let mut status = 0;
            libc::waitpid(r.pid, &mut status, 0);
        }
        let _ = std::fs::remove_dir_all(&r.dir);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A CA (PEM) and a server certificate and key (PEM) it signed, for localhost and 127.0.0.1.
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "portcullis test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &*ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// How many sessions wait for a row lock (a transaction id) in this database, once one does
/// (or after 10 s): for a test that holds a row a request's statement will wait on.
pub async fn row_lock_waiters(client: &tokio_postgres::Client) -> i64 {
    let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted
                   AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())";
    for _ in 0..500 {
        let n: i64 = client.query_one(waiting, &[]).await.unwrap().get(0);
        if n > 0 {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    0
}

/// How many sessions wait for an advisory lock, once one does (or after 2 s): for a test that
/// holds a lock a request will wait on, to act while that request waits.
pub async fn advisory_lock_waiters(client: &tokio_postgres::Client) -> i64 {
    // This database's only: the tests' databases share one cluster, and run at once.
    let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    for _ in 0..100 {
        let n: i64 = client.query_one(waiting, &[]).await.unwrap().get(0);
        if n > 0 {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    0
}
