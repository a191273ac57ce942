//! Groups on users (issue 13): `user add --group`, `user groups --add/--remove`, `user list`,
//! with `admins` implied for administrators; through a running server's admin socket, on a
//! stopped server's store, and on PostgreSQL (`database_url`).

use portcullis::domain::Group;

use crate::child::{self, Run};
use crate::helpers::{spawn_app, GOOD_PASSWORD};
use crate::pg;

/// `portcullis ARGS` with `env` set, in `dir`.
async fn cli(dir: &std::path::Path, env: &[(&str, String)], args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = child::command(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args);
    child::run_cli(cmd, stdin).await
}

/// The `groups` of `name` in `user list --json`.
fn listed_groups(run: &Run, name: &str) -> Vec<String> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|u| u["username"] == name)
        .unwrap_or_else(|| panic!("{name} in {}", run.stdout))["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect()
}

/// The whole group story on one store, however the CLI reaches it.
async fn groups_story(dir: &std::path::Path, env: &[(&str, String)]) {
    let pw = format!("{GOOD_PASSWORD}\n");
    cli(dir, env, &["user", "add", "carol", "--group", "Dev", "--group", "ops", "--password-stdin"], Some(&pw))
        .await
        .assert_ok("user add with groups");
    cli(dir, env, &["user", "add", "root2", "--admin", "--password-stdin"], Some(&pw)).await.assert_ok("admin");
    let list = cli(dir, env, &["user", "list", "--json"], None).await;
    assert_eq!(listed_groups(&list, "carol"), ["dev", "ops"]);
    assert_eq!(listed_groups(&list, "root2"), ["admins"], "administrators are in admins without being listed");
    let changed = cli(dir, env, &["user", "groups", "carol", "--add", "wiki", "--remove", "ops"], None).await;
    changed.assert_ok("user groups");
    assert!(changed.stdout.contains("dev, wiki"), "{changed:?}");
    let shown = cli(dir, env, &["user", "groups", "carol"], None).await;
    assert!(shown.stdout.contains("dev, wiki"), "{shown:?}");
    let table = cli(dir, env, &["user", "list"], None).await;
    assert!(table.stdout.contains("GROUPS") && table.stdout.contains("dev,wiki"), "{table:?}");
    // A bad group name is one line, and nothing changes.
    let bad = cli(dir, env, &["user", "groups", "carol", "--add", "a,b"], None).await;
    assert!(!bad.ok && bad.stderr.contains("group"), "{bad:?}");
    // The character named is the one typed, not the backslash of how it is shown (review 198).
    let hidden = cli(dir, env, &["user", "groups", "carol", "--add", "a\u{200b}b"], None).await;
    assert!(hidden.stderr.contains("'a\\u{200b}b'") && hidden.stderr.contains("(this one holds U+200B)"), "{hidden:?}");
    let unknown = cli(dir, env, &["user", "groups", "nobody", "--add", "x"], None).await;
    unknown.assert_one_line_failure("unknown user");
    // `admins` follows the administrator flag: it cannot be listed by hand, at `user add` or
    // later, and an administrator's groups as shown include it.
    let reserved = cli(dir, env, &["user", "groups", "carol", "--add", "admins"], None).await;
    assert!(reserved.assert_one_line_failure("admins listed by hand").contains("administrator flag"));
    let reserved = cli(dir, env, &["user", "add", "dave", "--group", "admins", "--password-stdin"], Some(&pw)).await;
    reserved.assert_one_line_failure("user add --group admins");
    // Said before a password is asked for (review 133: a terminal without one heard of the
    // missing terminal first).
    let reserved = cli(dir, env, &["user", "add", "dave", "--group", "admins"], None).await;
    assert!(reserved.assert_one_line_failure("user add --group admins, no password").contains("administrator flag"));
    let admin = cli(dir, env, &["user", "groups", "root2", "--add", "ops"], None).await;
    assert!(admin.stdout.contains("admins, ops"), "{admin:?}");
    let list = cli(dir, env, &["user", "list", "--json"], None).await;
    assert_eq!(listed_groups(&list, "carol"), ["dev", "wiki"]);
    assert!(!list.stdout.contains("\"dave\""), "{list:?}");
    admin_story(dir, env).await;
}

