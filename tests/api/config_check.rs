//! `portcullis config check` (SPEC.md, "Operations"): the same layers as `serve`; every
//! effective setting with its source, secrets masked, exit 0; the first error in one line
//! naming the key and its source, exit 2; nothing opened, created or changed.

use std::path::Path;
use std::process::Command;

use crate::child;

/// The binary in `dir` with no `PORTCULLIS_*` from the caller.
fn bare(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `config check` with `args` in `dir` ([`bare`]), and `env` set.
fn check(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = bare(dir);
    cmd.args(["config", "check"]).args(args).envs(env.iter().copied());
    cmd
}

struct Checked {
    status: i32,
    stdout: String,
    stderr: String,
}

async fn run(cmd: Command) -> Checked {
    let (status, stdout, stderr) = child::run(cmd, None).await;
    Checked { status: status.code().unwrap_or(-1), stdout, stderr }
}

/// The line `config check` printed for `key`.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

#[tokio::test]
async fn a_good_file_prints_every_setting_with_its_source_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("site.toml"),
        "min_password_length = 20\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [access]\ndefault_policy = \"deny\"\n[[access.rules]]\npath = [\"^/public/\"]\npolicy = \"bypass\"\n",
    )
    .unwrap();
    let cmd = check(
        dir.path(),
        &["--config", "site.toml", "--http-addr", "off"],
        &[("PORTCULLIS_SESSION_IDLE_TIMEOUT", "5m")],
    );
    let out = run(cmd).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    // Every key in KEYS, once, in order: keys other branches add show up by themselves.
    let keys: Vec<&str> = out.stdout.lines().map(|l| l.trim_start_matches("# ").split(" = ").next().unwrap()).collect();
    let mut expected: Vec<&str> = portcullis::config::KEYS.iter().map(|k| k.name).collect();
    expected.push("access"); // file only, last
    assert_eq!(keys, expected);
    assert!(line(&out.stdout, "access").ends_with("# file site.toml"), "{}", out.stdout);
    // The long `access` line does not pad every other line to its width (found by reviews).
    let widest = out.stdout.lines().filter(|l| !l.starts_with("access = ")).map(str::len).max().unwrap();
    assert!(widest < 120, "{}", out.stdout);
    assert!(line(&out.stdout, "min_password_length").ends_with("# file site.toml"), "{}", out.stdout);
    assert!(line(&out.stdout, "trusted_proxies").contains("[\"10.0.0.0/8\"]"), "{}", out.stdout);
    let idle = line(&out.stdout, "session_idle_timeout");
    assert!(idle.contains("\"5m\"") && idle.ends_with("# env PORTCULLIS_SESSION_IDLE_TIMEOUT"), "{idle}");
    assert!(line(&out.stdout, "http_addr").ends_with("# flag --http-addr"), "{}", out.stdout);
    assert!(line(&out.stdout, "https_addr").ends_with("# default"), "{}", out.stdout);
    // An empty instance name means the host name: the line shows the name the server uses,
    // commented out, so the output copied to another host names that one (review 167).
    let host = portcullis::postgres::url::host_name();
    let named = format!("# instance_name = \"{host}\"");
    let l = out.stdout.lines().find(|l| l.starts_with(&named)).unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(l.ends_with("# default, this host's name"), "{l}");
    // So is a blank one given (review 168: printed as the host's name, a fixed value).
    let blank = run(check(dir.path(), &[], &[("PORTCULLIS_INSTANCE_NAME", "")])).await;
    let l = blank.stdout.lines().find(|l| l.starts_with(&named)).unwrap_or_else(|| panic!("{}", blank.stdout));
    assert!(l.ends_with("# env PORTCULLIS_INSTANCE_NAME (empty: this host's name)"), "{l}");
    // What it prints is a settings file that checks the same.
    let printed: toml::Table = out.stdout.parse().expect("the output is TOML");
    assert!(!printed.contains_key("instance_name"), "{}", out.stdout);
    assert_eq!(printed["min_password_length"].as_integer(), Some(20));
    // A count reads as a number whichever layer it came from (defaults were quoted text).
    assert_eq!(printed["argon2_iterations"].as_integer(), Some(2), "{}", out.stdout);
    assert_eq!(printed["audit_max_records"].as_integer(), Some(100_000), "{}", out.stdout);
    assert_eq!(printed["access"]["rules"][0]["policy"].as_str(), Some("bypass"), "{}", out.stdout);
    // Unset ones are commented out: `database_url = ""` read back would be refused.
    for key in ["public_url", "database_url", "cookie_domain", "webauthn_rp_id"] {
        let unset = format!("# {key} = \"\"");
        let l = out.stdout.lines().find(|l| l.starts_with(&unset)).unwrap_or_else(|| panic!("{key}: {}", out.stdout));
        assert!(l.ends_with("# default, unset"), "{l}");
    }
    std::fs::write(dir.path().join("printed.toml"), &out.stdout).unwrap();
    let again = run(check(dir.path(), &["--config", "printed.toml"], &[])).await;
    assert_eq!(again.status, 0, "the printed file is refused: {}", again.stderr);
    for key in ["min_password_length", "trusted_proxies", "session_idle_timeout", "http_addr"] {
        let value = |text: &str| line(text, key).split("  #").next().unwrap().trim_end().to_string();
        assert_eq!(value(&again.stdout), value(&out.stdout), "{key} read back");
    }
}

