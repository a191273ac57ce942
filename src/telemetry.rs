//! Terminal logging: human-readable lines on standard error, filtered by `RUST_LOG`
//! (default `info`). The JSON audit files are per application, see [`crate::audit`].

use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::EnvFilter;

pub fn init_terminal() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,poem=warn,sled=warn"));
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(escaped_fields())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// Whether to colour the terminal log: only on a terminal (a file or the journal would keep
/// the escape codes as text), and not when `NO_COLOR` is set to anything but the empty
/// string (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Field formatting for the terminal: every value (the message too) with invisible, control,
/// line-break and bidi characters escaped (`\u{1b}`), so a username or an error quoting one
/// cannot forge a line, recolour the terminal or pass for another name
/// ([`crate::text::printable`]). Strings are quoted as `Debug` quotes them.
pub fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let shown = crate::text::printable(&text);
        if field.name() == "message" {
            write!(w, "{shown}")
        } else {
            write!(w, "{}={shown}", field.name())
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        assert!(colour(true, None));
        assert!(colour(true, empty));
        assert!(!colour(true, set));
        assert!(!colour(false, None));
        assert!(!colour(false, set));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn terminal_lines_escape_controls_and_invisible_characters_in_every_field() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let name = "admin\u{2060}\u{1b}[2J\u{85}\u{2028}x";
            let error = format!("no user named {name}");
            tracing::warn!(username = name, error = %error, "{}", format_args!("upgraded {name}"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.trim_end_matches('\n').chars().any(crate::text::is_hidden), "{text:?}");
        assert!(text.contains("admin\\u{2060}"), "{text}");
    }
}
