//! CLI commands that only read (`user list`, `user factors`, `user groups NAME` alone,
//! `audit`, `config check`) leave nothing in the directory they run in: no `logs`, and on
//! sled no store where there was none. Commands that record events keep writing them to the
//! auth log in `log_dir` (README, "Managing users").

use std::path::Path;

use portcullis::store::conformance::{user, HASH_A};
use portcullis::store::Store;

use crate::child;
use crate::pg;

const READS: &[&[&str]] = &[
    &["user", "list"],
    &["user", "list", "--json"],
    &["user", "factors", "alice"],
    &["user", "groups", "alice"],
    &["audit"],
    &["audit", "--summary"],
    &["config", "check"],
];

/// The binary run in `dir` with the default (relative) data, log and certificate
/// directories, as an operator runs it from a shell, and with `env`.
async fn run_in(dir: &Path, env: &[(&str, String)], args: &[&str], stdin: Option<&str>) -> child::Run {
    let mut cmd = child::command(dir);
    cmd.env_remove("PORTCULLIS_DATA_DIR").env_remove("PORTCULLIS_LOG_DIR").env_remove("PORTCULLIS_CERT_DIR");
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .envs([("PORTCULLIS_ARGON2_MEMORY_KIB", "256"), ("PORTCULLIS_ARGON2_ITERATIONS", "1")])
        .args(args);
    child::run_cli(cmd, stdin).await
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_database_url_read_only_commands_create_no_logs_directory_and_writes_still_log() {
    let Some(url) = pg::database().await else { return };
    let store = Store::connect(&url, "test").await.unwrap();
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    drop(store);
    let env = [("PORTCULLIS_DATABASE_URL", url.to_string())];
    let dir = tempfile::tempdir().unwrap();

    for args in READS {
        run_in(dir.path(), &env, args, None).await.assert_ok(&args.join(" "));
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "`{}` left something behind", args.join(" "));
    }

    // A command that records an event writes it where it always did.
    let added =
        run_in(dir.path(), &env, &["user", "add", "bob", "--password-stdin"], Some("plum tractor velvet orbit\n"))
            .await;
    added.assert_ok("user add");
    assert_eq!(entries(dir.path()), ["logs"]);
    let log = logs_text(&dir.path().join("logs"));
    assert!(log.contains("\"event\":\"user_created\""), "{log}");
    check_groups_shown_without_an_event(dir.path(), &env).await;
}

/// `user groups NAME` alone shows the groups and records no change.
async fn check_groups_shown_without_an_event(dir: &Path, env: &[(&str, String)]) {
    let before = logs_text(&dir.join("logs"));
    let shown = run_in(dir, env, &["user", "groups", "bob"], None).await;
    shown.assert_ok("user groups bob");
    assert!(shown.stdout.contains("(no group)"), "{shown:?}");
    assert_eq!(logs_text(&dir.join("logs")), before, "showing the groups records no change");
}

fn logs_text(logs: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(logs).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    text
}

#[tokio::test]
async fn on_sled_read_only_commands_create_no_logs_directory_and_no_store() {
    let dir = tempfile::tempdir().unwrap();
    // No store here: a read says so, and makes none.
    for args in [&["user", "list"][..], &["user", "factors", "alice"], &["audit"]] {
        let run = run_in(dir.path(), &[], args, None).await;
        let line = run.assert_one_line_failure(&args.join(" "));
        assert!(line.contains("no store"), "{line}");
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "`{}` left something behind", args.join(" "));
    }

    let store = Store::open(&dir.path().join("data")).unwrap();
    store.users.insert(&user("alice"), HASH_A).await.unwrap();
    drop(store);
    for args in READS {
        let mut run = run_in(dir.path(), &[], args, None).await;
        // The store just closed may still be let go of.
        for _ in 0..100 {
            if !run.stderr.contains("in use") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            run = run_in(dir.path(), &[], args, None).await;
        }
        run.assert_ok(&args.join(" "));
        assert_eq!(entries(dir.path()), ["data"], "`{}` left something behind", args.join(" "));
    }
    run_in(dir.path(), &[], &["user", "unlock", "alice"], None).await.assert_ok("user unlock");
    assert_eq!(entries(dir.path()), ["data", "logs"], "a command that records an event still logs it");
}