#[tokio::test]
async fn a_value_with_a_line_break_or_a_bidi_control_is_printed_on_one_line_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let odd = "q\nr\u{202e}s\"t\\u";
    let out = run(check(dir.path(), &["--data-dir", odd], &[])).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let shown = line(&out.stdout, "data_dir");
    assert!(shown.starts_with(r#"data_dir = "q\u000Ar\u202Es\"t\\u""#), "{shown}");
    assert!(!out.stdout.contains('\u{202e}'), "{}", out.stdout);
    std::fs::write(dir.path().join("printed.toml"), &out.stdout).unwrap();
    let again = run(check(dir.path(), &["--config", "printed.toml"], &[])).await;
    assert_eq!(again.status, 0, "the printed file is refused: {}", again.stderr);
    assert!(line(&again.stdout, "data_dir").starts_with(r#"data_dir = "q\u000Ar\u202Es\"t\\u""#), "{}", again.stdout);
}

#[tokio::test]
async fn an_unknown_key_in_the_file_is_one_line_naming_it_and_the_file_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), "min_pasword_length = 20\n").unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert_eq!(out.status, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("min_pasword_length") && out.stderr.contains("portcullis.toml"), "{}", out.stderr);
    // The setting it was probably meant for, as for a variable (review 213); none when none is close.
    assert!(out.stderr.trim_end().ends_with("unknown key `min_pasword_length` (did you mean `min_password_length`?)"));
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    std::fs::write(dir.path().join("portcullis.toml"), "session_timeout = \"5m\"\n").unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert!(out.stderr.trim_end().ends_with("unknown key `session_timeout`"), "{}", out.stderr);
}

/// Forward auth set up with an empty `trusted_proxies` is warned of (review 213: every gated
/// request got a bare 403 from the proxy, and nothing said why); with the proxy listed, or
/// without forward auth, nothing is said.
#[tokio::test]
async fn forward_auth_set_up_without_trusted_proxies_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "[access]\ndefault_policy = \"deny\"\n[[access.rules]]\ndomain = [\"app.example.com\"]\npolicy = \"one_factor\"\n";
    std::fs::write(dir.path().join("portcullis.toml"), rules).unwrap();
    let public = [("PORTCULLIS_PUBLIC_URL", "https://login.example.com"), ("PORTCULLIS_COOKIE_DOMAIN", "example.com")];
    let out = run(check(dir.path(), &[], &public)).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let warned = "portcullis: warning: forward auth is set up (cookie_domain or [access]) but trusted_proxies is empty";
    assert!(out.stderr.contains(warned) && out.stderr.contains("trusted_proxies = [\"127.0.0.1\"]"), "{}", out.stderr);
    let listed = [public[0], public[1], ("PORTCULLIS_TRUSTED_PROXIES", "127.0.0.1")];
    let out = run(check(dir.path(), &[], &listed)).await;
    assert!(!out.stderr.contains("trusted_proxies is empty"), "{}", out.stderr);
    std::fs::remove_file(dir.path().join("portcullis.toml")).unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert_eq!((out.status, out.stderr.as_str()), (0, ""), "no forward auth, nothing said");
}

