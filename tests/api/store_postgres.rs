//! The PostgreSQL engine against the store conformance suite (`store::conformance`), the same
//! checks the sled engine passes, each on a fresh database of the throwaway cluster (`pg.rs`):
//! skipped without PostgreSQL unless `PORTCULLIS_REQUIRE_ALL` is set.

use async_trait::async_trait;
use portcullis::postgres::url::DatabaseUrl;
use portcullis::store::conformance::{run, Harness};
use portcullis::store::Store;

use crate::pg;

/// A fresh database per store; `reopen` drops every connection and connects again.
#[derive(Default)]
struct PgHarness {
    last: Option<DatabaseUrl>,
}

#[async_trait]
impl Harness for PgHarness {
    async fn fresh(&mut self) -> Store {
        let url = pg::database().await.expect("checked by the test before the suite runs");
        let store = Store::connect(&url, "conformance").await.expect("a fresh database opens");
        self.last = Some(url);
        store
    }

    async fn reopen(&mut self, store: Store) -> Store {
        drop(store);
        let url = self.last.as_ref().expect("fresh ran first");
        Store::connect(url, "conformance").await.expect("the database opens again")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_postgresql_engine_passes_the_store_conformance_suite() {
    if pg::cluster().is_none() {
        return;
    }
    run(&mut PgHarness::default()).await;
}

#[tokio::test]
async fn text_with_a_nul_is_kept_with_u_fffd_in_its_place_instead_of_failing_the_write() {
    let Some(url) = pg::database().await else { return };
    let store = Store::connect(&url, "test").await.unwrap();
    let mut record = portcullis::store::conformance::failure(
        1_000,
        "192.0.2.1",
        "bob\0by",
        portcullis::audit::FailureReason::UnknownUser,
    );
    record.typed = Some("Bob\0By".into());
    record.user_agent = "agent\0x".into();
    // Written as a sign-in writes it, and as `store copy` brings a sled store's records.
    store.failures.append(&record, "bob\0by", None).await.expect("a record with a NUL is written");
    store.failures.import(std::slice::from_ref(&record)).await.expect("and imported");
    let back = store.failures.export(None, 10).await.unwrap();
    assert_eq!(back.len(), 2);
    for (_, r) in back {
        assert_eq!((r.username.as_str(), r.typed.as_deref()), ("bob\u{FFFD}by", Some("Bob\u{FFFD}By")));
        assert_eq!(r.user_agent, "agent\u{FFFD}x");
    }
}

#[tokio::test]
async fn an_instance_whose_clock_runs_behind_does_not_purge_the_sessions_its_peers_stamp() {
    use portcullis::store::conformance::session;
    let Some(url) = pg::database().await else { return };
    let store = Store::connect(&url, "test").await.unwrap();
    let now = portcullis::store::now_ms();
    store.sessions.insert(&[1; 32], &session("alice", now, now)).await.unwrap();
    // Its clock two minutes behind the database's (and its peers'): the session looks stamped
    // ahead to it, but not to the database.
    let purged = store.sessions.purge_expired(3_600_000, 86_400_000, now - 120_000).await.unwrap();
    assert_eq!(purged, 0);
    assert!(store.sessions.get(&[1; 32]).await.unwrap().is_some());
}

#[tokio::test]
async fn an_instance_whose_clock_runs_fast_does_not_purge_live_sessions() {
    use portcullis::store::conformance::session;
    let Some(url) = pg::database().await else { return };
    let store = Store::connect(&url, "test").await.unwrap();
    let now = portcullis::store::now_ms();
    store.sessions.insert(&[1; 32], &session("alice", now - 60_000, now)).await.unwrap();
    store.sessions.insert(&[2; 32], &session("alice", now - 60_000, now - 3_600_000)).await.unwrap();
    // Its clock two hours fast, an idle timeout of one hour: by the database's clock [1] was
    // seen just now; [2] is idle by either clock.
    let purged = store.sessions.purge_expired(3_600_000, 86_400_000, now + 7_200_000).await.unwrap();
    assert_eq!(purged, 1);
    assert!(store.sessions.get(&[1; 32]).await.unwrap().is_some());
}
