//! The factor key's fingerprint (SECURITY.md, README "Several instances on PostgreSQL"): the
//! first start records it in the store, a server with another `data_dir/factor.key` refuses to
//! start (on sled after a lost file, on PostgreSQL an instance started without the first one's
//! key), and `portcullis store forget-factor-key --yes` is the way out when a key is lost for
//! good: every TOTP secret and recovery code goes (they cannot be checked anyway), then a
//! server starts with a new key.

use portcullis::factors::{totp, Asker};
use portcullis::store::now_ms;

use crate::child;
use crate::helpers::{spawn_app_with, spawn_in, test_settings, GOOD_PASSWORD};
use crate::pg;

/// Why the server would not start with `settings`; panics if it starts.
async fn refusal(settings: &portcullis::config::Settings) -> String {
    match crate::helpers::build_when_released(settings).await {
        Err(e) => e,
        Ok(_) => panic!("started with another factor key"),
    }
}

#[tokio::test]
async fn on_sled_a_lost_key_refuses_the_start_until_forget_factor_key_removes_what_it_keyed() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let (dir, settings) = app.stop().await;
    // No second factor anywhere yet: the fingerprint alone tells the keys apart.
    std::fs::write(settings.data_dir.join("factor.key"), format!("{}\n", "11".repeat(32))).unwrap();
    let err = refusal(&settings).await;
    assert!(
        err.contains("is not the factor key this store was first used with") && err.contains("forget-factor-key"),
        "{err}"
    );

    // Back with the right key, with a TOTP user; then the key is lost for good.
    std::fs::remove_file(settings.data_dir.join("factor.key")).unwrap();
    let root = dir.path().to_path_buf();
    let cli = |args: &'static [&'static str]| child::run_cli_when_released(&root, args);
    let forgot = cli(&["store", "forget-factor-key", "--yes"]).await;
    forgot.assert_ok("forget with no factors");
    assert!(
        forgot.stdout.contains("of 0 user(s)") && forgot.stdout.contains("records its data_dir/factor.key"),
        "{forgot:?}"
    );
    let app = spawn_in(dir, settings).await;
    let secret = totp::new_secret().unwrap();
    let code = totp::code_at(&secret, now_ms() / 1000).unwrap();
    assert_eq!(
        app.state
            .factors
            .enrol_totp(&Asker::in_generation("alice", app.generation("alice").await), &secret, &code, None)
            .await
            .unwrap(),
        portcullis::factors::Enrolment::Enrolled
    );
    let (dir, settings) = app.stop().await;
    std::fs::remove_file(settings.data_dir.join("factor.key")).unwrap();
    std::fs::remove_dir_all(&settings.cert_dir).unwrap();
    // A missing key is named as missing, and no new one is left in the way of the right one;
    // nor is a development certificate made by a start that was refused.
    let err = refusal(&settings).await;
    assert!(err.contains("there is no") && err.contains("copy factor.key"), "{err}");
    assert!(!settings.data_dir.join("factor.key").exists(), "no key made by a refused start");
    assert!(!settings.cert_dir.join("cert.pem").exists(), "no certificate made by a refused start");

    let asked = cli(&["store", "forget-factor-key"]).await;
    asked.assert_one_line_failure("without --yes");
    let forgot = cli(&["store", "forget-factor-key", "--yes"]).await;
    forgot.assert_ok("forget");
    assert!(forgot.stdout.contains("of 1 user(s)"), "{forgot:?}");
    // Logged as `user reset-factors` logs a reset, naming the command.
    let log: String = std::fs::read_dir(root.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("auth.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        log.lines().any(|l| l.contains("\"user_factors_reset\"")
            && l.contains("store forget-factor-key")
            && l.contains("\"sessions\":0")
            && l.contains("alice")),
        "{log}"
    );
    // A start that fails for its port records no key (review 166: it fixed the store to the
    // key it held, and the right start after it was refused).
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(settings.data_dir.join("factor.key"), format!("{}\n", "22".repeat(32))).unwrap();
    let on_a_busy_port = portcullis::config::Settings { https_addr: busy.local_addr().unwrap(), ..settings.clone() };
    let err = refusal(&on_a_busy_port).await;
    assert!(err.contains("cannot listen on https_addr"), "{err}");
    std::fs::remove_file(settings.data_dir.join("factor.key")).unwrap();
    drop(busy);
    let app = spawn_in(dir, settings).await;
    assert!(!app.state.factors.summary("alice").await.unwrap().totp, "the sealed secret went");
    let browser = app.new_browser();
    let resp = app.login_with(&browser, "alice", GOOD_PASSWORD).await;
    assert_eq!(resp.headers()["location"], "/", "the password signs in again");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_an_instance_started_without_the_first_ones_key_refuses_to_start() {
    let Some(url) = pg::database().await else { return };
    let one = spawn_app_with(|s| s.database_url = Some(url.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.database_url = Some(url.clone());
    let err = refusal(&settings).await;
    assert!(err.contains("there is no") && err.contains("copy factor.key from another instance"), "{err}");
    // The refused start made no key of its own (it once left one, which a copy then had to
    // replace), nor a log directory with an empty file (review 208).
    assert!(!settings.data_dir.join("factor.key").exists());
    assert!(!settings.log_dir.exists(), "a log directory was left behind");
    // With another key in place, it is told apart by the fingerprint.
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    std::fs::write(settings.data_dir.join("factor.key"), format!("{}\n", "11".repeat(32))).unwrap();
    let err = refusal(&settings).await;
    assert!(err.contains("is not the factor key this store was first used with"), "{err}");
    assert!(!settings.log_dir.exists(), "a log directory was left behind");
    std::fs::remove_file(settings.data_dir.join("factor.key")).unwrap();
    // With the first one's key, it starts.
    crate::helpers::share_factor_key(&one.settings.data_dir, &settings.data_dir);
    let two = spawn_in(dir, settings).await;
    two.stop().await;
    one.stop().await;
}

#[tokio::test]
async fn store_copy_refuses_a_local_factor_key_the_store_was_not_first_used_with_before_writing() {
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let (dir, settings) = app.stop().await;
    // This host's key is not the one the store recorded (a refused start left a new one).
    std::fs::write(settings.data_dir.join("factor.key"), format!("{}\n", "22".repeat(32))).unwrap();
    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("copy");
    let run = child::run_cli_when_released(dir.path(), &["store", "copy", "--to", into.to_str().unwrap()]).await;
    let err = run.assert_one_line_failure("a copy with the wrong local key");
    assert!(err.contains("is not the factor key this store was first used with"), "{err}");
    assert!(!into.exists(), "nothing written");
    // Nor with none at all: the copy's servers could not start (review 107).
    std::fs::remove_file(settings.data_dir.join("factor.key")).unwrap();
    let run = child::run_cli_when_released(dir.path(), &["store", "copy", "--to", into.to_str().unwrap()]).await;
    let err = run.assert_one_line_failure("a copy without the local key");
    assert!(err.contains("factor.key, and this store's second factors are sealed under"), "{err}");
    assert!(!into.exists(), "nothing written");
}

#[tokio::test]
async fn a_running_server_keys_no_factor_and_is_not_ready_once_the_store_records_another_key() {
    use portcullis::factors::key::FINGERPRINT_NAME;
    let app = spawn_app_with(|_| {}).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let ready = || async { app.client.get(app.url("/readyz")).send().await.unwrap().status().as_u16() };
    assert_eq!(ready().await, 200);
    // As after `store forget-factor-key` with this server left running, and another instance
    // started with a new key.
    let secrets = &app.state.store.secrets;
    assert!(secrets.forget(FINGERPRINT_NAME).await.unwrap());
    assert_eq!(ready().await, 200, "no key recorded: nothing disagrees yet");
    secrets.claim(FINGERPRINT_NAME, &[9; 32]).await.unwrap();
    // A load balancer takes it out: the servers with the recorded key serve second factors.
    assert_eq!(ready().await, 503);
    let secret = totp::new_secret().unwrap();
    let code = totp::code_at(&secret, now_ms() / 1000).unwrap();
    let other_key = |e: portcullis::factors::FactorError| {
        matches!(e, portcullis::factors::FactorError::Key(portcullis::factors::KeyError::OtherKey))
    };
    assert!(app
        .state
        .factors
        .enrol_totp(&Asker::in_generation("alice", app.generation("alice").await), &secret, &code, None)
        .await
        .is_err_and(other_key));
    assert!(app.state.factors.new_recovery_codes("alice", None).await.is_err_and(other_key));
    assert!(!app.state.factors.summary("alice").await.unwrap().totp, "nothing sealed");
    // Forgotten with no instance recording another key: this server's key is recorded again.
    assert!(secrets.forget(FINGERPRINT_NAME).await.unwrap());
    assert_eq!(
        app.state
            .factors
            .enrol_totp(&Asker::in_generation("alice", app.generation("alice").await), &secret, &code, None)
            .await
            .unwrap(),
        portcullis::factors::Enrolment::Enrolled
    );
    assert_eq!(ready().await, 200);
    app.stop().await;
}

/// A root-owned 0600 key a server run as its service's user cannot read is refused with the
/// key's owner and mode and the user the server runs as, not a bare "Permission denied"
/// (review 155: the operator had to guess which of the two was wrong).
#[tokio::test]
async fn a_key_the_services_user_cannot_read_is_named_with_its_owner_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !crate::helpers::root_or_skip("to run the server as another user") {
        return;
    }
    const SERVICE: u32 = 4245;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["data", "logs", "certs"] {
        std::fs::create_dir(d.join(sub)).unwrap();
        std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(d.join(sub), Some(SERVICE), Some(SERVICE)).unwrap();
    }
    // The service's store first: a factor key without one is refused before the key is read.
    let mut add = child::command(d);
    add.args(["user", "add", "alice", "--password-stdin"]).uid(SERVICE).gid(SERVICE);
    child::run_cli(add, Some(&format!("{GOOD_PASSWORD}\n"))).await.assert_ok("the service's store");
    let key = d.join("data/factor.key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = child::command(d);
    cmd.args(child::QUICK).uid(SERVICE).gid(SERVICE);
    let run = child::run_cli(cmd, None).await;
    let line = run.assert_one_line_failure("serve with root's 0600 key");
    assert!(
        line.contains("factor.key")
            && line.contains("belongs to uid 0, mode 0600, and this process runs as uid 4245")
            && line.contains("0640"),
        "{line}"
    );
}

/// The README's service layout without systemd: `cert_dir` is root's (`install -d -m 0700
/// /etc/portcullis/certs`, the key given to the service's user with `-o USER`), read by a
/// server that runs as that user. `config check` and the start take it (review 213: both
/// refused a `cert_dir` of root's, saying to run the server as root); another user's is still
/// refused.
#[tokio::test]
async fn a_cert_dir_of_roots_holding_the_services_key_is_used_by_a_server_not_run_as_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !crate::helpers::root_or_skip("to run the server as another user") {
        return;
    }
    const SERVICE: u32 = 4247;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["data", "logs"] {
        std::fs::create_dir(d.join(sub)).unwrap();
        std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(d.join(sub), Some(SERVICE), Some(SERVICE)).unwrap();
    }
    // A pair made by a first start of root's elsewhere, then put in a directory of root's.
    let pair = tempfile::tempdir().unwrap();
    portcullis::tls::ensure_certificate(&pair.path().join("certs")).unwrap();
    let certs = d.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(pair.path().join("certs").join(f), certs.join(f)).unwrap();
    }
    std::os::unix::fs::chown(certs.join("key.pem"), Some(SERVICE), Some(SERVICE)).unwrap();
    let mut check = child::command(d);
    check.args(["config", "check"]).uid(SERVICE).gid(SERVICE);
    let run = child::run_cli(check, None).await;
    assert!(run.ok, "{run:?}");
    let server = child::ServerProcess::start_with(d, child::QUICK, |cmd| {
        cmd.uid(SERVICE).gid(SERVICE);
    });
    let resp = server.browser().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(server);
    // Another user's cert_dir is refused still.
    std::os::unix::fs::chown(&certs, Some(SERVICE + 1), Some(SERVICE + 1)).unwrap();
    let mut cmd = child::command(d);
    cmd.args(child::QUICK).uid(SERVICE).gid(SERVICE);
    let refused = child::run_cli(cmd, None).await;
    let line = refused.assert_one_line_failure("another user's cert_dir");
    assert!(line.contains("belongs to uid 4248"), "{line}");
}
