//! `GET /healthz`: liveness, with no session and no store access, so it answers even while
//! every core is hashing.

use poem::handler;

#[handler]
pub async fn healthz() -> &'static str {
    "ok"
}
