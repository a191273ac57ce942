//! The command line: `serve` (the default) and `user ...`. Settings flags are generated from
//! [`crate::config::KEYS`], so every setting is a `--flag` without a second list to maintain.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use zeroize::{Zeroize, Zeroizing};

use crate::admin_socket::{self, Request, Response};
use crate::app::{Application, Services};
use crate::config::{Overrides, Settings, KEYS};
use crate::review::{text_summary, text_table, Answer, FilterArgs};
use crate::store::{Store, StoreError};
use crate::text::{escape_json, printable};
use crate::users::UserSummary;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "A security-hardened login server")]
pub struct Cli {
    /// Settings file (default: ./portcullis.toml if present)
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ConfigFlags,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default command)
    Serve(ConfigFlags),
    /// Manage users (works whether the server is running or not)
    #[command(subcommand)]
    User(UserCommand),
    /// Review failed and refused logins, newest first
    Audit(AuditArgs),
    /// Measure sign-ins per second and latency against a running server (on this machine
    /// unless --i-own-this-server)
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Raw argon2id verifies per second on one thread and on every core (for benches/report.sh)
    #[command(hide = true)]
    BenchVerify(crate::loadtest::verify_rate::BenchVerifyArgs),
    /// Times the audit review over many records on PostgreSQL (for benches/engines.sh)
    #[command(hide = true)]
    BenchAudit(crate::loadtest::audit_bench::BenchAuditArgs),
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only records after this: a duration back from now (2h, 7d) or an RFC 3339 time
    #[arg(long, value_name = "DUR|RFC3339")]
    since: Option<String>,
    /// Only records before this (same forms as --since)
    #[arg(long, value_name = "DUR|RFC3339")]
    until: Option<String>,
    /// Only this username (matched case- and width-insensitively)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Only this address or CIDR range
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
    /// Only this reason (unknown_user, bad_password, captcha_required, bad_captcha, rate_limited, csrf, disabled)
    #[arg(long, value_name = "R")]
    reason: Option<String>,
    /// At most this many records [default: 100]
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
    /// Totals by reason, top addresses and usernames, counts per hour
    #[arg(long)]
    summary: bool,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user
    Add {
        name: String,
        /// Give the user access to the admin pages
        #[arg(long)]
        admin: bool,
        /// Read the password as one line from standard input instead of prompting
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password (ends all their sessions)
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user (ends all their sessions)
    Del { name: String },
    /// List users
    List {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Clear the user's failure count and captcha demand
    Unlock { name: String },
    /// Refuse the user's sign-ins and end their sessions, keeping the account and its records
    Disable { name: String },
    /// Let a disabled user sign in again
    Enable { name: String },
}

/// `--<key-with-dashes> VALUE` for every setting.
#[derive(Debug, Default, Clone)]
pub struct ConfigFlags(pub Overrides);

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut o = Overrides::new();
        for k in KEYS {
            if let Ok(Some(v)) = m.try_get_one::<String>(k.name) {
                o.insert(k.name.to_string(), v.clone());
            }
        }
        Ok(ConfigFlags(o))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ConfigFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(KEYS.iter().map(|k| {
            let default = if k.default.is_empty() { String::new() } else { format!(" [default: {}]", k.default) };
            Arg::new(k.name)
                .long(k.name.replace('_', "-"))
                .value_name("VALUE")
                .help(format!("{}{default}", k.help))
                .help_heading("Settings (also PORTCULLIS_<KEY> or the config file)")
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Settings flags before a subcommand would be silently ignored by `user` and `audit`.
    if cli.command.is_some() && !cli.serve.0.is_empty() {
        bail!("settings flags go after `serve` (other commands read portcullis.toml and PORTCULLIS_* only)");
    }
    // Before any command creates a file: the store, logs, key and socket are the owner's only.
    crate::store::private_umask();
    match cli.command {
        None => serve(cli.config, cli.serve.0),
        Some(Command::Serve(flags)) => serve(cli.config, flags.0),
        Some(Command::User(cmd)) => {
            let settings = Settings::load(cli.config.as_deref(), &Overrides::new())?;
            runtime(None)?.block_on(user(settings, cmd))
        }
        Some(Command::Audit(args)) => {
            let settings = Settings::load(cli.config.as_deref(), &Overrides::new())?;
            runtime(None)?.block_on(audit(settings, args))
        }
        Some(Command::Loadtest(args)) => runtime(None)?.block_on(crate::loadtest::main(args)),
        Some(Command::BenchVerify(args)) => crate::loadtest::verify_rate::main(args),
        Some(Command::BenchAudit(args)) => {
            let settings = Settings::load(cli.config.as_deref(), &Overrides::new())?;
            runtime(None)?.block_on(crate::loadtest::audit_bench::main(settings, args))
        }
    }
}

/// A tokio runtime with `workers` threads (default: one per core, or TOKIO_WORKER_THREADS).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().context("cannot start the runtime")
}

/// The server: settings first, since they say how many async workers to start.
fn serve(config: Option<PathBuf>, flags: Overrides) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref(), &flags)?;
    runtime(Some(settings.async_worker_count()))?.block_on(serve_until_stopped(settings))
}

