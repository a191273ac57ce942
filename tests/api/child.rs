//! The real `portcullis` binary as a child process: `serve` on a free port in a directory of
//! its own (cheap argon2, quotas off unless asked), its memory, SIGKILL, and CLI commands run
//! against it. Used where a test needs a separate process: crash safety, disk exhaustion,
//! server-only memory figures, and what the binary prints.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Nothing here should take this long; past it the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The binary with its directories under `dir` and no `PORTCULLIS_*` from the caller.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PORTCULLIS_DATA_DIR", dir.join("data"))
        .env("PORTCULLIS_LOG_DIR", dir.join("logs"))
        .env("PORTCULLIS_CERT_DIR", dir.join("certs"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    cmd
}

/// Flags for a quick test server: port 0, no redirect listener, argon2 small, quotas off.
pub const QUICK: &[&str] = &[
    "serve",
    "--https-addr",
    "127.0.0.1:0",
    "--http-addr",
    "off",
    "--argon2-memory-kib",
    "256",
    "--argon2-iterations",
    "1",
    "--login-quota-per-ip",
    "off",
    "--login-quota-per-user",
    "off",
    "--captcha-after-failures",
    "1000",
];

/// [`QUICK`] with some flags' values replaced (or added): `("--hash-workers", "1")`.
pub fn quick_with(overrides: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    let mut args = QUICK.to_vec();
    for (flag, value) in overrides {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value,
            None => args.extend([*flag, *value]),
        }
    }
    args
}

/// Resident memory of process `pid`, in KiB (0 when it cannot be read).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A running `portcullis serve`.
pub struct ServerProcess {
    pub child: Child,
    pub dir: PathBuf,
    pub origin: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr: joined, after the exit, for the last lines.
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    })
}

impl ServerProcess {
    /// Starts `portcullis` with `args` in `dir` and waits until it says where it listens.
    /// `setup` may adjust the command (limits, environment) before it starts.
    pub fn start_with(dir: &Path, args: &[&str], setup: impl FnOnce(&mut Command)) -> ServerProcess {
        let mut cmd = command(dir);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("the binary starts");
        let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        let until = Instant::now() + DEADLINE;
        let origin = loop {
            let found = stderr.lock().unwrap().iter().find_map(|l| {
                l.split("open https://").nth(1).and_then(|rest| rest.split('/').next()).map(|a| format!("https://{a}"))
            });
            if let Some(origin) = found {
                break origin;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve exited with {status} before listening: {:#?}", stderr.lock().unwrap());
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve never said it was listening: {:#?}", stderr.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ServerProcess { child, dir: dir.to_path_buf(), origin, stdout, stderr, readers }
    }

    pub fn start(dir: &Path, args: &[&str]) -> ServerProcess {
        Self::start_with(dir, args, |_| {})
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// A browser-like client trusting this server's certificate.
    pub fn browser(&self) -> reqwest::Client {
        crate::helpers::browser(&self.dir.join("certs"))
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// SIGKILL: no shutdown, no flush, nothing. (Reaped when dropped.)
    pub fn sigkill(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.stop()
    }

    /// SIGTERM, wait for the exit, and return it with every line printed on standard output
    /// and standard error.
    pub fn terminate_with_output(mut self) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        let status = self.stop();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        (status, self.stdout.lock().unwrap().clone(), self.stderr.lock().unwrap().clone())
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        wait_or_kill(&mut self.child, DEADLINE)
    }

    /// Waits for the server to exit by itself, for at most `within` (then kills it and
    /// panics); the output is complete afterwards.
    pub fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() <= until, "the server did not stop by itself: {}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        };
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        status
    }

    /// Everything printed so far, standard output then standard error.
    pub fn output(&self) -> String {
        let mut text = self.stdout.lock().unwrap().join("\n");
        text.push('\n');
        text.push_str(&self.stderr.lock().unwrap().join("\n"));
        text
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one CLI run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_ok(&self, what: &str) {
        assert!(self.ok, "{what}: {self:?}");
    }

    /// Asserts a failure explained on exactly one line of standard error.
    pub fn assert_one_line_failure(&self, what: &str) -> &str {
        assert!(!self.ok, "{what}: expected a failure, got {self:?}");
        let err = self.stderr.trim_end_matches('\n');
        assert!(!err.trim().is_empty(), "{what}: nothing on stderr");
        assert_eq!(err.lines().count(), 1, "{what}: stderr is not one line: {err:?}");
        err
    }
}

/// Runs `portcullis ARGS` in `dir` on a blocking thread, with `stdin` (plus a newline) if given.
pub async fn cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = command(dir);
    cmd.args(args);
    run_cli(cmd, stdin.map(|s| format!("{s}\n")).as_deref()).await
}

/// As [`cli`] for a command already set up (see [`command`]), with `stdin` as is.
pub async fn run_cli(cmd: Command, stdin: Option<&str>) -> Run {
    let (status, stdout, stderr) = run(cmd, stdin).await;
    Run { ok: status.success(), stdout, stderr }
}

/// `portcullis ARGS` in `dir` ([`command`]'s environment), tried again a bounded while as long
/// as a server stopped in this process still holds the sled store.
pub async fn run_cli_when_released(dir: &Path, args: &[&str]) -> Run {
    for _ in 0..200 {
        let mut cmd = command(dir);
        cmd.args(args);
        let run = run_cli(cmd, None).await;
        if !run.stderr.contains("in use by a running server") {
            return run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the store in {} was never released", dir.display())
}

/// Runs `cmd` to completion on a blocking thread (so an in-process server on this runtime
/// keeps answering), feeding it `stdin` as is if given; fails the test past [`DEADLINE`].
pub async fn run(mut cmd: Command, stdin: Option<&str>) -> (ExitStatus, String, String) {
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the binary starts");
        if let Some(text) = stdin {
            // The child may exit before reading (a bad flag); a broken pipe is fine then.
            let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
        }
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
        let err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
        let status = wait_or_kill(&mut child, DEADLINE);
        (status, out.join().unwrap(), err.join().unwrap())
    })
    .await
    .unwrap()
}

/// Waits for the child; kills it and fails the test if it outlives `deadline`.
pub fn wait_or_kill(child: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child process did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The whole sign-in against a child server: GET the form, POST it. Returns the response
/// status and the session cookie value if one was set.
pub async fn login(
    server: &ServerProcess,
    client: &reqwest::Client,
    user: &str,
    password: &str,
) -> (u16, Option<String>) {
    let resp = login_response(server, client, user, password).await;
    (resp.status().as_u16(), crate::helpers::cookie_value(&resp, "__Host-portcullis"))
}

/// As [`login`], returning the answer to the POST itself.
pub async fn login_response(
    server: &ServerProcess,
    client: &reqwest::Client,
    user: &str,
    password: &str,
) -> reqwest::Response {
    login_response_if_answered(server, client, user, password).await.expect("the server answers")
}

/// [`login_response`], `None` when the server does not answer (it stopped).
pub async fn login_response_if_answered(
    server: &ServerProcess,
    client: &reqwest::Client,
    user: &str,
    password: &str,
) -> Option<reqwest::Response> {
    let page = client.get(server.url("/login")).send().await.ok()?.text().await.ok()?;
    let csrf = crate::helpers::hidden_field(&page, "csrf").unwrap_or_default();
    let form = [("username", user), ("password", password), ("csrf", csrf.as_str())];
    client.post(server.url("/login")).form(&form).send().await.ok()
}

/// Sets the child's soft and hard open-files limit to `n` (so raising it cannot help).
pub fn nofile_limit(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
