//! The open-files limit against the connection caps, with the real binary (task F, item 3):
//! under a low RLIMIT_NOFILE the server lowers its caps with one warning line, so silent
//! connections meet the cap (and wait in the listen queue) instead of running HTTPS out of
//! descriptors.

use std::net::IpAddr;
use std::time::Duration;

use crate::child::nofile_limit;
use crate::child::{self, ServerProcess};
use crate::exhaustion::connect_from;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_files_limit_the_caps_are_lowered_and_a_flood_leaves_room_for_a_real_client() {
    crate::exhaustion::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let args = child::quick_with(&[("--http-addr", "127.0.0.1:0"), ("--handshake-timeout", "2s")]);
    let server =
        tokio::task::block_in_place(|| ServerProcess::start_with(dir.path(), &args, |cmd| nofile_limit(cmd, 256)));
    let warnings: Vec<String> =
        server.output().lines().filter(|l| l.contains("open-files limit")).map(str::to_string).collect();
    assert_eq!(warnings.len(), 1, "{}", server.output());
    assert!(warnings[0].contains("max_connections lowered from 1024 to 182"), "{}", warnings[0]);
    assert!(warnings[0].contains("ulimit -Hn"), "{}", warnings[0]);
    // 32 per address of 1024 becomes 5 of 182: still about 32 addresses to hold every slot.
    let per_ip = server.output().lines().find(|l| l.contains("per-address caps were lowered")).map(str::to_string);
    let per_ip = per_ip.unwrap_or_else(|| panic!("no per-address line: {}", server.output()));
    assert!(per_ip.contains("max_connections_per_ip=5"), "{per_ip}");

    // 240 silent TLS connections from 10 addresses (24 each, under the per-address cap):
    // more than 256 descriptors hold beside the store and logs. At the old cap of 1024 they
    // ran accept out of descriptors (EMFILE); now 182 are served and the rest wait in the
    // listen queue until the silent ones time out, and a real client gets in.
    let https = server.url("").trim_start_matches("https://").parse().unwrap();
    let mut silent = Vec::new();
    for i in 0..240 {
        let source: IpAddr = format!("127.0.5.{}", 1 + i % 10).parse().unwrap();
        silent.push(connect_from(source, https).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = tokio::time::timeout(PATIENCE, server.browser().get(server.url("/healthz")).send())
        .await
        .expect("a real client was kept out")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let output = server.output();
    assert!(!output.contains("cannot accept a connection"), "accept failed: {output}");
    drop(silent);
    server.terminate();
}

/// A limit that holds hardly any connection beside what the server keeps for itself stops the
/// start in one line naming the limit to set, rather than serving with a cap one client fills
/// (review 150: `ulimit -n 40` started with `max_connections` 1).
#[tokio::test]
async fn a_limit_that_holds_hardly_any_connection_stops_the_start_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = child::command(dir.path());
    cmd.args(child::quick_with(&[]));
    child::nofile_limit(&mut cmd, 60);
    let (status, _, stderr) = child::run(cmd, None).await;
    assert!(!status.success(), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("the open-files limit (60) holds only 12 HTTPS connections") && line.contains("at least 1072"),
        "{line}"
    );
    assert!(!dir.path().join("data").exists(), "refused before the store is made");
    // Below the reserve, none: not the 1 the cap is kept at (review 153).
    for (limit, holds) in [(30, "holds no HTTPS connections"), (49, "holds only 1 HTTPS connection beside")] {
        let mut cmd = child::command(dir.path());
        cmd.args(child::quick_with(&[]));
        child::nofile_limit(&mut cmd, limit);
        let (status, _, stderr) = child::run(cmd, None).await;
        assert!(!status.success() && stderr.contains(holds), "{limit}: {stderr}");
    }
}