async fn serve_until_stopped(settings: Settings) -> anyhow::Result<()> {
    crate::telemetry::init_terminal();
    let shutdown = shutdown_signal();
    let app = Application::build(settings).await?;
    if let Some(password) = &app.initial_admin_password {
        // Printed to the terminal only (never through tracing, so never into log files).
        println!();
        println!("  First start: created the administrator account.");
        println!("    username: admin");
        println!("    password: {}", password.expose());
        println!("  This password is shown only once. Change it with: portcullis user passwd admin");
        println!();
    }
    tracing::info!(
        https = %app.https_addr(),
        http = ?app.http_addr(),
        async_workers = tokio::runtime::Handle::current().metrics().num_workers(),
        hash_workers = app.hash_workers(),
        "portcullis is listening; open {}/",
        app.public_origin()
    );
    app.run_until_stopped(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal arriving after the server says it is listening must
/// stop it in order, not kill it with the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! { _ = received(interrupt) => {}, _ = received(terminate) => {} }
    }
}

async fn user(settings: Settings, cmd: UserCommand) -> anyhow::Result<()> {
    let (request, json) = match cmd {
        UserCommand::Add { name, admin, password_stdin } => {
            let password = read_password(password_stdin)?;
            (Request::UserAdd { name, password, admin }, false)
        }
        UserCommand::Passwd { name, password_stdin } => {
            let password = read_password(password_stdin)?;
            (Request::UserPasswd { name, password }, false)
        }
        UserCommand::Del { name } => (Request::UserDel { name }, false),
        UserCommand::List { json } => (Request::UserList, json),
        UserCommand::Unlock { name } => (Request::UserUnlock { name }, false),
        UserCommand::Disable { name } => (Request::UserDisable { name }, false),
        UserCommand::Enable { name } => (Request::UserEnable { name }, false),
    };
    match ask(&settings, &request).await? {
        Response::Done { message } => {
            // Messages name users; a stored name from before the rules were tightened may
            // hold invisible characters.
            println!("{}", printable(&message));
            Ok(())
        }
        Response::Users { users } => {
            print_users(&users, json);
            Ok(())
        }
        Response::Error { message } => Err(anyhow!(message)),
        Response::Review { .. } => bail!("unexpected answer from the server"),
    }
}

/// Sends the request to a running server through its admin socket or, when none answers,
/// carries it out on the store directly.
///
/// With `database_url` there is no socket: the database is the one truth every instance
/// shares, so the command works on it directly (SPEC.md, "Several instances, one truth").
async fn ask(settings: &Settings, request: &Request) -> anyhow::Result<Response> {
    if settings.database_url.is_some() {
        let services = Services::open(settings, 1).await?;
        return Ok(admin_socket::execute(&services.users, &services.audit, request, "cli").await);
    }
    if let Some(response) = admin_socket::call(&settings.data_dir, request).await? {
        return Ok(response);
    }
    if !Store::exists(&settings.data_dir) && matches!(request, Request::Audit { .. }) {
        bail!("no store in {} (is data_dir right?)", settings.data_dir.display());
    }
    let services = match Services::open(settings, 1).await {
        Ok(s) => s,
        Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Locked(_))) => bail!(
            "the store in {} is in use by another process and its admin socket ({}) does not answer",
            settings.data_dir.display(),
            admin_socket::socket_path(&settings.data_dir).display()
        ),
        Err(e) => return Err(e),
    };
    // Every store write is durable when it returns: nothing to flush here.
    Ok(admin_socket::execute(&services.users, &services.audit, request, "cli").await)
}

