//! Names and text an attacker controls, issue 10 §5, §6 and §8: invisible characters cannot
//! make look-alike users and are shown escaped wherever old names appear; every log line stays
//! one line to a Unicode-aware reader; a failed attempt is recorded under the identity that
//! was checked, with what was typed beside it.

use portcullis::app::Services;
use portcullis::audit::FailureReason;
use portcullis::domain::normalise_key;
use portcullis::store::{FailureQuery, FailureRecord, User};
use portcullis::text::is_hidden;

use crate::helpers::{spawn_app_with, test_settings, Visitor, GOOD_PASSWORD};
use crate::review::{admin_browser, json_lines, portcullis};

/// Where Python's `str.splitlines()` breaks a line: every Unicode line boundary.
fn splitlines(text: &str) -> Vec<&str> {
    let breaks = ['\n', '\r', '\u{b}', '\u{c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}', '\u{2029}'];
    let mut lines: Vec<&str> = text.split(|c| breaks.contains(&c)).collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
}

#[tokio::test]
async fn every_log_line_stays_one_line_to_a_unicode_aware_reader() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let hostile = "x\u{9b}2J\u{85}\u{2028}\u{7f}";
    let mut attacker = Visitor::new(&app, Some("203.0.113.7"));
    // (A header cannot hold C0 controls; everything else can arrive.)
    attacker.user_agent = "agent\u{2029}\u{202e}\u{9b}0m\u{85}\u{200b}".into();
    attacker.attempt(hostile, "wrong wrong wrong", None).await;
    attacker.attempt(&format!("{hostile}\u{2066}\u{e0001}"), "wrong wrong wrong", None).await;
    let text = app.log_text();
    let records = text.lines().count();
    assert_eq!(records, 3, "the first admin and two failures:\n{text}");
    assert_eq!(splitlines(&text).len(), records, "one line per record for splitlines():\n{text:?}");
    assert!(!text.chars().any(|c| c != '\n' && is_hidden(c)), "raw hidden characters in:\n{text:?}");
    assert!(text.contains("\\u009b") && text.contains("\\u2028"), "{text}");
    let lines: Vec<_> = app.log_lines().into_iter().filter(|l| l["event"] == "authn_login_fail").collect();
    assert_eq!(lines[0]["typed"], hostile, "escaped, not lost");
    assert_eq!(lines[0]["user_agent"], attacker.user_agent);
}

#[tokio::test]
async fn a_padded_or_wide_username_is_recorded_as_the_user_it_was_checked_as() {
    let app = spawn_app_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.captcha_after_failures = 100;
    })
    .await;
    app.add_user("Alice", GOOD_PASSWORD, false).await;
    let padded = format!("{}alice", " ".repeat(300));
    let typed = [padded.as_str(), "\u{3000}alice\u{3000}", "ＡＬＩＣＥ"];
    for (i, name) in typed.iter().enumerate() {
        let mut v = Visitor::new(&app, Some(&format!("198.51.100.{i}")));
        assert_eq!(v.attempt(name, "wrong wrong wrong", None).await.0, 401);
    }
    let mut v = Visitor::new(&app, Some("198.51.100.9"));
    v.attempt("   Ghost  ", "wrong wrong wrong", None).await;

    // The store: under the stored spelling, with what was typed (cut to 256) beside it.
    let alice = app.records(FailureQuery { user_key: Some("alice".into()), limit: 100, ..Default::default() }).await;
    assert_eq!(alice.len(), 3, "{alice:?}");
    assert!(alice.iter().all(|r| r.username == "Alice" && r.reason == FailureReason::BadPassword), "{alice:?}");
    let mut kept: Vec<String> = alice.iter().filter_map(|r| r.typed.clone()).collect();
    kept.sort();
    let mut expected = vec![" ".repeat(256), "\u{3000}alice\u{3000}".into(), "ＡＬＩＣＥ".into()];
    expected.sort();
    assert_eq!(kept, expected);
    let ghost = app.records(FailureQuery { user_key: Some("ghost".into()), limit: 100, ..Default::default() }).await;
    assert_eq!(ghost.len(), 1);
    assert_eq!((ghost[0].username.as_str(), ghost[0].typed.as_deref()), ("ghost", Some("   Ghost  ")));

    // The log says the same.
    let failed: Vec<_> = app.log_lines().into_iter().filter(|l| l["event"] == "authn_login_fail").collect();
    assert_eq!(failed.iter().filter(|l| l["username"] == "Alice").count(), 3);
    assert!(failed.iter().all(|l| l["typed"].is_string()));

    // The CLI, the admin filter and the summary's top usernames find them under alice.
    let (ok, out, err) = portcullis(&app.settings, &["audit", "--json", "--user", "alice"]).await;
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["username"] == "Alice" && l["typed"].is_string()));
    let admin = admin_browser(&app).await;
    let page =
        admin.get(app.url("/admin/failed-logins?user=alice&limit=50")).send().await.unwrap().text().await.unwrap();
    assert_eq!(page.matches("<span class=\"reason").count(), 3, "{page}");
    let (ok, out, _) = portcullis(&app.settings, &["audit", "--summary", "--json"]).await;
    assert!(ok);
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let top = &summary["top_usernames"];
    assert!(top.as_array().unwrap().iter().any(|t| t["value"] == "Alice" && t["count"] == 3), "{top}");
}

