//! `database_url` in libpq's socket form, `postgres://USER@/DB?host=/socket/dir&port=N` (an
//! empty host and the socket directory as a parameter), against the test cluster: the server
//! and the CLI both reach the database with it; a malformed one is refused in one line that
//! names the setting and not the password.

use portcullis::postgres::url::Endpoint;

use crate::child::{self, ServerProcess};
use crate::pg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_and_the_cli_reach_the_database_through_libpqs_host_parameter() {
    let Some(db) = pg::database().await else { return };
    let Endpoint::Socket(socket) = db.endpoint() else { panic!("the test cluster is reached over its socket") };
    let url = format!("postgres://postgres@/{}?host={}&port={}", db.dbname(), socket.display(), db.port());
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), child::QUICK, |cmd| {
            cmd.env("PORTCULLIS_DATABASE_URL", &url);
        })
    });
    let client = server.browser();
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the database answers through the socket named in ?host=");
    let admin_password = crate::store_copy::first_admin_password(&server).await;
    let (status, _) = child::login(&server, &client, "admin", &admin_password).await;
    assert_eq!(status, 303, "signed in, so the users are in that database");
    drop(server);

    let mut list = child::command(dir.path());
    list.env("PORTCULLIS_DATABASE_URL", &url).args(["user", "list"]);
    let list = child::run_cli(list, None).await;
    list.assert_ok("user list with the ?host= form");
    assert!(list.stdout.contains("admin"), "{list:?}");
}

#[tokio::test]
async fn a_database_url_with_an_empty_host_parameter_is_refused_in_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, says) in [
        ("postgres://app:hunter2-secret@/db?host=", "host is empty"),
        ("postgres://app:hunter2-secret@/db?host=a,b", "several hosts"),
        ("postgres://app:hunter2-secret@/db", "names no host"),
    ] {
        let mut cmd = child::command(dir.path());
        cmd.env("PORTCULLIS_DATABASE_URL", bad).args(["user", "list"]);
        let run = child::run_cli(cmd, None).await;
        let line = run.assert_one_line_failure(bad);
        assert!(line.contains("database_url"), "{line}");
        assert!(line.contains(says), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }
}

/// A command that only reads, on a database portcullis never used (a mistyped name, say),
/// says so in one line and makes nothing there, as on sled ("no store in data").
#[tokio::test]
async fn a_read_on_a_database_without_a_store_says_so_and_makes_nothing() {
    let Some(db) = pg::database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    for args in [&["user", "list"][..], &["audit"][..]] {
        let mut cmd = child::command(dir.path());
        cmd.env("PORTCULLIS_DATABASE_URL", db.to_string()).args(args);
        let run = child::run_cli(cmd, None).await;
        let line = run.assert_one_line_failure("a read on an empty database");
        assert!(line.contains("no portcullis store in the database"), "{line}");
    }
    let client = portcullis::postgres::connect::connect(&db).await.unwrap();
    let tables: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the read made a schema");
}

/// Review 204: `user list`, `audit` and the other commands of a new build upgraded an older
/// schema without a word, after which the old servers could not start again. Only a server's
/// start upgrades it; a command says so in one line and changes nothing.
#[tokio::test]
async fn a_command_refuses_an_older_schema_and_leaves_it_as_it_is() {
    let Some(db) = pg::database().await else { return };
    let latest = portcullis::postgres::migrate::LATEST;
    let client = portcullis::postgres::connect::connect(&db).await.unwrap();
    client.batch_execute("CREATE TABLE portcullis_schema (version integer PRIMARY KEY)").await.unwrap();
    for (i, sql) in portcullis::postgres::migrate::MIGRATIONS[..latest as usize - 1].iter().enumerate() {
        client.batch_execute(sql).await.unwrap();
        client.execute("INSERT INTO portcullis_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    for args in [&["user", "list"][..], &["audit"][..], &["user", "add", "bob", "--password-stdin"][..]] {
        let mut cmd = child::command(dir.path());
        cmd.env("PORTCULLIS_DATABASE_URL", db.to_string()).args(args);
        let run = child::run_cli(cmd, Some("a good long passphrase\n")).await;
        let line = run.assert_one_line_failure("a command on an older schema");
        assert!(line.contains(&format!("version {}, older than this portcullis's ({latest})", latest - 1)), "{line}");
    }
    let version: i32 = client.query_one("SELECT max(version) FROM portcullis_schema", &[]).await.unwrap().get(0);
    assert_eq!(version, latest - 1, "left as it was");
}