#[tokio::test]
async fn a_bad_value_from_each_layer_is_one_line_naming_the_key_and_its_source_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "session_idle_timeout = \"soon\"\n").unwrap();
    std::fs::write(dir.path().join("good.toml"), "min_password_length = 20\n").unwrap();
    /// Arguments, environment, the key at fault, and the source the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 3] = [
        (&["--config", "bad.toml"], &[], "session_idle_timeout", "file bad.toml"),
        (
            &["--config", "good.toml"],
            &[("PORTCULLIS_MAX_CONNECTIONS", "lots")],
            "max_connections",
            "env PORTCULLIS_MAX_CONNECTIONS",
        ),
        (&["--config", "good.toml", "--metrics-addr", "everywhere"], &[], "metrics_addr", "flag --metrics-addr"),
    ];
    for (args, env, key, source) in cases {
        let out = run(check(dir.path(), args, env)).await;
        assert_eq!(out.status, 2, "{key}: {}{}", out.stdout, out.stderr);
        let err = out.stderr.trim_end();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(key) && err.contains(source), "{key} from {source}: {err}");
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
}

#[tokio::test]
async fn the_database_password_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        run(check(dir.path(), &[], &[("PORTCULLIS_DATABASE_URL", "postgres://app:hunter2-secret@db/auth")])).await;
    assert_eq!(good.status, 0, "{}", good.stderr);
    assert!(line(&good.stdout, "database_url").contains("postgres://app:***@db/auth"), "{}", good.stdout);
    let bad =
        run(check(dir.path(), &["--database-url", "postgres://app:hunter2-secret@db/auth?sslmode=maybe"], &[])).await;
    assert_eq!(bad.status, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("database_url"), "{}", bad.stderr);
    // A URL given to --config, with or without its scheme, is no file to name (review 157).
    let mut misplaced = Vec::new();
    for url in ["app:hunter2-secret@db", "postgres://app:hunter2-secret@db/auth", "app:hunter2-secret@db:5432/auth"] {
        let out = run(check(dir.path(), &["--config", url], &[])).await;
        assert_eq!(out.status, 2, "{}", out.stderr);
        assert!(out.stderr.contains("looks like a database URL"), "{}", out.stderr);
        misplaced.push(out);
    }
    for out in [&good, &bad].into_iter().chain(&misplaced) {
        assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"), "{}{}", out.stdout, out.stderr);
    }
}

/// `serve` and the other commands exit with `config check`'s status 2 for settings that do
/// not load, so a unit's `RestartPreventExitStatus=2` stops the restarts (review 194: 1).
#[tokio::test]
async fn serve_and_the_commands_exit_2_for_settings_that_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["serve", "--http-addr", "off"][..], &["user", "list"][..]] {
        let mut cmd = bare(dir.path());
        cmd.args(args).env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "soon");
        let (status, _, stderr) = child::run(cmd, None).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid session_idle_timeout = \"soon\" (from env"), "{stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "created {left:?}");
}

#[tokio::test]
async fn config_check_creates_nothing_in_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    // Relative defaults (data/, logs/, certs/) would land here if anything opened them.
    let out = run(check(dir.path(), &["--https-addr", "127.0.0.1:1", "--metrics-addr", "127.0.0.1:2"], &[])).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "config check created {left:?}");
}

#[tokio::test]
async fn a_refused_value_is_quoted_with_its_controls_escaped_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_INSTANCE_NAME", "x\u{1b}y z")])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.contains(r#"instance_name = "x\u{1b}y z""#), "{}", out.stderr);
    assert!(!out.stderr.contains("u{5c}"), "the escape's backslash is not escaped again: {}", out.stderr);
}

