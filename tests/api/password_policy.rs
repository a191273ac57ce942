//! The policy for new passwords wherever one is set: `user add` and `user passwd` on the
//! store directly and through a running server's admin socket. Repetitive, sequential and
//! context-specific passwords (NIST SP 800-63B rev 4 §3.1.1.2) are refused with the reason.

use std::path::Path;

use crate::child;
use crate::helpers::{spawn_app, GOOD_PASSWORD};

/// The passwords the issue names, for the user `alice`, and the reason each must give.
const OBVIOUS: &[(&str, &str)] = &[
    ("               ", "repeats"),
    ("aaaaaaaaaaaaaaa", "repeats"),
    ("passwordpassword", "repeats"),
    ("alicealicealice1", "username"),
    ("portcullisportcullis", "service"),
    ("abcdefghijklmnopq", "sequence"),
];

/// Each obvious password is refused for alice by `ARGS` on one line that says why and does
/// not echo the password.
async fn refuses_every_obvious_password(dir: &Path, args: &[&str]) {
    for (weak, why) in OBVIOUS {
        let run = child::cli(dir, args, Some(weak)).await;
        let err = run.assert_one_line_failure(weak);
        assert!(err.contains("too easy to guess") && err.contains(why), "{weak:?}: {err}");
        assert!(weak.trim().is_empty() || !err.contains(weak), "the refused password is echoed: {err}");
    }
}

#[tokio::test]
async fn user_add_and_passwd_refuse_obvious_passwords_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    refuses_every_obvious_password(d, &["user", "add", "alice", "--password-stdin"]).await;
    let list = child::cli(d, &["user", "list", "--json"], None).await;
    assert!(list.stdout.trim().is_empty(), "a refused user was created: {}", list.stdout);
    child::cli(d, &["user", "add", "alice", "--password-stdin"], Some(GOOD_PASSWORD)).await.assert_ok("add alice");
    refuses_every_obvious_password(d, &["user", "passwd", "alice", "--password-stdin"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_servers_admin_socket_applies_the_same_policy() {
    let app = spawn_app().await;
    let d = app.dir.path();
    refuses_every_obvious_password(d, &["user", "add", "alice", "--password-stdin"]).await;
    app.add_user("alice", GOOD_PASSWORD, false).await;
    refuses_every_obvious_password(d, &["user", "passwd", "alice", "--password-stdin"]).await;
    // The old password still works: nothing was changed.
    assert_eq!(app.login("alice", GOOD_PASSWORD).await.status(), 303);
}

#[tokio::test]
async fn long_passphrases_are_accepted() {
    let app = spawn_app().await;
    for (i, good) in [
        "correct plum tractor velvet",
        "my cat eats spinach on tuesdays",
        "Gravel-Otter-Lantern-97",
        "a long passphrase of ordinary words that goes well past the sixty-four characters NIST asks for",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("user{i}");
        app.state.users.add(&name, portcullis::password::Password::new(good), false, "test").await.unwrap();
        assert_eq!(app.login_with(&app.new_browser(), &name, good).await.status(), 303, "{good}");
    }
}
