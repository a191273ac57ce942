//! Reviewing failed logins: `portcullis audit` (stopped and running server), the admin page
//! (filters, summary, chart, keyset pages, admin-only), unlock, and the fail2ban filter.

use std::process::Command;

use portcullis::app::Services;
use portcullis::audit::FailureReason;
use portcullis::config::Settings;
use portcullis::store::FailureRecord;

use crate::helpers::{hidden_field, spawn_app, spawn_app_with, test_settings, Visitor, GOOD_PASSWORD};

pub(crate) const HOUR: u64 = 3_600_000;

/// A known set of records: 30 over the last 30 hours (one per hour, newest 30 min ago).
pub(crate) fn known_records(now: u64) -> Vec<FailureRecord> {
    (0..30u64)
        .map(|i| {
            let (ip, user) = match i % 3 {
                0 => ("192.0.2.10", "alice"),
                1 => ("192.0.2.11", "Bob"),
                _ => ("198.51.100.5", "mallory\u{1b}[31m"),
            };
            let reason = match i % 5 {
                0 => FailureReason::BadPassword,
                1 => FailureReason::UnknownUser,
                2 => FailureReason::RateLimited,
                3 => FailureReason::CaptchaRequired,
                _ => FailureReason::Csrf,
            };
            FailureRecord {
                time: now - HOUR / 2 - i * HOUR,
                ip: ip.into(),
                username: user.into(),
                reason,
                user_agent: format!("agent {i}"),
                count: 1,
                typed: None,
                instance: String::new(),
                known_browser: false,
            }
        })
        .collect()
}

pub(crate) async fn seed(settings: &Settings, records: &[FailureRecord]) {
    let services = Services::open(settings, 1).await.unwrap();
    for r in records {
        services.audit.append(r).await.unwrap();
    }
}

/// Runs `portcullis` with the test's directories (see `child::command`, which also clears
/// the caller's settings and bounds the run); returns (success, stdout, stderr).
pub(crate) async fn portcullis(settings: &Settings, args: &[&str]) -> (bool, String, String) {
    let mut cmd = crate::child::command(settings.data_dir.parent().unwrap_or(std::path::Path::new(".")));
    cmd.args(args)
        .env("PORTCULLIS_DATA_DIR", &settings.data_dir)
        .env("PORTCULLIS_LOG_DIR", &settings.log_dir)
        .env("PORTCULLIS_CERT_DIR", &settings.cert_dir);
    let run = crate::child::run_cli(cmd, None).await;
    (run.ok, run.stdout, run.stderr)
}

pub(crate) fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn the_audit_command_filters_a_stopped_servers_store() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let now = portcullis::store::now_ms();
    seed(&settings, &known_records(now)).await;

    let (ok, out, _) = portcullis(&settings, &["audit", "--json", "--limit", "1000"]).await;
    assert!(ok);
    let all = json_lines(&out);
    assert_eq!(all.len(), 30);
    for field in ["time", "ip", "username", "reason", "user_agent"] {
        assert!(all[0].get(field).is_some(), "{field}");
    }
    assert!(all[0]["time"].as_str().unwrap() > all[1]["time"].as_str().unwrap(), "newest first");

    let since = portcullis::audit::rfc3339(now - 5 * HOUR);
    let cases: Vec<(Vec<&str>, usize)> = vec![
        (vec!["--since", "10h"], 10),
        (vec!["--until", "20h"], 10),
        (vec!["--since", "20h", "--until", "10h"], 10),
        (vec!["--user", "ALICE"], 10),
        (vec!["--ip", "192.0.2.0/24"], 20),
        (vec!["--ip", "198.51.100.5"], 10),
        (vec!["--reason", "csrf"], 6),
        (vec!["--user", "bob", "--reason", "unknown_user"], 2),
        (vec!["--ip", "192.0.2.10", "--since", "12h", "--reason", "bad_password"], 1),
        (vec!["--since", &since], 5),
    ];
    for (args, expected) in cases {
        let mut a = vec!["audit", "--json", "--limit", "1000"];
        a.extend_from_slice(&args);
        let (ok, out, err) = portcullis(&settings, &a).await;
        assert!(ok, "{args:?}: {err}");
        assert_eq!(json_lines(&out).len(), expected, "{args:?}");
    }

    let (ok, out, _) = portcullis(&settings, &["audit", "--limit", "3"]).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 4, "a header and three rows:\n{out}");
    let (_, table, _) = portcullis(&settings, &["audit", "--user", "mallory\u{1b}[31m"]).await;
    assert!(!table.contains('\u{1b}') && table.contains("\\u{1b}"), "control characters escaped:\n{table}");
    // The name as the table shows it finds the same records.
    let (_, again, _) = portcullis(&settings, &["audit", "--user", "mallory\\u{1b}[31m"]).await;
    assert_eq!(again, table);

    for bad in [["--since", "soon"], ["--ip", "300.1.1.1"], ["--reason", "nope"]] {
        let (ok, _, err) = portcullis(&settings, &["audit", bad[0], bad[1]]).await;
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[tokio::test]
async fn the_audit_summary_counts_match_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let now = portcullis::store::now_ms();
    seed(&settings, &known_records(now)).await;
    let (ok, out, _) = portcullis(&settings, &["audit", "--summary", "--json"]).await;
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["total"], 30);
    let by_reason: Vec<(String, u64)> = serde_json::from_value(s["by_reason"].clone()).unwrap();
    assert!(by_reason.iter().all(|(_, n)| *n == 6), "{by_reason:?}");
    assert_eq!(s["top_addresses"][0]["count"], 10);
    assert_eq!(s["top_usernames"].as_array().unwrap().len(), 3);
    let per_hour: Vec<(String, u64)> = serde_json::from_value(s["per_hour"].clone()).unwrap();
    assert_eq!(per_hour.len(), 48);
    assert_eq!(per_hour.iter().map(|h| h.1).sum::<u64>(), 30);
    let (ok, text, _) = portcullis(&settings, &["audit", "--summary", "--since", "3h"]).await;
    assert!(ok);
    assert!(text.contains("Failed logins: 3") && text.contains("Per hour") && text.contains('#'), "{text}");
    // The series spans the hours asked for: from the hour of --since to now.
    let (ok, out, _) = portcullis(&settings, &["audit", "--summary", "--since", "3h", "--json"]).await;
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let per_hour: Vec<(String, u64)> = serde_json::from_value(s["per_hour"].clone()).unwrap();
    assert_eq!(per_hour.len(), 4, "{per_hour:?}");
    assert_eq!(per_hour.iter().map(|h| h.1).sum::<u64>(), 3);
}

