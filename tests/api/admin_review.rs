//! Reviewing failed logins, issue 10 §4 and §10: every filter value applies exactly or is
//! refused with its reason (page, CLI and admin socket alike), the page's own links and form
//! work, and status notices come only from what the server did.

use portcullis::admin_socket::{self, Request, Response};
use portcullis::review::FilterArgs;

use crate::helpers::{hidden_field, spawn_app, spawn_app_with, test_settings, Visitor, GOOD_PASSWORD};
use crate::review::{admin_browser, json_lines, known_records, portcullis, seed, HOUR};

/// Rows in a page of the admin table.
fn rows(page: &str) -> usize {
    page.matches("<span class=\"reason").count()
}

/// Each record's user agent, in page order (they are unique in `known_records`).
fn agents(page: &str) -> Vec<String> {
    page.split("<td class=\"ua\">").skip(1).map(|a| a.split('<').next().unwrap().to_string()).collect()
}

/// The href of the page's *Older records* link, as a browser reads it: askama writes `&` as
/// `&#38;`, and a test that only undid `&amp;` sent `#38;limit=50` as a fragment, which hid
/// the broken link.
pub(crate) fn older_link(page: &str) -> Option<String> {
    page.split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|h| h.contains("before="))
        .map(|h| h.replace("&#38;", "&").replace("&amp;", "&"))
}

