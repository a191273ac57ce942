//! Authentication events: one JSON line each in `log_dir/auth.log.YYYY-MM-DD` (through
//! tracing-subscriber's JSON formatter, then [`crate::text::escape_json`] for the controls,
//! line breaks and bidi characters it leaves raw), and a human line on the terminal.
//! Attacker-controlled text (usernames, user agents) only ever travels as a field.
//!
//! Each application owns its sink (a private tracing `Dispatch`), so several servers in one
//! process (the test suite) keep separate logs.

use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use tracing::Dispatch;
use tracing_appender::rolling::{RollingFileAppender, RollingWriter, Rotation};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::domain::{normalise_key, Username};
use crate::store::{now_ms, FailureQuery, FailureRecord, Store, StoreError};

/// The tracing target of audit events; the file sink keeps only these.
pub const TARGET: &str = "portcullis::audit";

/// Why a login attempt failed or was refused (SPEC.md's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    UnknownUser,
    BadPassword,
    CaptchaRequired,
    BadCaptcha,
    RateLimited,
    Csrf,
    Disabled,
}

impl FailureReason {
    /// Every reason, in the order filters and forms list them.
    pub const ALL: [FailureReason; 7] = [
        FailureReason::UnknownUser,
        FailureReason::BadPassword,
        FailureReason::CaptchaRequired,
        FailureReason::BadCaptcha,
        FailureReason::RateLimited,
        FailureReason::Csrf,
        FailureReason::Disabled,
    ];

    /// The reason named `name` (as in the log and the records).
    pub fn parse(name: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::UnknownUser => "unknown_user",
            FailureReason::BadPassword => "bad_password",
            FailureReason::CaptchaRequired => "captcha_required",
            FailureReason::BadCaptcha => "bad_captcha",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::Csrf => "csrf",
            FailureReason::Disabled => "disabled",
        }
    }
}

/// Who did something, seen from the network.
#[derive(Clone, Debug)]
pub struct Client {
    pub ip: IpAddr,
    pub user_agent: String,
}

/// Something worth an audit line. Event names follow OWASP's logging vocabulary.
#[derive(Debug)]
pub enum AuthEvent<'a> {
    /// `after_failures`: how many failures the username had just before (OWASP
    /// `authn_login_successafterfail` when non-zero).
    LoginSucceeded {
        username: &'a str,
        client: &'a Client,
        after_failures: usize,
    },
    /// `max_reached`: this failure made a count reach the captcha threshold (OWASP
    /// `authn_login_fail_max`). `username` is the identity checked, `typed` what was typed
    /// when it differs (see [`FailureRecord`]).
    LoginFailed {
        username: &'a str,
        typed: Option<&'a str>,
        client: &'a Client,
        reason: FailureReason,
        max_reached: bool,
    },
    LoggedOut {
        username: &'a str,
        client: &'a Client,
    },
    SessionsEnded {
        username: &'a str,
        count: usize,
        by: &'a str,
    },
    UserAdded {
        username: &'a str,
        admin: bool,
        by: &'a str,
    },
    UserDeleted {
        username: &'a str,
        by: &'a str,
    },
    PasswordChanged {
        username: &'a str,
        by: &'a str,
    },
    UserUnlocked {
        username: &'a str,
        by: &'a str,
    },
    UserDisabled {
        username: &'a str,
        by: &'a str,
    },
    UserEnabled {
        username: &'a str,
        by: &'a str,
    },
}

/// Why an authentication record could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write to the auth log (is the disk full?)")]
    Log,
}

thread_local! {
    /// Failed writes to an auth log file on this thread. Events are written synchronously on
    /// the recording thread, so comparing this before and after tells whether *that* line
    /// reached the file (tracing-subscriber itself ignores write errors).
    static LOG_WRITE_FAILURES: Cell<u64> = const { Cell::new(0) };
}

/// The log file appender, counting its failed writes.
struct CheckedAppender(RollingFileAppender);

struct CheckedWriter<'a>(RollingWriter<'a>);

impl<'a> MakeWriter<'a> for CheckedAppender {
    type Writer = CheckedWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        CheckedWriter(self.0.make_writer())
    }
}

impl CheckedWriter<'_> {
    fn count<T>(result: std::io::Result<T>) -> std::io::Result<T> {
        if result.is_err() {
            LOG_WRITE_FAILURES.with(|n| n.set(n.get() + 1));
        }
        result
    }
}