#[tokio::test]
async fn the_audit_command_reaches_a_running_server() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let mut v = Visitor::new(&app, Some("203.0.113.44"));
    v.attempt("ghost", "wrong wrong wrong", None).await;
    let (ok, out, err) = portcullis(&app.settings, &["audit", "--json", "--ip", "203.0.113.44"]).await;
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["username"], "ghost");
    assert_eq!(lines[0]["reason"], "unknown_user");
}

/// A failed login from a browser that signed in as the username before (its device cookie
/// came along) says so wherever records are read: the store, the auth log, the admin page,
/// and `audit` as JSON and as a table. A stranger's does not.
#[tokio::test]
async fn a_failure_from_a_browser_that_signed_in_before_is_marked_known_wherever_records_are_read() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let hers = app.new_browser();
    assert_eq!(app.login_with(&hers, "alice", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(app.logout_with(&hers).await.status(), 303);
    assert_eq!(app.login_with(&hers, "alice", "not her password").await.status(), 401);
    let stranger = app.new_browser();
    assert_eq!(app.login_with(&stranger, "alice", "a stranger's guess").await.status(), 401);

    let known: Vec<bool> =
        app.records(portcullis::store::FailureQuery::default()).await.iter().map(|r| r.known_browser).collect();
    assert_eq!(known, [false, true], "newest first: the stranger's, then her browser's");
    let logged: Vec<Option<bool>> = app
        .log_lines()
        .iter()
        .filter(|l| l["event"] == "authn_login_fail")
        .map(|l| l.get("known_browser").map(|v| v.as_bool().unwrap()))
        .collect();
    assert_eq!(logged, [Some(true), None], "in the log only when true, as in the record");

    let admin = admin_browser(&app).await;
    let page = admin.get(app.url("/admin/failed-logins?user=alice")).send().await.unwrap().text().await.unwrap();
    assert_eq!(page.matches(">known browser</small>").count(), 1, "{page}");

    let (ok, out, err) = portcullis(&app.settings, &["audit", "--json", "--user", "alice"]).await;
    assert!(ok, "{err}");
    let fields: Vec<Option<bool>> =
        json_lines(&out).iter().map(|l| l.get("known_browser").map(|v| v.as_bool().unwrap())).collect();
    assert_eq!(fields, [None, Some(true)]);
    let (ok, out, err) = portcullis(&app.settings, &["audit", "--user", "alice"]).await;
    assert!(ok, "{err}");
    let browsers: Vec<&str> = out.lines().map(|l| l.split_whitespace().nth(4).unwrap()).collect();
    assert_eq!(browsers, ["BROWSER", "-", "known"], "{out}");
}

/// A signed-in admin browser.
pub(crate) async fn admin_browser(app: &crate::helpers::TestApp) -> reqwest::Client {
    let client = app.new_browser();
    assert_eq!(app.login_with(&client, "admin", &app.admin_password).await.status(), 303);
    client
}

#[tokio::test]
async fn the_admin_page_is_for_admins_only() {
    let app = spawn_app().await;
    let anon = app.new_browser();
    let resp = anon.get(app.url("/admin/failed-logins?user=x")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert!(resp.headers()["location"].to_str().unwrap().starts_with("/login?next=%2Fadmin%2Ffailed-logins"));
    // A form posted without a session goes back to the page that holds it after signing in,
    // not to the POST-only route (405 when followed).
    let resp = anon.post(app.url("/admin/unlock")).form(&[("csrf", "x"), ("username", "bob")]).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()),
        (303, "/login?next=%2Fadmin%2Ffailed-logins")
    );
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let alice = app.new_browser();
    app.login_with(&alice, "alice", GOOD_PASSWORD).await;
    assert_eq!(alice.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), 403);
    assert!(!alice.get(app.url("/")).send().await.unwrap().text().await.unwrap().contains("/admin/failed-logins"));
    let admin = admin_browser(&app).await;
    let resp = admin.get(app.url("/admin/failed-logins")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(admin.get(app.url("/")).send().await.unwrap().text().await.unwrap().contains("/admin/failed-logins"));
}

