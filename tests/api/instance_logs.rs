//! `instance_name` in every log line, terminal and JSON, and in every failed-login record as
//! `audit --json` shows it, with the real binary on sled and on PostgreSQL (SPEC.md, "Several
//! instances, one truth"). The PostgreSQL half is skipped without it unless
//! `PORTCULLIS_REQUIRE_ALL` is set (`pg.rs`).

use portcullis::store::FailureQuery;

use crate::child::{self, ServerProcess};
use crate::pg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_and_failure_record_names_the_instance_on_either_engine() {
    let mut engines = vec![None];
    if let Some(url) = pg::database().await {
        engines.push(Some(url.to_string()));
    }
    for url in engines {
        let dir = tempfile::tempdir().unwrap();
        let args = child::quick_with(&[("--instance-name", "web-7")]);
        let server = tokio::task::block_in_place(|| {
            ServerProcess::start_with(dir.path(), &args, |cmd| {
                if let Some(url) = &url {
                    cmd.env("PORTCULLIS_DATABASE_URL", url);
                }
            })
        });
        let admin_password = crate::store_copy::first_admin_password(&server).await;
        let client = server.browser();
        let (status, _) = child::login(&server, &client, "admin", "not the password at all").await;
        assert_eq!(status, 401);
        let (status, _) = child::login(&server, &client, "admin", &admin_password).await;
        assert_eq!(status, 303);

        let mut audit = child::command(dir.path());
        if let Some(url) = &url {
            audit.env("PORTCULLIS_DATABASE_URL", url);
        }
        audit.args(["audit", "--json"]);
        let audit = child::run_cli(audit, None).await;
        audit.assert_ok("audit --json");
        let record: serde_json::Value = serde_json::from_str(audit.stdout.trim()).unwrap();
        assert_eq!(record["instance"], "web-7", "{url:?}: {}", audit.stdout);

        let (status, _, stderr) = tokio::task::block_in_place(|| server.terminate_with_output());
        assert!(status.success());
        let terminal: Vec<&String> = stderr.iter().filter(|l| !l.trim().is_empty()).collect();
        assert!(terminal.len() >= 3, "{url:?}: {terminal:#?}");
        for line in &terminal {
            assert!(line.ends_with(" instance=web-7"), "{url:?}: a terminal line without the instance: {line}");
        }

        let mut json = Vec::new();
        for entry in std::fs::read_dir(dir.path().join("logs")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            json.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
        }
        let events: Vec<&str> = json.iter().filter_map(|l| l["event"].as_str()).collect();
        assert!(
            events.contains(&"authn_login_fail") && events.iter().any(|e| e.starts_with("authn_login_success")),
            "{events:?}"
        );
        for line in &json {
            assert_eq!(line["instance"], "web-7", "{url:?}: a JSON line without the instance: {line}");
        }
    }
}

#[tokio::test]
async fn the_admin_page_shows_each_records_instance_escaped() {
    let app = crate::helpers::spawn_app_with(|s| s.instance_name = "web-9".into()).await;
    assert_eq!(app.login("nobody", "wrong wrong wrong").await.status(), 401);
    let records = app.records(FailureQuery::default()).await;
    assert_eq!(records.iter().map(|r| r.instance.as_str()).collect::<Vec<_>>(), ["web-9"], "{records:?}");
    // A record from another instance, whose name (written by some other version) is hostile.
    let mut other = records[0].clone();
    other.instance = "web<b>\u{2060}x".into();
    app.state.audit.append(&other).await.unwrap();

    let admin = crate::review::admin_browser(&app).await;
    let page = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<td>web-9</td>"), "{page}");
    assert!(page.contains("<td>web&#60;b&#62;\\u{2060}x</td>"), "escaped for HTML and made visible: {page}");
    assert!(!page.contains("web<b>") && !page.contains('\u{2060}'));
}
