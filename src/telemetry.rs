//! Terminal logging: human-readable lines on standard error, filtered by `RUST_LOG`
//! (default `info`). The JSON audit files are per application, see [`crate::audit`]. Every
//! line of both names the instance that wrote it ([`WithInstance`]).

use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// What the terminal log shows unless `RUST_LOG` says otherwise. The HTTP/2 library's own
/// warnings are left out: each names a client's misbehaviour it has already dealt with (a
/// rapid-reset connection answered with GOAWAY logs one), so a flood of such clients wrote a
/// line each, and nothing in them is the operator's to act on. So are the PostgreSQL pool's:
/// a database outage wrote "Connection error: db error" (no cause) about ten times per
/// instance, beside `fault_log`'s own lines, which say what failed, with the cause, once
/// per kind every 10 s. The WebAuthn library's are left out whole: it logs an ERROR for each
/// answer it refuses (a bad signature, malformed authenticator data with the sender's bytes,
/// several times the request's size), which anyone with a credential id could send by the
/// thousand, and the server records each refusal itself (`bad_passkey`).
/// rustls's warnings are each an alert sent to a misbehaving client (review 175: one line per
/// TLS 1.2 renegotiation attempt, 9,000 lines in 20 s from one script).
pub const DEFAULT_FILTER: &str =
    "info,poem=warn,sled=warn,h2=error,rustls=error,deadpool.postgres=error,webauthn_rs_core=off";

/// `RUST_LOG`'s filter, or `default` when it is unset or unreadable. The WebAuthn library
/// stays off unless `RUST_LOG` names it (`webauthn_rs_core=debug`): `RUST_LOG=info`, a common
/// setting, would otherwise bring back its ERROR lines with a sender's bytes (a review saw
/// 40 KB of them from one request).
fn filter_or(default: &str) -> EnvFilter {
    filter_from(std::env::var(EnvFilter::DEFAULT_ENV).ok(), default)
}

/// Says, once the log is up, that `RUST_LOG` was set but could not be read, so its default
/// is in force (review 150: `RUST_LOG=portcullis=LOUD` was ignored without a word).
fn warn_of_an_unreadable_rust_log() {
    if let Ok(value) = std::env::var(EnvFilter::DEFAULT_ENV) {
        if !value.trim().is_empty() {
            if let Err(e) = EnvFilter::try_new(&value) {
                tracing::warn!("RUST_LOG could not be read ({e}): its default is used");
            }
        }
    }
}

/// [`filter_or`] with `RUST_LOG`'s value given.
fn filter_from(rust_log: Option<String>, default: &str) -> EnvFilter {
    let from_env = rust_log.filter(|v| !v.trim().is_empty()).map(|v| (EnvFilter::try_new(&v), v));
    match from_env {
        Some((Ok(filter), v)) if v.contains("webauthn") => filter,
        Some((Ok(filter), _)) => match "webauthn_rs_core=off".parse() {
            Ok(off) => filter.add_directive(off),
            Err(_) => filter, // a fixed, valid directive: never reached
        },
        _ => EnvFilter::new(default),
    }
}

/// A filter over every line, whatever `RUST_LOG` asks for: the storage engines' lines below
/// INFO are dropped, since they write what is stored, which is password hashes, the CSRF and
/// captcha keys and session-token hashes: the PostgreSQL client every statement's parameters
/// at DEBUG (review 148 read the keys off `RUST_LOG=debug`), sled every key and value at
/// TRACE (review 150). Not a directive of the [`EnvFilter`]: one of `RUST_LOG`'s naming the
/// library more closely, or a span, would win over it. Decided per call site once (a
/// `filter_fn` would ask again at every event, and make every call site so asked, even those
/// the [`EnvFilter`] turned off for good).
fn without_secret_bearing_lines() -> WithoutSecretBearingLines {
    WithoutSecretBearingLines
}

/// [`without_secret_bearing_lines`]'s layer.
struct WithoutSecretBearingLines;

