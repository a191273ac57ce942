//! The checks behind every fuzz target, shared with the property tests: the fuzz crate compiles
//! this file as its library, and `tests/api/fuzz_props.rs` includes it with `#[path]`, so a
//! crashing input found by `cargo fuzz` replays through exactly the same code in `cargo test`.
//!
//! Each `fn NAME(data: &[u8])` is one fuzz target: it decodes raw bytes into that target's
//! inputs (lines of text for the structured ones) and calls the matching `check_*`, which
//! panics when an invariant does not hold. Only portcullis's public API is used.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use portcullis::admin_socket;
use portcullis::client::client_ip;
use portcullis::config::{parse_net, Overrides, Settings, KEYS};
use portcullis::cookies;
use portcullis::csrf::{Csrf, LOGIN_TOKEN_LIFETIME, PRELOGIN_COOKIE};
use portcullis::domain::{normalise_key, Username, MAX_USERNAME_CHARS};
use portcullis::password::Password;
use portcullis::rate_limit::LoginQuotas;
use portcullis::review::FilterArgs;
use portcullis::routes::login::post::LoginForm;
use portcullis::routes::login::safe_next;
use portcullis::routes::logout::CsrfForm;
use portcullis::session::{SessionToken, SESSION_COOKIE};

/// A fixed time (2024-01-01) for checks that need "now" when the input does not give one.
pub const NOW_SECS: u64 = 1_704_067_200;

/// A fuzz target: raw bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name, as `cargo fuzz run NAME` and the regression directory know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("login_form", login_form),
    ("csrf", csrf),
    ("safe_next", safe_next_target),
    ("forwarded_for", forwarded_for),
    ("cookies", cookie_header),
    ("audit_filters", audit_filters),
    ("admin_socket", admin_request),
    ("config", config_file),
    ("rd", rd_target),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn lines(data: &[u8]) -> Vec<String> {
    text(data).split('\n').map(str::to_string).collect()
}

fn line(lines: &[String], i: usize) -> &str {
    lines.get(i).map_or("", String::as_str)
}

// --- login and logout forms ----------------------------------------------------------------

/// `POST /login` and `POST /logout` bodies: whatever parses must go through the same steps
/// the handlers take without panicking.
pub fn login_form(data: &[u8]) {
    if let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(data) {
        check_login_fields(&form.username, &form.password, &form.csrf, form.next.as_deref());
        let csrf = Csrf::new([7; 32]);
        let _ = csrf.check_login("a-prelogin-cookie-value-of-43-characters-xx", &form.csrf, NOW_SECS);
    }
    if let Ok(form) = serde_urlencoded::from_bytes::<CsrfForm>(data) {
        let csrf = Csrf::new([7; 32]);
        if form.csrf != csrf.session_token(&[1; 32]) {
            assert!(!csrf.check_session(&[1; 32], &form.csrf), "{:?} verified as a logout token", form.csrf);
        }
    }
}

/// What the login handler does with the typed fields before anything reaches the store.
pub fn check_login_fields(username: &str, password: &str, csrf: &str, next: Option<&str>) {
    let key: String = normalise_key(username).chars().take(256).collect();
    let _ = portcullis::rate_limit::username_digest(&key);
    check_username(username);
    let p = Password::new(password);
    let _ = p.char_count();
    assert_eq!(format!("{p:?}"), "Password([REDACTED])");
    let _ = csrf.len();
    check_safe_next(next.unwrap_or(""));
}

/// `Username::parse` and `normalise_key`: a parsed name's key is its display text normalised,
/// normalising a key again changes nothing, and no accepted name is empty, too long or holds
/// control characters.
pub fn check_username(input: &str) {
    let key = normalise_key(input);
    assert_eq!(normalise_key(&key), key, "normalise_key is not idempotent for {input:?}");
    if let Ok(name) = Username::parse(input) {
        assert_eq!(name.key(), normalise_key(name.as_str()), "{input:?}");
        assert_eq!(name.key(), key, "the key of {input:?} depends on how it was reached");
        assert_eq!(normalise_key(name.key()), name.key(), "{input:?}");
        assert!(!name.as_str().is_empty());
        assert!(name.as_str().chars().count() <= MAX_USERNAME_CHARS);
        assert!(!name.as_str().chars().any(char::is_control), "{input:?}");
        assert_eq!(name.as_str(), name.as_str().trim());
        // The stored name parses to the same user.
        let again = Username::parse(name.as_str()).expect("a parsed name parses again");
        assert_eq!(again.key(), name.key());
    }
}

