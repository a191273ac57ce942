//! The command line: the real `portcullis` binary against a stopped store, against a running
//! server (through its admin socket), with bad settings, and `serve` itself.

use std::path::{Path, PathBuf};

use crate::child::{self, Run, ServerProcess};
use crate::helpers::{spawn_app, spawn_in, test_settings, GOOD_PASSWORD};

/// Another password that passes the policy.
const NEW_PASSWORD: &str = "a whole new passphrase";

/// `serve` on a free port, without the redirect listener.
const SERVE: &[&str] = &["serve", "--https-addr", "127.0.0.1:0", "--http-addr", "off"];

async fn cli(dir: &Path, args: &[&str]) -> Run {
    child::cli(dir, args, None).await
}

async fn cli_with_password(dir: &Path, args: &[&str], password: &str) -> Run {
    child::cli(dir, args, Some(password)).await
}

/// `user list --json`, each line parsed, after checking no line shows a hash.
async fn list_json(dir: &Path) -> Vec<serde_json::Value> {
    let run = cli(dir, &["user", "list", "--json"]).await;
    run.assert_ok("user list --json");
    assert!(!run.stdout.contains("argon2") && !run.stdout.contains('$'), "a hash in the listing: {}", run.stdout);
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}")))
        .collect()
}

fn names(users: &[serde_json::Value]) -> Vec<String> {
    users.iter().map(|u| u["username"].as_str().unwrap().to_string()).collect()
}

// --- against a stopped server: the CLI opens the store itself ---------------------------

