//! The CLI's way into a running server: a Unix socket `admin.sock` in the data directory,
//! mode 0600 inside a 0700 directory, that accepts one JSON request line per connection from
//! the same Unix user and answers one JSON line. sled lets only one process open the store,
//! so while the server runs this is how `portcullis user ...` reaches it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::audit::Audit;
use crate::domain::Group;
use crate::password::Password;
use crate::review::{review, Answer, FilterArgs};
use crate::users::{UserAdmin, UserSummary};

pub const SOCKET_NAME: &str = "admin.sock";

/// Largest request accepted (a password or a set of filters is at most a few KiB).
const MAX_REQUEST: u64 = 64 * 1024;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    UserAdd {
        name: String,
        password: String,
        admin: bool,
        #[serde(default)]
        groups: Vec<Group>,
    },
    /// With neither list, only shows the user's groups.
    UserGroups {
        name: String,
        #[serde(default)]
        add: Vec<Group>,
        #[serde(default)]
        remove: Vec<Group>,
    },
    /// Lists the user's sessions, or with `end`, ends the one that handle names.
    UserSessions {
        name: String,
        #[serde(default)]
        end: Option<String>,
    },
    /// With neither, only shows whether the user is an administrator.
    UserAdmin {
        name: String,
        /// `Some(true)`: make one; `Some(false)`: no longer one.
        #[serde(default)]
        admin: Option<bool>,
    },
    UserPasswd {
        name: String,
        password: String,
    },
    UserDel {
        name: String,
    },
    UserList,
    UserUnlock {
        name: String,
    },
    UserDisable {
        name: String,
    },
    UserEnable {
        name: String,
    },
    UserFactors {
        name: String,
    },
    UserResetFactors {
        name: String,
    },
    /// `user factors NAME --remove-passkey PASSKEY`.
    UserRemovePasskey {
        name: String,
        passkey: String,
    },
    Audit {
        filters: FilterArgs,
        summary: bool,
    },
}