impl WithoutSecretBearingLines {
    fn drops(meta: &tracing::Metadata<'_>) -> bool {
        let engine = SECRET_BEARING_TARGETS
            .iter()
            .any(|t| meta.target().strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")));
        engine && *meta.level() > tracing::Level::INFO
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for WithoutSecretBearingLines {
    fn register_callsite(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        // `always` leaves the decision to the filters inside; `never` is final.
        if Self::drops(meta) {
            tracing::subscriber::Interest::never()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    /// Asked for lines without a registered call site too (the `log` crate's, which sled and
    /// the PostgreSQL client write through).
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        !Self::drops(meta)
    }
}

/// The libraries whose lines below INFO hold what is stored ([`without_secret_bearing_lines`]).
const SECRET_BEARING_TARGETS: [&str; 4] = ["tokio_postgres", "postgres_protocol", "deadpool_postgres", "sled"];

/// Starts the terminal log; `instance` (`instance_name`) ends every line as `instance=NAME`.
pub fn init_terminal(instance: &str) {
    let filter = filter_or(DEFAULT_FILTER);
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let format = tracing_subscriber::fmt::format().with_target(false).with_ansi(ansi);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(escaped_fields())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(WithInstance::text(format, instance))
        .finish()
        .with(without_secret_bearing_lines())
        .try_init();
    warn_of_an_unreadable_rust_log();
}

/// What a command other than `serve` shows on standard error: warnings and errors only (its
/// result is its own output), unless `RUST_LOG` says otherwise.
/// A command's own authentication events (`user disable` logs `user_disabled`, a warning)
/// go to the auth log only: its message says what it did.
pub const CLI_FILTER: &str =
    "warn,portcullis::audit=off,sled=error,h2=error,rustls=error,deadpool.postgres=error,webauthn_rs_core=off";

/// The lines a command other than `serve` logged, held until it ends ([`end_cli`]).
static CLI_LINES: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Where [`init_cli`]'s lines go: [`CLI_LINES`].
struct CliLines;

impl std::io::Write for CliLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A poisoned lock only means another thread panicked while writing a line.
        CLI_LINES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts the terminal log of a command other than `serve` (`user`, `audit`, `store`): one
/// line per warning, without the time, escaped like the server's, so what such a command did
/// on the way (such as taking group access away from the store's files) is said, not lost.
/// The lines are held until [`end_cli`], so a command that fails still says one line.
pub fn init_cli() {
    let filter = filter_or(CLI_FILTER);
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(escaped_fields())
        .with_writer(|| CliLines)
        .with_ansi(ansi)
        .event_format(CliFormat)
        .finish()
        .with(without_secret_bearing_lines())
        .try_init();
    warn_of_an_unreadable_rust_log();
}

/// A command's line, in the words of its other messages: `portcullis: warning: MESSAGE
/// field=value …` (`error:` for errors, `note:` below warnings when `RUST_LOG` asks for them).
struct CliFormat;

impl<S, N> FormatEvent<S, N> for CliFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let kind = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            _ => "note",
        };
        write!(writer, "portcullis: {kind}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Writes the lines [`init_cli`] held to standard error when the command `succeeded`; a
/// failed command's one line is its error (the CLI's contract), so they are dropped then.
pub fn end_cli(succeeded: bool) {
    let lines = std::mem::take(&mut *CLI_LINES.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    if succeeded && !lines.is_empty() {
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(&lines);
    }
}

/// An event format that adds this process's `instance_name` to every line another format
/// writes (SPEC.md, "Several instances, one truth": `instance` in every log line), so lines
/// gathered from several instances say where each came from. It is added at the end: the
/// JSON log's first field stays `timestamp` and its failed-login fields stay in the order
/// the fail2ban filter reads.
pub struct WithInstance<F> {
    inner: F,
    /// What goes before the line's end: ` instance=NAME`, or `,"instance":"NAME"` for JSON.
    suffix: String,
    /// Whether the line is a JSON object (the suffix goes before its closing brace).
    json: bool,
}

impl<F> WithInstance<F> {
    /// For text lines: ` instance=NAME` before the line break. The name is printable
    /// (`config::parse_instance_name`); it is escaped anyway, as every terminal field is.
    pub fn text(inner: F, instance: &str) -> Self {
        WithInstance { inner, suffix: format!(" instance={}", crate::text::printable(instance)), json: false }
    }

    /// For JSON lines: an `"instance"` member before the closing brace.
    pub fn json(inner: F, instance: &str) -> Self {
        let name = serde_json::to_string(instance).unwrap_or_else(|_| "\"\"".into());
        WithInstance { inner, suffix: format!(",\"instance\":{name}"), json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithInstance<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        let body = if self.json { body.strip_suffix('}') } else { Some(body) };
        match body {
            Some(body) => {
                writer.write_str(body)?;
                writer.write_str(&self.suffix)?;
                writer.write_str(if self.json { "}\n" } else { "\n" })
            }
            // Not an object (no formatter of ours writes one): the line as it is.
            None => writer.write_str(&line),
        }
    }
}

/// Whether to colour the terminal log: only on a terminal (a file or the journal would keep
/// the escape codes as text), and not when `NO_COLOR` is set to anything but the empty
/// string (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Field formatting for the terminal: every value (the message too) with invisible, control,
/// line-break and bidi characters escaped (`\u{1b}`), so a username or an error quoting one
/// cannot forge a line, recolour the terminal or pass for another name. Strings are quoted by
/// [`crate::text::quoted`] (as `Debug` quotes them, but with every script's marks as
/// written: `"ร้าน"`, not `"ร\u{e49}าน"`); other values are written by `Debug` and passed
/// through [`crate::text::escape_hidden`], once.
/// The `log` crate's bookkeeping of a line that came through it (`log.file` and the like: a
/// path on the build machine, review 175) is left out; its target is the line's own.
pub fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    EscapedFields
}

/// [`escaped_fields`]: makes one [`EscapedVisitor`] per event or span.
struct EscapedFields;

impl<'a> tracing_subscriber::field::MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapedVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Self::Visitor {
        EscapedVisitor { writer, result: Ok(()), first: true }
    }
}

/// Writes fields as `name=value`, the message bare, a space between.
struct EscapedVisitor<'a> {
    writer: Writer<'a>,
    result: std::fmt::Result,
    /// No field written yet: no space before the next.
    first: bool,
}

impl EscapedVisitor<'_> {
    fn write(&mut self, field: &tracing::field::Field, shown: &str) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let space = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = if field.name() == "message" {
            write!(self.writer, "{space}{shown}")
        } else {
            write!(self.writer, "{space}{}={shown}", field.name())
        };
    }
}

