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