impl Request {
    /// Whether carrying the request out may change the store or record an event: `false` for
    /// the reads (`user list`, `user factors`, `user groups NAME` without changes, `audit`),
    /// which the CLI runs without an auth log, so they leave nothing where they run.
    pub fn writes(&self) -> bool {
        match self {
            Request::UserList | Request::UserFactors { .. } | Request::Audit { .. } => false,
            Request::UserGroups { add, remove, .. } => !add.is_empty() || !remove.is_empty(),
            Request::UserAdmin { admin, .. } => admin.is_some(),
            Request::UserSessions { end, .. } => end.is_some(),
            Request::UserAdd { .. }
            | Request::UserPasswd { .. }
            | Request::UserDel { .. }
            | Request::UserUnlock { .. }
            | Request::UserDisable { .. }
            | Request::UserEnable { .. }
            | Request::UserResetFactors { .. }
            | Request::UserRemovePasskey { .. } => true,
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Request::UserAdd { password, .. } | Request::UserPasswd { password, .. } = self {
            zeroize::Zeroize::zeroize(password);
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::UserAdd { name, admin, groups, .. } => {
                write!(f, "UserAdd({name:?}, admin={admin}, groups={groups:?})")
            }
            Request::UserGroups { name, add, remove } => write!(f, "UserGroups({name:?}, +{add:?}, -{remove:?})"),
            Request::UserAdmin { name, admin } => write!(f, "UserAdmin({name:?}, {admin:?})"),
            Request::UserSessions { name, end } => write!(f, "UserSessions({name:?}, end={end:?})"),
            Request::UserPasswd { name, .. } => write!(f, "UserPasswd({name:?})"),
            Request::UserDel { name } => write!(f, "UserDel({name:?})"),
            Request::UserList => write!(f, "UserList"),
            Request::UserUnlock { name } => write!(f, "UserUnlock({name:?})"),
            Request::UserDisable { name } => write!(f, "UserDisable({name:?})"),
            Request::UserEnable { name } => write!(f, "UserEnable({name:?})"),
            Request::UserFactors { name } => write!(f, "UserFactors({name:?})"),
            Request::UserResetFactors { name } => write!(f, "UserResetFactors({name:?})"),
            Request::UserRemovePasskey { name, passkey } => write!(f, "UserRemovePasskey({name:?}, {passkey:?})"),
            Request::Audit { summary, .. } => write!(f, "Audit(summary={summary})"),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Done { message: String },
    Users { users: Vec<UserSummary> },
    Review { answer: Answer },
    Error { message: String },
}

/// Default number of records `portcullis audit` prints.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;

/// A passkey's name or a session's browser on one line of an answer: the client escapes each
/// line, and a name holds no line break (`passkeys::parse_name` refuses control characters;
/// one stored otherwise, or a browser's string, is flattened here), so it cannot make a line
/// of its own (a forged session in `user sessions`).
fn one_line(name: &str) -> String {
    name.replace(['\n', '\r'], " ")
}

/// A note for the answer to a deletion or a disable that left no enabled administrator: no
/// one can open `/admin` then (found by a review: the last one deleted without a word).
/// Empty while one is left, or when the users cannot be listed (the change itself is done).
async fn no_admin_left(users: &UserAdmin) -> &'static str {
    match users.list().await {
        Ok(all) if !all.iter().any(|u| u.admin && !u.disabled) => {
            "; no enabled administrator is left to open /admin (portcullis user admin NAME --grant makes one)"
        }
        _ => "",
    }
}

/// `user sessions NAME`: one line per session (handle, start, factors, last use, address,
/// browser), newest first, and how to end one.
fn session_listing(name: &str, sessions: &[crate::store::StoredSession]) -> String {
    if sessions.is_empty() {
        return format!("{name} has no session");
    }
    let mut out = format!("{name} has {} session(s), newest first:", sessions.len());
    for s in sessions {
        let with = match (&s.record.passkey_id, s.record.factors) {
            (Some(_), _) => "a passkey",
            (None, crate::store::Factors::Two) => "two factors",
            (None, _) => "password",
        };
        out.push_str(&format!(
            "\n  {}  signed in {} with {with}, last active {}, from {}, browser \"{}\"",
            crate::session::SessionHandle::of(&s.token_hash).encode(),
            crate::audit::rfc3339(s.record.created_at),
            crate::audit::rfc3339(s.record.last_seen_at),
            one_line(&s.record.ip),
            one_line(&s.record.user_agent),
        ));
    }
    out.push_str(&format!("\nend one with: portcullis user sessions {name} --end SESSION"));
    out
}

/// Runs a request against the user service (used by the socket server and by the CLI when
/// no server is running).
pub async fn execute(users: &UserAdmin, audit: &Audit, request: &Request, by: &str) -> Response {
    let log_failures = audit.log_write_failures();
    let result = match request {
        Request::UserAdd { name, password, admin, groups } => users
            .add_in_groups(name, Password::new(password), *admin, groups.clone(), by)
            .await
            .map(|u| format!("user {} added{}", u, if *admin { " (admin)" } else { "" })),
        Request::UserPasswd { name, password } => {
            users.set_password(name, Password::new(password), by, None, None).await.map(|set| {
                let ended = crate::users::Ended { sessions: set.sessions_ended, pending: set.pending_ended };
                format!("password of {} changed; {ended}", set.user.display_name)
            })
        }
        Request::UserGroups { name, add, remove } => {
            users.change_groups(name, add, remove, by).await.map(|(n, g, changed)| {
                let listed: Vec<&str> = g.iter().map(Group::as_str).collect();
                let listed = if listed.is_empty() { "(no group)".to_string() } else { listed.join(", ") };
                // A change asked for that was there already is said (review 138 saw a removal
                // from a group the user was not in answered as if done).
                let asked = !add.is_empty() || !remove.is_empty();
                let unchanged = if asked && !changed { "; nothing changed: the groups were already so" } else { "" };
                format!("user {n} is in: {listed}{unchanged}")
            })
        }
        Request::UserAdmin { name, admin } => match users.set_admin(name, *admin, by).await {
            Ok((n, is, changed)) => {
                let what = if is { "an administrator" } else { "not an administrator" };
                let unchanged = if admin.is_some() && !changed { "; nothing changed: it was already so" } else { "" };
                let left = if changed && !is { no_admin_left(users).await } else { "" };
                Ok(format!("user {n} is {what}{unchanged}{left}"))
            }
            Err(e) => Err(e),
        },
        Request::UserSessions { name, end: None } => {
            users.sessions(name).await.map(|(n, sessions)| session_listing(&n, &sessions))
        }
        Request::UserSessions { name, end: Some(handle) } => {
            match crate::session::SessionHandle::parse(handle.trim()) {
                None => Err(crate::users::UserError::NoSuchSession(crate::text::printable(handle).into_owned())),
                Some(h) => match users.end_session(name, &h, by).await {
                    Ok((n, Some(s))) => Ok(format!(
                        "session {} of {n} ended (signed in {} from {}, browser \"{}\")",
                        h.encode(),
                        crate::audit::rfc3339(s.record.created_at),
                        one_line(&s.record.ip),
                        one_line(&s.record.user_agent),
                    )),
                    Ok((n, None)) => Err(crate::users::UserError::SessionGone { user: n, handle: h.encode() }),
                    Err(e) => Err(e),
                },
            }
        }
        Request::UserDel { name } => match users.delete(name, by).await {
            Ok((n, ended)) => Ok(format!("user {n} deleted; {ended}{}", no_admin_left(users).await)),
            Err(e) => Err(e),
        },
        Request::UserUnlock { name } => users.unlock(name, by).await.map(|n| format!("user {n} unlocked")),
        Request::UserDisable { name } => match users.set_disabled(name, true, by).await {
            Ok((n, ended)) => Ok(format!("user {n} disabled; {ended}{}", no_admin_left(users).await)),
            Err(e) => Err(e),
        },
        Request::UserEnable { name } => {
            users.set_disabled(name, false, by).await.map(|(n, _)| format!("user {n} enabled"))
        }
        Request::UserFactors { name } => match (users.factors(name).await, users.passkeys(name).await) {
            (Ok((n, f)), Ok(passkeys)) => {
                let mut out = format!(
                    "{n}: authenticator app: {}; recovery codes left: {}; passkeys: {}",
                    if f.totp { "yes" } else { "no" },
                    f.recovery_codes,
                    f.passkeys
                );
                for p in passkeys {
                    // One line each ([`one_line`]). The name comes last, after what the server
                    // says of the passkey, so no name can pose as that (a review made
                    // `x": added 1999…` read as dates).
                    let used = p.last_used_at.map_or_else(
                        || "never used".to_string(),
                        |t| format!("last used {}", crate::audit::rfc3339(t)),
                    );
                    let added = crate::audit::rfc3339(p.created_at);
                    let refused = p.clone_suspected_at.map_or_else(String::new, |t| {
                        let at = crate::audit::rfc3339(t);
                        format!(", refused {at}: its signature counter went back (a copy may exist)")
                    });
                    out.push_str(&format!("\n  passkey added {added}, {used}{refused}; named: {}", one_line(&p.name)));
                }
                Ok(out)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Request::UserRemovePasskey { name, passkey } => {
            users.remove_passkey(name, passkey, by).await.map(|(n, r)| {
                // The name last, as `user factors` lists it: nothing after it can be taken for
                // what the server says.
                let mut out = format!("{n}: passkey removed, {} session(s) signed in with it ended", r.sessions_ended);
                if r.codes_voided > 0 {
                    out.push_str(&format!(", its {} recovery codes voided (no second factor left)", r.codes_voided));
                }
                out.push_str(&format!("; named: {}", one_line(&r.passkey.name)));
                out
            })
        }
        Request::UserResetFactors { name } => users.reset_factors(name, by).await.map(|(n, f, ended)| {
            let removed = f.totp as usize + f.passkeys + usize::from(f.recovery_codes > 0);
            format!("second factors of {n} reset ({removed} removed); {ended}")
        }),
        Request::UserList => {
            return match users.list().await {
                Ok(users) => Response::Users { users },
                Err(e) => Response::Error { message: crate::text::error_chain(&e) },
            }
        }
        Request::Audit { filters, summary } => {
            let (audit, filters, summary) = (audit.clone(), filters.clone(), *summary);
            // In a task of its own, so a panic in a review is an error answer, not a lost socket;
            // ended with the connection.
            let answer = crate::review::Spawned::new(async move {
                review(&audit, &filters, summary, DEFAULT_AUDIT_LIMIT, crate::store::now_ms()).await
            })
            .finished()
            .await;
            return match answer {
                Ok(Ok(answer)) => Response::Review { answer },
                Ok(Err(e)) => Response::Error { message: crate::text::error_chain(&e) },
                Err(_) => Response::Error { message: "the review failed".into() },
            };
        }
    };
    // The whole chain: "store error: database error: db error" alone hid the database's own
    // reason ("cannot execute UPDATE in a read-only transaction") from the operator.
    match result {
        // The change is made and stays made (refusing it for want of a log line would be
        // worse), but whoever made it must hear that its line may be missing: through the
        // socket, the server's own error line reaches only the server's log (review 136).
        Ok(mut message) if audit.log_write_failures() > log_failures => {
            message.push_str(
                "; but the auth log could not be written meanwhile (is its disk full?): this change may be missing from it",
            );
            Response::Done { message }
        }
        Ok(message) => Response::Done { message },
        Err(e) => Response::Error { message: crate::text::error_chain(&e) },
    }
}

/// The admin socket being served. Dropping it stops the accepting task and removes the socket
/// file, so a start that fails after opening it leaves no socket behind for the next command
/// to try; [`Listening::stop`] does the same and waits until the task has let go of the store.
pub struct Listening {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Listening {
    /// Stops accepting, waits for the accepting task to end (it holds the store), and removes
    /// the socket file.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        // Drop removes the file.
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket (replacing a stale one: holding the store lock proves no other server
/// uses this directory) and serves it until the returned [`Listening`] is stopped or dropped.
///
/// # Errors
/// When the socket cannot be bound or its mode set (the directory is not writable, the path is
/// longer than a Unix socket address allows).
pub fn serve(data_dir: &Path, users: UserAdmin, audit: Audit) -> std::io::Result<Listening> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // From here on the file is removed again if anything fails.
    let mut listening = Listening { path: path.clone(), task: None };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = unsafe_uid();
    listening.task = Some(tokio::spawn(async move {
        let mut backoff = crate::serve::Backoff::new("admin socket");
        loop {
            let (stream, _) = backoff.accept(|| listener.accept()).await;
            let allowed = stream.peer_cred().map(|c| c.uid() == me || c.uid() == 0).unwrap_or(false);
            if !allowed {
                continue;
            }
            let (users, audit) = (users.clone(), audit.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), handle(stream, &users, &audit)).await;
            });
        }
    }));
    Ok(listening)
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

async fn handle(stream: UnixStream, users: &UserAdmin, audit: &Audit) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line).await?;
    let cut_short = line.len() as u64 >= MAX_REQUEST && !line.ends_with('\n');
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(mut request) => {
            if let Request::Audit { filters, summary: false } = &mut request {
                // A longer page is cut, its `next` saying where the rest begins; a limit no
                // command may ask for is left for the review to refuse.
                let limit = filters.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
                if crate::review::is_allowed_limit(limit) {
                    filters.limit = Some(limit.min(RECORDS_PER_ANSWER));
                }
            }
            execute(users, audit, &request, "cli").await
        }
        // Only a value far past every limit (64-character usernames, 1024-character
        // passwords) makes a request this long: say so rather than "malformed".
        Err(_) if cut_short => Response::Error {
            message: format!(
                "the request is longer than {} KiB: no username or password may be that long",
                MAX_REQUEST / 1024
            ),
        },
        Err(_) => Response::Error { message: "malformed request".into() },
    };
    zeroize::Zeroize::zeroize(&mut line);
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Sends one request to a running server. `Ok(None)` means no server is listening.
///
/// Only to the server of this `data_dir`: the socket must be a socket, not a link, and owned
/// by `data_dir`'s owner, and the process answering must run as that owner. Otherwise that
/// owner (a service's user, which root's commands talk to) could point root's requests, with
/// their passwords, at another user's server.
///
/// # Errors
/// A socket that is not this `data_dir`'s server's; a request or answer that cannot be sent
/// or read.
pub async fn call(data_dir: &Path, request: &Request) -> anyhow::Result<Option<Response>> {
    // The server answers at most RECORDS_PER_ANSWER records at a time: ask page after page,
    // each after the last one's cursor, and hand the caller one answer of all of them. A
    // limit no command may ask for goes as it is, for the server to refuse.
    let Request::Audit { filters, summary: false } = request else {
        return call_within(data_dir, request, ANSWER_TIMEOUT).await;
    };
    let wanted = filters.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !crate::review::is_allowed_limit(wanted) {
        return call_within(data_dir, request, ANSWER_TIMEOUT).await;
    }
    let mut records = Vec::new();
    // `--since 1h` read again for each page would slide the window while the pages come.
    let mut filters = filters.with_times_fixed(crate::store::now_ms());
    loop {
        filters.limit = Some((wanted - records.len()).min(RECORDS_PER_ANSWER));
        let page = Request::Audit { filters: filters.clone(), summary: false };
        let Some(answer) = call_within(data_dir, &page, ANSWER_TIMEOUT).await? else { return Ok(None) };
        let Response::Review { answer: Answer::Records { records: mut more, next } } = answer else {
            return Ok(Some(answer));
        };
        // An empty page ends it whatever it says: a cursor that brings nothing would repeat.
        let stalled = more.is_empty();
        records.append(&mut more);
        if records.len() >= wanted || next.is_none() || stalled {
            return Ok(Some(Response::Review { answer: Answer::Records { records, next } }));
        }
        filters.before = next;
    }
}

/// Most failed-login records one answer on the socket carries. The server builds an answer
/// in memory before it sends it, so `audit --limit 1000000` asked at once took a server to
/// 1 GiB (a review measured); [`call`] asks for more in pages of this many instead.
pub const RECORDS_PER_ANSWER: usize = 5_000;

/// How long a command waits for the server's answer: longer than any request takes (a
/// password hashed behind a flood of sign-ins takes seconds at most), short enough that a
/// stopped server (SIGSTOP, a hung disk) gets a clear line instead of a command that never
/// returns. The server gives each connection 60 s.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// [`call`], waiting at most `timeout` for the answer once connected.
///
/// # Errors
/// As [`call`], and when no answer comes within `timeout` (a request that writes may still
/// be carried out: the message says so) or the socket may not be used (permission).
pub async fn call_within(data_dir: &Path, request: &Request, timeout: Duration) -> anyhow::Result<Option<Response>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // On a path another user could change, "data_dir's owner" would be whoever that user
    // pointed it at (another user's server, its socket and its process all agreeing).
    crate::store::trusted_ancestors(data_dir)?;
    let path = socket_path(data_dir);
    let Ok(socket) = std::fs::symlink_metadata(&path) else { return Ok(None) };
    let owner = std::fs::metadata(data_dir)?.uid();
    // Another user's `data_dir` is a service's only where no one else could have made it: in a
    // directory anyone may create entries in (`/tmp`, sticky or not), whoever made `data` is
    // its owner, and root's `user passwd` run there sent the password to her socket (review
    // 158).
    if owner != crate::store::effective_uid() && owner != 0 {
        let written = std::path::absolute(data_dir)?;
        let resolved = std::fs::canonicalize(data_dir)?;
        for parent in [written.parent(), resolved.parent()].into_iter().flatten() {
            if std::fs::metadata(parent).is_ok_and(|m| m.mode() & 0o002 != 0) {
                anyhow::bail!(
                    "{} belongs to uid {owner} and is in {}, where anyone may make it: nothing is sent to its admin socket (name a data_dir in a directory only root or the service's user may write)",
                    data_dir.display(),
                    parent.display()
                );
            }
        }
    }
    if !socket.file_type().is_socket() || socket.uid() != owner {
        let what = if socket.file_type().is_socket() {
            format!("a socket of uid {}, and {} belongs to uid {owner}", socket.uid(), data_dir.display())
        } else {
            "not a socket".to_string()
        };
        anyhow::bail!(
            "{} is not the admin socket of the server that owns {} ({what}): remove it, or find who put it there",
            path.display(),
            data_dir.display()
        );
    }
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot use the admin socket {}: permission denied (run this as uid {owner}, the server's user, or as root)",
            path.display()
        ),
        Err(_) => return Ok(None),
    };
    let answering = stream.peer_cred().map(|c| c.uid())?;
    if answering != owner {
        anyhow::bail!(
            "the process answering on {} runs as uid {answering}, not as {}'s owner (uid {owner}): not asked",
            path.display(),
            data_dir.display()
        );
    }
    let (read, mut write) = stream.into_split();
    let mut body = serde_json::to_vec(request)?;
    body.push(b'\n');
    let mut line = String::new();
    let exchange = async {
        write.write_all(&body).await?;
        BufReader::new(read).read_line(&mut line).await
    };
    let answered = tokio::time::timeout(timeout, exchange).await;
    zeroize::Zeroize::zeroize(&mut body);
    if answered.is_err() {
        let maybe =
            if request.writes() { " (it may still carry the request out: look before trying again)" } else { "" };
        anyhow::bail!(
            "the server of {} did not answer on its admin socket within {} s: is it stopped or stuck?{maybe}",
            data_dir.display(),
            timeout.as_secs()
        );
    }
    answered??;
    let response =
        serde_json::from_str(&line).map_err(|_| anyhow::anyhow!("the server's admin socket gave no answer"))?;
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::review::RecordView;