#[tokio::test]
async fn a_variable_that_is_not_utf8_stops_the_program_instead_of_falling_back_to_the_default() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let url = OsStr::from_bytes(b"postgres://app:hunter2-secret@/auth?host=/run/pg\xff");
    let mut cmd = check(dir.path(), &[], &[]);
    cmd.env("PORTCULLIS_DATABASE_URL", url);
    let out = run(cmd).await;
    assert_eq!(out.status, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("PORTCULLIS_DATABASE_URL is not valid UTF-8"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    // `serve` likewise: not a first start on a new sled store beside the database.
    let mut serve = bare(dir.path());
    serve.args(["serve", "--https-addr", "127.0.0.1:0", "--http-addr", "off"]).env("PORTCULLIS_DATABASE_URL", url);
    let (status, stdout, stderr) = child::run(serve, None).await;
    assert!(!status.success() && !stdout.contains("administrator"), "{stdout}{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "serve created {left:?}");
}

#[tokio::test]
async fn a_file_that_is_not_toml_is_one_line_saying_where() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# site settings\nmin_password_length = 20\nsession_idle_timeout = \"15m\ndatabase_url = \"postgres://a:hunter2@db/x\"\n";
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let out = run(check(dir.path(), &["--config", "bad.toml"], &[])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("bad.toml: line 3, column "), "{}", out.stderr);
    assert!(!out.stderr.contains("\\u{a}") && !out.stderr.contains("hunter2"), "{}", out.stderr);
    // A value TOML itself refuses names its setting (review 153), and only the name is shown.
    std::fs::write(dir.path().join("big.toml"), "# sizes\nargon2_memory_kib = 99999999999999999999999\n").unwrap();
    let out = run(check(dir.path(), &["--config", "big.toml"], &[])).await;
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("big.toml: line 2, column 21 (argon2_memory_kib): number too large"), "{}", out.stderr);
}

/// A path to something that is not a settings file fails in one line without reading it all
/// (review 148: `/dev/zero` took 3 GB in 3 s).
#[tokio::test]
async fn a_file_larger_than_any_settings_file_is_one_line_and_read_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(check(dir.path(), &["--config", "/dev/zero"], &[])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.contains("/dev/zero: not a regular file"), "{}", out.stderr);
    std::fs::write(dir.path().join("big.toml"), "#".repeat(1024 * 1024 + 1)).unwrap();
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_CONFIG", "big.toml")])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    std::fs::write(dir.path().join("big.toml"), "#".repeat(1024 * 1024)).unwrap();
    assert_eq!(run(check(dir.path(), &["--config", "big.toml"], &[])).await.status, 0, "1 MiB is read");
}

#[tokio::test]
async fn a_portcullis_toml_that_links_to_nothing_is_an_error_not_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.toml"), dir.path().join("portcullis.toml")).unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert_eq!(out.status, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("portcullis.toml"), "{}", out.stderr);
}

#[tokio::test]
async fn a_variable_that_names_no_setting_is_warned_about_with_the_setting_it_was_probably_meant_for() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PORTCULLIS_DATABSE_URL", "postgres://app:hunter2@db/auth"),
        ("PORTCULLIS_NO_SUCH_THING", "1"),
        ("portcullis_log_dir", "/tmp/x"),
    ];
    let out = run(check(dir.path(), &[], &env)).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "warning: PORTCULLIS_DATABSE_URL is not a setting and is ignored (did you mean PORTCULLIS_DATABASE_URL?)"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("warning: PORTCULLIS_NO_SUCH_THING is not a setting and is ignored\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("portcullis_log_dir is not a setting and is ignored (did you mean PORTCULLIS_LOG_DIR?)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "a value is never shown: {}", out.stderr);
    // The settings' own variables, --config's, and the project's test variables are not warned about.
    std::fs::write(dir.path().join("site.toml"), "").unwrap();
    let env =
        [("PORTCULLIS_INSTANCE_NAME", "one"), ("PORTCULLIS_REQUIRE_ALL", "1"), ("PORTCULLIS_CONFIG", "site.toml")];
    let out = run(check(dir.path(), &[], &env)).await;
    assert_eq!((out.status, out.stderr.as_str()), (0, ""));
}

#[tokio::test]
async fn an_empty_database_url_is_refused_not_taken_for_the_sled_store() {
    // `PORTCULLIS_DATABASE_URL="$PGURL"` in a shell where PGURL is not set.
    let dir = tempfile::tempdir().unwrap();
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_DATABASE_URL", "")])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("database_url") && out.stderr.contains("is empty"), "{}", out.stderr);
    std::fs::write(dir.path().join("site.toml"), "database_url = \"\"\n").unwrap();
    let out = run(check(dir.path(), &["--config", "site.toml"], &[])).await;
    assert_eq!(out.status, 2, "in the file too: {}", out.stderr);
}