impl tracing::field::Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let shown = match field.name() {
            "username" | "typed" => crate::text::quoted_name(value),
            _ => crate::text::quoted(value),
        };
        self.write(field, &shown);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // `Debug` has escaped a string's controls and backslashes already; what it leaves
        // (bidi, format characters) and `Display` values get escaped here.
        let text = format!("{value:?}");
        self.write(field, &crate::text::escape_hidden(&text));
    }
}

impl tracing_subscriber::field::VisitOutput<std::fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl tracing_subscriber::field::VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// What the terminal formatter writes for the events `log` emits (other modules' tests
    /// use it too).
    pub(crate) fn terminal_text(log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn the_default_filter_keeps_the_librarys_lines_about_clients_out() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(DEFAULT_FILTER))
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "h2::proto::streams::recv", "remotely-reset pending-accept streams reached limit");
            tracing::warn!(target: "deadpool.postgres", "Connection error: db error");
            tracing::warn!(target: "portcullis::audit", "login failed");
            tracing::error!(target: "webauthn_rs_core::internals", e = "[1, 2, 3]", "try_from authenticator_data_parser");
            tracing::warn!(target: "rustls::common_state", "Sending warning alert NoRenegotiation");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("remotely-reset") && text.contains("login failed"), "{text}");
        assert!(!text.contains("NoRenegotiation"), "one line per client's renegotiation: {text}");
        assert!(!text.contains("Connection error"), "{text}");
        assert!(!text.contains("authenticator_data_parser"), "a sender's bytes at ERROR: {text}");
    }

    #[test]
    fn a_line_through_the_log_crate_shows_no_build_paths_and_keeps_one_space_between_fields() {
        let text = terminal_text(|| {
            tracing::warn!(
                target: "sled::pagecache", error = "No space left on device", log.module_path = "sled::pagecache",
                log.file = "/root/.cargo/registry/src/sled-0.34.7/src/pagecache/iobuf.rs", log.line = 1187u32,
                "failed to flush data to disk"
            )
        });
        assert!(!text.contains("log.") && !text.contains("/root/.cargo"), "{text}");
        assert!(text.contains("failed to flush data to disk error=\"No space left on device\"\n"), "{text}");
    }

    #[test]
    fn rust_log_keeps_the_webauthn_library_off_unless_it_names_it() {
        let lines = |rust_log: Option<&str>| {
            let buffer = Buffer::default();
            let out = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(filter_from(rust_log.map(str::to_string), DEFAULT_FILTER))
                .with_writer(move || out.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::error!(target: "webauthn_rs_core::internals", "cbor_parser");
                tracing::info!(target: "portcullis::serve", "listening");
            });
            let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            (text.contains("cbor_parser"), text.contains("listening"))
        };
        assert_eq!(lines(None), (false, true));
        assert_eq!(lines(Some("info")), (false, true), "a common setting");
        assert_eq!(lines(Some("")), (false, true), "empty: the default");
        assert_eq!(lines(Some("debug,webauthn_rs_core=error")), (true, true), "asked for by name");
    }

    #[test]
    fn the_storage_engines_lines_of_what_is_stored_are_never_logged() {
        let lines = |rust_log: &str| {
            let buffer = Buffer::default();
            let out = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(filter_from(Some(rust_log.to_string()), DEFAULT_FILTER))
                .with_writer(move || out.clone())
                .finish()
                .with(without_secret_bearing_lines());
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!(target: "tokio_postgres::query", "executing statement s1 with parameters: [secret]");
                tracing::trace!(target: "sled::tree", "inserting key [115, 101] with Set([secret])");
                tracing::info!(target: "sledge", "another library");
                tracing::info!(target: "tokio_postgres::connection", "connected");
                tracing::debug!(target: "portcullis::serve", "debugging");
            });
            let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            (
                text.contains("[secret]"),
                text.contains("connected") && text.contains("another"),
                text.contains("debugging"),
            )
        };
        assert_eq!(lines("debug"), (false, true, true));
        assert_eq!(lines("trace"), (false, true, true));
        assert_eq!(lines("debug,tokio_postgres=debug"), (false, true, true), "even when named");
        assert_eq!(lines("debug,sled=trace"), (false, true, true), "sled too");
        assert_eq!(lines("tokio_postgres::query=trace,debug"), (false, true, true), "even when named closer");
        assert_eq!(lines("[{x}]=trace,debug"), (false, true, true), "or by a span");
    }

    #[test]
    fn terminal_lines_escape_controls_and_invisible_characters_in_every_field() {
        let text = terminal_text(|| {
            let name = "admin\u{2060}\u{1b}[2J\u{85}\u{2028}x";
            let error = format!("no user named {name}");
            tracing::warn!(username = name, error = %error, "{}", format_args!("upgraded {name}"));
        });
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.trim_end_matches('\n').chars().any(crate::text::is_hidden), "{text:?}");
        assert!(text.contains("admin\\u{2060}"), "{text}");
    }

    #[test]
    fn each_field_is_escaped_once_and_a_typed_escape_reads_as_typed() {
        let text = terminal_text(|| {
            tracing::warn!(username = "c1\u{9b}x", typed = "m\\u{9b}", agent = "evil\u{202e}RTL", "x");
        });
        // U+009B is escaped by `Debug`, U+202E here; a typed `\u{9b}` keeps its doubled backslash.
        assert!(text.contains(r#"username="c1\u{9b}x""#), "{text}");
        assert!(text.contains(r#"agent="evil\u{202e}RTL""#), "{text}");
        assert!(text.contains(r#"typed="m\\u{9b}""#), "{text}");
        assert!(!text.contains("u{5c}"), "{text}");
    }

    #[test]
    fn a_name_that_passes_for_ascii_is_shown_on_the_terminal_as_the_audit_table_shows_it() {
        let stacked = format!("a{}", "\u{301}".repeat(40));
        let text = terminal_text(|| {
            tracing::warn!(username = "\u{430}dmin", typed = "\u{ff41}dmin", other = "\u{430}dmin", "x");
            tracing::warn!(username = stacked.as_str(), "y");
            tracing::warn!(username = String::from("\u{430}dmin"), "z");
        });
        assert!(text.contains(r#"username="\u{430}dmin" typed="\u{ff41}dmin""#), "{text}");
        // Other fields are not names: text in them stays as written.
        assert!(text.contains("other=\"\u{430}dmin\""), "{text}");
        assert!(text.contains(&format!("a{}\\u{{301}}", "\u{301}".repeat(crate::domain::MAX_MARK_RUN))), "{text}");
        assert_eq!(text.matches(r#"username="\u{430}dmin""#).count(), 2, "as a String too: {text}");
    }

    #[test]
    fn terminal_lines_keep_every_scripts_marks_as_written() {
        let text = terminal_text(|| tracing::warn!(username = "\u{e23}\u{e49}\u{e32}\u{e19}", count = 2, "x"));
        assert!(text.contains("username=\"\u{e23}\u{e49}\u{e32}\u{e19}\" count=2"), "{text}");
    }

    #[test]
    fn every_terminal_and_json_line_ends_with_the_instance_name() {
        let (terminal, json) = (Buffer::default(), Buffer::default());
        let (t, j) = (terminal.clone(), json.clone());
        let text_format = tracing_subscriber::fmt::format().with_target(false).with_ansi(false);
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .event_format(WithInstance::text(text_format, "web-2"))
            .with_writer(move || t.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(username = "alice", "one");
            tracing::warn!("two");
        });
        let text = String::from_utf8(terminal.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(|l| l.ends_with(" instance=web-2")), "{text}");

        let json_format = tracing_subscriber::fmt::format().json().flatten_event(true);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(WithInstance::json(json_format, "web-\"3"))
            .with_writer(move || j.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!(event = "x", "one"));
        let text = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!((v["instance"].as_str(), v["event"].as_str()), (Some("web-\"3"), Some("x")), "{text}");
        assert!(text.starts_with("{\"timestamp\":"), "the fail2ban date pattern reads the start: {text}");
    }
}
