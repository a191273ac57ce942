//! What the binary writes to standard error when that is not a terminal (a file, a pipe, the
//! journal): plain text, no colour escape codes.

use crate::child::{ServerProcess, QUICK};

#[tokio::test(flavor = "multi_thread")]
async fn the_log_on_a_pipe_has_no_colour_codes_even_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), QUICK, |cmd| {
            cmd.env_remove("NO_COLOR");
        })
    });
    let (_, _, stderr) = tokio::task::block_in_place(|| server.terminate_with_output());
    let text = stderr.join("\n");
    assert!(text.contains("listening"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes on a pipe: {text:?}");
}

/// `RUST_LOG=trace` on sled writes nothing that is stored: sled logs every key and value at
/// TRACE, the CSRF and captcha keys and password hashes among them (review 150).
#[tokio::test(flavor = "multi_thread")]
async fn rust_log_trace_on_sled_writes_no_stored_key_or_value() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), QUICK, |cmd| {
            cmd.env("RUST_LOG", "trace");
        })
    });
    let (_, _, stderr) = tokio::task::block_in_place(|| server.terminate_with_output());
    let text = stderr.join("\n");
    assert!(text.contains("DEBUG"), "RUST_LOG=trace took effect: {text}");
    // `secret:` as sled's lines print a key, in decimal bytes.
    let secret_key = "115, 101, 99, 114, 101, 116, 58";
    assert!(!text.contains(secret_key), "a stored secret's key was logged");
}

/// A `RUST_LOG` that cannot be read is said to be so, and the default used (review 150).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_rust_log_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start_with(dir.path(), QUICK, |cmd| {
            cmd.env("RUST_LOG", "portcullis=LOUD");
        })
    });
    let (_, _, stderr) = tokio::task::block_in_place(|| server.terminate_with_output());
    let text = stderr.join("\n");
    assert!(text.contains("RUST_LOG could not be read") && text.contains("listening"), "{text}");
}