#[tokio::test]
async fn an_access_table_that_leaves_out_its_default_policy_is_shown_with_the_default_it_takes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("site.toml"),
        "[access]\n[[access.rules]]\npath = [\"^/public/\"]\npolicy = \"bypass\"\n",
    )
    .unwrap();
    let out = run(check(dir.path(), &["--config", "site.toml"], &[])).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let printed: toml::Table = out.stdout.parse().expect("the output is TOML");
    assert!(!printed.contains_key("instance_name"), "{}", out.stdout);
    assert_eq!(printed["access"]["default_policy"].as_str(), Some("deny"), "{}", out.stdout);
    std::fs::write(dir.path().join("empty.toml"), "[access]\n").unwrap();
    let out = run(check(dir.path(), &["--config", "empty.toml"], &[])).await;
    let printed: toml::Table = out.stdout.parse().expect("the output is TOML");
    assert!(!printed.contains_key("instance_name"), "{}", out.stdout);
    assert_eq!(printed["access"]["rules"].as_array().map(Vec::len), Some(0), "{}", out.stdout);
}

#[tokio::test]
async fn a_long_refused_value_is_shown_by_its_start_on_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(5000);
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_SESSION_IDLE_TIMEOUT", long.as_str())])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.len() < 400, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("\"{}\"", "x".repeat(100))), "{}", out.stderr);
    assert!(out.stderr.contains("(the value's first 100 of 5000 characters shown)"), "{}", out.stderr);
    // A reason that quotes the value (a list's bad entry) is shortened too.
    let proxies = format!("10.0.0.1,{}", "x".repeat(3000));
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_TRUSTED_PROXIES", proxies.as_str())])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.len() < 600, "{} bytes: {}", out.stderr.len(), out.stderr);
    assert!(!out.stderr.contains("u{2026}"), "{}", out.stderr);
}

#[tokio::test]
async fn a_metrics_listener_others_may_reach_is_warned_of_and_still_valid() {
    let dir = tempfile::tempdir().unwrap();
    let wide = run(check(dir.path(), &[], &[("PORTCULLIS_METRICS_ADDR", "0.0.0.0:9464")])).await;
    assert_eq!(wide.status, 0, "{}", wide.stderr);
    assert_eq!(
        wide.stderr.trim_end(),
        "portcullis: warning: metrics_addr 0.0.0.0:9464 may be reached from outside: /metrics has no TLS and no sign-in, so keep it on loopback or a private address"
    );
    let local = run(check(dir.path(), &[], &[("PORTCULLIS_METRICS_ADDR", "127.0.0.1:9464")])).await;
    assert_eq!((local.status, local.stderr.as_str()), (0, ""));
}

/// argon2 parameters below OWASP's minimums for argon2id are allowed, with a warning from
/// `config check` (review 138: 8 KiB passed without a word).
#[tokio::test]
async fn hashing_below_owasps_minimum_is_warned_of_and_still_valid() {
    let dir = tempfile::tempdir().unwrap();
    let weak = run(check(dir.path(), &["--argon2-memory-kib", "8", "--argon2-iterations", "1"], &[])).await;
    assert_eq!(weak.status, 0, "{}", weak.stderr);
    assert!(
        weak.stderr.starts_with(
            "portcullis: warning: argon2_memory_kib = 8 with argon2_iterations = 1 is below OWASP's minimum"
        ),
        "{}",
        weak.stderr
    );
    let owasp = run(check(dir.path(), &["--argon2-memory-kib", "47104", "--argon2-iterations", "1"], &[])).await;
    assert_eq!((owasp.status, owasp.stderr.as_str()), (0, ""));
}

/// A settings file that holds the database password and that other users may read is warned
/// of (review 150); once private, or without a password, it is not.
#[tokio::test]
async fn a_settings_file_others_may_read_with_the_database_password_in_it_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, "database_url = \"postgres://app:S3cret-pw@db.example.com/auth\"\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("holds database_url's password and other users may read it (mode 0644)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("S3cret") && !out.stdout.contains("S3cret"), "{}{}", out.stdout, out.stderr);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert!(!out.stderr.contains("other users may read it"), "{}", out.stderr);
    std::fs::write(&file, "database_url = \"postgres://app@/auth?host=/run/postgresql\"\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(check(dir.path(), &[], &[])).await;
    assert!(!out.stderr.contains("other users may read it"), "no password, no warning: {}", out.stderr);
    // Writable by others: who gets in is theirs to decide (review 151); named with --config,
    // warned of (the working directory's own is not read at all: see below).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o602)).unwrap();
    let out = run(check(dir.path(), &["--config", "portcullis.toml"], &[])).await;
    assert!(out.stderr.contains("other users may change the settings file"), "{}", out.stderr);
    assert!(!out.stderr.contains("may read it"), "{}", out.stderr);
    // And by the other commands, which ran without a word (review 157).
    std::fs::write(&file, "session_idle_timeout = \"1h\"\n").unwrap();
    let mut list = bare(dir.path());
    list.args(["--config", "portcullis.toml", "user", "add", "carol", "--password-stdin"]);
    let (status, _, stderr) = child::run(list, Some(&format!("{}\n", crate::helpers::GOOD_PASSWORD))).await;
    let out = Checked { status: status.code().unwrap_or(-1), stdout: String::new(), stderr };
    assert!(
        out.status == 0
            && out.stderr.contains("portcullis: warning: other users may change the settings file portcullis.toml"),
        "{}",
        out.stderr
    );
}

