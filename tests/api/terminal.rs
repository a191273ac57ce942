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