impl std::io::Write for CheckedWriter<'_> {
    /// Writes `buf` whole, with the characters serde_json leaves raw escaped. tracing-subscriber
    /// hands each line over in one `write_all`, so `buf` is a whole line (valid UTF-8) and
    /// writing it whole means the escaping never sees half a line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let escaped = std::str::from_utf8(buf).map(crate::text::escape_json);
        let bytes = match &escaped {
            Ok(text) => text.as_bytes(),
            Err(_) => buf,
        };
        Self::count(self.0.write_all(bytes)).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::count(self.0.flush())
    }
}

/// The JSON-lines sink of one application, and the durable store of failed attempts.
#[derive(Clone)]
pub struct Audit {
    file: Option<Dispatch>,
    store: Option<Store>,
}

impl Audit {
    /// Writes to daily files `auth.log.YYYY-MM-DD` in `log_dir`, keeping `keep_days` of them.
    pub fn open(log_dir: &Path, keep_days: usize, store: Option<Store>) -> anyhow::Result<Self> {
        crate::store::create_private_dir(log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix("auth.log")
            .max_log_files(keep_days.max(1))
            .build(log_dir)
            .with_context(|| format!("cannot open the log in {}", log_dir.display()))?;
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(CheckedAppender(appender));
        let subscriber = tracing_subscriber::registry().with(layer);
        Ok(Audit { file: Some(Dispatch::new(subscriber)), store })
    }

    /// A sink that writes only to the terminal (commands run without a log directory).
    pub fn terminal_only() -> Self {
        Audit { file: None, store: None }
    }

    /// Records the event in the file (synchronously, so the line exists before the response
    /// says the thing happened) and on the terminal. A line that cannot be written is reported
    /// on the terminal; use [`Audit::record_checked`] where the caller must not go on without it.
    pub fn record(&self, event: &AuthEvent<'_>) {
        if self.record_checked(event).is_err() {
            tracing::error!("an authentication event could not be written to the auth log (is the disk full?)");
        }
    }

    /// Records the event like [`Audit::record`] and says whether its line reached the log file.
    pub fn record_checked(&self, event: &AuthEvent<'_>) -> Result<(), AuditError> {
        let mut written = true;
        if let Some(file) = &self.file {
            let before = LOG_WRITE_FAILURES.with(Cell::get);
            tracing::dispatcher::with_default(file, || emit(event));
            written = LOG_WRITE_FAILURES.with(Cell::get) == before;
        }
        emit(event);
        if written {
            Ok(())
        } else {
            Err(AuditError::Log)
        }
    }
}

impl Audit {
    /// Records a failed or refused login: durably in the store (flushed before this returns,
    /// so the response never outruns the record), then as a log line. Either failing is an
    /// error: the caller must not answer as if the attempt had been recorded.
    pub async fn record_failure(
        &self,
        username: &str,
        client: &Client,
        reason: FailureReason,
        max_reached: bool,
    ) -> Result<(), AuditError> {
        let (identity, typed) = self.identity(username)?;
        if self.store.is_some() {
            let record = FailureRecord {
                time: now_ms(),
                ip: client.ip.to_string(),
                username: identity.clone(),
                reason,
                user_agent: client.user_agent.clone(),
                typed: typed.clone(),
            };
            self.append(&record).await?;
        }
        self.record_checked(&AuthEvent::LoginFailed {
            username: &identity,
            typed: typed.as_deref(),
            client,
            reason,
            max_reached,
        })
    }

    /// The identity a failed attempt with `typed` as the username was checked as: the user's
    /// stored spelling when the user exists (the same lookup as [`crate::authentication`]),
    /// else the normalised input, so `audit --user alice`, the admin filter and the summary's
    /// top usernames find `"   alice"` and `ALICE` under alice. Also what was typed (cut to
    /// 256 characters) when it differs.
    fn identity(&self, typed: &str) -> Result<(String, Option<String>), StoreError> {
        let cut = |s: &str| -> String { s.chars().take(MAX_RECORDED_CHARS).collect() };
        let stored = match (&self.store, Username::parse(typed)) {
            (Some(store), Ok(name)) => store.user(name.key())?.map(|u| u.display_name),
            _ => None,
        };
        let identity = stored.unwrap_or_else(|| cut(&normalise_key(typed)));
        let typed = cut(typed);
        Ok(if typed == identity { (identity, None) } else { (identity, Some(typed)) })
    }
}

/// Longest username or typed text kept in a failed-login record, in characters (a form field
/// may hold 16 KiB).
pub const MAX_RECORDED_CHARS: usize = 256;

impl Audit {
    /// Appends a record as it is (for imports and tests: the server itself goes through
    /// [`Audit::record_failure`]) and makes it durable.
    pub async fn append(&self, record: &FailureRecord) -> Result<(), StoreError> {
        if let Some(store) = &self.store {
            store.append_failure(record, &normalise_key(&record.username))?;
            store.flush().await?;
        }
        Ok(())
    }