/// A settings file another user (not root) owns, or in a directory others may write without
/// the sticky bit, is warned of when named with `--config` (review 153), and not read at all
/// when it is the working directory's `portcullis.toml` (review 155: root's `user passwd` in
/// `/tmp` took a planted file's argon2 settings). One in a private directory, owned by this
/// user, is read without a word. Giving a file away needs root: said, and passed, otherwise.
#[tokio::test]
async fn a_settings_file_another_user_owns_or_may_replace_is_warned_of_or_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, "session_idle_timeout = \"1h\"\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let named = ["--config", "portcullis.toml"];
    // The directories elsewhere, private: the working directory is made 0777 below, and the
    // check refuses directories in it as the start would.
    let private = tempfile::tempdir().unwrap();
    let (data, logs, certs) = (private.path().join("data"), private.path().join("logs"), private.path().join("certs"));
    let env = [
        ("PORTCULLIS_DATA_DIR", data.to_str().unwrap()),
        ("PORTCULLIS_LOG_DIR", logs.to_str().unwrap()),
        ("PORTCULLIS_CERT_DIR", certs.to_str().unwrap()),
    ];
    let out = run(check(dir.path(), &[], &env)).await;
    assert_eq!((out.status, out.stderr.as_str()), (0, ""), "a private directory, our own file");
    assert!(line(&out.stdout, "session_idle_timeout").contains("file portcullis.toml"), "{}", out.stdout);
    let refused = |out: &Checked, why: &str| {
        out.status == 2
            && out.stderr.starts_with("portcullis: portcullis.toml in the working directory is not read: ")
            && out.stderr.contains(why)
            && out.stderr.trim_end().lines().count() == 1
    };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(check(dir.path(), &named, &env)).await;
    assert!(out.status == 0 && out.stderr.contains("other users may replace the settings file"), "{}", out.stderr);
    let out = run(check(dir.path(), &[], &env)).await;
    assert!(refused(&out, "other users may replace the settings file"), "{}", out.stderr);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = run(check(dir.path(), &[], &env)).await;
    assert_eq!((out.status, out.stderr.as_str()), (0, ""), "the sticky bit keeps them from replacing ours");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the owner's part: giving a file to another user needs root");
        return;
    }
    std::os::unix::fs::chown(&file, Some(101), None).unwrap();
    let out = run(check(dir.path(), &named, &env)).await;
    assert!(out.status == 0 && out.stderr.contains("belongs to uid 101, who may change who gets in"), "{}", out.stderr);
    let out = run(check(dir.path(), &[], &env)).await;
    assert!(refused(&out, "belongs to uid 101"), "{}", out.stderr);
    // A link another user made, to a file of ours.
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    std::fs::rename(&file, dir.path().join("ours.toml")).unwrap();
    std::os::unix::fs::symlink("ours.toml", &file).unwrap();
    std::os::unix::fs::lchown(&file, Some(101), None).unwrap();
    let out = run(check(dir.path(), &[], &env)).await;
    assert!(refused(&out, "a link of uid 101") || refused(&out, "a link made by uid 101"), "{}", out.stderr);
    // Root's own file in a directory another user owns, who could swap it for theirs
    // between the checks and the reading (review 157).
    std::fs::remove_file(&file).unwrap();
    std::fs::rename(dir.path().join("ours.toml"), &file).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(101), None).unwrap();
    let out = run(check(dir.path(), &named, &env)).await;
    assert!(out.status == 0 && out.stderr.contains("which belongs to uid 101"), "{}", out.stderr);
    let out = run(check(dir.path(), &[], &env)).await;
    assert!(refused(&out, "which belongs to uid 101"), "{}", out.stderr);
    std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
}

