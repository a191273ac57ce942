//! `serve` started before its database (PostgreSQL booting after portcullis, or a failover
//! under way) waits for it, tries again after 1, 2, 4 … s with one warning per try, and
//! serves once it answers, without a restart; SIGTERM while it waits stops it cleanly. A
//! database that is wrong rather than absent (no such database) still stops the start at
//! once with one line, as any bad setting does.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::child::{self, ServerProcess, DEADLINE};
use crate::pg::PrivateCluster;

/// Waits until the child's standard error, read line by line into `lines`, holds `needle`.
fn wait_for_line(child: &mut std::process::Child, lines: &std::sync::Mutex<Vec<String>>, needle: &str) {
    let until = Instant::now() + DEADLINE;
    while !lines.lock().unwrap().iter().any(|l| l.contains(needle)) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited with {status} before saying {needle:?}: {:#?}", lines.lock().unwrap());
        }
        assert!(Instant::now() < until, "never said {needle:?}: {:#?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_before_its_database_waits_for_it_then_serves_without_a_restart() {
    let Some((mut cluster, url)) = PrivateCluster::with_database().await else { return };
    let url = url.to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut add = child::command(dir.path());
    add.env("PORTCULLIS_DATABASE_URL", &url).args(["user", "add", "alice", "--password-stdin"]);
    child::run_cli(add, Some(&format!("{}\n", crate::helpers::GOOD_PASSWORD))).await.assert_ok("user add");

    tokio::task::block_in_place(|| cluster.stop_server());
    // The database comes back a few seconds after the server started waiting for it.
    let starter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        cluster.start_server().expect("the cluster starts again");
        cluster
    });
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), child::QUICK, |cmd| {
            cmd.env("PORTCULLIS_DATABASE_URL", &url);
        })
    });
    let _cluster = starter.await.unwrap();
    let waited = server.stderr.lock().unwrap().iter().filter(|l| l.contains("waiting for the database")).count();
    assert!(waited >= 1, "it said it waited: {}", server.output());
    let (status, cookie) = child::login(&server, &server.browser(), "alice", crate::helpers::GOOD_PASSWORD).await;
    assert_eq!((status, cookie.is_some()), (303, true), "{}", server.output());
    assert_eq!(server.browser().get(server.url("/readyz")).send().await.unwrap().status(), 200);
    assert!(tokio::task::block_in_place(|| server.terminate()).success());
}

#[tokio::test]
async fn sigterm_while_serve_waits_for_its_database_stops_it_cleanly() {
    // Nothing listens on this port: a database that is not there (no PostgreSQL needed).
    let port = crate::helpers::free_port();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK)
        .env("PORTCULLIS_DATABASE_URL", format!("postgres://portcullis@127.0.0.1:{port}/portcullis?sslmode=disable"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("the binary starts");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (pipe, lines) = (child.stderr.take().unwrap(), std::sync::Arc::clone(&lines));
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        wait_for_line(&mut child, &lines, "waiting for the database");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        let status = child::wait_or_kill(&mut child, DEADLINE);
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        assert!(status.success(), "{status}: {lines:#?}");
        assert!(lines.iter().all(|l| !l.contains("listening")), "{lines:#?}");
        let warning = lines.iter().find(|l| l.contains("waiting for the database")).unwrap();
        assert!(warning.contains("Connection refused") && warning.contains("retry_in_s=1"), "{warning}");
        // The log directory is made once the store is open (review 203 found an empty one).
        assert!(!logs.exists(), "a start that never reached its database made {}", logs.display());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_that_is_wrong_rather_than_absent_stops_the_start_at_once_with_one_line() {
    let Some(cluster) = crate::pg::cluster() else { return };
    let url = cluster.socket_url.with_dbname("no_such_database").to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK).env("PORTCULLIS_DATABASE_URL", &url);
    let run = child::run_cli(cmd, None).await;
    let line = run.assert_one_line_failure("serve on a database that does not exist");
    assert!(line.contains("no_such_database") && !line.contains("waiting"), "{line}");
}