// --- CSRF tokens -----------------------------------------------------------------------------

/// Lines: prelogin cookie, another cookie, a token as typed, a time in seconds (decimal, or
/// exactly 8 raw bytes read big-endian, so that the fuzzer reaches the extremes easily).
pub fn csrf(data: &[u8]) {
    let l = lines(data);
    let raw_time = data.split(|&b| b == b'\n').nth(3).unwrap_or_default();
    let now = match <[u8; 8]>::try_from(raw_time) {
        Ok(bytes) => u64::from_be_bytes(bytes),
        Err(_) => line(&l, 3).trim().parse::<u64>().unwrap_or(NOW_SECS),
    };
    check_csrf(line(&l, 0), line(&l, 1), line(&l, 2), now, data);
}

/// A login token verifies for its own cookie (while fresh) and never for another one; a
/// session token never verifies for another session; arbitrary tokens and times never panic.
pub fn check_csrf(cookie: &str, other: &str, typed: &str, now: u64, key_material: &[u8]) {
    let mut key = [0u8; 32];
    for (i, b) in key_material.iter().take(32).enumerate() {
        key[i] = *b;
    }
    let csrf = Csrf::new(key);
    // Arbitrary input: must not panic, whatever the time.
    let _ = csrf.check_login(cookie, typed, now);
    let _ = csrf.check_session(&[0; 32], typed);

    let token = csrf.login_token(cookie, now);
    if now.checked_add(LOGIN_TOKEN_LIFETIME.as_secs()).is_some() {
        assert!(csrf.check_login(cookie, &token, now), "a fresh token does not verify");
    }
    if other != cookie {
        assert!(!csrf.check_login(other, &token, now), "a token verified for another cookie");
    }
    let mut other_key = key;
    other_key[0] ^= 1;
    assert!(!Csrf::new(other_key).check_login(cookie, &token, now), "a token verified under another key");
    if typed != token {
        // Another string that verifies would be a forgery (or a second spelling of the token).
        assert!(!csrf.check_login(cookie, typed, now), "{typed:?} verified in place of {token:?}");
    }

    let (a, b) = (sha(cookie), sha(other));
    let session = csrf.session_token(&a);
    assert!(csrf.check_session(&a, &session));
    if a != b {
        assert!(!csrf.check_session(&b, &session), "a session token verified for another session");
    }
    if typed != session {
        assert!(!csrf.check_session(&a, typed), "{typed:?} verified in place of {session:?}");
    }
}

