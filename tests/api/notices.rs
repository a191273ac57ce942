//! One-time notices are signed for the session they were made for (task F, item 5): a client
//! that writes its own `__Host-portcullis-flash` cookie sees no notice.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::helpers::{browser_builder, spawn_app, GOOD_PASSWORD};

#[tokio::test]
async fn a_notice_cookie_the_client_wrote_itself_is_not_shown() {
    let app = spawn_app().await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let alice = browser_builder(&app.settings.cert_dir).cookie_provider(Arc::clone(&jar)).build().unwrap();
    assert_eq!(app.login_with(&alice, "alice", GOOD_PASSWORD).await.status(), 303);
    let url: url::Url = app.url("/").parse().unwrap();
    let json = URL_SAFE_NO_PAD.encode(br#"{"kind":"sessions_ended","count":9999}"#);
    for forged in [json.clone(), format!("{json}.AAAA"), format!("{json}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]))] {
        jar.add_cookie_str(&format!("__Host-portcullis-flash={forged}; Secure; Path=/"), &url);
        let home = alice.get(app.url("/")).send().await.unwrap().text().await.unwrap();
        assert!(home.contains("Sessions") || home.contains("alice"), "signed in: {home}");
        assert!(!home.contains("9999") && !home.contains("Signed out of"), "forged notice shown: {forged}");
    }
    // The server's own notice still shows.
    let csrf = app.home_csrf(&alice).await;
    let resp = alice.post(app.url("/sessions/end-others")).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let home = alice.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("No other session was signed in."), "{home}");
}