async fn audit(settings: Settings, args: AuditArgs) -> anyhow::Result<()> {
    let filters = FilterArgs {
        since: args.since,
        until: args.until,
        user: args.user,
        ip: args.ip,
        reason: args.reason,
        limit: args.limit,
        before: None,
    };
    // Check the filters here so a typo fails before any store is touched.
    filters.to_query(crate::store::now_ms(), 1)?;
    let answer = match ask(&settings, &Request::Audit { filters, summary: args.summary }).await? {
        Response::Review { answer } => answer,
        Response::Error { message } => bail!(message),
        _ => bail!("unexpected answer from the server"),
    };
    let mut text = String::new();
    let mut more = false;
    match answer {
        Answer::Summary { summary } if args.json => {
            text = escape_json(&serde_json::to_string(&summary)?).into_owned() + "\n"
        }
        Answer::Summary { summary } => text = text_summary(&summary),
        Answer::Records { records, next } => {
            if args.json {
                for r in &records {
                    // JSON that a terminal may show: C1 controls, line separators and
                    // invisible characters escaped too, as in the log.
                    text.push_str(&escape_json(&serde_json::to_string(r)?));
                    text.push('\n');
                }
            } else {
                text = text_table(&records);
            }
            more = next.is_some();
        }
    }
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // `portcullis audit | head` closing the pipe early is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    if more {
        eprintln!("(more records match: raise --limit or narrow the filters)");
    }
    Ok(())
}

fn print_users(users: &[UserSummary], json: bool) {
    if json {
        for u in users {
            println!("{}", escape_json(&serde_json::to_string(u).unwrap_or_default()));
        }
        return;
    }
    // Names are shown escaped: a user made before invisible characters were refused must not
    // read as another (`admin` + U+2060 shows as `admin\u{2060}`).
    let names: Vec<String> = users.iter().map(|u| printable(&u.username).into_owned()).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).max(8);
    println!(
        "{:<width$}  {:<5}  {:<24}  {:<24}  {:<8}  STATE",
        "USERNAME", "ADMIN", "CREATED", "LAST LOGIN", "SESSIONS"
    );
    for (u, name) in users.iter().zip(&names) {
        println!(
            "{:<width$}  {:<5}  {:<24}  {:<24}  {:<8}  {}",
            name,
            if u.admin { "yes" } else { "no" },
            u.created_at,
            u.last_login_at.as_deref().unwrap_or("never"),
            u.active_sessions,
            if u.disabled { "disabled" } else { "active" }
        );
    }
}

/// One line from standard input, or a prompt (twice, without echo) on a terminal. Every
/// copy this function holds is wiped on every path, errors included.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        // Room for the longest accepted password (4 bytes a character) and a line ending, so
        // reading never reallocates and leaves a partial copy behind in freed memory.
        let mut line = Zeroizing::new(String::with_capacity(4 * crate::password::MAX_PASSWORD_CHARS + 2));
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
        let trimmed_len = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(trimmed_len);
        if line.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(std::mem::take(&mut *line));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt for the password; use --password-stdin");
    }
    let mut first = Zeroizing::new(rpassword::prompt_password("New password: ").context("cannot read the password")?);
    let mut second = Zeroizing::new(rpassword::prompt_password("Repeat it: ").context("cannot read the password")?);
    confirmed(&mut first, &mut second).ok_or_else(|| anyhow!("the two passwords differ"))
}

/// The password typed twice, when both match. Both inputs are wiped either way: only the
/// returned value (which the caller wipes after use) still holds it.
fn confirmed(first: &mut String, second: &mut String) -> Option<String> {
    let same = first == second;
    second.zeroize();
    if !same {
        first.zeroize();
        return None;
    }
    Some(std::mem::take(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_typed_twice_differently_is_wiped_both_times() {
        let (mut first, mut second) =
            ("plum tractor velvet orbit".to_string(), "plum tractor velvet orbiT".to_string());
        assert_eq!(confirmed(&mut first, &mut second), None);
        assert!(first.is_empty() && second.is_empty());
    }

    #[test]
    fn a_password_typed_twice_the_same_is_returned_once() {
        let (mut first, mut second) =
            ("plum tractor velvet orbit".to_string(), "plum tractor velvet orbit".to_string());
        assert_eq!(confirmed(&mut first, &mut second).as_deref(), Some("plum tractor velvet orbit"));
        assert!(first.is_empty() && second.is_empty());
    }
}