/// `user admin`: an existing user made an administrator and back, without losing the account
/// (review 213: only `user del` and `user add --admin` could, losing its second factors).
async fn admin_story(dir: &std::path::Path, env: &[(&str, String)]) {
    let shown = cli(dir, env, &["user", "admin", "carol"], None).await;
    assert_eq!(shown.stdout.trim(), "user carol is not an administrator", "{shown:?}");
    let granted = cli(dir, env, &["user", "admin", "Carol", "--grant"], None).await;
    assert_eq!(granted.stdout.trim(), "user carol is an administrator", "{granted:?}");
    let list = cli(dir, env, &["user", "list", "--json"], None).await;
    assert_eq!(listed_groups(&list, "carol"), ["admins", "dev", "wiki"]);
    let again = cli(dir, env, &["user", "admin", "carol", "--grant"], None).await;
    assert!(again.stdout.contains("nothing changed: it was already so"), "{again:?}");
    let revoked = cli(dir, env, &["user", "admin", "carol", "--revoke"], None).await;
    assert_eq!(revoked.stdout.trim(), "user carol is not an administrator", "root2 is one still: {revoked:?}");
    // Said when no administrator is left (a test server may have one of its own).
    let list = cli(dir, env, &["user", "list", "--json"], None).await;
    let others = list.stdout.lines().filter(|l| l.contains("\"admin\":true") && !l.contains("\"root2\"")).count();
    let last = cli(dir, env, &["user", "admin", "root2", "--revoke"], None).await;
    assert_eq!(last.stdout.contains("no enabled administrator is left"), others == 0, "{last:?}");
    cli(dir, env, &["user", "admin", "root2", "--grant"], None).await.assert_ok("root2 again");
    let both = cli(dir, env, &["user", "admin", "carol", "--grant", "--revoke"], None).await;
    assert!(!both.ok && both.stderr.contains("cannot be used with"), "{both:?}");
    cli(dir, env, &["user", "admin", "nobody", "--grant"], None).await.assert_one_line_failure("unknown user");
    let list = cli(dir, env, &["user", "list", "--json"], None).await;
    assert_eq!(listed_groups(&list, "carol"), ["dev", "wiki"], "no longer one");
}

#[tokio::test]
async fn groups_are_set_listed_and_changed_through_a_running_servers_socket() {
    let app = spawn_app().await;
    let dir = app.settings.data_dir.parent().unwrap().to_path_buf();
    groups_story(&dir, &[]).await;
    // The running server sees them at once.
    let carol = app.state.store.users.get("carol").await.unwrap().unwrap();
    assert_eq!(carol.groups, [Group::parse("dev").unwrap(), Group::parse("wiki").unwrap()]);
    // A change that changes nothing (a group carol is not in removed, one she is in added)
    // says her groups and logs no change (review 133).
    let changes = || app.log_lines().iter().filter(|l| l["event"] == "user_groups_changed").count();
    let before = changes();
    let same = cli(&dir, &[], &["user", "groups", "carol", "--remove", "nonexistent", "--add", "dev"], None).await;
    assert!(same.ok && same.stdout.contains("dev, wiki"), "{same:?}");
    assert!(same.stdout.contains("nothing changed"), "answered as if done (review 138): {same:?}");
    assert_eq!(changes(), before, "a change of nothing was logged");
    let shown = cli(&dir, &[], &["user", "groups", "carol"], None).await;
    assert!(shown.ok && !shown.stdout.contains("nothing changed"), "a listing asked for no change: {shown:?}");
    // Each change of the flag is logged, by whom; a request for what already is, not.
    let changed: Vec<_> =
        app.log_lines().into_iter().filter(|l| l["event"] == "privilege_permissions_changed").collect();
    let flags: Vec<_> = changed.iter().map(|l| (l["username"].clone(), l["admin"].clone())).collect();
    let want = [("carol", true), ("carol", false), ("root2", false), ("root2", true)];
    assert_eq!(flags, want.map(|(u, a)| (serde_json::json!(u), serde_json::json!(a))), "{changed:?}");
    assert!(changed.iter().all(|l| l["by"].is_string()), "{changed:?}");

    // A signed-in session follows the flag at its next request.
    let carol = app.new_browser();
    assert_eq!(app.login_with(&carol, "carol", GOOD_PASSWORD).await.status(), 303);
    assert_eq!(carol.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), 403);
    cli(&dir, &[], &["user", "admin", "carol", "--grant"], None).await.assert_ok("grant");
    assert_eq!(carol.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), 200);
    cli(&dir, &[], &["user", "admin", "carol", "--revoke"], None).await.assert_ok("revoke");
    assert_eq!(carol.get(app.url("/admin/failed-logins")).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn groups_are_set_listed_and_changed_on_a_stopped_servers_store() {
    let dir = tempfile::tempdir().unwrap();
    groups_story(dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_set_listed_and_changed_on_postgresql() {
    let Some(url) = pg::database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    groups_story(dir.path(), &[("PORTCULLIS_DATABASE_URL", url.to_string())]).await;
}