#[tokio::test]
async fn the_admin_page_applies_its_filters_together_with_the_page_size_its_form_sends() {
    let app = spawn_app().await;
    let now = portcullis::store::now_ms();
    for r in known_records(now) {
        app.state.audit.append(&r).await.unwrap();
    }
    let admin = admin_browser(&app).await;
    let get = |q: &str| {
        let (admin, url) = (admin.clone(), app.url(&format!("/admin/failed-logins?{q}")));
        async move {
            let resp = admin.get(url).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    // What the form submits: every field, the empty ones too, and the page size.
    let (status, page) = get("since=&until=&user=alice&ip=&reason=&limit=50").await;
    assert_eq!(status, 200);
    assert_eq!(rows(&page), 10, "alice's records only");
    let (status, page) = get("user=alice&reason=bad_password&limit=50").await;
    assert_eq!((status, rows(&page)), (reqwest::StatusCode::OK, 2));
    let (_, page) = get("limit=4").await;
    assert_eq!(rows(&page), 4, "the page size applies");
    // Each reason says what it means, beside the records and in a legend (review 196: the
    // names alone meant nothing to someone who has not read the log's documentation).
    assert!(
        page.contains(r#"<span class="reason bad_password" title="A wrong password for an account that exists.">"#),
        "{page}"
    );
    let legend = page.split(r#"<details class="legend">"#).nth(1).unwrap().split("</details>").next().unwrap();
    assert_eq!(legend.matches("<dt>").count(), 10, "{legend}");
    assert!(legend.contains("<dt>rate_limited</dt><dd>Refused unchecked: too many attempts"), "{legend}");
    let (status, page) = get("user=nobody-at-all").await;
    assert_eq!(status, 200);
    assert!(page.contains("No records match.") && !page.contains("None shown"), "an answer of none");

    // A value that does not parse is refused with its message, never replaced by defaults.
    for (query, says) in [
        ("reason=bogus&limit=50", "bogus"),
        ("reason=bogus", "bogus"),
        ("since=whenever&limit=50", "whenever"),
        ("limit=abc", "abc"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=501", "501"),
        ("limit=18446744073709551616", "limit"),
        ("user=alice&limit=18446744073709551615", "limit"),
        ("ip=10.0.0.0%2F99&limit=50", "10.0.0.0/99"),
        ("before=%21%21&limit=50", "cursor"),
        ("since=1969-12-31T00:00:00Z", "1970 to 9999"),
        ("user=alice&user=bob&limit=50", "duplicate"),
        ("user=%ff&limit=50", "not UTF-8"),
        ("ip=1.2.3.4&reason=bad_password%c3&limit=50", "not UTF-8"),
    ] {
        let (status, page) = get(query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(rows(&page), 0, "{query}: no records in place of an error");
        let alert = page.split("role=\"alert\">").nth(1).and_then(|a| a.split('<').next()).unwrap_or("");
        assert!(alert.contains(says), "{query}: {alert:?}");
        // Not "No records match", which reads as an answer to filters that were never applied.
        assert!(
            page.contains("None shown: the filters above were refused.") && !page.contains("No records match"),
            "{query}"
        );
    }
}

#[tokio::test]
async fn the_older_records_link_reaches_every_older_record_once() {
    let app = spawn_app().await;
    let now = portcullis::store::now_ms();
    // 55 records, as in the issue: the default page is 50.
    for i in 0..55u64 {
        let mut r = known_records(now)[0].clone();
        r.time = now - HOUR - i * 1000;
        r.user_agent = format!("agent {i}");
        app.state.audit.append(&r).await.unwrap();
    }
    let admin = admin_browser(&app).await;
    let first = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    let newest = agents(&first);
    assert_eq!(newest.len(), 50);
    let link = older_link(&first).expect("an Older records link");
    let resp = admin.get(app.url(&link)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let second = resp.text().await.unwrap();
    let older = agents(&second);
    assert_eq!(older, (50..55).map(|i| format!("agent {i}")).collect::<Vec<_>>(), "{link}");
    assert!(older_link(&second).is_none(), "nothing older than the oldest");
}

#[tokio::test]
async fn filter_values_from_a_link_are_put_back_into_the_form_escaped() {
    let app = spawn_app().await;
    let admin = admin_browser(&app).await;
    // `limit` too, though only a refused one is put back (review 188 found it raw).
    for query in
        ["user=ad%1B%5B2Jmin%E2%80%AE&limit=50", "ip=%00%E2%80%AE1.2.3.4", "since=x%1By", "limit=9%E2%80%AE%1b%0aX"]
    {
        let page =
            admin.get(app.url(&format!("/admin/failed-logins?{query}"))).send().await.unwrap().text().await.unwrap();
        for raw in ['\u{0}', '\u{1b}', '\u{202e}'] {
            assert!(!page.contains(raw), "{query}: {raw:?} in the page");
        }
        assert!(page.contains("\\u{"), "{query}: shown escaped");
    }
    // The unlock box, pre-filled from `user`, holds the escaped text: no look-alike name.
    let page =
        admin.get(app.url("/admin/failed-logins?user=adm%E2%80%8Bin")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("value=\"adm\\u{200b}in\""), "{page}");
    // What is typed as a name may be a password typed in the wrong field: the browser keeps no
    // form history of these boxes (review 183).
    for name in ["name=\"user\"", "name=\"ip\"", "name=\"username\""] {
        let input = page.split("<input").find(|i| i.contains(name)).unwrap_or_else(|| panic!("{name}: {page}"));
        assert!(input.contains("autocomplete=\"off\""), "{name}: {input}");
    }

    // And the escaped text means what it shows: sent back, it searches and unlocks as before.
    app.add_user("alice", GOOD_PASSWORD, false).await;
    for _ in 0..2 {
        assert_eq!(app.login("alice", "not her password at all").await.status(), 401);
    }
    let rows = |page: &str| page.matches("<span class=\"reason").count();
    let page =
        admin.get(app.url("/admin/failed-logins?user=%EF%BC%A1lice")).send().await.unwrap().text().await.unwrap();
    assert_eq!(rows(&page), 2, "fullwidth Ａlice is alice");
    let shown = hidden_field(&page, "user").expect("the user field");
    assert_eq!(shown, "\\u{ff21}lice");
    let again = admin.get(app.url("/admin/failed-logins")).query(&[("user", shown.as_str())]).send().await.unwrap();
    assert_eq!(rows(&again.text().await.unwrap()), 2, "the field sent back finds the same records");
    let csrf = hidden_field(&page, "csrf").unwrap();
    let form = [("username", shown.as_str()), ("csrf", csrf.as_str())];
    let resp = admin.post(app.url("/admin/unlock")).form(&form).send().await.unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let notice = admin.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(notice.contains("alice is unlocked"), "{notice}");

    // A name typed as the text of an escape is not the escaped character: shown apart, found
    // apart, and its unlock box unlocks nobody else.
    for _ in 0..3 {
        assert_eq!(app.login("\\u{ff21}lice", "not her password at all").await.status(), 401);
    }
    // Reached as the admin reaches it: from the summary's top usernames.
    let summary = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    let link = "/admin/failed-logins?user=%5Cu%7B5c%7Du%7Bff21%7Dlice";
    assert!(summary.contains(&format!("href=\"{link}\"")), "{summary}");
    let page = admin.get(app.url(link)).send().await.unwrap().text().await.unwrap();
    assert_eq!(rows(&page), 3, "the text's own records, not alice's");
    let shown = hidden_field(&page, "user").expect("the user field");
    assert_eq!(shown, "\\u{5c}u{ff21}lice");
    let again = admin.get(app.url("/admin/failed-logins")).query(&[("user", shown.as_str())]).send().await.unwrap();
    assert_eq!(rows(&again.text().await.unwrap()), 3, "sent back, still the text's own records");
    let form = [("username", shown.as_str()), ("csrf", csrf.as_str())];
    let resp = admin.post(app.url("/admin/unlock")).form(&form).send().await.unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let notice = admin.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(notice.contains("No such user to unlock"), "{notice}");
}

#[tokio::test]
async fn a_typed_look_alike_of_an_ascii_name_is_shown_escaped_and_found_as_shown() {
    let app = spawn_app().await;
    let admin = admin_browser(&app).await;
    // Cyrillic `а`: a name no user has, which reads as `admin` (whose failures sit beside it).
    for name in ["\u{430}dmin", "\u{430}dmin", "admin"] {
        assert_eq!(app.login(name, "not the password at all").await.status(), 401);
    }
    let summary = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    assert!(summary.contains("\\u{430}dmin") && !summary.contains('\u{430}'), "{summary}");
    let rows = |page: &str| page.matches("<span class=\"reason").count();
    // `\u{430}dmin`, as the page shows it.
    let link = app.url("/admin/failed-logins?user=%5Cu%7B430%7Ddmin");
    let page = admin.get(link).send().await.unwrap().text().await.unwrap();
    assert_eq!(rows(&page), 2, "the text shown finds the look-alike's records, not admin's");
    assert_eq!(hidden_field(&page, "user").as_deref(), Some("\\u{430}dmin"));
    // The CLI's table alike.
    let (ok, out, err) = crate::review::portcullis(&app.settings, &["audit", "--user", "\\u{430}dmin"]).await;
    assert!(
        ok && out.lines().filter(|l| l.contains("\\u{430}dmin")).count() == 2 && !out.contains('\u{430}'),
        "{out}{err}"
    );
}

#[tokio::test]
async fn a_status_notice_cannot_be_put_in_a_link() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let admin = admin_browser(&app).await;
    let page = admin
        .get(app.url("/admin/failed-logins?unlocked=Your+account+is+compromised%2C+call+555-0100&unlock_failed=1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("compromised") && !page.contains("is unlocked") && !page.contains("No such user"), "{page}");
    let home = admin.get(app.url("/?ended=9999")).send().await.unwrap().text().await.unwrap();
    assert!(!home.contains("9999") && !home.contains("Signed out of"), "{home}");

    // The real actions say what they did, once.
    let csrf = hidden_field(&page, "csrf").unwrap();
    let resp =
        admin.post(app.url("/admin/unlock")).form(&[("username", "ALICE"), ("csrf", &csrf)]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(!location.contains("alice"), "the notice is not in the URL: {location}");
    let shown = admin.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(shown.contains("alice is unlocked"), "{shown}");
    let again = admin.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(!again.contains("is unlocked"), "a notice shows once");
    let resp =
        admin.post(app.url("/admin/unlock")).form(&[("username", "nobody"), ("csrf", &csrf)]).send().await.unwrap();
    let shown =
        admin.get(app.url(resp.headers()["location"].to_str().unwrap())).send().await.unwrap().text().await.unwrap();
    // Nothing was done: said as an alert, not as news (found by a review).
    assert!(shown.contains(r#"<p class="alert" role="alert">No such user to unlock."#), "{shown}");
    assert!(!shown.contains(r#"<p class="notice" role="status">"#), "{shown}");

    let mut other = Visitor::new(&app, Some("203.0.113.9"));
    assert_eq!(other.attempt("admin", &app.admin_password, None).await.0, 303);
    let csrf = app.home_csrf(&admin).await;
    let resp = admin.post(app.url("/sessions/end-others")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let home = admin.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("Signed out of 1 other session."), "{home}");
    let home = admin.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(!home.contains("Signed out of"), "a notice shows once");
}

#[tokio::test]
async fn audit_values_that_used_to_wrap_apply_exactly_or_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let now = portcullis::store::now_ms();
    seed(&settings, &known_records(now)).await;

    // 5124095576031 hours is just over 2^64 milliseconds: truncated, it meant "34 minutes".
    let (ok, out, err) =
        portcullis(&settings, &["audit", "--json", "--limit", "1000", "--since", "5124095576031h"]).await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out).len(), 30, "since long before 1970 is everything");
    let (ok, out, err) = portcullis(&settings, &["audit", "--json", "--until", "5124095576031h"]).await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out).len(), 0, "until long before 1970 is nothing");
    let (ok, out, _) = portcullis(&settings, &["audit", "--json", "--since", "999999999999h"]).await;
    assert!(ok);
    assert_eq!(json_lines(&out).len(), 30);
    let (ok, out, _) = portcullis(&settings, &["audit", "--json", "--limit", "1000000"]).await;
    assert!(ok);
    assert_eq!(json_lines(&out).len(), 30);

    for bad in [
        vec!["--limit", "0"],
        vec!["--limit", "18446744073709551615"],
        vec!["--limit", "1000001"],
        vec!["--limit", "99999999999999999999999"],
        vec!["--since", "1969-12-31T23:00:00Z"],
        vec!["--since", "99999999999999999999h"],
        // Given empty, it once listed every record ("every filter applies or is refused").
        vec!["--user", ""],
        vec!["--user", "  "],
        vec!["--ip", ""],
        vec!["--reason", ""],
        vec!["--since", " "],
        vec!["--until", ""],
        // The summary counts every matching record: a limit there was silently ignored.
        vec!["--summary", "--limit", "5"],
    ] {
        let mut args = vec!["audit"];
        args.extend_from_slice(&bad);
        let (ok, out, err) = portcullis(&settings, &args).await;
        assert!(!ok, "{bad:?} was accepted: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: {err}");
        assert!(err.starts_with("portcullis: "), "{err}");
    }
}

#[tokio::test]
async fn the_admin_socket_refuses_a_limit_that_would_wrap_and_applies_a_huge_since() {
    let app = spawn_app().await;
    let now = portcullis::store::now_ms();
    for r in known_records(now) {
        app.state.audit.append(&r).await.unwrap();
    }
    let ask = |filters: FilterArgs| {
        let dir = app.settings.data_dir.clone();
        async move { admin_socket::call(&dir, &Request::Audit { filters, summary: false }).await.unwrap().unwrap() }
    };
    for limit in [usize::MAX, 0, portcullis::review::MAX_LIMIT + 1] {
        match ask(FilterArgs { limit: Some(limit), ..Default::default() }).await {
            Response::Error { message } => assert!(message.contains("limit"), "{message}"),
            other => panic!("limit {limit} was not refused: {other:?}"),
        }
    }
    match ask(FilterArgs { since: Some("5124095576031h".into()), limit: Some(1000), ..Default::default() }).await {
        Response::Review { answer: portcullis::review::Answer::Records { records, .. } } => {
            assert_eq!(records.len(), 30)
        }
        other => panic!("{other:?}"),
    }
}

/// Refusals sent without a username are summed under an empty one; its row in *Top usernames*
/// once linked to `?user=`, which is the form's "no filter" and listed every record (found by
/// a review). It is named as what it is, without a link.
#[tokio::test]
async fn the_summarys_row_for_refusals_without_a_username_is_not_a_link_to_everything() {
    let app = spawn_app().await;
    let browser = app.new_browser();
    // A form without the username field (and a forged token): recorded with no username.
    let resp = browser.post(app.url("/login")).form(&[("csrf", "forged"), ("password", "x")]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let admin = admin_browser(&app).await;
    let page = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("(none sent)"), "{page}");
    assert!(!page.contains("failed-logins?user=\""), "no link to the unfiltered list: {page}");
}

/// A run of spaces in a typed name or user agent is drawn as one by a page: the records and
/// the top usernames write it `\u{20}` (review 192 saw a typed `ad  min` drawn as the user
/// `ad min`), and the name's link finds exactly the name typed.
#[tokio::test]
async fn a_run_of_spaces_in_a_typed_name_is_shown_and_not_drawn_as_one() {
    let app = spawn_app().await;
    let admin = admin_browser(&app).await;
    let resp = app.login("ad  min", "not the password at all").await;
    assert_eq!(resp.status(), 401);
    let page = admin.get(app.url("/admin/failed-logins")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(">ad \\u{20}min<"), "{page}");
    assert!(!page.contains(">ad  min<"), "{page}");
    let link = page.split("href=\"/admin/failed-logins?user=").nth(1).unwrap().split('"').next().unwrap();
    let found = admin.get(app.url(&format!("/admin/failed-logins?user={link}"))).send().await.unwrap();
    let found = found.text().await.unwrap();
    assert!(found.contains(">ad \\u{20}min<") && found.contains("unknown_user"), "{found}");
}