fn sha(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

// --- `next` --------------------------------------------------------------------------------

pub fn safe_next_target(data: &[u8]) {
    check_safe_next(&text(data));
}

/// Whatever `safe_next` lets through stays on this origin once a browser resolves it.
pub fn check_safe_next(next: &str) {
    let Some(out) = safe_next(Some(next)) else { return };
    assert_eq!(out, next, "safe_next rewrote its input");
    assert!(out.starts_with('/') && !out.starts_with("//"), "{out:?}");
    assert!(!out.contains('\\'), "{out:?}");
    assert!(out.chars().all(|c| c.is_ascii_graphic()), "{out:?}");
    // Resolved the way a browser resolves a Location header (WHATWG URL).
    let base = url::Url::parse("https://login.example.test/login").expect("a valid base");
    let resolved = base.join(out).unwrap_or_else(|e| panic!("{out:?} does not resolve: {e}"));
    assert_eq!(resolved.scheme(), "https", "{out:?} -> {resolved}");
    assert_eq!(resolved.host_str(), Some("login.example.test"), "{out:?} -> {resolved}");
    assert_eq!(resolved.port(), None, "{out:?} -> {resolved}");
    assert!(resolved.username().is_empty() && resolved.password().is_none(), "{out:?} -> {resolved}");
    // And it survives as a header value.
    assert!(poem::http::HeaderValue::from_str(out).is_ok(), "{out:?}");
}

// --- `rd` (forward auth's return address) ---------------------------------------------------

/// The whole input is the `rd` value, checked for `cookie_domain = example.test` with
/// `public_url = https://login.example.test`.
pub fn rd_target(data: &[u8]) {
    check_rd(&text(data));
}

/// Whatever `safe_rd` lets through is an https URL on example.test or under it on a dot
/// boundary, without user info, that a browser resolves to the same place, that fits in a
/// header, that a second check leaves as it is, and that survives the trip through
/// `/login?rd=` intact.
pub fn check_rd(rd: &str) {
    let settings = Settings {
        public_url: Some("https://login.example.test".into()),
        cookie_domain: Some(portcullis::config::CookieDomain::parse("example.test").expect("a valid domain")),
        ..Settings::default()
    };
    let gate = portcullis::forward_auth::Gate::new(&settings);
    let Some(out) = gate.safe_rd(rd) else { return };
    assert!(!rd.contains('\\') && !rd.chars().any(char::is_control), "{rd:?}");
    let url = url::Url::parse(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(url.scheme(), "https", "{rd:?} -> {out}");
    assert!(url.username().is_empty() && url.password().is_none(), "{rd:?} -> {out}");
    let host = url.host_str().unwrap_or_default();
    assert!(host == "example.test" || host.ends_with(".example.test"), "{rd:?} -> {out}");
    // As a Location header, resolved against any page of ours, it is the same URL.
    let base = url::Url::parse("https://login.example.test/login").expect("a valid base");
    assert_eq!(base.join(&out).ok().as_ref(), Some(&url), "{rd:?} -> {out}");
    assert!(poem::http::HeaderValue::from_str(&out).is_ok(), "{out:?}");
    assert_eq!(gate.safe_rd(&out).as_deref(), Some(out.as_str()), "not stable: {rd:?} -> {out}");
    let login = url::Url::parse(&gate.login_location(&out)).expect("the login location parses");
    let back: Vec<String> = login.query_pairs().filter(|(k, _)| k == "rd").map(|(_, v)| v.into_owned()).collect();
    assert_eq!(back, std::slice::from_ref(&out), "rd did not survive the round trip");
}

// --- X-Forwarded-For -----------------------------------------------------------------------

/// Lines: the TCP peer, the trusted networks (comma-separated), then one header value each.
pub fn forwarded_for(data: &[u8]) {
    let l = lines(data);
    let peer: IpAddr = line(&l, 0).trim().parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let trusted: Vec<IpNet> = line(&l, 1).split(',').filter_map(|s| parse_net(s.trim()).ok()).collect();
    let headers: Vec<&str> = l.iter().skip(2).map(String::as_str).collect();
    check_forwarded_for(peer, &headers, &trusted);
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Every address an X-Forwarded-For entry could be read as, whatever its spelling.
fn addresses_in(headers: &[&str]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for entry in headers.iter().flat_map(|h| h.split(',')) {
        let e = entry.trim();
        if let Ok(ip) = e.parse::<IpAddr>() {
            out.push(canonical(ip));
        }
        if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
            out.push(canonical(sa.ip()));
        }
        if let Some(ip) = e.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok()) {
            out.push(canonical(ip));
        }
    }
    out
}

/// The client address is the peer or an address written in the header; the header counts only
/// when the peer is trusted; and poem's request path gives the same answer as the function.
pub fn check_forwarded_for(peer: IpAddr, headers: &[&str], trusted: &[IpNet]) {
    let got = client_ip(peer, headers, trusted);
    let peer = canonical(peer);
    let peer_trusted = trusted.iter().any(|n| n.contains(&peer));
    if !peer_trusted {
        assert_eq!(got, peer, "an untrusted peer's header was believed");
    } else if got != peer {
        assert!(addresses_in(headers).contains(&got), "{got} is neither the peer nor in {headers:?}");
    }
    // The same through a real request, header by header.
    let mut builder = poem::Request::builder();
    for h in headers {
        if let Ok(v) = poem::http::HeaderValue::from_str(h) {
            builder = builder.header("x-forwarded-for", v);
        }
    }
    let _ = portcullis::client::client(&builder.finish(), trusted);
}

// --- cookies and session tokens ------------------------------------------------------------

/// Each line is one `Cookie` header.
pub fn cookie_header(data: &[u8]) {
    let headers: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    check_cookies(&headers);
}

pub fn check_cookies(headers: &[&[u8]]) {
    let mut builder = poem::Request::builder();
    for h in headers {
        if let Ok(v) = poem::http::HeaderValue::from_bytes(h) {
            builder = builder.header(poem::http::header::COOKIE, v);
        }
    }
    let req = builder.finish();
    for name in [SESSION_COOKIE, PRELOGIN_COOKIE, "x"] {
        if let Some(value) = cookies::get(&req, name) {
            assert!(!value.contains(';'), "{value:?}");
            check_session_token(&value);
        }
    }
    // Only a value the server issued (signed under its key) is a pre-login cookie.
    let csrf = Csrf::new([7; 32]);
    if let Some(value) = cookies::get(&req, PRELOGIN_COOKIE) {
        assert!(csrf.prelogin(&value, NOW_SECS).is_none(), "{value:?} accepted without being issued");
    }
}

/// A session cookie value is a token only in its one canonical spelling.
pub fn check_session_token(value: &str) {
    if let Some(token) = SessionToken::parse(value) {
        assert_eq!(token.encode(), value, "two spellings of one session token");
        assert_eq!(SessionToken::parse(&token.encode()).map(|t| t.hash()), Some(token.hash()));
    }
}

// --- audit filters -------------------------------------------------------------------------

/// Lines: since, until, user, ip, reason, limit, before; an empty line is "not given".
pub fn audit_filters(data: &[u8]) {
    let l = lines(data);
    let field = |i: usize| l.get(i).map(|s| s.to_string());
    let args = FilterArgs {
        since: field(0),
        until: field(1),
        user: field(2),
        ip: field(3),
        reason: field(4),
        limit: l.get(5).and_then(|s| s.trim().parse().ok()),
        before: field(6),
    };
    check_filters(&args);
}

/// `to_query` never panics, and what it accepts is what was asked for: junk in any field is
/// an error, never a filter silently dropped.
pub fn check_filters(args: &FilterArgs) {
    let given = |f: &Option<String>| f.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    match args.to_query(NOW_SECS * 1000, 100) {
        Ok(q) => {
            assert_eq!(q.since.is_some(), given(&args.since).is_some());
            assert_eq!(q.until.is_some(), given(&args.until).is_some());
            assert_eq!(q.ip.is_some(), given(&args.ip).is_some());
            assert_eq!(q.reason.is_some(), given(&args.reason).is_some());
            // A cursor that parsed is a `Cursor`: its length is the type's business now.
            assert_eq!(q.limit, args.limit.unwrap_or(100));
            // 0 means "no limit" to the store; it and anything past the bound are refused.
            assert!((1..=portcullis::review::MAX_LIMIT).contains(&q.limit), "limit {} accepted", q.limit);
            if let Some(ip) = given(&args.ip) {
                assert!(parse_net(&ip).is_ok(), "{ip:?} accepted as an address");
            }
            if let Some(reason) = given(&args.reason) {
                assert_eq!(q.reason.map(|r| r.as_str()), Some(reason.as_str()));
            }
            match (given(&args.user), &q.user_key) {
                (Some(_), Some(key)) => {
                    assert!(!key.is_empty());
                    assert_eq!(&normalise_key(key), key);
                }
                (None, None) => {}
                other => panic!("user filter lost or invented: {other:?}"),
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.chars().any(portcullis::text::is_hidden), "an error that is not one clean line: {text:?}");
        }
    }
}

// --- admin socket --------------------------------------------------------------------------

/// One request line as the admin socket reads it.
pub fn admin_request(data: &[u8]) {
    let line = text(data);
    if let Ok(req) = serde_json::from_str::<admin_socket::Request>(&line) {
        check_admin_request(&req);
    }
}

/// A request that parses prints without its password, survives a round trip, and its audit
/// filters go through `to_query` safely.
pub fn check_admin_request(req: &admin_socket::Request) {
    // Debug output does not depend on the password at all.
    let other = match req {
        admin_socket::Request::UserAdd { name, admin, groups, .. } => Some(admin_socket::Request::UserAdd {
            name: name.clone(),
            password: String::new(),
            admin: *admin,
            groups: groups.clone(),
        }),
        admin_socket::Request::UserPasswd { name, .. } => {
            Some(admin_socket::Request::UserPasswd { name: name.clone(), password: String::new() })
        }
        _ => None,
    };
    if let Some(other) = other {
        assert_eq!(format!("{req:?}"), format!("{other:?}"), "Debug shows the password");
    }
    let json = serde_json::to_string(req).expect("a request serialises");
    let again: admin_socket::Request = serde_json::from_str(&json).expect("a serialised request parses");
    assert_eq!(serde_json::to_string(&again).expect("serialises"), json);
    if let admin_socket::Request::Audit { filters, .. } = req {
        check_filters(filters);
    }
}

// --- config file ---------------------------------------------------------------------------

/// The whole input is a `portcullis.toml`.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = text.parse::<toml::Table>() else { return };
    check_config(&table, &BTreeMap::new(), &Overrides::new());
}

