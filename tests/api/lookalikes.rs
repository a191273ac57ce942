//! Look-alike usernames through the CLI (task F, item 2): blanks that are not format
//! characters, mixed scripts, confusable skeletons and space runs make no new user, and an
//! old name holding a blank is shown escaped.

use portcullis::app::Services;

use crate::helpers::{test_settings, GOOD_PASSWORD};
use crate::review::portcullis;

async fn user_add(dir: &std::path::Path, name: &str) -> crate::child::Run {
    let mut cmd = crate::child::command(dir);
    cmd.args(["user", "add", name, "--password-stdin"]);
    crate::child::run_cli(cmd, Some(&format!("{GOOD_PASSWORD}\n"))).await
}

#[tokio::test]
async fn user_add_refuses_names_that_read_as_another_and_user_list_shows_old_ones_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    // An old user from before the rule: `alice` + U+2800 (Braille blank) reads as `alice`.
    let old = "alice\u{2800}";
    {
        let services = Services::open(&settings, 1).await.unwrap();
        crate::identities::insert_old_user(&services, old).await;
    }
    let run = user_add(dir.path(), "admin").await;
    assert!(run.ok, "{}", run.stderr);
    let run = user_add(dir.path(), "a b").await;
    assert!(run.ok, "{}", run.stderr);
    let run = user_add(dir.path(), "\u{5d3}\u{5d5}\u{5d3}2").await;
    assert!(run.ok, "{}", run.stderr);
    for (twin, why) in [
        // Drawn as the one above in a left-to-right line (UTS #39 §4.1 bidi skeleton).
        ("2\u{5d3}\u{5d5}\u{5d3}", "looks like"),
        ("zalgo\u{301}\u{302}\u{303}\u{304}\u{306}", "marks"),
        ("\u{430}dmin", "scripts"),
        ("adrnin", "looks like"),
        ("a  b", "spaces"),
        ("bob\u{2800}", "U+2800"),
        ("bob\u{fffc}", "U+FFFC"),
        ("bob\u{1d159}", "U+1D159"),
        ("bob\u{16fe4}", "U+16FE4"),
    ] {
        let run = user_add(dir.path(), twin).await;
        assert!(!run.ok, "{twin:?} made a user");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(why), "{twin:?}: {}", run.stderr);
    }
    let (ok, out, err) = portcullis(&settings, &["user", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("alice\\u{2800}") && !out.contains('\u{2800}'), "{out}");
    // The old user still answers to every `user` command, by name or as the list shows it.
    let (ok, _, err) = portcullis(&settings, &["user", "disable", old]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = portcullis(&settings, &["user", "enable", "alice\\u{2800}"]).await;
    assert!(ok && out.contains("enabled"), "{out}{err}");
    let (ok, out, err) = portcullis(&settings, &["user", "factors", "alice\\u{2800}"]).await;
    assert!(ok, "{out}{err}");
}
