//! Property versions of the fuzz targets in `fuzz/`: the same checks (`fuzz/src/harness.rs`,
//! included below) on a few hundred generated inputs each, so every `cargo test` exercises them,
//! plus a replay of every input saved under `fuzz/regressions/` (crashes the fuzzers found).

#[path = "../../fuzz/src/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis::config::KEYS;
use portcullis::review::FilterArgs;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    // Failures are kept as files under fuzz/regressions instead (see the README there).
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Text built from pieces that matter to the parser under test, plus some arbitrary text.
fn pieces(list: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![4 => prop::sample::select(list).prop_map(str::to_string), 1 => any::<String>()],
        0..max,
    )
    .prop_map(|v| v.concat())
}

/// Times that matter to token checks: any, and the edges where arithmetic overflows.
fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        (u64::MAX - 7300..=u64::MAX),
        Just(harness::NOW_SECS),
        (harness::NOW_SECS - 10_000..harness::NOW_SECS + 10_000),
    ]
}

const USERNAME_PIECES: &[&str] = &[
    "alice",
    "ALICE",
    "ａｌｉｃｅ",
    " ",
    "\t",
    "\u{a0}",
    "\u{3000}",
    "ß",
    "ẞ",
    "İ",
    "ı",
    "ﬁ",
    "Ω",
    "\u{2126}",
    "K",
    "\u{212a}",
    "\u{0301}",
    "e\u{0301}",
    "\u{00a8}",
    "\u{1e9e}",
    "\u{03f4}",
    "ǅ",
    "Ⅻ",
    "\u{202e}",
    "\u{200b}",
    "\n",
    "\u{0}",
    "\u{1b}",
    "\u{fe4d}",
    "㍱",
    "\u{2028}",
    "x",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn login_form_bodies(body in prop::collection::vec(any::<u8>(), 0..600)) {
        harness::login_form(&body);
    }

    #[test]
    fn login_forms_as_browsers_send_them(
        username in pieces(USERNAME_PIECES, 8),
        password in any::<String>(),
        csrf in "[A-Za-z0-9_=-]{0,60}",
        next in pieces(&["/", "//", "\\", "evil.com", "%2f", "%5c", "?", "#", "@", ":"], 6),
        extra in prop::collection::vec(("[a-z&=%]{0,8}", any::<String>()), 0..3),
    ) {
        let mut fields = vec![("username", username.clone()), ("password", password.clone()), ("csrf", csrf.clone()), ("next", next.clone())];
        fields.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let body = serde_urlencoded::to_string(&fields).unwrap();
        harness::login_form(body.as_bytes());
        harness::check_login_fields(&username, &password, &csrf, Some(&next));
    }

    #[test]
    fn usernames_normalise_idempotently(name in pieces(USERNAME_PIECES, 12)) {
        harness::check_username(&name);
    }

    #[test]
    fn csrf_tokens_bind_to_their_cookie(
        cookie in "[A-Za-z0-9_-]{0,50}",
        other in "[A-Za-z0-9_-]{0,50}",
        typed in prop_oneof!["[A-Za-z0-9_-]{54}", "[A-Za-z0-9_-]{43}", any::<String>()],
        now in time(),
        key in prop::collection::vec(any::<u8>(), 32),
    ) {
        harness::check_csrf(&cookie, &other, &typed, now, &key);
    }

    #[test]
    fn csrf_raw_inputs(data in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::csrf(&data);
    }

    #[test]
    fn next_never_leaves_the_origin(
        next in pieces(&[
            "/", "//", "\\", "/\\", "%2f", "%2F", "%5c", "%5C", "%09", "%0a", "%00", ".", "..", "@", ":", "?", "#",
            "evil.com", "http:", "https:", "javascript:", "\t", "\n", " ", "\u{3002}", "／", "＼", "a",
        ], 8),
    ) {
        harness::check_safe_next(&next);
    }

    #[test]
    fn rd_never_leaves_the_cookie_domain(
        rd in pieces(&[
            "https://", "HTTPS://", "http://", "https:", "//", "/", "\\", "%2f", "%5c", "%09", "%0a", "%00", "@", ":",
            "?", "#", "&", "=", ".", "..", "example.test", "app.example.test", "evil-example.test", "evil.test",
            "xn--80ak6aa92e.example.test", "\u{3002}", "／", "＼", "\t", "\n", " ", ":443", "a",
        ], 8),
    ) {
        harness::check_rd(&rd);
    }

    #[test]
    fn client_ip_is_the_peer_or_from_the_header(
        peer in prop_oneof![ip_from_pool(), any::<IpAddr>()],
        trusted in prop::collection::vec((ip_from_pool(), 0u8..=128), 0..4),
        headers in prop::collection::vec(prop::collection::vec(xff_entry(), 0..5).prop_map(|v| v.join(",")), 0..3),
    ) {
        let trusted: Vec<IpNet> = trusted.into_iter().filter_map(|(ip, len)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            IpNet::new(ip, len.min(max)).ok().map(|n| n.trunc())
        }).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        harness::check_forwarded_for(peer, &headers, &trusted);
    }

    #[test]
    fn forwarded_for_raw_inputs(data in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::forwarded_for(&data);
    }

    #[test]
    fn cookie_headers(
        headers in prop::collection::vec(pieces(&[
            "__Host-portcullis=", "__Host-portcullis-pre=", "__host-portcullis=", "; ", ";", "=", "\"", " ", ",",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG", "x=1",
        ], 8), 0..3),
    ) {
        let headers: Vec<&[u8]> = headers.iter().map(String::as_bytes).collect();
        harness::check_cookies(&headers);
    }

    #[test]
    fn session_tokens_have_one_spelling(value in prop_oneof!["[A-Za-z0-9_-]{43}", "[A-Za-z0-9_+/=-]{40,46}", any::<String>()]) {
        harness::check_session_token(&value);
    }

    #[test]
    fn audit_filters_reject_junk(
        since in opt(pieces(&["2h", "90d", "1y", "0s", "18446744073709551615s", "2024-01-01T00:00:00Z", "2024-13-01", "T", "-", " ", "1", "\r", "\u{1b}[2J"], 3)),
        until in opt(pieces(&["15m", "2023-06-01T12:00:00.123Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "x", "\u{7}"], 3)),
        user in opt(pieces(USERNAME_PIECES, 6)),
        ip in opt(pieces(&["10.0.0.1", "10.0.0.0/8", "/33", "::1", "2001:db8::/129", "::ffff:1.2.3.4", ".", ":", "1", "\r", "\u{1b}"], 3)),
        reason in opt(pieces(&["bad_password", "unknown_user", "csrf", "rate_limited", "disabled", "\"", "BAD_PASSWORD", " ", "\u{0}", "\n"], 2)),
        limit in prop::option::of(any::<usize>()),
        before in opt(prop_oneof!["[A-Za-z0-9_-]{22}", "[A-Za-z0-9_+/=-]{0,30}"]),
    ) {
        harness::check_filters(&FilterArgs { since, until, user, ip, reason, limit, before });
    }

    #[test]
    fn audit_filter_raw_inputs(data in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::audit_filters(&data);
    }

    #[test]
    fn admin_socket_requests(
        command in pieces(&["user_add", "user_passwd", "user_del", "user_list", "user_unlock", "audit", "x"], 2),
        name in any::<String>(),
        password in any::<String>(),
        admin in any::<bool>(),
        summary in any::<bool>(),
        filters in prop::collection::btree_map("since|until|user|ip|reason|limit|before|other", any::<String>(), 0..4),
        drop_field in 0usize..6,
    ) {
        let mut v = serde_json::json!({
            "command": command, "name": name, "password": password, "admin": admin,
            "summary": summary, "filters": filters,
        });
        let field = ["command", "name", "password", "admin", "summary", "filters"][drop_field];
        v.as_object_mut().unwrap().remove(field);
        harness::admin_request(v.to_string().as_bytes());
    }

    #[test]
    fn admin_socket_raw_lines(data in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::admin_request(&data);
    }

    #[test]
    fn config_files(
        file in prop::collection::btree_map(key(), toml_value(), 0..6),
        env in prop::collection::btree_map(key(), setting_text(), 0..3),
        flags in prop::collection::btree_map(key(), setting_text(), 0..3),
    ) {
        let table: toml::Table = file.into_iter().collect();
        harness::check_config(&table, &env, &flags);
        // And the same table as text, through the parser.
        harness::config_file(toml::to_string(&table).unwrap_or_default().as_bytes());
    }

    #[test]
    fn config_raw_text(text in pieces(&["=", "\"", "\n", "[", "]", "min_password_length", "session_idle_timeout", "1/600years", "{", "}", "'''", "\"\"\"", "#", "1e9", "trusted_proxies", "10.0.0.1", "\\u001b", "\r"], 12)) {
        harness::config_file(text.as_bytes());
    }
}

fn opt<S: Strategy<Value = String>>(s: S) -> impl Strategy<Value = Option<String>> {
    prop::option::of(s)
}

/// Addresses that the trusted networks and the headers share, so trust walks happen.
fn ip_from_pool() -> impl Strategy<Value = IpAddr> {
    prop::sample::select(vec![
        "127.0.0.1",
        "10.0.0.1",
        "10.0.0.2",
        "10.1.2.3",
        "192.0.2.7",
        "198.51.100.9",
        "::1",
        "2001:db8::1",
        "2001:db8::2",
        "::ffff:10.0.0.1",
        "::ffff:192.0.2.7",
        "0.0.0.0",
        "::",
    ])
    .prop_map(|s| s.parse().unwrap())
}

fn xff_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        ip_from_pool().prop_map(|ip| ip.to_string()),
        ip_from_pool().prop_map(|ip| format!(" {ip} ")),
        (ip_from_pool(), any::<u16>()).prop_map(|(ip, p)| std::net::SocketAddr::new(ip, p).to_string()),
        ip_from_pool().prop_map(|ip| format!("[{ip}]")),
        Just("unknown".to_string()),
        Just(String::new()),
        any::<String>(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![9 => prop::sample::select(KEYS.iter().map(|k| k.name).collect::<Vec<_>>()).prop_map(str::to_string), 1 => "[a-z_]{1,12}"]
}

/// Values as they could be written on a command line or in the environment.
fn setting_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "0",
        "1",
        "8",
        "64",
        "4294967295",
        "4294967296",
        "-1",
        "off",
        "on",
        "30s",
        "0s",
        "1ns",
        "600years",
        "100years",
        "18446744073709551615s",
        "1/1m",
        "0/1m",
        "4294967295/1ns",
        "1/600years",
        "1/18446744073709551615s",
        "10/15m",
        "127.0.0.1:0",
        "[::1]:4000",
        "https://login.example.com",
        "https://a/b",
        "127.0.0.1,10.0.0.0/8",
        "10.0.0.0/33",
        "data",
        "x y",
        "10.0.0.1\n\u{1b}[2J",
        "5m\r",
        "\u{0}",
    ])
    .prop_map(str::to_string)
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        setting_text().prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        (0i64..100_000).prop_map(toml::Value::Integer),
        any::<bool>().prop_map(toml::Value::Boolean),
        any::<f64>().prop_map(toml::Value::Float),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// Every input saved under `fuzz/regressions/TARGET/` (crashes found by `cargo fuzz`, kept after
/// the fix) goes through its target again.
#[test]
fn saved_fuzz_crashes_replay_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = BTreeMap::new();
    for (name, target) in harness::TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{} panics again", path.display());
            *replayed.entry(*name).or_insert(0) += 1;
        }
    }
    println!("replayed saved fuzz inputs: {replayed:?}");
}