#[tokio::test]
async fn user_commands_manage_a_stopped_store_and_the_server_sees_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    cli_with_password(d, &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add alice");
    cli_with_password(d, &["user", "add", "root", "--admin", "--password-stdin"], GOOD_PASSWORD)
        .await
        .assert_ok("add root");
    cli_with_password(d, &["user", "add", "bob", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add bob");

    let table = cli(d, &["user", "list"]).await;
    table.assert_ok("user list");
    assert!(table.stdout.contains("alice") && table.stdout.contains("bob"), "{}", table.stdout);
    assert!(!table.stdout.contains("argon2"), "{}", table.stdout);

    let users = list_json(d).await;
    assert_eq!(names(&users), ["alice", "bob", "root"]);
    assert_eq!(users[2]["admin"], true);
    assert_eq!(users[0]["admin"], false);

    cli_with_password(d, &["user", "passwd", "alice", "--password-stdin"], NEW_PASSWORD)
        .await
        .assert_ok("passwd alice");
    cli(d, &["user", "unlock", "alice"]).await.assert_ok("unlock alice");
    // A warning of the auth log (`user_disabled`) goes to the log, not to the terminal, where
    // the command's own line says what it did (a review saw `warning: user disabled event=…`).
    let disabled = cli(d, &["user", "disable", "alice"]).await;
    disabled.assert_ok("disable alice");
    assert_eq!(disabled.stderr, "", "nothing but the command's own line");
    cli(d, &["user", "enable", "alice"]).await.assert_ok("enable alice");
    cli(d, &["user", "del", "bob"]).await.assert_ok("del bob");
    assert_eq!(names(&list_json(d).await), ["alice", "root"]);

    // A server started on the same store afterwards sees exactly those changes.
    let settings = test_settings(d);
    let app = spawn_in(dir, settings).await;
    assert!(app.admin_password.is_empty(), "users exist, so no first administrator is made");
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 401);
    assert_eq!(app.login_with(&app.new_browser(), "alice", NEW_PASSWORD).await.status(), 303);
    assert_eq!(app.login_with(&app.new_browser(), "bob", GOOD_PASSWORD).await.status(), 401);
    assert_eq!(app.login_with(&app.new_browser(), "root", GOOD_PASSWORD).await.status(), 303);
    let lines = app.log_lines();
    for event in ["user_created", "authn_password_change", "user_unlocked", "user_disabled", "user_deleted"] {
        assert!(lines.iter().any(|l| l["event"] == event && l["by"] == "cli"), "no {event} by cli");
    }
    assert!(!app.log_text().contains(GOOD_PASSWORD) && !app.log_text().contains(NEW_PASSWORD));
}

#[tokio::test]
async fn weak_passwords_are_refused_with_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for weak in ["Tr0ub4dor&3", "123456789123456", "ManchesterUnited"] {
        let run = cli_with_password(d, &["user", "add", "carol", "--password-stdin"], weak).await;
        let err = run.assert_one_line_failure(weak);
        assert!(err.contains("password"), "{err}");
        assert!(!err.contains(weak), "the refused password is echoed: {err}");
    }
    // Nor is a store left behind by the refused first user (a weak password typed in the
    // wrong directory would leave one that later commands find).
    assert!(!d.join("data").exists() && !d.join("logs").exists(), "a refused user add made a store");

    cli_with_password(d, &["user", "add", "carol", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add carol");
    let run = cli_with_password(d, &["user", "passwd", "carol", "--password-stdin"], "123456789123456").await;
    assert!(run.assert_one_line_failure("weak passwd").contains("common"), "{run:?}");
    // No password on standard input at all.
    let run = cli_with_password(d, &["user", "passwd", "carol", "--password-stdin"], "").await;
    run.assert_one_line_failure("empty stdin");
    // A control character no sign-in form can take, or the phrase XKCD published (review 141).
    let run =
        cli_with_password(d, &["user", "passwd", "carol", "--password-stdin"], "plum tractor\0velvet orbit nul").await;
    assert!(run.assert_one_line_failure("NUL").contains("control character"), "{run:?}");
    let run =
        cli_with_password(d, &["user", "passwd", "carol", "--password-stdin"], "correct horse battery staple").await;
    assert!(run.assert_one_line_failure("xkcd").contains("common"), "{run:?}");
}

#[tokio::test]
async fn unknown_users_and_bad_flags_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli_with_password(d, &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add alice");
    for args in [&["user", "del", "nobody"][..], &["user", "unlock", "nobody"][..]] {
        let run = cli(d, args).await;
        assert!(run.assert_one_line_failure(&args.join(" ")).contains("nobody"), "{run:?}");
    }
    let run = cli_with_password(d, &["user", "passwd", "nobody", "--password-stdin"], NEW_PASSWORD).await;
    assert!(run.assert_one_line_failure("passwd nobody").contains("nobody"));
    let run = cli_with_password(d, &["user", "add", "alice", "--password-stdin"], NEW_PASSWORD).await;
    assert!(run.assert_one_line_failure("add twice").contains("exists"));
    // Named as stored, not as typed: fullwidth `ＡＬＩＣＥ` is the existing `alice`.
    let run = cli_with_password(d, &["user", "add", "ＡＬＩＣＥ", "--password-stdin"], NEW_PASSWORD).await;
    let line = run.assert_one_line_failure("add a spelling of alice");
    assert!(line.contains("\"alice\" already exists"), "{line}");

    for args in [
        &["user", "add", "dave", "--bogus"][..],
        &["user", "list", "--jsn"][..],
        &["user", "frobnicate"][..],
        &["user", "del"][..],
        &["serve", "--no-such-setting", "1"][..],
    ] {
        cli(d, args).await.assert_one_line_failure(&args.join(" "));
    }
    // A settings flag `portcullis --help` lists, after another command: told where it goes.
    let run = cli(d, &["user", "list", "--data-dir", "elsewhere"]).await;
    assert!(run.assert_one_line_failure("user list --data-dir").contains("a setting of `serve`"), "{run:?}");
    // Before the command or after it, a usage error's status: 2.
    for args in [&["--data-dir", "x", "user", "list"][..], &["user", "list", "--data-dir", "x"][..]] {
        let status = child::command(d).args(args).output().unwrap().status;
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
    // What was typed is shown escaped, not stripped of its escape sequences (nor obeyed).
    for (args, shown) in [
        (&["bo\u{1b}[2Jgus"][..], "bo\\u{1b}[2Jgus"),
        (&["user", "add", "dave", "--x\u{1b}]0;title\u{7}"][..], "--x\\u{1b}]0;title\\u{7}"),
        // A newline typed in an argument is not one of clap's line breaks.
        (&["audit", "--limit", "1\n2"][..], "'1\\u{a}2'"),
        (&["bo\n\ngus"][..], "'bo\\u{a}\\u{a}gus'"),
        (&["user", "del", "a\nb"][..], "\"a\\nb\""),
        // Marks of every script as written: Rust's `{:?}` wrote `"ร\u{e49}าน"`.
        (&["user", "del", "\u{e23}\u{e49}\u{e32}\u{e19}"][..], "no user named \"\u{e23}\u{e49}\u{e32}\u{e19}\""),
        // A look-alike of an ASCII name is escaped as the tables show it (review 192 read
        // `no user named "аdmin"` as the real `admin` missing).
        (&["user", "groups", "\u{430}dmin", "--add", "ops"][..], "no user named \"\\u{430}dmin\""),
        // A command without its subcommand says so (clap would print the whole help).
        (&["user"][..], "`portcullis user` needs a subcommand (see portcullis user --help)"),
        // A refused value points at the help of the command that takes it.
        (&["user", "groups", "alice", "--add", "a,b"][..], "(see portcullis user groups --help)"),
        (&["audit", "--limit", "x"][..], "(see portcullis audit --help)"),
        // An option's value is not a subcommand, even when it is spelt like one.
        (&["--config", "audit", "user"][..], "`portcullis user` needs a subcommand"),
        (&["--config=audit", "store"][..], "`portcullis store` needs a subcommand"),
        // A name that starts with `-` is read as an option: the line says how to give it.
        (&["user", "add", "-bob"][..], "goes after `--`: portcullis user add -- -name"),
        // A name that cannot be is said before a password is asked for (review 137 heard of
        // the missing terminal first).
        (&["user", "add", ""][..], "invalid username: "),
        (&["user", "add", "a\u{200b}b"][..], "invalid username: "),
    ] {
        let run = cli(d, args).await;
        let line = run.assert_one_line_failure(&args.join(" "));
        assert!(line.contains(shown) && !line.contains('\u{1b}'), "{line:?}");
    }
    assert_eq!(names(&list_json(d).await), ["alice"]);

    // The help of `help` is the help, as `--help` there gives it, not a refusal of `--help`.
    for (args, asked) in [
        (&["help", "--help"][..], &["--help"][..]),
        (&["help", "-h"][..], &["--help"][..]),
        (&["user", "help", "-h"][..], &["user", "--help"][..]),
        (&["help", "user", "--help"][..], &["user", "--help"][..]),
        (&["help", "user", "groups", "-h"][..], &["user", "groups", "--help"][..]),
    ] {
        let (run, help) = (cli(d, args).await, cli(d, asked).await);
        run.assert_ok(&args.join(" "));
        assert!(run.stdout.contains("Usage: portcullis"), "{run:?}");
        assert_eq!(run.stdout, help.stdout, "{args:?}");
    }
    cli(d, &["help", "--bogus"]).await.assert_one_line_failure("help --bogus");
}

// --- against a running server: through the admin socket ---------------------------------

#[tokio::test]
async fn user_commands_reach_a_running_server_through_its_admin_socket() {
    let app = spawn_app().await;
    let d = app.dir.path();

    cli_with_password(d, &["user", "add", "bob", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add bob");
    let browser = app.new_browser();
    assert_eq!(app.login_with(&browser, "bob", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);

    let users = list_json(d).await;
    assert_eq!(names(&users), ["admin", "bob"]);
    assert_eq!(users[1]["active_sessions"], 1);
    let table = cli(d, &["user", "list"]).await;
    table.assert_ok("user list");
    assert!(table.stdout.contains("bob"));

    cli(d, &["user", "unlock", "bob"]).await.assert_ok("unlock bob");
    // A value past the socket's request size says what is wrong, not "malformed request".
    let huge = "a".repeat(70_000);
    let run = cli(d, &["user", "unlock", &huge]).await;
    assert!(run.assert_one_line_failure("unlock a 70,000-character name").contains("longer than 64 KiB"), "{run:?}");
    let run = cli_with_password(d, &["user", "add", "carl", "--password-stdin"], &huge).await;
    assert!(run.assert_one_line_failure("a 70,000-character password").contains("longer than 64 KiB"), "{run:?}");
    assert!(cli(d, &["user", "del", "nobody"]).await.assert_one_line_failure("del nobody").contains("nobody"));
    let run = cli_with_password(d, &["user", "add", "carol", "--password-stdin"], "123456789123456").await;
    run.assert_one_line_failure("weak password through the socket");
    assert_eq!(names(&list_json(d).await), ["admin", "bob"]);
    assert!(!app.log_text().contains(GOOD_PASSWORD));
}

#[tokio::test]
async fn user_passwd_through_the_cli_ends_the_users_live_sessions() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.add_user("bob", GOOD_PASSWORD, false).await;
    let (alice, bob) = (app.new_browser(), app.new_browser());
    app.login_with(&alice, "alice", GOOD_PASSWORD).await;
    app.login_with(&bob, "bob", GOOD_PASSWORD).await;
    assert_eq!(alice.get(app.url("/")).send().await.unwrap().status(), 200);

    let run = cli_with_password(app.dir.path(), &["user", "passwd", "alice", "--password-stdin"], NEW_PASSWORD).await;
    run.assert_ok("passwd alice");
    assert!(run.stdout.contains("1 session"), "{}", run.stdout);

    let resp = alice.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login?ended=session");
    assert_eq!(bob.get(app.url("/")).send().await.unwrap().status(), 200, "only alice's sessions end");
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 401);
    assert_eq!(app.login_with(&app.new_browser(), "alice", NEW_PASSWORD).await.status(), 303);
}

#[tokio::test]
async fn user_del_through_the_cli_ends_the_users_sessions() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    app.login("alice", GOOD_PASSWORD).await;
    assert_eq!(app.client.get(app.url("/")).send().await.unwrap().status(), 200);
    cli(app.dir.path(), &["user", "del", "alice"]).await.assert_ok("del alice");
    let resp = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login?ended=session");
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 401);
}

#[tokio::test]
async fn a_disabled_user_is_refused_like_a_wrong_password_and_signed_out_until_enabled() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let alice = app.new_browser();
    app.login_with(&alice, "alice", GOOD_PASSWORD).await;
    assert_eq!(alice.get(app.url("/")).send().await.unwrap().status(), 200);

    let run = cli(app.dir.path(), &["user", "disable", "alice"]).await;
    run.assert_ok("disable alice");
    assert!(run.stdout.contains("disabled; 1 session(s) ended"), "{}", run.stdout);
    let resp = alice.get(app.url("/")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/login?ended=session"));

    // The right password gets exactly the answer a wrong one gets; only the log says why.
    let strip = |page: &str| page.replace(&crate::helpers::hidden_field(page, "csrf").unwrap(), "TOKEN");
    let right = app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await;
    let (right_status, right_page) = (right.status(), right.text().await.unwrap());
    let wrong = app.login_with(&app.new_browser(), "alice", "not the right password at all").await;
    let (wrong_status, wrong_page) = (wrong.status(), wrong.text().await.unwrap());
    assert_eq!((right_status, strip(&right_page)), (wrong_status, strip(&wrong_page)));
    assert_eq!(right_status, 401);
    let log = app.log_text();
    assert!(log.contains(r#""reason":"disabled""#) && log.contains(r#""event":"user_disabled""#), "{log}");
    let alice_listed = |users: Vec<serde_json::Value>| users.into_iter().find(|u| u["username"] == "alice").unwrap();
    assert_eq!(alice_listed(list_json(app.dir.path()).await)["disabled"], true);

    cli(app.dir.path(), &["user", "enable", "alice"]).await.assert_ok("enable alice");
    assert_eq!(app.login_with(&app.new_browser(), "alice", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(alice_listed(list_json(app.dir.path()).await)["disabled"], false);
    cli(app.dir.path(), &["user", "disable", "nobody"]).await.assert_one_line_failure("disable an unknown user");
}

#[tokio::test]
async fn the_admin_socket_is_private_to_its_owner() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let app = spawn_app().await;
    let socket = app.settings.data_dir.join("admin.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "admin.sock");
    let dir_mode = std::fs::metadata(&app.settings.data_dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "the data directory is open to others: {:o}", dir_mode & 0o777);
}

#[tokio::test]
async fn a_locked_store_without_an_answering_socket_is_one_clear_line() {
    let app = spawn_app().await;
    std::fs::remove_file(app.settings.data_dir.join("admin.sock")).unwrap();
    let run = cli(app.dir.path(), &["user", "list"]).await;
    let err = run.assert_one_line_failure("locked store");
    assert!(err.contains("in use"), "{err}");
}

// --- settings ---------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_setting_value_fails_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flags = ["serve", "--https-addr", "127.0.0.1:0", "--http-addr", "off"];

    let mut args = flags.to_vec();
    args.extend(["--session-idle-timeout", "soon"]);
    let run = cli(d, &args).await;
    let err = run.assert_one_line_failure("flag");
    assert!(err.contains("session_idle_timeout") && err.contains("--session-idle-timeout"), "{err}");

    let mut cmd = child::command(d);
    cmd.args(flags).env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "soon");
    let run = child::run_cli(cmd, None).await;
    let err = run.assert_one_line_failure("environment");
    assert!(err.contains("session_idle_timeout") && err.contains("PORTCULLIS_SESSION_IDLE_TIMEOUT"), "{err}");

    std::fs::write(d.join("portcullis.toml"), "min_password_length = \"lots\"\n").unwrap();
    let run = cli(d, &flags).await;
    assert!(run.assert_one_line_failure("file").contains("min_password_length"), "{run:?}");
    // `user` commands read the same settings and refuse the same way.
    let run = cli(d, &["user", "list"]).await;
    assert!(run.assert_one_line_failure("user list with a bad file").contains("min_password_length"));
    assert!(!d.join("data").exists(), "nothing was started");
}

// --- `serve` itself -----------------------------------------------------------------------

/// The password the first start printed, if it printed one.
fn printed_password(stdout: &[String]) -> Option<String> {
    stdout.iter().find_map(|l| l.trim().strip_prefix("password:").map(|p| p.trim().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_the_admin_password_on_first_start_only_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d: PathBuf = dir.path().to_path_buf();

    let first = tokio::task::spawn_blocking({
        let d = d.clone();
        move || ServerProcess::start(&d, SERVE)
    })
    .await
    .unwrap();
    assert!(d.join("certs/cert.pem").exists() && d.join("data").is_dir() && d.join("logs").is_dir());
    let health = first.browser().get(first.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // A user added through the running server's socket must survive the stop.
    cli_with_password(&d, &["user", "add", "carol", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add carol");
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || first.terminate_with_output()).await.unwrap();
    // Never print the generated password itself, even when failing: check where it went
    // before showing stderr in any message.
    let password = printed_password(&stdout).expect("the first start prints the administrator's password");
    assert!(password.len() >= 20, "a short generated password ({} characters)", password.len());
    assert_eq!(stdout.iter().filter(|l| l.contains(&password)).count(), 1, "printed once");
    assert!(stdout.iter().any(|l| l.contains("username: admin")));
    assert!(!stderr.iter().any(|l| l.contains(&password)), "the password reached the log on stderr");
    assert!(status.success(), "first stop: {status:?}; stderr: {stderr:#?}");
    assert!(!d.join("data/admin.sock").exists(), "the admin socket is removed at shutdown");
    let logs: String = std::fs::read_dir(d.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!logs.contains(&password), "the password reached the log files");

    // Second start on the same directories: no new administrator, nothing printed; the
    // printed password works. SIGTERM right after the "listening" line is a clean stop too.
    let second = tokio::task::spawn_blocking({
        let d = d.clone();
        move || ServerProcess::start(&d, SERVE)
    })
    .await
    .unwrap();
    let (status, _) = child::login(&second, &second.browser(), "admin", &password).await;
    assert_eq!(status, 303, "the printed password signs in");
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || second.terminate_with_output()).await.unwrap();
    assert!(status.success(), "second stop: {status:?}; stderr: {stderr:#?}");
    assert!(printed_password(&stdout).is_none() && !stdout.iter().any(|l| l.contains(&password)));
    assert!(!stderr.iter().any(|l| l.contains("no enabled administrator")), "{stderr:#?}");
    // Until `admin` signs in, a start says how to set its password, should the first start
    // have been stopped before printing it (review 182: no line said so).
    let not_yet = "the administrator admin has not signed in yet";
    assert!(stderr.iter().any(|l| l.contains(not_yet) && l.contains("portcullis user passwd admin")), "{stderr:#?}");

    // Third start, stopped at once: the signal handler is in place before "listening".
    let third = tokio::task::spawn_blocking({
        let d = d.clone();
        move || ServerProcess::start(&d, SERVE)
    })
    .await
    .unwrap();
    let (status, _, stderr) = tokio::task::spawn_blocking(move || third.terminate_with_output()).await.unwrap();
    assert!(status.success(), "immediate stop: {status:?}; stderr: {stderr:#?}");
    assert!(!stderr.iter().any(|l| l.contains(not_yet)), "admin has signed in: {stderr:#?}");

    assert_eq!(names(&list_json(&d).await), ["admin", "carol"], "users persist across stops");

    // Without an enabled administrator the start says so (review 138: nothing did).
    cli(&d, &["user", "disable", "admin"]).await.assert_ok("disable admin");
    let fourth = tokio::task::spawn_blocking({
        let d = d.clone();
        move || ServerProcess::start(&d, SERVE)
    })
    .await
    .unwrap();
    let (_, _, stderr) = tokio::task::spawn_blocking(move || fourth.terminate_with_output()).await.unwrap();
    assert!(stderr.iter().any(|l| l.contains("WARN") && l.contains("no enabled administrator")), "{stderr:#?}");
}

#[tokio::test]
async fn a_config_file_before_the_subcommand_is_read_and_settings_flags_there_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("elsewhere");
    std::fs::write(dir.path().join("alt.toml"), format!("data_dir = {:?}\n", other.join("data").display().to_string()))
        .unwrap();
    let mut cmd = child::command(dir.path());
    cmd.env_remove("PORTCULLIS_DATA_DIR").args(["--config", "alt.toml", "user", "add", "carol", "--password-stdin"]);
    let added = child::run_cli(cmd, Some(GOOD_PASSWORD)).await;
    assert!(added.ok, "{}", added.stderr);
    assert!(other.join("data").exists(), "the file's data_dir was used");
    let wrong = cli(dir.path(), &["--https-addr", "127.0.0.1:0", "user", "list"]).await;
    assert!(!wrong.ok);
    assert_eq!(wrong.stderr.trim().lines().count(), 1, "{}", wrong.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_as_many_request_and_hashing_threads_as_configured() {
    use crate::child::{self, ServerProcess};
    let start = |args: Vec<&'static str>| {
        let dir = tempfile::tempdir().unwrap();
        let server = tokio::task::block_in_place(|| ServerProcess::start(dir.path(), &args));
        let line = server.output().lines().find(|l| l.contains("is listening")).unwrap_or_default().to_string();
        drop(server);
        line
    };
    let line = start(child::quick_with(&[("--async-workers", "3"), ("--hash-workers", "1")]));
    assert!(line.contains("async_workers=3") && line.contains("hash_workers=1"), "{line}");
    // And which store it serves from (review 107: an exported database URL outranked a
    // `--data-dir`, and nothing said so).
    assert!(line.contains("store=sled in ") && line.contains("data"), "{line}");
    // Defaults: one of each per core.
    let cores = std::thread::available_parallelism().unwrap().get();
    let line = start(child::QUICK.to_vec());
    assert!(line.contains(&format!("async_workers={cores}")), "{line}");
    assert!(line.contains(&format!("hash_workers={cores}")), "{line}");
}

/// A first start killed between linking its development certificate and its key left the
/// certificate alone, and every later start refused it ("cert.pem exists but key.pem is
/// missing"): the next start makes a new pair and says so (review 182's kill points).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_development_certificate_left_without_its_key_is_made_anew_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let d: PathBuf = dir.path().to_path_buf();
    let start = |d: PathBuf| tokio::task::spawn_blocking(move || ServerProcess::start(&d, SERVE));
    let first = start(d.clone()).await.unwrap();
    let (status, _, _) = tokio::task::spawn_blocking(move || first.terminate_with_output()).await.unwrap();
    assert!(status.success());
    let cert = d.join("certs/cert.pem");
    let old = std::fs::read_to_string(&cert).unwrap();
    std::fs::remove_file(d.join("certs/key.pem")).unwrap();
    // As old as a start cut short a while ago (a younger one may be another start's).
    let f = std::fs::File::options().write(true).open(&cert).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60)).unwrap();
    drop(f);
    let second = start(d.clone()).await.unwrap();
    let health = second.browser().get(second.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "served with the new pair, which the browser trusts");
    let (status, _, stderr) = tokio::task::spawn_blocking(move || second.terminate_with_output()).await.unwrap();
    assert!(status.success(), "{stderr:#?}");
    assert!(stderr.iter().any(|l| l.contains("removed a development certificate without its key")), "{stderr:#?}");
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), old, "a new certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_cannot_show_the_password_keeps_no_administrator() {
    // A full disk, and /dev/null (where a closed standard output ends up too).
    for device in ["/dev/full", "/dev/null"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let Ok(out) = std::fs::OpenOptions::new().write(true).open(device) else {
            eprintln!("skipped: no {device}");
            continue;
        };
        let mut cmd = child::command(d);
        cmd.args(SERVE).stdout(out).stderr(std::process::Stdio::piped());
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{device}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.contains("cannot show the first administrator's password"), "{device}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let users = cli(d, &["user", "list"]).await;
        assert!(users.ok && !users.stdout.contains("admin"), "{device}: {users:?}");
    }
}

#[tokio::test]
async fn user_list_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli_with_password(d, &["user", "add", "carol", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add carol");
    // A reader that is gone before the listing is written (`| head` that has had enough).
    let mut cmd = child::command(d);
    cmd.args(["user", "list"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?} {stderr}", out.status);
}

/// A service's directories (systemd's `DynamicUser=` gives them a uid of their own) are its
/// server's to open. Root's commands once opened them directly and left root's files there (a
/// store snapshot, the day's log) that kept the service from starting again, and would follow
/// links the directories' owner planted (found by reviews). Without a server answering on the
/// socket, root is now refused, touching nothing; beside its own data_dir, another user's
/// log_dir is refused too.
#[tokio::test]
async fn root_never_opens_another_users_store_or_log_directory() {
    if !crate::helpers::root_or_skip("whose commands are the ones refused") {
        return;
    }
    const SERVICE_UID: u32 = 4242;
    let dir = tempfile::tempdir().unwrap();
    for d in ["data", "logs"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        std::os::unix::fs::chown(dir.path().join(d), Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    }
    // Through a link too, as systemd makes /var/lib/NAME.
    std::os::unix::fs::symlink(dir.path().join("data"), dir.path().join("linked")).unwrap();
    std::fs::write(dir.path().join("linked.toml"), "data_dir = \"linked\"\n").unwrap();
    for (args, password) in [
        (&["user", "add", "alice", "--password-stdin"][..], Some(GOOD_PASSWORD)),
        (&["audit"][..], None),
        (&["store", "forget-factor-key", "--yes"][..], None),
        (&["--config", "linked.toml", "user", "list"][..], None),
    ] {
        let run = child::cli(dir.path(), args, password).await;
        let line = run.assert_one_line_failure(&args.join(" "));
        assert!(line.contains("belongs to uid 4242"), "{args:?}: {line}");
        // Root is not told to run it as root (review 157), but to start the server, since
        // none answered (review 182: the sentence read as if one ran).
        assert!(!line.contains("or as root"), "{args:?}: {line}");
        assert!(!line.contains("admin socket") || line.contains("no server answered"), "{args:?}: {line}");
    }
    for d in ["data", "logs"] {
        assert_eq!(std::fs::read_dir(dir.path().join(d)).unwrap().count(), 0, "nothing written in {d}");
    }

    // Root's own data_dir beside a log_dir of uid 4242 with a planted link at the day's name.
    let own = tempfile::tempdir().unwrap();
    cli_with_password(own.path(), &["user", "add", "bob", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add");
    let victim = own.path().join("victim");
    std::fs::write(&victim, "root's own\n").unwrap();
    let logs = own.path().join("logs");
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let today = format!("auth.log.{}", &portcullis::audit::rfc3339(portcullis::store::now_ms())[..10]);
    std::os::unix::fs::symlink(&victim, logs.join(today)).unwrap();
    let refused = cli_with_password(own.path(), &["user", "add", "carol", "--password-stdin"], GOOD_PASSWORD).await;
    assert!(
        refused.assert_one_line_failure("a log_dir of another user's").contains("belongs to uid 4242"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own\n");

    // Root's command run in a directory of uid 4242's, whose `logs` that user made a link to a
    // directory of root's (`/etc`, say): refused, the directory's mode left as it was.
    let theirs = own.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let roots = own.path().join("roots");
    std::fs::create_dir(&roots).unwrap();
    std::fs::set_permissions(&roots, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&roots, theirs.join("logs")).unwrap();
    let refused = cli_with_password(&theirs, &["user", "add", "dave", "--password-stdin"], GOOD_PASSWORD).await;
    let line = refused.assert_one_line_failure("a path another user can change");
    assert!(line.contains("belongs to uid 4242") && line.contains("theirs"), "{line}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&roots).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755, "root's directory untouched");
    assert_eq!(std::fs::read_dir(&roots).unwrap().count(), 0);

    // From that directory, its `data` a link to a directory of root's with a server answering:
    // the socket is not used either (uid 4242 could have aimed `data` at any server whose
    // directory, socket and process agree).
    let served = own.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let listener = tokio::net::UnixListener::bind(served.join("admin.sock")).unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
    std::os::unix::fs::symlink(&served, theirs.join("data")).unwrap();
    let refused = child::cli(&theirs, &["user", "list"], None).await;
    assert!(refused.assert_one_line_failure("a socket on another user's path").contains("uid 4242"), "{refused:?}");
    assert!(!accepted.is_finished(), "nothing connected");
    accepted.abort();

    // A link that a member of a system group's writable directory made (as in Ubuntu's
    // /var/log, root:syslog 0775; a group of people's is refused outright), pointing at a
    // directory of root's: not followed.
    let shared = own.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(0), Some(104)).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o775)).unwrap();
    std::os::unix::fs::symlink(&roots, shared.join("admin-logs")).unwrap();
    std::os::unix::fs::lchown(shared.join("admin-logs"), Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let mut cmd = child::command(own.path());
    cmd.env("PORTCULLIS_LOG_DIR", shared.join("admin-logs")).args(["user", "add", "erin", "--password-stdin"]);
    let refused = child::run_cli(cmd, Some(&format!("{GOOD_PASSWORD}\n"))).await;
    assert!(refused.assert_one_line_failure("another user's link").contains("a link of uid 4242"), "{refused:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&roots).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755, "root's directory untouched");

    // Root's own link whose target lies in a directory of uid 4242's: followed one step at a
    // time, the path meets that directory, whose owner could swap the entry (found by a review:
    // only the written path's and the resolved path's parents were checked).
    std::os::unix::fs::symlink(&roots, theirs.join("swapped")).unwrap();
    std::os::unix::fs::lchown(theirs.join("swapped"), Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    std::os::unix::fs::symlink(theirs.join("swapped"), own.path().join("via-root")).unwrap();
    let mut cmd = child::command(own.path());
    cmd.env("PORTCULLIS_LOG_DIR", own.path().join("via-root")).args(["user", "add", "frank", "--password-stdin"]);
    let refused = child::run_cli(cmd, Some(&format!("{GOOD_PASSWORD}\n"))).await;
    let line = refused.assert_one_line_failure("a root link into another user's directory");
    assert!(line.contains("theirs") && line.contains("uid 4242"), "{line}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&roots).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755, "root's directory untouched");
}

/// A PostgreSQL instance's data_dir holds its factor key and no store. A command run there
/// without the database_url (kept in an EnvironmentFile the shell did not read) once made a
/// new, empty sled store beside the key and said `user carol added` (found by a review).
#[tokio::test]
async fn a_command_in_a_database_instances_data_dir_without_database_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/factor.key"), format!("{}\n", "5a".repeat(32))).unwrap();
    let refused = cli_with_password(dir.path(), &["user", "add", "carol", "--password-stdin"], GOOD_PASSWORD).await;
    assert!(refused.assert_one_line_failure("user add").contains("database_url"), "{refused:?}");
    cli(dir.path(), &["user", "list"]).await.assert_one_line_failure("user list");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["factor.key"], "no store made beside the key");
    // With sled's other files there, the store lost its `db`: said so, not sent to PostgreSQL
    // (review 182).
    std::fs::write(dir.path().join("data/conf"), "segment_size: 524288\n").unwrap();
    let run = cli(dir.path(), &["user", "list"]).await;
    let line = run.assert_one_line_failure("user list without db");
    assert!(line.contains("is damaged (its db file is missing)") && !line.contains("database_url"), "{line}");
}

/// `serve` refuses what the commands refuse: a factor key without a store, the store's `db`
/// lost beside sled's other files or not, is no first start (review 184: it made a new store
/// and a new `admin`, after which every command took the store).
#[tokio::test]
async fn serve_in_a_data_dir_with_a_factor_key_and_no_store_is_refused_and_makes_nothing() {
    for remains in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/factor.key"), format!("{}\n", "5a".repeat(32))).unwrap();
        if remains {
            std::fs::write(dir.path().join("data/conf"), "segment_size: 524288\n").unwrap();
        }
        let run = tokio::time::timeout(std::time::Duration::from_secs(30), cli(dir.path(), SERVE))
            .await
            .expect("served: a new store was made");
        let err = &run.stderr;
        assert!(!run.ok, "{run:?}");
        let said = if remains { "is damaged (its db file is missing)" } else { "holds a factor key but no store" };
        assert!(err.contains(said), "{remains}: {err}");
        assert!(!dir.path().join("data/db").exists() && !run.stdout.contains("First start"), "{run:?}");
        assert!(!dir.path().join("logs").exists(), "an empty log directory made (review 203)");
    }
}

/// A store another user's files keep this process from opening is named as such, with the
/// file, not "no store" or a bare "Permission denied" (found by an operator's review).
#[tokio::test]
async fn a_store_another_users_files_keep_closed_is_named_with_its_owner() {
    use std::os::unix::process::CommandExt;
    if !crate::helpers::root_or_skip("to run the commands as another user") {
        return;
    }
    const OTHER: u32 = 4243;
    let as_other = |dir: &Path, args: &[&str]| {
        let mut cmd = child::command(dir);
        cmd.args(args).uid(OTHER).gid(OTHER);
        child::run_cli(cmd, None)
    };
    // A store of root's: the other user cannot read the directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    cli_with_password(dir.path(), &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add");
    let refused = as_other(dir.path(), &["user", "list"]).await;
    let line = refused.assert_one_line_failure("user list as another user");
    assert!(line.contains("belongs to uid 0") && !line.contains("no store"), "{line}");

    // The other user's store with one file of root's in it (as root's commands once left).
    let data = dir.path().join("data");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "conf" {
            std::process::Command::new("chown").arg("-R").arg(format!("{OTHER}:{OTHER}")).arg(&path).status().unwrap();
        }
    }
    std::os::unix::fs::chown(&data, Some(OTHER), Some(OTHER)).unwrap();
    let refused = as_other(dir.path(), &["user", "list"]).await;
    let line = refused.assert_one_line_failure("user list on a store with a file of root's");
    assert!(line.contains("conf") && line.contains("belongs to uid 0"), "{line}");

    // The other user's own store, its `db` closed to its owner: named, with the mode (review
    // 182: "Permission denied (os error 13)" alone).
    std::os::unix::fs::chown(data.join("conf"), Some(OTHER), Some(OTHER)).unwrap();
    std::fs::set_permissions(data.join("db"), std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    let refused = as_other(dir.path(), &["user", "list"]).await;
    let line = refused.assert_one_line_failure("user list on a db of mode 0400");
    assert!(line.contains("db has mode 400"), "{line}");
}

/// The CLI talks only to the server of its data_dir: an `admin.sock` that is a link (to
/// another server's socket) or a socket of another user is refused before anything is sent.
/// A service's user could otherwise point root's commands, passwords included, at another
/// user's server (found by a review).
#[tokio::test]
async fn the_admin_socket_must_be_the_data_dirs_own() {
    let dir = tempfile::tempdir().unwrap();
    cli_with_password(dir.path(), &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add");
    // Another server's socket, elsewhere, that would answer anything.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("admin.sock");
    let listener = tokio::net::UnixListener::bind(&other).unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
    std::os::unix::fs::symlink(&other, dir.path().join("data/admin.sock")).unwrap();
    let run = cli(dir.path(), &["user", "list"]).await;
    assert!(run.assert_one_line_failure("a linked socket").contains("is not the admin socket"), "{run:?}");
    assert!(!accepted.is_finished(), "nothing connected to the other socket");
    accepted.abort();
    // A plain file in its place is no socket either.
    std::fs::remove_file(dir.path().join("data/admin.sock")).unwrap();
    std::fs::write(dir.path().join("data/admin.sock"), "").unwrap();
    let run = cli(dir.path(), &["user", "list"]).await;
    let line = run.assert_one_line_failure("a file for a socket");
    assert!(line.contains("(not a socket)"), "{line}");
    // Another user's socket is named as theirs, not as the directory owner's (review 157).
    if !crate::helpers::root_or_skip("to give a socket to another user") {
        return;
    }
    std::fs::remove_file(dir.path().join("data/admin.sock")).unwrap();
    let _planted = tokio::net::UnixListener::bind(dir.path().join("data/admin.sock")).unwrap();
    std::os::unix::fs::lchown(dir.path().join("data/admin.sock"), Some(4321), None).unwrap();
    let run = cli(dir.path(), &["user", "list"]).await;
    let line = run.assert_one_line_failure("another user's socket");
    assert!(line.contains("a socket of uid 4321, and") && line.contains("belongs to uid 0"), "{line}");
}

/// A server that holds the socket but never answers (stopped with SIGSTOP, stuck on a disk):
/// the command gives up with one line instead of waiting for ever, and a write says it may
/// still happen.
#[tokio::test]
async fn a_server_that_never_answers_on_its_socket_is_given_up_on() {
    use portcullis::admin_socket::{call_within, socket_path, Request};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let listener = tokio::net::UnixListener::bind(socket_path(&data)).unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            kept.push(stream);
        }
    });
    let wait = std::time::Duration::from_secs(1);
    let err = call_within(&data, &Request::UserList, wait).await.unwrap_err().to_string();
    assert!(err.contains("did not answer on its admin socket within 1 s") && !err.contains("may still"), "{err}");
    let del = Request::UserDel { name: "alice".into() };
    let err = call_within(&data, &del, wait).await.unwrap_err().to_string();
    assert!(err.contains("it may still carry the request out"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    held.abort();
}

/// `user add` reads a name as the other `user` commands do, escapes included, so the text
/// that adds a user names it afterwards (found by a review: `user add 'a\u{1b}b'` stored the
/// backslash, and `user del` with the same text found nobody).
#[tokio::test]
async fn user_add_reads_names_as_the_other_user_commands_do() {
    let dir = tempfile::tempdir().unwrap();
    let refused = cli_with_password(dir.path(), &["user", "add", "a\\u{1b}b", "--password-stdin"], GOOD_PASSWORD).await;
    refused.assert_one_line_failure("an escaped control character is a control character");
    let added =
        cli_with_password(dir.path(), &["user", "add", "a\\u{5c}u{41}b", "--password-stdin"], GOOD_PASSWORD).await;
    added.assert_ok("a literal backslash, typed as the table shows it");
    let list = cli(dir.path(), &["user", "list"]).await;
    assert!(list.stdout.contains("a\\u{5c}u{41}b "), "{list:?}");
    cli(dir.path(), &["user", "del", "a\\u{5c}u{41}b"]).await.assert_ok("the same text names it");
}

/// A command refused for its log directory leaves no store behind (found by a review: the
/// store was made first, then the log directory refused).
#[tokio::test]
async fn a_command_refused_for_its_log_directory_makes_no_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("logs"), "not a directory").unwrap();
    let run = cli_with_password(dir.path(), &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await;
    let line = run.assert_one_line_failure("user add with a file for log_dir");
    assert!(line.contains("logs"), "{line}");
    assert!(!dir.path().join("data").exists(), "a store was made");
}

/// Run where there is no store (the wrong directory, or a PostgreSQL deployment's settings
/// without their database_url), only `user add` makes one, and it says where; every other
/// command refuses with one line naming the directory and makes nothing. A review ran
/// `user passwd` so and was told "password changed" of a store nobody used.
#[tokio::test]
async fn only_user_add_makes_a_store_and_it_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = std::fs::canonicalize(d).unwrap().join("data");
    for args in [
        &["user", "passwd", "alice", "--password-stdin"][..],
        &["user", "del", "alice"],
        &["user", "unlock", "alice"],
        &["user", "disable", "alice"],
        &["user", "enable", "alice"],
        &["user", "reset-factors", "alice"],
        &["user", "groups", "alice", "--add", "dev"],
        &["user", "list"],
        &["audit"],
        &["store", "forget-factor-key", "--yes"],
        &["store", "copy", "--to", "elsewhere"],
    ] {
        let run = cli_with_password(d, args, GOOD_PASSWORD).await;
        let err = run.assert_one_line_failure(&args.join(" "));
        assert!(err.contains(&format!("no store in {}", data.display())) && err.contains("database_url"), "{err}");
        assert!(!data.exists() && !d.join("logs").exists(), "{args:?} made a store");
    }
    // A refused first `user add` leaves nothing; a good one makes the store and says where.
    for name in ["a\u{200b}lice", "alice\u{1b}"] {
        cli_with_password(d, &["user", "add", name, "--password-stdin"], GOOD_PASSWORD)
            .await
            .assert_one_line_failure("an invisible character in a new name");
        assert!(!data.exists() && !d.join("logs").exists(), "{name:?}: a refused user add made a store");
    }
    // Nor in a data_dir that is there but empty (left empty, its mode as it was), nor below
    // directories it had to make.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    cli_with_password(d, &["user", "add", "alice", "--password-stdin"], "short")
        .await
        .assert_one_line_failure("a weak password");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "the empty data_dir is empty again");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o755);
    std::fs::remove_dir(&data).unwrap();
    let mut nested = child::command(d);
    nested.env("PORTCULLIS_DATA_DIR", "x/y/data").env("PORTCULLIS_LOG_DIR", "l/m/logs");
    nested.args(["user", "add", "alice", "--password-stdin"]);
    child::run_cli(nested, Some("short\n")).await.assert_one_line_failure("a weak password, nested");
    assert!(!d.join("x").exists() && !d.join("l").exists(), "the directories it made above the store");
    let run = cli_with_password(d, &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await;
    run.assert_ok("add");
    assert_eq!(run.stdout.trim(), "user alice added");
    // A refused change on the stopped server's store makes no log directory either: it has
    // nothing to log.
    let mut refused = child::command(d);
    refused.env("PORTCULLIS_LOG_DIR", "other-logs").args(["user", "unlock", "nobody"]);
    child::run_cli(refused, None).await.assert_one_line_failure("unlock an unknown user");
    assert!(!d.join("other-logs").exists(), "a refused change made a log directory");
    assert_eq!(
        run.stderr.trim(),
        format!("made a new store in {} (with PostgreSQL, set database_url as the servers have it)", data.display())
    );
    // Once there, it is used without a word, and the commands name whom they changed.
    let run = cli_with_password(d, &["user", "passwd", "ALICE", "--password-stdin"], NEW_PASSWORD).await;
    assert_eq!((run.stdout.trim(), run.stderr.as_str()), ("password of alice changed; 0 session(s) ended", ""));
    let run = cli(d, &["user", "del", "Alice"]).await;
    // No administrator was ever made in this store: said, since no one can open /admin.
    assert_eq!(
        (run.stdout.trim(), run.stderr.as_str()),
        ("user alice deleted; 0 session(s) ended; no enabled administrator is left to open /admin (portcullis user admin NAME --grant makes one)", "")
    );
    cli_with_password(d, &["user", "add", "root", "--admin", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add");
    cli_with_password(d, &["user", "add", "bob", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add");
    let run = cli(d, &["user", "del", "bob"]).await;
    assert_eq!(run.stdout.trim(), "user bob deleted; 0 session(s) ended", "an administrator is left");
    let run = cli(d, &["user", "disable", "root"]).await;
    assert!(
        run.stdout.trim().ends_with(
            "no enabled administrator is left to open /admin (portcullis user admin NAME --grant makes one)"
        ),
        "{}",
        run.stdout
    );
}

/// A group both added and removed in one command is refused, not settled by whichever the
/// code applies last (found by a review: the removal won, silently).
#[tokio::test]
async fn a_group_both_added_and_removed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    cli_with_password(dir.path(), &["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD).await.assert_ok("add");
    let run = cli(dir.path(), &["user", "groups", "alice", "--add", "dev", "--remove", "dev"]).await;
    assert!(run.assert_one_line_failure("add and remove").contains("both added and removed"), "{run:?}");
    let shown = cli(dir.path(), &["user", "groups", "alice"]).await;
    assert!(!shown.stdout.contains("dev"), "{shown:?}");
}

/// Today's and tomorrow's auth log files in `log_dir` as /dev/full: every line fails, as on a
/// full disk.
fn full_log(log_dir: &Path) {
    std::fs::create_dir_all(log_dir).unwrap();
    let now = portcullis::store::now_ms();
    for ms in [now, now + 86_400_000] {
        let day = &portcullis::audit::rfc3339(ms)[..10];
        std::os::unix::fs::symlink("/dev/full", log_dir.join(format!("auth.log.{day}"))).unwrap();
    }
}

/// A change whose auth log line could not be written is made (refusing it would be worse),
/// and the command says its line may be missing, through the socket too, where the server's
/// own error line reaches only the server's log (review 136).
#[tokio::test]
async fn a_change_whose_log_line_failed_says_so_offline_and_through_the_socket() {
    const MISSING: &str = "the auth log could not be written meanwhile";
    let offline = tempfile::tempdir().unwrap();
    full_log(&offline.path().join("logs"));
    let run = cli_with_password(offline.path(), &["user", "add", "bob", "--password-stdin"], GOOD_PASSWORD).await;
    run.assert_ok("add bob offline");
    assert!(run.stdout.contains("user bob added") && run.stdout.contains(MISSING), "{run:?}");

    let app = crate::helpers::spawn_app_with(|s| full_log(&s.log_dir)).await;
    let d = app.dir.path();
    let run = cli_with_password(d, &["user", "add", "carol", "--password-stdin"], GOOD_PASSWORD).await;
    run.assert_ok("add carol through the socket");
    assert!(run.stdout.contains("user carol added") && run.stdout.contains(MISSING), "{run:?}");
    // A command that writes no line says nothing of the log: a change of groups that
    // changes nothing.
    cli(d, &["user", "groups", "carol", "--add", "dev"]).await.assert_ok("carol into dev");
    let run = cli(d, &["user", "groups", "carol", "--add", "dev"]).await;
    run.assert_ok("carol into dev again");
    assert!(!run.stdout.contains(MISSING), "{run:?}");
    assert_eq!(names(&list_json(d).await), ["admin", "carol"]);
}

/// What a command reads is bounded and from a regular file only: a password piped from
/// `/dev/zero`, a settings file that is a FIFO, a certificate linked to `/dev/zero` each fail
/// in one line instead of filling the memory or waiting forever (review 150).
#[tokio::test]
async fn endless_or_odd_inputs_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let endless = "b".repeat(65 * 1024);
    let run = child::cli(dir.path(), &["user", "add", "x", "--password-stdin"], Some(&endless)).await;
    let err = run.assert_one_line_failure("a password longer than a line may be");
    assert!(err.contains("longer than 64 KiB"), "{err}");

    let fifo = dir.path().join("settings.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let run = child::cli(dir.path(), &["config", "check", "--config", fifo.to_str().unwrap()], None).await;
    let err = run.assert_one_line_failure("a FIFO for the settings file");
    assert!(err.contains("not a regular file"), "{err}");

    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::os::unix::fs::symlink("/dev/zero", certs.join("cert.pem")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", certs.join("key.pem")).unwrap();
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK);
    let (status, _, stderr) = child::run(cmd, None).await;
    assert!(!status.success() && stderr.contains("not a regular file"), "{stderr}");
}

/// A `cert_dir` that is a file is named as such, before anything is made (review 150).
#[tokio::test]
async fn a_cert_dir_that_is_a_file_is_named_as_such_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK).env("PORTCULLIS_CERT_DIR", dir.path().join("afile"));
    let (status, _, stderr) = child::run(cmd, None).await;
    assert!(!status.success() && stderr.contains("afile is not a directory"), "{stderr}");
    assert!(!dir.path().join("data").exists() && !dir.path().join("logs").exists(), "nothing made");
}

/// A start refused for its port, or for a directory that can never be made, makes nothing
/// first (review 194: a port in use had made a store, a factor key, a development pair and the
/// log directory; 198: a `cert_dir` under a file, the same), and a directory refusal exits 2 as
/// `config check` does, which the unit does not restart.
#[tokio::test]
async fn a_start_refused_for_its_port_or_a_directory_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let made = |dir: &Path| ["data", "logs", "certs"].into_iter().filter(|d| dir.join(d).exists()).collect::<Vec<_>>();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    // QUICK without its own `--https-addr 127.0.0.1:0`.
    let quick = child::QUICK.iter().filter(|a| !["--https-addr", "127.0.0.1:0"].contains(a));
    let mut cmd = child::command(dir.path());
    cmd.args(quick).env("PORTCULLIS_HTTPS_ADDR", &addr);
    let (status, _, stderr) = child::run(cmd, None).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on https_addr"), "{stderr}");
    assert!(made(dir.path()).is_empty(), "made {:?}", made(dir.path()));
    std::fs::write(dir.path().join("afile"), "").unwrap();
    for var in ["PORTCULLIS_CERT_DIR", "PORTCULLIS_LOG_DIR", "PORTCULLIS_DATA_DIR"] {
        let mut cmd = child::command(dir.path());
        cmd.args(child::QUICK).env(var, dir.path().join("afile/sub"));
        let (status, _, stderr) = child::run(cmd, None).await;
        assert_eq!(status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains("cannot be made: part of its path is a file"), "{var}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{var}: {stderr}");
        assert!(made(dir.path()).is_empty(), "{var} made {:?}", made(dir.path()));
    }
}

/// A `data_dir`, `log_dir` or `cert_dir` other users may write in (`/tmp`, a 1777 directory)
/// stops the start in one line and keeps its mode: the server made it 0700 and took a
/// `factor.key` planted there (review 153).
#[tokio::test]
async fn a_directory_others_may_write_in_stops_the_start_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    for var in ["PORTCULLIS_DATA_DIR", "PORTCULLIS_LOG_DIR", "PORTCULLIS_CERT_DIR"] {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let mut cmd = child::command(dir.path());
        cmd.args(child::QUICK).env(var, &shared);
        let (status, _, stderr) = child::run(cmd, None).await;
        assert!(!status.success() && stderr.contains("may be written by other users (mode 1777)"), "{var}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{var}: {stderr}");
        assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o1777, "{var}");
    }
}

/// A `cert_dir` under a directory others may change, or owned by another user than root,
/// stops the start in one line: either could hold a key of someone else's choosing to be
/// served (review 155). Giving a directory away needs root: said, and passed, otherwise.
#[tokio::test]
async fn a_cert_dir_another_user_could_have_filled_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir_all(open.join("certs")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK).env("PORTCULLIS_CERT_DIR", open.join("certs"));
    let (status, _, stderr) = child::run(cmd, None).await;
    assert!(!status.success() && stderr.contains("cert_dir"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!open.join("certs/key.pem").exists(), "no key made there");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the owner's part: giving a directory to another user needs root");
        return;
    }
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(101), None).unwrap();
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK).env("PORTCULLIS_CERT_DIR", &theirs);
    let (status, _, stderr) = child::run(cmd, None).await;
    assert!(!status.success() && stderr.contains("belongs to uid 101"), "{stderr}");
    assert!(!theirs.join("key.pem").exists(), "no key made there");
}

/// Today's log file as a FIFO stops the start in one line instead of holding it in `open`
/// (review 151).
#[tokio::test]
async fn a_fifo_for_todays_log_file_stops_the_start_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let fifo = logs.join(format!("auth.log.{today}"));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut cmd = child::command(dir.path());
    cmd.args(child::QUICK);
    let (status, _, stderr) = child::run(cmd, None).await;
    assert!(!status.success() && stderr.contains("is a FIFO, not a log file"), "{stderr}");
}

/// Root's command run in a directory anyone may create entries in (`/tmp`) does not send to the
/// socket of a `data` another user made there: its owner is whoever made it, not a service
/// (review 158: root's `user passwd` in `/tmp` sent the new password to such a socket).
#[tokio::test]
async fn root_sends_nothing_to_a_data_dir_anyone_could_have_made() {
    use std::os::unix::fs::PermissionsExt;
    if !crate::helpers::root_or_skip("to make a directory another user's") {
        return;
    }
    const OTHER: u32 = 4246;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let listener = tokio::net::UnixListener::bind(data.join("admin.sock")).unwrap();
    std::os::unix::fs::lchown(data.join("admin.sock"), Some(OTHER), Some(OTHER)).unwrap();
    std::os::unix::fs::chown(&data, Some(OTHER), Some(OTHER)).unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
    let run = cli_with_password(dir.path(), &["user", "passwd", "admin", "--password-stdin"], GOOD_PASSWORD).await;
    let line = run.assert_one_line_failure("a data dir in a sticky directory");
    assert!(line.contains("belongs to uid 4246") && line.contains("where anyone may make it"), "{line}");
    assert!(!accepted.is_finished(), "nothing connected to the socket");
    accepted.abort();
}