    /// Failed-login records matching `query`, newest first, with their keyset cursors.
    pub fn failures(&self, query: &FailureQuery) -> Result<Vec<(Vec<u8>, FailureRecord)>, StoreError> {
        match &self.store {
            Some(store) => store.failures(query),
            None => Ok(Vec::new()),
        }
    }
}

/// RFC 3339 UTC time, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn emit(event: &AuthEvent<'_>) {
    let time = rfc3339(crate::store::now_ms());
    match *event {
        AuthEvent::LoginSucceeded { username, client, after_failures } => {
            let event = if after_failures > 0 { "authn_login_successafterfail" } else { "authn_login_success" };
            tracing::info!(
                target: TARGET, event, time, username, ip = %client.ip, user_agent = client.user_agent,
                failures = after_failures, "login succeeded"
            )
        }
        AuthEvent::LoginFailed { username, typed, client, reason, max_reached } => {
            let event = if max_reached { "authn_login_fail_max" } else { "authn_login_fail" };
            // `typed` after `ip`: the fail2ban filter reads event, time, username, ip in order.
            tracing::warn!(
                target: TARGET, event, time, username, ip = %client.ip, user_agent = client.user_agent,
                typed, reason = reason.as_str(), "login failed"
            )
        }
        AuthEvent::LoggedOut { username, client } => tracing::info!(
            target: TARGET, event = "session_logout", time, username, ip = %client.ip, user_agent = client.user_agent,
            "logged out"
        ),
        AuthEvent::SessionsEnded { username, count, by } => tracing::info!(
            target: TARGET, event = "session_revoked", time, username, count, by, "sessions ended"
        ),
        AuthEvent::UserAdded { username, admin, by } => tracing::info!(
            target: TARGET, event = "user_created", time, username, admin, by, "user added"
        ),
        AuthEvent::UserDeleted { username, by } => tracing::info!(
            target: TARGET, event = "user_deleted", time, username, by, "user deleted"
        ),
        AuthEvent::PasswordChanged { username, by } => tracing::info!(
            target: TARGET, event = "authn_password_change", time, username, by, "password changed"
        ),
        AuthEvent::UserUnlocked { username, by } => tracing::info!(
            target: TARGET, event = "user_unlocked", time, username, by, "user unlocked"
        ),
        AuthEvent::UserDisabled { username, by } => tracing::warn!(
            target: TARGET, event = "user_disabled", time, username, by, "user disabled"
        ),
        AuthEvent::UserEnabled { username, by } => tracing::info!(
            target: TARGET, event = "user_enabled", time, username, by, "user enabled"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_usernames_stay_inside_one_valid_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), 7, None).unwrap();
        let client = Client { ip: "10.0.0.1".parse().unwrap(), user_agent: "ua\"}\n{\"forged\":1".into() };
        let name = "eve\r\n{\"event\":\"authn_login_success\"}\u{1b}[2J\"";
        audit.record(&AuthEvent::LoginFailed {
            username: name,
            typed: None,
            client: &client,
            reason: FailureReason::BadPassword,
            max_reached: false,
        });
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["username"], name);
        assert_eq!(v["reason"], "bad_password");
        assert_eq!(v["event"], "authn_login_fail");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn a_line_that_cannot_be_written_is_an_error_not_silence() {
        let dir = tempfile::tempdir().unwrap();
        // Today's log file is /dev/full: every write fails as on a full disk.
        let today = &rfc3339(now_ms())[..10];
        std::os::unix::fs::symlink("/dev/full", dir.path().join(format!("auth.log.{today}"))).unwrap();
        let audit = Audit::open(dir.path(), 7, None).unwrap();
        let client = Client { ip: "10.0.0.1".parse().unwrap(), user_agent: String::new() };
        let event = AuthEvent::LoggedOut { username: "alice", client: &client };
        assert!(matches!(audit.record_checked(&event), Err(AuditError::Log)));
        let failed = audit.record_failure("alice", &client, FailureReason::BadPassword, false).await;
        assert!(matches!(failed, Err(AuditError::Log)));
        // And a writable log is fine again.
        let ok = Audit::open(tempfile::tempdir().unwrap().path(), 7, None).unwrap();
        assert!(ok.record_checked(&event).is_ok());
    }
}