/// An empty `PORTCULLIS_CONFIG` is named as such, not as a `--config` nobody typed, and
/// `PORTCULLIS_ACCESS` is said to be the file's (review 150).
#[tokio::test]
async fn an_empty_config_variable_and_an_access_variable_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_CONFIG", "")])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.contains("PORTCULLIS_CONFIG is empty"), "{}", out.stderr);
    let out = run(check(dir.path(), &[], &[("PORTCULLIS_ACCESS", "x")])).await;
    assert!(out.stderr.contains("access rules are read from the settings file only"), "{}", out.stderr);
}

/// A directory the start would refuse (others may write in it, another user's, a file) fails the check too, so a
/// unit's `ExecStartPre=portcullis config check` stops there (review 157); nothing is changed.
#[tokio::test]
async fn a_directory_the_start_refuses_fails_the_check_without_being_changed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    for key in ["--data-dir", "--log-dir", "--cert-dir"] {
        let out = run(check(dir.path(), &[key, shared.to_str().unwrap()], &[])).await;
        assert_eq!(out.status, 2, "{key}: {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains("may be written by other users (mode 1777)"), "{key}: {}", out.stderr);
        assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o1777);
    }
    // A file named as a directory, and (as root, who can give one away) a directory of another
    // user's, which the start refuses too (review 194).
    std::fs::write(dir.path().join("file"), "").unwrap();
    let out = run(check(dir.path(), &["--data-dir", "file"], &[])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.contains("data_dir: file is not a directory"), "{}", out.stderr);
    let out = run(check(dir.path(), &["--log-dir", "file/sub"], &[])).await;
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.contains("log_dir: file/sub cannot be made: part of its path is a file"), "{}", out.stderr);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        // Root checking a service's settings, whose directories are the service's user's once
        // it has run: fine for a start by their owner (as the unit's), and said to be refused by
        // a start as root (review 215: the README's check before a restart failed; review 194:
        // one as root passed without a word).
        for key in ["--data-dir", "--log-dir", "--cert-dir"] {
            let out = run(check(dir.path(), &[key, theirs.to_str().unwrap()], &[])).await;
            assert_eq!(out.status, 0, "{key}: {}", out.stderr);
            let said = "belongs to uid 65534, not to this process (uid 0)";
            assert!(
                out.stderr.contains(said) && out.stderr.contains("one run as root refuses it"),
                "{key}: {}",
                out.stderr
            );
        }
        // Two users' directories: no start by either takes both (review 216).
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&other, Some(65533), Some(65533)).unwrap();
        let out = run(check(
            dir.path(),
            &["--data-dir", theirs.to_str().unwrap(), "--log-dir", other.to_str().unwrap()],
            &[],
        ))
        .await;
        assert_eq!(out.status, 2, "{}", out.stderr);
        assert!(out.stderr.contains("one server user must own both"), "{}", out.stderr);
        // Nor a certificate directory of a third user's (review 218); root's is fine.
        let logs = dir.path().join("theirs-logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&logs, Some(65534), Some(65534)).unwrap();
        let service = |certs: &std::path::Path| {
            check(
                dir.path(),
                &[
                    "--data-dir",
                    theirs.to_str().unwrap(),
                    "--log-dir",
                    logs.to_str().unwrap(),
                    "--cert-dir",
                    certs.to_str().unwrap(),
                ],
                &[],
            )
        };
        let out = run(service(&other)).await;
        assert_eq!(out.status, 2, "{}", out.stderr);
        assert!(out.stderr.contains("neither data_dir's owner (uid 65534) nor root"), "{}", out.stderr);
        let roots = dir.path().join("roots-certs");
        std::fs::create_dir(&roots).unwrap();
        std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(run(service(&roots)).await.status, 0);
        // The mode is judged all the same.
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = run(check(dir.path(), &["--data-dir", theirs.to_str().unwrap()], &[])).await;
        assert_eq!(out.status, 2, "{}", out.stderr);
        assert!(out.stderr.contains("may be written by other users"), "{}", out.stderr);
    } else {
        println!("not root: the other user's directory is not tried (only root can give one away)");
    }
    let out = run(check(dir.path(), &[], &[])).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
}