/// Settings either load or fail with a one-line error naming a key; settings that load can be
/// used: every duration can be scheduled, quotas can be built, timeouts survive conversion to
/// milliseconds.
pub fn check_config(table: &toml::Table, env: &BTreeMap<String, String>, flags: &Overrides) {
    let file = (PathBuf::from("portcullis.toml"), table.clone());
    match Settings::from_layers(Some(&file), env, flags) {
        Ok(s) => check_settings_usable(&s),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.chars().any(char::is_control), "an error that is not one clean line: {text:?}");
            assert!(KEYS.iter().any(|k| text.contains(k.name)) || text.contains("portcullis.toml"), "{text}");
        }
    }
}

pub fn check_settings_usable(s: &Settings) {
    let durations = [
        ("session_idle_timeout", s.session_idle_timeout),
        ("session_absolute_timeout", s.session_absolute_timeout),
        ("failure_window", s.failure_window),
        ("audit_retention", s.audit_retention),
        ("cert_check_interval", s.cert_check_interval),
    ];
    let now = Instant::now();
    for (name, d) in durations {
        assert!(!d.is_zero(), "{name} is zero");
        assert!(now.checked_add(d).is_some(), "{name} = {d:?} cannot be scheduled");
        assert!(u64::try_from(d.as_millis()).is_ok(), "{name} = {d:?} overflows milliseconds");
    }
    for rate in [s.login_quota_per_ip, s.login_quota_per_user].into_iter().flatten() {
        assert!(rate.burst >= 1);
        assert!(now.checked_add(rate.period).is_some());
    }
    // Built the way the server builds them at start.
    let _ = LoginQuotas::new(s.login_quota_per_ip, s.login_quota_per_user);
    let _ = portcullis::failures::FailureTracker::new(s.failure_window, s.captcha_after_failures);
    let _ = (s.audit_retention.as_secs() / 86_400).max(1);
    let _ = Duration::from_secs(3600).min(s.audit_retention);
    assert!(s.max_connections >= 1 && s.hash_queue >= 1);
    assert!(s.argon2.memory_kib >= 8 * s.argon2.parallelism);
    assert!(s.session_absolute_timeout >= s.session_idle_timeout);
}