    fn record(n: usize) -> RecordView {
        RecordView {
            time: format!("2026-12-01T00:00:{:02}Z", n % 60),
            ip: "192.0.2.1".into(),
            username: "alice".into(),
            reason: "bad_password".into(),
            user_agent: String::new(),
            count: 1,
            typed: None,
            instance: String::new(),
            known_browser: false,
        }
    }

    /// A stand-in for the server on `data_dir`'s socket (the client's paging is what is
    /// tested, not the server's): answers the requests it gets with `pages` in turn, and
    /// keeps the filters each asked with.
    fn stand_in(data_dir: &Path, pages: Vec<Answer>) -> (Arc<Mutex<Vec<FilterArgs>>>, tokio::task::JoinHandle<()>) {
        let listener = UnixListener::bind(socket_path(data_dir)).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&asked);
        let task = tokio::spawn(async move {
            for page in pages {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                let request: Request = serde_json::from_str(&line).unwrap();
                let Request::Audit { filters, .. } = &request else { panic!("not a review") };
                kept.lock().unwrap().push(filters.clone());
                let mut out = serde_json::to_vec(&Response::Review { answer: page }).unwrap();
                out.push(b'\n');
                write.write_all(&out).await.unwrap();
            }
        });
        (asked, task)
    }

    fn records_of(response: Option<Response>) -> (usize, Option<String>) {
        match response {
            Some(Response::Review { answer: Answer::Records { records, next } }) => (records.len(), next),
            _ => panic!("no page of records"),
        }
    }

    #[tokio::test]
    async fn the_client_fixes_relative_times_once_and_asks_page_after_page_from_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let full = (0..RECORDS_PER_ANSWER).map(record).collect();
        let pages = vec![
            Answer::Records { records: full, next: Some("c1".into()) },
            Answer::Records { records: vec![record(0)], next: Some("c2".into()) },
        ];
        let (asked, task) = stand_in(dir.path(), pages);
        let filters = FilterArgs {
            since: Some("1h".into()),
            until: Some("10m".into()),
            limit: Some(RECORDS_PER_ANSWER + 1),
            ..Default::default()
        };
        let answer = call(dir.path(), &Request::Audit { filters, summary: false }).await.unwrap();
        assert_eq!(records_of(answer), (RECORDS_PER_ANSWER + 1, Some("c2".into())), "both pages, as one answer");
        task.await.unwrap();
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 2);
        // `1h` read again by the server for the second page would slide the window.
        let since = asked[0].since.as_deref().unwrap();
        assert!(humantime::parse_rfc3339(since).is_ok(), "a time, not a duration: {since}");
        assert_eq!((&asked[1].since, &asked[1].until), (&asked[0].since, &asked[0].until), "the same times");
        assert_eq!((asked[0].limit, asked[1].limit), (Some(RECORDS_PER_ANSWER), Some(1)));
        assert_eq!((asked[0].before.as_deref(), asked[1].before.as_deref()), (None, Some("c1")));
    }

    #[tokio::test]
    async fn an_empty_page_ends_the_paging_whatever_its_cursor_says() {
        let dir = tempfile::tempdir().unwrap();
        let pages = vec![
            Answer::Records { records: vec![], next: Some("c1".into()) },
            Answer::Records { records: vec![record(0)], next: None },
        ];
        let (asked, task) = stand_in(dir.path(), pages);
        let filters = FilterArgs { limit: Some(10), ..Default::default() };
        let answer = call(dir.path(), &Request::Audit { filters, summary: false }).await.unwrap();
        assert_eq!(records_of(answer).0, 0, "no second request");
        task.abort();
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_socket_file_goes_when_its_server_stops_or_its_start_fails_after_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let services = crate::app::services_with_alice(dir.path(), "quartz lantern velvet 8127 orbit").await;
        let data_dir = dir.path().join("data");
        let path = socket_path(&data_dir);

        // A start that fails later drops what it opened.
        let listening = serve(&data_dir, services.users.clone(), services.audit.clone()).unwrap();
        assert!(path.exists());
        drop(listening);
        assert!(!path.exists(), "a failed start left {}", path.display());
        assert!(call(&data_dir, &Request::UserList).await.unwrap().is_none(), "no server answers");

        let listening = serve(&data_dir, services.users.clone(), services.audit.clone()).unwrap();
        assert!(matches!(call(&data_dir, &Request::UserList).await.unwrap(), Some(Response::Users { .. })));
        listening.stop().await;
        assert!(!path.exists(), "a stopped server left {}", path.display());
    }
}