#[tokio::test]
async fn the_admin_page_says_when_records_were_dropped_at_the_cap() {
    let app = spawn_app_with(|s| {
        s.captcha_after_failures = 1000;
        s.audit_max_records = 2;
    })
    .await;
    let admin = admin_browser(&app).await;
    let url = app.url("/admin/failed-logins");
    let page = || async { admin.get(&url).send().await.unwrap().text().await.unwrap() };
    assert!(!page().await.contains("audit_max_records"), "nothing dropped, nothing said");
    let mut visitor = Visitor::new(&app, Some("198.51.100.9"));
    for i in 0..5 {
        assert_eq!(visitor.attempt(&format!("nobody{i}"), "not the password at all", None).await.0, 401);
    }
    let text = page().await;
    assert!(
        text.contains("The store keeps at most 2 failed-login records (audit_max_records): this server has dropped 3 older records since it started"),
        "{text}"
    );
    assert!(text.contains("Last 48 hours, UTC"), "the chart says its zone");
}

#[tokio::test]
async fn the_admin_page_filters_pages_summarises_and_charts() {
    let app = spawn_app().await;
    let now = portcullis::store::now_ms();
    for r in known_records(now) {
        app.state.audit.append(&r).await.unwrap();
    }
    let admin = admin_browser(&app).await;
    let get = |q: String| {
        let admin = admin.clone();
        let url = app.url(&format!("/admin/failed-logins?{q}"));
        async move {
            let resp = admin.get(url).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let rows = |page: &str| page.matches("<span class=\"reason").count();

    let (status, page) = get("user=alice&reason=bad_password".into()).await;
    assert_eq!(status, 200);
    assert_eq!(rows(&page), 2);
    let (_, page) = get("ip=198.51.100.0%2F24&since=12h".into()).await;
    assert_eq!(rows(&page), 4);
    assert!(page.contains("mallory"), "escaped, but shown");
    assert_eq!(page.matches("<rect").count(), 48, "a 12-hour filter still charts 48 hours");
    assert!(page.contains("the time filters apply to the summary and records, not here"), "and says so");
    assert!(!page.contains('\u{1b}') || page.contains("mallory\u{1b}[31m"));

    // Keyset pages: 30 records, 7 per page, every record once.
    let mut seen = Vec::new();
    let mut href = Some("/admin/failed-logins?limit=7".to_string());
    let mut pages = 0;
    while let Some(h) = href {
        pages += 1;
        let page = admin.get(app.url(&h)).send().await.unwrap().text().await.unwrap();
        for agent in page.split("<td class=\"ua\">").skip(1) {
            seen.push(agent.split('<').next().unwrap().to_string());
        }
        href = crate::admin_review::older_link(&page);
        if seen.len() > 40 {
            break;
        }
    }
    assert_eq!(seen.len(), 30, "{seen:?}");
    assert_eq!(pages, 5, "7 per page: the page size applies");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);

    // Summary and chart.
    let (_, page) = get(String::new()).await;
    assert!(page.contains("30 failed attempts"));
    let svg_start = page.find("<svg").unwrap();
    let svg_end = page.find("</svg>").unwrap() + "</svg>".len();
    let svg = &page[svg_start..svg_end];
    let doc = roxmltree::Document::parse(svg).expect("the chart is well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("rect")).count(), 48);

    let (status, page) = get("since=whenever".into()).await;
    assert_eq!(status, 400);
    assert!(page.contains("neither a duration"));
}

#[tokio::test]
async fn unlocking_clears_the_captcha_demand_and_is_recorded() {
    let app = spawn_app_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.captcha_after_failures = 2;
    })
    .await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    for i in 0..2 {
        let mut bot = Visitor::new(&app, Some(&format!("10.0.0.{i}")));
        bot.attempt("alice", "wrong wrong wrong", None).await;
    }
    let alice_demands_a_captcha = || async {
        let digest = portcullis::rate_limit::username_digest("alice");
        let elsewhere = portcullis::client::AddressKey::of("198.51.100.77".parse().unwrap());
        app.state.brute_force.needs_captcha(elsewhere, Some(digest), portcullis::store::now_ms()).await.unwrap()
    };
    assert!(alice_demands_a_captcha().await);
    let admin = admin_browser(&app).await;
    let page = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    let csrf = hidden_field(&page, "csrf").unwrap();
    // Without the token: refused.
    let resp = admin.post(app.url("/admin/unlock")).form(&[("username", "alice"), ("csrf", "x")]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp =
        admin.post(app.url("/admin/unlock")).form(&[("username", "Alice"), ("csrf", &csrf)]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let notice =
        admin.get(app.url(resp.headers()["location"].to_str().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(notice.contains("alice is unlocked"));
    assert!(!alice_demands_a_captcha().await);
    let mut alice = Visitor::new(&app, Some("203.0.113.5"));
    assert_eq!(alice.attempt("alice", GOOD_PASSWORD, None).await.0, 303);
    assert!(app.log_lines().iter().any(|l| l["event"] == "user_unlocked" && l["by"] == "admin"));
    // The CLI does the same through the admin socket.
    let (ok, out, err) = portcullis(&app.settings, &["user", "unlock", "alice"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("unlocked"));
    let (ok, _, err) = portcullis(&app.settings, &["user", "unlock", "nobody"]).await;
    assert!(!ok && err.lines().count() == 1, "{err}");
}

#[tokio::test]
async fn the_fail2ban_filter_matches_failed_login_lines_and_only_their_address() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let mut attacker = Visitor::new(&app, Some("203.0.113.66"));
    attacker.attempt("x\",\"ip\":\"9.9.9.9", "wrong wrong wrong", None).await;
    attacker.attempt("alice", "wrong wrong wrong", None).await;
    let mut alice = Visitor::new(&app, Some("198.51.100.1"));
    alice.attempt("alice", GOOD_PASSWORD, None).await;
    // A form another site's page made a visitor's browser post: recorded, banning no one.
    let visitor = Visitor::new(&app, Some("192.0.2.77"));
    let form = [("username", "alice"), ("password", "x"), ("csrf", "x")];
    let posted = visitor.request(reqwest::Method::POST, "/login").header("sec-fetch-site", "cross-site").form(&form);
    assert_eq!(posted.send().await.unwrap().status(), 403);
    let text = app.log_text();
    assert!(text.contains(r#""ip":"192.0.2.77","user_agent":"#) && text.contains(r#""reason":"csrf""#), "{text}");

    let conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/fail2ban/filter.d/portcullis.conf"))
            .unwrap();
    let failregex = conf.lines().find_map(|l| l.strip_prefix("failregex = ")).unwrap();
    let re = regex::Regex::new(&failregex.replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)")).unwrap();
    let ignored = regex::Regex::new(conf.lines().find_map(|l| l.strip_prefix("ignoreregex = ")).unwrap()).unwrap();
    let hosts: Vec<&str> = text
        .lines()
        .filter(|l| !ignored.is_match(l))
        .filter_map(|l| re.captures(l))
        .map(|c| c.name("host").unwrap().as_str())
        .collect();
    assert_eq!(hosts, vec!["203.0.113.66", "203.0.113.66"], "{text}");

    if let Ok(out) = Command::new("fail2ban-regex")
        .args(["--print-all-matched", "-v"])
        .arg(log_file(&app))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/fail2ban/filter.d/portcullis.conf"))
        .output()
    {
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(report.contains("203.0.113.66"), "{report}");
        let hits: Vec<&str> = report.lines().filter(|l| l.starts_with("|      ")).collect();
        assert!(hits.iter().all(|l| l.contains("203.0.113.66")), "{report}");
        assert!(report.contains("Date template hits:\n|- [# of hits] date format\n|  [6]"), "{report}");
        assert!(report.contains("Failregex: 2 total"), "{report}");
        assert!(report.contains("Ignoreregex: 1 total"), "{report}");
    } else {
        eprintln!("fail2ban-regex is not installed; checked the regex in Rust only");
    }
}

fn log_file(app: &crate::helpers::TestApp) -> std::path::PathBuf {
    std::fs::read_dir(&app.settings.log_dir).unwrap().next().unwrap().unwrap().path()
}

#[tokio::test]
async fn log_files_rotate_daily_and_old_ones_are_deleted_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.audit_retention = std::time::Duration::from_secs(3 * 86_400);
    std::fs::create_dir_all(&settings.log_dir).unwrap();
    let day = |days_ago: u64| {
        let at = portcullis::store::now_ms() - days_ago * 86_400_000;
        format!("auth.log.{}", &portcullis::audit::rfc3339(at)[..10])
    };
    // Today's file first, with a line in it; then older ones, created after it (a review saw
    // files copied in later make the newest-by-creation rule delete today's), and files years
    // old, which a rule keeping the newest N kept through quiet days.
    std::fs::write(settings.log_dir.join(day(0)), "{\"kept\":true}\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    for name in [day(1), day(3), day(4), day(10), "auth.log.2020-01-01".into(), "auth.log.2020-01-02".into()] {
        std::fs::write(settings.log_dir.join(name), "{}\n").unwrap();
    }
    std::fs::write(settings.log_dir.join("auth.log.notes"), "an operator's\n").unwrap();
    // A directory so named is not a log file: left, and no reason to stop the start.
    std::fs::create_dir(settings.log_dir.join("auth.log.2020-01-03")).unwrap();
    let app = crate::helpers::spawn_in(dir, settings).await;
    let mut names: Vec<String> = std::fs::read_dir(&app.settings.log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // A file goes once its last line is older than the retention: the day 3 days ago ended
    // 2 days ago, so it stays; 4 days ago, gone.
    let mut kept = vec![day(0), day(1), day(3), "auth.log.notes".to_string(), "auth.log.2020-01-03".to_string()];
    kept.sort();
    assert_eq!(names, kept);
    let today = std::fs::read_to_string(app.settings.log_dir.join(day(0))).unwrap();
    assert!(today.starts_with("{\"kept\":true}\n"), "{today}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_audit_through_a_running_server_comes_in_pages_the_server_can_hold() {
    use portcullis::admin_socket::{call_within, Request, Response, ANSWER_TIMEOUT, RECORDS_PER_ANSWER};
    use portcullis::review::{Answer, FilterArgs};
    let app = spawn_app().await;
    let now = portcullis::store::now_ms();
    let many = 2 * RECORDS_PER_ANSWER + 3;
    let records: Vec<FailureRecord> = (0..many as u64)
        .map(|i| FailureRecord { time: now - 1000 - i, ..known_records(now)[(i % 30) as usize].clone() })
        .collect();
    app.state.store.failures.import(&records).await.unwrap();
    // The server answers one request with at most a page, and says where the rest begins.
    let filters = FilterArgs { limit: Some(1_000_000), ..FilterArgs::default() };
    let asked = Request::Audit { filters, summary: false };
    let answer = call_within(&app.settings.data_dir, &asked, ANSWER_TIMEOUT).await.unwrap().unwrap();
    let Response::Review { answer: Answer::Records { records: page, next } } = answer else { panic!("records") };
    assert_eq!((page.len(), next.is_some()), (RECORDS_PER_ANSWER, true));
    // A limit no command may ask for is refused, not quietly cut to a page.
    let filters = FilterArgs { limit: Some(2_000_000), ..FilterArgs::default() };
    let asked = Request::Audit { filters, summary: false };
    let answer = call_within(&app.settings.data_dir, &asked, ANSWER_TIMEOUT).await.unwrap().unwrap();
    assert!(matches!(answer, Response::Error { .. }), "{answer:?}");
    // The command asks page after page: every record once, in order, and nothing more said.
    let (ok, out, err) = portcullis(&app.settings, &["audit", "--json", "--limit", "1000000"]).await;
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), many);
    assert!(!err.contains("more records match"), "{err}");
    let times: Vec<&str> = lines.iter().map(|l| l["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first across pages");
    // A limit between pages stops there, and says more match.
    let (ok, out, err) = portcullis(&app.settings, &["audit", "--json", "--limit", "5003"]).await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out).len(), 5003);
    assert!(err.contains("more records match"), "{err}");
}
