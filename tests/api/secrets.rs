//! Secrets stay secret: after a realistic session against the real binary (sign-ins that fail
//! and succeed, sign-out, a refused form, an admin page, `user add` and `user passwd` with
//! `--password-stdin`, `audit`), no log line, no page, no CLI output and nothing the server
//! printed contains any password used or any session token issued.

use crate::child::{self, ServerProcess};

/// Every way a secret could be written down: as is, URL-encoded, JSON-escaped, HTML-escaped.
fn spellings(secret: &str) -> Vec<String> {
    let url = serde_urlencoded::to_string([("", secret)]).unwrap().trim_start_matches('=').to_string();
    let json = serde_json::to_string(secret).unwrap().trim_matches('"').to_string();
    let html = secret.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let html_numeric = secret.replace('&', "&#38;").replace('"', "&#34;").replace('\'', "&#39;");
    let mut all = vec![secret.to_string(), url, json, html, html_numeric];
    all.dedup();
    all
}

/// Fails naming where a secret was found, without printing the secret itself.
fn assert_absent(what: &str, text: &str, secrets: &[(&str, String)]) {
    for (label, secret) in secrets {
        for spelling in spellings(secret) {
            assert!(!text.contains(&spelling), "{label} appears in {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_page_or_output_ever_shows_a_password_or_a_session_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    // Passwords with characters that encodings change.
    // Neither holds "alice": a password with the username inside is refused.
    let alice_first = "her first <secret> & \"phrase\" 1";
    let alice_second = "her second pass+phrase=100%";
    let bob_pw = "bob's admin passphrase ünïcödé";
    let wrong = "a wrong guess for alice's account";
    let weak = "123456789123456";

    let server = tokio::task::block_in_place(|| ServerProcess::start(&d, child::QUICK));
    let mut outputs = Vec::new();
    for (args, pw) in [
        (&["user", "add", "alice", "--password-stdin"][..], alice_first),
        (&["user", "add", "bob", "--admin", "--password-stdin"][..], bob_pw),
        (&["user", "add", "carol", "--password-stdin"][..], weak),
        (&["user", "passwd", "alice", "--password-stdin"][..], alice_second),
    ] {
        let run = child::cli(&d, args, Some(pw)).await;
        outputs.push((format!("`{}`", args.join(" ")), format!("{}\n{}", run.stdout, run.stderr)));
    }
    assert!(outputs[3].1.contains("password of alice changed"), "{}", outputs[3].1);

    let mut pages = Vec::new();
    let mut tokens = Vec::new();
    let c = server.browser();
    // Failed sign-ins: an old password, a wrong one, an unknown user.
    for (user, pw) in [("alice", alice_first), ("alice", wrong), ("nobody", wrong)] {
        let resp = child::login_response(&server, &c, user, pw).await;
        assert_eq!(resp.status(), 401);
        pages.push(("a failed sign-in page".to_string(), resp.text().await.unwrap()));
    }
    // A form without its CSRF token, and one far too large.
    let resp =
        c.post(server.url("/login")).form(&[("username", "alice"), ("password", alice_second)]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    pages.push(("the CSRF refusal page".into(), resp.text().await.unwrap()));
    let huge = format!("username=alice&password={}", alice_second.repeat(2000));
    let resp = c
        .post(server.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    pages.push(("the 413 page".into(), resp.text().await.unwrap()));

    // Sign in, look around, sign out; then bob looks at the failed-login page.
    let (status, token) = child::login(&server, &c, "alice", alice_second).await;
    assert_eq!(status, 303);
    tokens.push(token.expect("a session cookie"));
    let home = c.get(server.url("/")).send().await.unwrap().text().await.unwrap();
    let csrf = crate::helpers::hidden_field(&home, "csrf").unwrap();
    pages.push(("the home page".into(), home));
    let resp = c.post(server.url("/logout")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let admin = server.browser();
    let (status, token) = child::login(&server, &admin, "bob", bob_pw).await;
    assert_eq!(status, 303);
    tokens.push(token.expect("a session cookie"));
    let resp = admin.get(server.url("/admin/failed-logins")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    pages.push(("the failed-logins page".into(), resp.text().await.unwrap()));
    let resp = admin.get(server.url("/no/such/page")).send().await.unwrap();
    pages.push(("the 404 page".into(), resp.text().await.unwrap()));

    for args in [&["audit", "--json"][..], &["audit", "--summary"][..], &["user", "list", "--json"][..]] {
        let run = child::cli(&d, args, None).await;
        assert!(run.ok, "{run:?}");
        outputs.push((format!("`{}`", args.join(" ")), format!("{}\n{}", run.stdout, run.stderr)));
    }
    let status = tokio::task::block_in_place(|| {
        let printed = server.output();
        let status = server.terminate();
        outputs.push(("what the server printed".into(), printed));
        status
    });
    assert!(status.success());

    let mut secrets: Vec<(&str, String)> = vec![
        ("alice's first password", alice_first.into()),
        ("alice's second password", alice_second.into()),
        ("bob's password", bob_pw.into()),
        ("a wrong password", wrong.into()),
        ("a refused weak password", weak.into()),
    ];
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t.len(), 43);
        secrets.push((if i == 0 { "alice's session token" } else { "bob's session token" }, t.clone()));
    }

    for (what, text) in &pages {
        assert_absent(what, text, &secrets);
    }
    for (what, text) in &outputs {
        // The first start prints the generated administrator password once, by design; it is
        // not one of the secrets checked here.
        assert_absent(what, text, &secrets);
    }
    let mut lines = 0;
    for entry in std::fs::read_dir(d.join("logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lines += text.lines().count();
        assert_absent("the auth log", &text, &secrets);
    }
    // The store holds neither: passwords only as argon2 hashes, sessions only as SHA-256.
    let mut store = Vec::new();
    for entry in std::fs::read_dir(d.join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            store.extend(std::fs::read(path).unwrap());
        }
    }
    let store = String::from_utf8_lossy(&store);
    assert_absent("the store's files", &store, &secrets);
    println!(
        "checked {} pages, {} outputs, {lines} log lines and {} bytes of store for {} secrets in every spelling",
        pages.len(),
        outputs.len(),
        store.len(),
        secrets.len()
    );
}