#[tokio::test]
async fn invisible_characters_make_no_new_user_and_old_names_holding_them_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    for c in ['\u{2060}', '\u{feff}', '\u{ad}', '\u{180e}', '\u{34f}', '\u{3164}', '\u{e0001}'] {
        let name = format!("alice{c}");
        let mut cmd = crate::child::command(dir.path());
        cmd.args(["user", "add", &name, "--password-stdin"]);
        let run = crate::child::run_cli(cmd, Some(&format!("{GOOD_PASSWORD}\n"))).await;
        assert!(!run.ok, "U+{:04X} made a user", c as u32);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }

    // A user and a record from before the rule: `admin` + U+2060, which reads as `admin`.
    let lookalike = "admin\u{2060}";
    {
        let services = Services::open(&settings, 1).await.unwrap();
        insert_old_user(&services, lookalike).await;
        let record = FailureRecord {
            time: portcullis::store::now_ms(),
            ip: "192.0.2.1".into(),
            username: lookalike.into(),
            reason: FailureReason::BadPassword,
            user_agent: "ua\u{202e}".into(),
            typed: None,
            count: 1,
            instance: String::new(),
            known_browser: false,
        };
        services.audit.append(&record).await.unwrap();
    }
    let raw = |text: &str| text.chars().any(|c| c != '\n' && is_hidden(c));
    for args in [
        vec!["user", "list"],
        vec!["user", "list", "--json"],
        vec!["audit"],
        vec!["audit", "--json"],
        vec!["audit", "--summary"],
        vec!["audit", "--summary", "--json"],
        vec!["user", "disable", lookalike],
    ] {
        let (ok, out, err) = portcullis(&settings, &args).await;
        assert!(ok, "{args:?}: {err}");
        assert!(!raw(&out), "{args:?} printed a raw invisible character: {out:?}");
        assert!(out.contains("admin\\u{2060}") || out.contains("admin\\u2060"), "{args:?}: {out}");
    }
    // Error lines quote what was typed, escaped.
    let (ok, _, err) = portcullis(&settings, &["user", "del", "bob\u{2060}\u{1b}[2J"]).await;
    assert!(!ok);
    assert!(!raw(&err) && err.trim().lines().count() == 1, "{err:?}");
}

/// Stores a user named `name` as an older version could have (no check of the name), so tests
/// can see how names that today's rules refuse are shown.
pub(crate) async fn insert_old_user(services: &Services, name: &str) {
    let user = User {
        key: normalise_key(name),
        display_name: name.into(),
        admin: false,
        created_at: 0,
        password_changed_at: 0,
        last_login_at: None,
        disabled: false,
        groups: Vec::new(),
    };
    let hash = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    services.store.users.insert(&user, hash).await.unwrap();
}
