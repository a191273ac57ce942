//! The command line: `serve` (the default) and `user ...`. Settings flags are generated from
//! [`crate::config::KEYS`], so every setting is a `--flag` without a second list to maintain.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use zeroize::{Zeroize, Zeroizing};

use crate::admin_socket::{self, Request, Response};
use crate::app::{Application, Services};
use crate::config::{Overrides, Settings, KEYS};
use crate::domain::Group;
use crate::postgres::url::DatabaseUrl;
use crate::review::{text_summary, text_table, Answer, FilterArgs};
use crate::store::{Store, StoreError};
use crate::text::{escape_json, printable};
use crate::users::UserSummary;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "A security-hardened login server",
    after_help = "Example:\n  portcullis --config /etc/portcullis/portcullis.toml   start the server with these settings"
)]
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
    #[command(
        after_help = "Example:\n  portcullis serve --https-addr 0.0.0.0:443 --public-url https://login.example.com"
    )]
    Serve(ConfigFlags),
    /// Manage users (through the running server's admin socket, or on its stopped store)
    #[command(subcommand, after_help = "Example:\n  portcullis user add alice --admin")]
    User(UserCommand),
    /// Review failed and refused logins, newest first
    #[command(after_help = "Example:\n  portcullis audit --since 24h --reason bad_password --limit 50")]
    Audit(AuditArgs),
    /// Work on the store as a whole: copy it into another engine, or forget a lost factor key
    #[command(
        subcommand,
        after_help = "Example:\n  portcullis store copy --to 'postgres://portcullis@/portcullis?host=/run/postgresql'"
    )]
    Store(StoreCommand),
    /// Check the settings before a (re)start, like `nginx -t`
    #[command(subcommand, after_help = "Example:\n  portcullis config check --config /etc/portcullis/portcullis.toml")]
    Config(ConfigCommand),
    /// Measure sign-ins per second and latency against a running server (on this machine
    /// unless --i-own-this-server)
    #[command(
        after_help = "Example:\n  echo 'plum tractor velvet orbit' | portcullis loadtest --url https://127.0.0.1:4000 \\\n      --username bench --password-stdin --duration 10s --ca certs/cert.pem --json"
    )]
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Raw argon2id verifies per second on one thread and on every core (for benches/report.sh)
    #[command(hide = true, after_help = "Example:\n  portcullis bench-verify --seconds 5")]
    BenchVerify(crate::loadtest::verify_rate::BenchVerifyArgs),
    /// Times the audit review over many records on PostgreSQL (for benches/engines.sh)
    #[command(
        hide = true,
        after_help = "Example:\n  PORTCULLIS_DATABASE_URL=postgres:///bench?host=/tmp portcullis bench-audit --records 1000000 --hours 24"
    )]
    BenchAudit(crate::loadtest::audit_bench::BenchAuditArgs),
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only records at or after this: a duration back from now in s, m, h, d (2h, 7d, 1d12h), `now`, or an RFC 3339 time
    #[arg(long, value_name = "DUR|RFC3339")]
    since: Option<String>,
    /// Only records at or before this (same forms as --since; both ends are inclusive, to the
    /// millisecond: adjacent windows share the records of their common instant)
    #[arg(long, value_name = "DUR|RFC3339")]
    until: Option<String>,
    /// Only this username (matched case- and width-insensitively; as the table or `--json`
    /// shows it, escapes such as \u{1b} included; the table cuts names wider than 24 columns)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Only this address or CIDR range
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
    /// Only this reason (unknown_user, bad_password, captcha_required, bad_captcha, rate_limited, csrf, disabled, bad_second_factor, reused_code, bad_passkey)
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
pub enum StoreCommand {
    /// Copy the configured store (data_dir, or database_url when set) into an empty target:
    /// users with their hashes, second factors and passkeys, sessions, failed-login records
    /// and secrets
    #[command(after_help = STORE_COPY_EXAMPLE)]
    Copy {
        /// Where to: a postgres:// URL (its schema is created) or a directory for a sled
        /// store; it must hold no records. `-` reads it from standard input, or asks for it
        /// without echo on a terminal (keeps a password out of the process list)
        #[arg(long, value_name = "TARGET")]
        to: String,
    },
    /// For a lost data_dir/factor.key: remove every user's authenticator app and recovery
    /// codes (unusable without it; passkeys stay) and the key's recorded fingerprint, so the
    /// servers start with a new factor.key
    #[command(after_help = FORGET_FACTOR_KEY_EXAMPLE)]
    ForgetFactorKey {
        /// Do it (without this, nothing is changed)
        #[arg(long)]
        yes: bool,
    },
}

const FORGET_FACTOR_KEY_EXAMPLE: &str = "\
A server whose factor.key is not the one the store was first used with refuses to start. Copy
the right one from another instance or a backup if you can: this command is for a key lost for
good. Users with an authenticator app sign in with their password (and passkeys) until they set
it up again; their sessions stay (each reset is logged user_factors_reset with sessions 0).
Stop every server on the store first: the command refuses while one runs (with sled, the
store is held; with PostgreSQL, while any portcullis server or command is connected).

Example:
  portcullis store forget-factor-key --yes";

const STORE_COPY_EXAMPLE: &str = "\
Stop every server on the store first (a running server holds a sled store, and keeps writing
to a database). The counts copied are printed at the end; on any error nothing is reported
copied and the status is non-zero. The database password is never printed.
Second factors are keyed by data_dir/factor.key: it is copied into a sled target; servers
on a database target need the same file in their data_dir (mode 0600).

Examples:
  # From the sled store in data_dir to PostgreSQL, then set database_url to it:
  portcullis store copy --to 'postgres://portcullis:PASSWORD@db.example.com/portcullis?sslmode=verify-full'
  # The same, with the URL (and its password) out of the process list:
  printenv TARGET_URL | portcullis store copy --to -
  # Back, from the database in database_url to a new sled directory:
  PORTCULLIS_DATABASE_URL='postgres://...' portcullis store copy --to /var/lib/portcullis-sled";

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user
    #[command(
        after_help = "Example:\n  echo 'correct plum tractor velvet' | portcullis user add alice --password-stdin"
    )]
    Add {
        /// The new user's name: at most 64 characters (code points) of one script, matched without regard
        /// to case or width (README, "Managing users")
        name: String,
        /// Give the user access to the admin pages (and the group `admins`)
        #[arg(long)]
        admin: bool,
        /// List the user in this group (repeat for more): a-z, 0-9, `-`, `_`, `.`
        #[arg(long = "group", value_name = "G", value_parser = parse_group)]
        groups: Vec<Group>,
        /// Read the password as one line from standard input instead of prompting
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show or change the groups a user is listed in (administrators are also in `admins`)
    #[command(after_help = "Example:\n  portcullis user groups alice --add wiki-editors --remove interns")]
    Groups {
        /// The user, as `user list` shows the name
        name: String,
        /// Add the user to this group (repeat for more)
        #[arg(long, value_name = "G", value_parser = parse_group)]
        add: Vec<Group>,
        /// Take the user out of this group (repeat for more)
        #[arg(long, value_name = "G", value_parser = parse_group)]
        remove: Vec<Group>,
    },
    /// Show whether a user is an administrator (the admin pages, the group `admins`), or change it
    #[command(
        after_help = "Examples:\n  portcullis user admin alice --grant\n  portcullis user admin admin --revoke   (says so when no administrator is left)"
    )]
    Admin {
        /// The user, as `user list` shows the name
        name: String,
        /// Make the user an administrator
        #[arg(long, conflicts_with = "revoke")]
        grant: bool,
        /// Make the user no longer an administrator
        #[arg(long)]
        revoke: bool,
    },
    /// List a user's sessions (when and how each signed in, last use, address, browser), or end one
    #[command(
        after_help = "Examples:\n  portcullis user sessions alice\n  portcullis user sessions alice --end Kq3xT0bd4mS1f8Yw2Zr9aA   (as the listing shows it)"
    )]
    Sessions {
        /// The user, as `user list` shows the name
        name: String,
        /// End the session of this handle (the first column of the listing), on every instance
        // A handle may begin with a hyphen (1 in 64): what follows the option is its value.
        #[arg(long, value_name = "SESSION", allow_hyphen_values = true)]
        end: Option<String>,
    },
    /// Set a user's password (ends all their sessions)
    #[command(after_help = "Example:\n  portcullis user passwd alice   (prompts twice)")]
    Passwd {
        /// The user, as `user list` shows the name
        name: String,
        /// Read the password as one line from standard input instead of prompting
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user (ends all their sessions)
    #[command(after_help = "Example:\n  portcullis user del alice")]
    Del {
        /// The user, as `user list` shows the name
        name: String,
    },
    /// List users
    #[command(after_help = "Example:\n  portcullis user list --json")]
    List {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Clear the user's failure count and captcha demand
    #[command(after_help = "Example:\n  portcullis user unlock alice")]
    Unlock {
        /// The user, as `user list` shows the name
        name: String,
    },
    /// Refuse the user's sign-ins and end their sessions, keeping the account and its records
    #[command(after_help = "Example:\n  portcullis user disable alice")]
    Disable {
        /// The user, as `user list` shows the name
        name: String,
    },
    /// Let a disabled user sign in again
    #[command(after_help = "Example:\n  portcullis user enable alice")]
    Enable {
        /// The user, as `user list` shows the name
        name: String,
    },
    /// List the user's second factors (authenticator app, recovery codes, passkeys), or remove one passkey
    #[command(
        after_help = "Examples:\n  portcullis user factors alice\n  portcullis user factors alice --remove-passkey \"Work laptop\"   (a lost key: ends the sessions it signed in)"
    )]
    Factors {
        /// The user, as `user list` shows the name
        name: String,
        /// Remove the user's passkey of this name, as the listing shows it, and end the sessions it signed in
        // A name may begin with a hyphen: what follows the option is its value.
        #[arg(long, value_name = "PASSKEY", allow_hyphen_values = true)]
        remove_passkey: Option<String>,
    },
    /// Remove all the user's second factors and end their sessions (a lost phone)
    #[command(after_help = "Example:\n  portcullis user reset-factors alice")]
    ResetFactors {
        /// The user, as `user list` shows the name
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check the settings and show each with where it came from
    ///
    /// Reads the settings as `serve` would (file < PORTCULLIS_* < flags) and prints every
    /// effective setting with its source, secrets masked (exit 0); or the first error, naming
    /// the key and its source, in one line (exit 2). Opens, creates and changes nothing.
    #[command(
        after_help = "Example:\n  portcullis config check --config /etc/portcullis/portcullis.toml --metrics-addr 127.0.0.1:9464"
    )]
    Check(ConfigFlags),
}

/// A failure with an exit status of its own (any other error exits with 1).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

/// Exit status of `config check`, `serve` and the other commands for settings that do not
/// load (as `nginx -t` and `sshd -t` fail with a status of their own, scripts can tell a bad
/// file from a crash, and a unit's `RestartPreventExitStatus=2` does not restart a server
/// whose settings will not load again: review 194).
pub const CONFIG_INVALID: u8 = 2;

/// [`Settings::load`], its error exiting with [`CONFIG_INVALID`].
fn load_settings(config: Option<&std::path::Path>, flags: &Overrides) -> anyhow::Result<Settings> {
    Settings::load(config, flags).map_err(|e| Failure { status: CONFIG_INVALID, message: e.to_string() }.into())
}

/// A group name from the command line (see [`Group::parse`]).
fn parse_group(s: &str) -> Result<Group, String> {
    Group::parse(s).map_err(|e| {
        // The one-line error parses the arguments again escaped (`usage_error`), where a
        // zero-width space reads as `\u{200b}` and was named as the backslash nobody typed
        // (review 198): the character is named as typed. Only the error reads it so; a
        // literal escape typed stays refused for its backslash.
        match Group::parse(&crate::text::unprintable(s)) {
            Err(typed @ crate::domain::GroupError::BadCharacter { .. }) => typed.to_string(),
            _ => e.to_string(),
        }
    })
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
                .help_heading("Settings of `serve`, the default command (each also PORTCULLIS_<KEY> or a key in the config file, the only places `user`, `audit`, `store` and `loadtest` read them from)")
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Where settings flags belong, for both places they can be given wrongly.
const SETTINGS_FLAGS_GO_TO_SERVE: &str = "other commands read portcullis.toml and PORTCULLIS_* only";

/// The one line (without the `portcullis: ` prefix) for a command line clap refused, from
/// `args` as given (the program's name first).
///
/// clap's own text breaks lines and strips escape sequences, its colours and any in the refused
/// argument alike, so `bo<ESC>[2Jgus` read as `bogus` and a newline typed in an argument read as
/// one of clap's. The line is built from a second parse of `args` escaped as [`printable`]
/// shows text, without colours: the quoted argument keeps all of what was typed, on one line.
pub fn usage_error(error: &clap::Error, args: &[std::ffi::OsString]) -> String {
    // The command typed (`portcullis user groups`), whose help says what it takes.
    let path = command_path(args);
    if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap would print the command's help: name the command that wants a subcommand.
        return format!("`{path}` needs a subcommand (see {path} --help)");
    }
    // `PORTCULLIS_CONFIG=''` reaches clap as an empty `--config`, which nobody typed.
    let empty_config = std::env::var_os("PORTCULLIS_CONFIG").is_some_and(|v| v.is_empty());
    let names_config =
        error.get(clap::error::ContextKind::InvalidArg).is_some_and(|a| a.to_string().contains("--config"));
    if error.kind() == clap::error::ErrorKind::InvalidValue && names_config && empty_config {
        return format!("PORTCULLIS_CONFIG is empty: unset it, or name the settings file (see {path} --help)");
    }
    if error.kind() == clap::error::ErrorKind::UnknownArgument {
        // A settings flag after another command (`user list --data-dir X`): `portcullis --help`
        // lists it, so say where it goes rather than that it does not exist.
        let invalid = error.get(clap::error::ContextKind::InvalidArg).map(ToString::to_string).unwrap_or_default();
        let long = invalid.split('=').next().unwrap_or("").strip_prefix("--").unwrap_or("");
        let root = <Cli as clap::CommandFactory>::command();
        if !long.is_empty() && root.get_arguments().any(|a| a.get_long() == Some(long)) {
            return format!("--{long} is a setting of `serve`: {SETTINGS_FLAGS_GO_TO_SERVE} (see portcullis --help)");
        }
    }
    let escaped: Vec<String> = args.iter().map(|a| printable(&a.to_string_lossy()).into_owned()).collect();
    let plain = <Cli as clap::CommandFactory>::command().styles(clap::builder::Styles::plain());
    // The arguments in the second parse's text are escaped already; clap's own words need none.
    // Only should it not fail the same way is clap's first text escaped here (stripped of what
    // it stripped, but one line).
    let (text, escaped_already) = match plain.try_get_matches_from(&escaped) {
        Err(again) if again.kind() == error.kind() => (again.render().ansi().to_string(), true),
        _ => (error.to_string(), false),
    };
    // The first paragraph: clap's usage and tips follow a blank line.
    let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let message = first.join(" ");
    let message = message.trim_start_matches("error: ");
    let message = if escaped_already { message.into() } else { printable(message) };
    // clap's tip for this (after the blank line) is cut with the rest: a username may start
    // with `-`, and the way to give one is not guessable (review 133).
    let takes_a_name = path.strip_prefix("portcullis user ").is_some_and(|sub| sub != "list" && sub != "help");
    if error.kind() == clap::error::ErrorKind::UnknownArgument && takes_a_name {
        return format!("{message} (a name that starts with `-` goes after `--`: {path} -- -name; see {path} --help)");
    }
    format!("{message} (see {path} --help)")
}

/// The help `args` asked for of clap's `help` subcommand with `--help` or `-h` (`portcullis help
/// --help`, `portcullis user help -h`): that subcommand reads them as the name of a command to
/// explain and refuses them, though the person typing wants the help. The help of the command
/// `help` names, or of the one above it, as `--help` there gives it (to [`clap::Error::print`], which colours it only
/// on a terminal); `None` for any other error.
pub fn help_asked_of_help(error: &clap::Error, args: &[std::ffi::OsString]) -> Option<clap::Error> {
    if error.kind() != clap::error::ErrorKind::InvalidSubcommand {
        return None;
    }
    let refused = error.get(clap::error::ContextKind::InvalidSubcommand)?.to_string();
    if refused != "--help" && refused != "-h" {
        return None;
    }
    // The commands named after `help` too: `help user --help` is `user --help` (review 167).
    let at = args.iter().position(|a| a == "help")?;
    let mut asked: Vec<std::ffi::OsString> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *i != at && *a != "--help" && *a != "-h")
        .map(|(_, a)| a.clone())
        .collect();
    asked.push("--help".into());
    match <Cli as clap::CommandFactory>::command().try_get_matches_from(asked) {
        Err(help) if help.kind() == clap::error::ErrorKind::DisplayHelp => Some(help),
        _ => None,
    }
}

/// The command and subcommands `args` name (`portcullis user groups`), skipping options and
/// their values: an option's value is not a subcommand even when it is spelt like one
/// (`--config user store` names `portcullis store`).
fn command_path(args: &[std::ffi::OsString]) -> String {
    let root = <Cli as clap::CommandFactory>::command();
    let mut command = root.clone();
    let mut path = vec!["portcullis".to_string()];
    // Whether an option (on this command or a global one on the root) takes a value, so the
    // next argument is that value, not a subcommand.
    let takes_value = |command: &clap::Command, option: &str| {
        let named = |o: &clap::Arg| match option.strip_prefix("--") {
            Some(long) => o.get_long() == Some(long),
            None => option.len() == 2 && o.get_short().is_some_and(|c| option.ends_with(c)),
        };
        let takes = |c: &clap::Command| c.get_arguments().any(|o| named(o) && o.get_action().takes_values());
        takes(command) || takes(&root)
    };
    let mut rest = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        if arg.starts_with('-') {
            if !arg.contains('=') && takes_value(&command, arg) {
                rest.next();
            }
            continue;
        }
        let Some(sub) = command.find_subcommand(arg).cloned() else { continue };
        path.push(sub.get_name().to_string());
        command = sub;
    }
    path.join(" ")
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command failed on, with context; [`Failure`] carries an exit status other
/// than 1.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Settings flags before a subcommand would be silently ignored by `user` and `audit`.
    if cli.command.is_some() && !cli.serve.0.is_empty() {
        // A usage error, with clap's status for one (2), as the same flag after the command.
        return Err(Failure {
            status: 2,
            message: format!("settings flags go after `serve` ({SETTINGS_FLAGS_GO_TO_SERVE})"),
        }
        .into());
    }
    // Before any command creates a file: the store, logs, key and socket are the owner's only.
    crate::store::private_umask();
    for line in crate::config::ignored_variables() {
        eprintln!("portcullis: warning: {line}");
    }
    let logs_held =
        matches!(cli.command, Some(Command::User(_) | Command::Audit(_) | Command::Store(_) | Command::BenchAudit(_)));
    if logs_held {
        crate::telemetry::init_cli();
    }
    let result = run_command(cli);
    if logs_held {
        crate::telemetry::end_cli(result.is_ok());
    }
    result
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.config, cli.serve.0),
        Some(Command::Serve(flags)) => serve(cli.config, flags.0),
        Some(Command::User(cmd)) => {
            let settings = command_settings(cli.config.as_deref())?;
            runtime(None)?.block_on(user(settings, cmd))
        }
        Some(Command::Audit(args)) => {
            let settings = command_settings(cli.config.as_deref())?;
            runtime(None)?.block_on(audit(settings, args))
        }
        Some(Command::Store(StoreCommand::Copy { to })) => {
            let settings = command_settings(cli.config.as_deref())?;
            runtime(None)?.block_on(store_copy(settings, &to))
        }
        Some(Command::Store(StoreCommand::ForgetFactorKey { yes })) => {
            let settings = command_settings(cli.config.as_deref())?;
            runtime(None)?.block_on(forget_factor_key(settings, yes))
        }
        Some(Command::Config(ConfigCommand::Check(flags))) => config_check(cli.config.as_deref(), &flags.0),
        Some(Command::Loadtest(args)) => runtime(None)?.block_on(crate::loadtest::main(args)),
        Some(Command::BenchVerify(args)) => crate::loadtest::verify_rate::main(args),
        Some(Command::BenchAudit(args)) => {
            let settings = command_settings(cli.config.as_deref())?;
            runtime(None)?.block_on(crate::loadtest::audit_bench::main(settings, args))
        }
    }
}

/// The settings of a command other than `serve` and `config check`, with the settings file's
/// warnings said (when the command is done) as those two say them: root's `user passwd` with
/// a `--config` others may write ran without a word (review 157).
fn command_settings(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    let settings = load_settings(config, &Overrides::new())?;
    for warning in crate::config::file_warnings(config) {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// `portcullis config check`: every effective setting as `key = value  # source`, aligned
/// (an unset one commented out), which is also a settings file that checks the same.
fn config_check(config: Option<&std::path::Path>, flags: &Overrides) -> anyhow::Result<()> {
    let settings =
        Settings::check(config, flags).map_err(|e| Failure { status: CONFIG_INVALID, message: e.to_string() })?;
    if let Ok(loaded) = Settings::load(config, flags) {
        // The directories the start refuses, judged without changing them, so a unit's
        // `ExecStartPre=portcullis config check` stops there too (review 157: `--data-dir /tmp`
        // passed the check and failed the start).
        // Root checks a service's settings as the service's start judges them: its
        // directories are that user's once it has run (review 215); that a start as root
        // would refuse them (review 194) is said as a warning.
        let (unusable, roots_start) = match crate::store::effective_uid() {
            0 => (loaded.unusable_directory_to_its_owner(), loaded.unusable_directory()),
            _ => (loaded.unusable_directory(), None),
        };
        if let Some(why) = roots_start.filter(|_| unusable.is_none()) {
            eprintln!(
                "portcullis: warning: {}; a server run by its owner (as the systemd unit runs it) is fine, one run as root refuses it",
                crate::text::printable(&why)
            );
        }
        if let Some(why) = unusable {
            return Err(Failure { status: CONFIG_INVALID, message: crate::text::printable(&why).into_owned() }.into());
        }
        let file_warnings = crate::config::file_warnings(config);
        let judging = loaded.access.slow_judging().into_iter().chain(crate::config::gate_unreachable(&loaded));
        for warning in
            crate::config::warnings(loaded.metrics_addr, &loaded.argon2).into_iter().chain(file_warnings).chain(judging)
        {
            eprintln!("portcullis: warning: {warning}");
        }
    }
    // Aligned to the widest line that fits a terminal; a longer one (the `access` rules on one
    // line) has its comment right after it, not every other line padded to its width.
    const WIDE: usize = 64;
    // A setting left unset is shown commented out: `database_url = ""` read back is an error
    // (README: an empty one is refused), and for the others it would no longer read as unset,
    // so the output stays a file that checks the same.
    let unset = |s: &crate::config::Effective| s.value == "\"\"" && s.source == "default";
    // A default taken from the host (`instance_name`) is shown as the server uses it, but
    // commented out too: a file made of this output and copied to another host would name
    // that host's records after this one (review 167).
    let commented = |s: &crate::config::Effective| unset(s) || s.of_this_host;
    let line =
        |s: &crate::config::Effective| format!("{}{} = {}", if commented(s) { "# " } else { "" }, s.key, s.value);
    let width = settings.iter().map(|s| crate::text::columns(&line(s))).filter(|&n| n <= WIDE).max().unwrap_or(0);
    let mut text = String::new();
    for s in &settings {
        let note = match (unset(s), s.of_this_host, s.source == "default") {
            (true, _, _) => ", unset",
            (false, true, true) => ", this host's name",
            (false, true, false) => " (empty: this host's name)",
            (false, false, _) => "",
        };
        let comment = format!("# {}{note}", s.source);
        text.push_str(&format!("{}  {comment}\n", crate::text::pad(&line(s), width)));
    }
    print_out(&text)
}

/// Whether standard output is `/dev/null` (the same device), where nothing written is seen.
fn stdout_is_the_null_device() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata("/dev/stdout"), std::fs::metadata("/dev/null")) {
        (Ok(out), Ok(null)) => out.file_type().is_char_device() && out.rdev() == null.rdev(),
        _ => false,
    }
}

/// Writes `text` to standard output. A reader that went away (`| head`) ends the output
/// quietly, as for any Unix filter; any other failure to write is an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    match write_stdout(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

/// `text` written to standard output and flushed.
fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush())
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
    // SIGHUP ignored from here until the certificate reloader answers it: reading the
    // settings (1,500 access rules took 0.6 s) came before any handler, and the default action
    // killed the start, which systemd counts as a clean exit, not restarted (review 198).
    // SAFETY: signal(2) with SIG_IGN has no preconditions; tokio's handler replaces it later.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let settings = load_settings(config.as_deref(), &flags)?;
    // Refused here as `config check` refuses it (exit 2, which the unit does not restart), and
    // before anything is made: a start refused for its `cert_dir` had made a store and a log
    // directory first (review 198).
    if let Some(why) = settings.unusable_directory() {
        return Err(Failure { status: CONFIG_INVALID, message: crate::text::printable(&why).into_owned() }.into());
    }
    let file_warnings = crate::config::file_warnings(config.as_deref());
    runtime(Some(settings.async_worker_count()))?.block_on(serve_until_stopped(settings, file_warnings))
}

/// Serves until a signal; `file_warnings` ([`crate::config::file_warnings`]) are logged once
/// the terminal log is up.
async fn serve_until_stopped(settings: Settings, file_warnings: Vec<String>) -> anyhow::Result<()> {
    crate::telemetry::init_terminal(&settings.instance_name);
    for warning in file_warnings {
        tracing::warn!("{warning}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let Some(app) = build_when_the_database_is_there(settings, stopped(stop_rx.clone())).await? else {
        tracing::info!("stopped before the database was there");
        return Ok(());
    };
    // A store only a restart can mend stops the server too, with an error (so a supervisor
    // starts it again), after draining what it can: `Store::fatal_fault`.
    let fatal = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let shutdown = {
        let (store, fatal) = (app.state().store.clone(), std::sync::Arc::clone(&fatal));
        async move {
            tokio::select! {
                () = stopped(stop_rx) => {}
                e = store.fatal_fault() => {
                    tracing::error!(
                        error = %e,
                        "the store could not write and only a restart opens it again: stopping (systemd restarts \
                         portcullis by itself; free disk space first if it is full)"
                    );
                    exit_if_still_running_after(STOP_DEADLINE);
                    let _ = fatal.set(e);
                }
            }
        }
    };
    if let Some(password) = &app.initial_admin_password {
        // Printed to the terminal only (never through tracing, so never into log files).
        let text = zeroize::Zeroizing::new(format!(
            "\n  First start: created the administrator account.\n    username: admin\n    password: {}\n  \
             This password is shown only once. Change it with: portcullis user passwd admin\n\n",
            password.expose()
        ));
        let shown = if stdout_is_the_null_device() {
            // Also what a closed standard output becomes: the runtime opens /dev/null there.
            Err(std::io::Error::other("it is /dev/null"))
        } else {
            write_stdout(&text)
        };
        // An administrator whose password nobody saw is of use to no one: not kept, so the
        // next start (with somewhere to write) makes one and shows its password.
        if let Err(e) = shown {
            app.state().users.delete("admin", "first start").await?;
            bail!(
                "cannot show the first administrator's password on standard output ({e}): the account was not kept; start again with standard output on a terminal or the journal, or make an administrator with `portcullis user add NAME --admin`"
            );
        }
    }
    // Which store: a `PORTCULLIS_DATABASE_URL` left exported outranks a `--data-dir` on the
    // command line, and the start said nothing of it (review 107).
    let store = match &app.state().settings.database_url {
        Some(url) => format!("PostgreSQL at {url}"),
        None => format!("sled in {}", app.state().settings.data_dir.display()),
    };
    let settings = &app.state().settings;
    let judging = settings.access.slow_judging().into_iter().chain(crate::config::gate_unreachable(settings));
    for warning in crate::config::warnings(app.metrics_addr(), &app.state().settings.argon2).into_iter().chain(judging)
    {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        https = %app.https_addr(),
        http = %app.http_addr().map_or_else(|| "off".to_string(), |a| a.to_string()),
        store = %store,
        async_workers = tokio::runtime::Handle::current().metrics().num_workers(),
        hash_workers = app.hash_workers(),
        "portcullis is listening; open {}/",
        app.public_origin()
    );
    app.run_until_stopped(shutdown).await?;
    if let Some(e) = fatal.get() {
        bail!("stopped because the store could not write: {e}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a server stopping for a failed store ([`crate::store::Store::fatal_fault`]) may
/// take to drain (`serve::CLOSE_GRACE` and a little) before it exits regardless: a request
/// already inside the failed engine may never come back (sled can spin on a read after a
/// failed write).
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Exits the process with status 1 when it is still running `after` from now, whatever its
/// tasks are doing.
fn exit_if_still_running_after(after: std::time::Duration) {
    let watchdog = std::thread::Builder::new().name("stop-deadline".into()).spawn(move || {
        std::thread::sleep(after);
        let _ = writeln!(
            std::io::stderr(),
            "portcullis: stopped after {} s without draining: the store could not write",
            after.as_secs()
        );
        std::process::exit(1);
    });
    if watchdog.is_err() {
        // Without a thread to wait, the deadline is now: the store is closed to every call.
        std::process::exit(1);
    }
}

/// The longest wait between two tries to reach a database that is not there yet.
const DATABASE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// [`Application::build`], tried again while the database is not there yet (PostgreSQL
/// started after portcullis at boot, or a failover under way: [`PgError::is_not_there_yet`]),
/// after 1, 2, 4 … up to 30 s, with one warning per try. A supervisor's restart limit
/// (systemd gives up after five starts in ten seconds) would otherwise leave the instance
/// down for good after a short outage at boot. Any other error stops the start at once.
/// `None` when `stop` (SIGTERM or Ctrl-C) comes first.
///
/// [`PgError::is_not_there_yet`]: crate::postgres::PgError::is_not_there_yet
async fn build_when_the_database_is_there(
    settings: Settings,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Application>> {
    let mut stop = std::pin::pin!(stop);
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let error = match Application::build(settings.clone()).await {
            Ok(app) => return Ok(Some(app)),
            Err(e) => e,
        };
        let not_there_yet =
            error.chain().any(|c| c.downcast_ref::<crate::postgres::PgError>().is_some_and(|e| e.is_not_there_yet()));
        if !not_there_yet || settings.database_url.is_none() {
            return Err(error);
        }
        let why = crate::text::error_chain(error.as_ref());
        tracing::warn!(error = %why, retry_in_s = wait.as_secs(), "waiting for the database");
        tokio::select! {
            _ = &mut stop => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(DATABASE_RETRY_MAX);
    }
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
    // An existing user's name as `user list` shows it (a name from before invisible characters
    // were refused is shown escaped: `admin\u{2060}`) names that user. `user add` reads names
    // the same way, so the text that adds a user is the text that names it afterwards (a
    // literal `\u{` is typed `\u{5c}u{`, as the table shows it).
    let shown = |name: String| crate::text::unprintable(&name).into_owned();
    let (request, json) = match cmd {
        UserCommand::Add { name, admin, groups, password_stdin } => {
            // Refused before the password is asked for, not after it was typed twice (reviews
            // 133 and 137); the server parses the name again.
            crate::users::refuse_reserved(&groups)?;
            let name = shown(name);
            crate::domain::Username::parse_new(&name).map_err(crate::users::UserError::InvalidUsername)?;
            let password = read_password(password_stdin)?;
            (Request::UserAdd { name, password, admin, groups }, false)
        }
        UserCommand::Groups { name, add, remove } => (Request::UserGroups { name: shown(name), add, remove }, false),
        UserCommand::Sessions { name, end } => (Request::UserSessions { name: shown(name), end }, false),
        UserCommand::Admin { name, grant, revoke } => {
            let admin = if grant {
                Some(true)
            } else if revoke {
                Some(false)
            } else {
                None
            };
            (Request::UserAdmin { name: shown(name), admin }, false)
        }
        UserCommand::Passwd { name, password_stdin } => {
            let password = read_password(password_stdin)?;
            (Request::UserPasswd { name: shown(name), password }, false)
        }
        UserCommand::Del { name } => (Request::UserDel { name: shown(name) }, false),
        UserCommand::List { json } => (Request::UserList, json),
        UserCommand::Unlock { name } => (Request::UserUnlock { name: shown(name) }, false),
        UserCommand::Disable { name } => (Request::UserDisable { name: shown(name) }, false),
        UserCommand::Enable { name } => (Request::UserEnable { name: shown(name) }, false),
        UserCommand::Factors { name, remove_passkey: None } => (Request::UserFactors { name: shown(name) }, false),
        UserCommand::Factors { name, remove_passkey: Some(passkey) } => {
            (Request::UserRemovePasskey { name: shown(name), passkey: shown(passkey) }, false)
        }
        UserCommand::ResetFactors { name } => (Request::UserResetFactors { name: shown(name) }, false),
    };
    match ask(&settings, &request).await? {
        // Messages name users; a stored name from before the rules were tightened may hold
        // invisible characters.
        // Line by line: the server's own line breaks stay, anything else is escaped.
        Response::Done { message } => {
            print_out(&message.split('\n').map(|line| format!("{}\n", printable(line))).collect::<String>())
        }
        Response::Users { users } => print_out(&users_text(&users, json)),
        Response::Error { message } => Err(anyhow!(message)),
        Response::Review { .. } => bail!("unexpected answer from the server"),
    }
}

/// Sends the request to a running server through its admin socket or, when none answers,
/// carries it out on the store directly.
///
/// With `database_url` there is no socket: the database is the one truth every instance
/// shares, so the command works on it directly (SPEC.md, "Several instances, one truth").
///
/// A request that writes nothing ([`Request::writes`]) opens no auth log. On sled, every
/// request but `user add` needs a store already there, so a command run in the wrong place
/// leaves no directory behind and says so; `user add` makes one and says where, or takes it
/// away again when it refuses the user (README, "where CLI events go with database_url").
async fn ask(settings: &Settings, request: &Request) -> anyhow::Result<Response> {
    let open = |settings| async move {
        if request.writes() {
            Services::open_command(settings, 1).await
        } else {
            Services::open_reading(settings, 1).await
        }
    };
    if settings.database_url.is_some() {
        // Its events go to the auth log here; a service's log directory is not this user's.
        if let Some(uid) = crate::store::foreign_owner(&settings.log_dir).filter(|_| request.writes()) {
            bail!(
                "{} belongs to uid {uid}: give the commands a log directory of their own (PORTCULLIS_LOG_DIR=…) for their administrative events",
                settings.log_dir.display()
            );
        }
        // A refused change logs nothing: the log directory it made is taken away with it.
        let logs = request.writes().then(|| Made::before(&[&settings.log_dir]));
        return Ok(execute(open(settings).await?, request, logs).await);
    }
    if let Some(response) = admin_socket::call(&settings.data_dir, request).await? {
        return Ok(response);
    }
    // Another user's store (a service's) is that user's server's to open: root opening it
    // would leave files the server cannot open, and follow links its owner planted. Its
    // socket is the way in.
    if let Some(uid) = crate::store::foreign_owner(&settings.data_dir) {
        // Root is told only to start the server: "or as root" would be no advice to root
        // (review 157), and nothing answered root, so no server is running (review 182).
        if crate::store::effective_uid() == 0 {
            bail!(
                "{} belongs to uid {uid} and no server answered on its admin socket: start the server, then run the command again (the commands go through it)",
                settings.data_dir.display()
            );
        }
        bail!(
            "{} belongs to uid {uid} and its admin socket took no command from this user: run it as uid {uid} or as root, with the server running (the commands go through it)",
            settings.data_dir.display()
        );
    }
    if let Err(e) = std::fs::read_dir(&settings.data_dir) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            // Not "no store": there may well be one, out of reach.
            bail!("cannot read {}: {e}", settings.data_dir.display());
        }
    }
    let made_here = !Store::exists(&settings.data_dir);
    if made_here {
        // A data_dir with a factor key and no store is a PostgreSQL instance's: a command run
        // without its database_url (kept in an EnvironmentFile, say) must not make a new, empty
        // sled store there and report success.
        // (sled's other files there: the store lost its `db`, review 182.)
        if let Some(why) = Store::keyed_without_store(&absolute(&settings.data_dir)) {
            bail!("{why}");
        }
        // Only `user add` makes a store, and says where: any other command there could only
        // fail after making one, and run in the wrong directory (or without the database_url
        // of a PostgreSQL deployment) it reported "no user" as if the real store had lost them.
        if !matches!(request, Request::UserAdd { .. }) {
            return Err(no_store(settings));
        }
    }
    // What a refused `user add` makes, to be taken away again: a weak password typed in the
    // wrong directory must not leave a store there that later commands find.
    let made = made_here.then(|| Made::before(&[&settings.data_dir, &settings.log_dir]));
    let logs = (!made_here && request.writes()).then(|| Made::before(&[&settings.log_dir]));
    let services = match open(settings).await {
        Ok(s) => s,
        Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Locked(_))) => bail!(
            "the store in {} is in use by another process and its admin socket ({}) does not answer",
            settings.data_dir.display(),
            admin_socket::socket_path(&settings.data_dir).display()
        ),
        Err(e) => return Err(e),
    };
    let response = execute(services, request, logs).await;
    let refused = !matches!(response, Response::Done { .. });
    if let Some(made) = made {
        if !(refused && made.undo()) {
            eprintln!(
                "made a new store in {} (with PostgreSQL, set database_url as the servers have it)",
                printable(&absolute(&settings.data_dir).display().to_string())
            );
        }
    }
    Ok(response)
}

/// Runs `request` on `services`, closes them, and takes `logs` (the log directory this
/// command made) away again when the request was refused and nothing was written there.
async fn execute(services: Services, request: &Request, logs: Option<Made>) -> Response {
    // Every store write is durable when it returns: nothing to flush here.
    let response = admin_socket::execute(&services.users, &services.audit, request, "cli").await;
    // Closed before its directory may go.
    drop(services);
    if let Some(logs) = logs.filter(|_| !matches!(response, Response::Done { .. })) {
        logs.undo_if_nothing_written();
    }
    response
}

/// The directories opening a new store makes, noted before it is opened: those missing (from
/// the topmost missing ancestor down) and those there but empty, with their permissions.
struct Made {
    missing: Vec<PathBuf>,
    empty: Vec<(PathBuf, std::fs::Permissions)>,
}

impl Made {
    fn before(dirs: &[&Path]) -> Made {
        let mut made = Made { missing: Vec::new(), empty: Vec::new() };
        for dir in dirs.iter().map(|d| absolute(d)) {
            if !dir.exists() {
                let mut top = dir.clone();
                while let Some(parent) = top.parent().filter(|p| !p.exists()) {
                    top = parent.to_path_buf();
                }
                made.missing.push(top);
            } else if let (Ok(mut entries), Ok(meta)) = (std::fs::read_dir(&dir), std::fs::metadata(&dir)) {
                if entries.next().is_none() {
                    made.empty.push((dir, meta.permissions()));
                }
            }
        }
        made
    }

    /// [`Made::undo`] when every file made is empty: a refused command's log directory, which
    /// holds an event only if something happened before the refusal (then it stays).
    fn undo_if_nothing_written(&self) {
        fn written(path: &Path) -> bool {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => std::fs::read_dir(path)
                    .map_or(true, |entries| entries.filter_map(Result::ok).any(|e| written(&e.path()))),
                Ok(m) => m.len() > 0,
                Err(_) => false,
            }
        }
        let mut dirs = self.missing.iter().chain(self.empty.iter().map(|(d, _)| d));
        if !dirs.any(|d| written(d)) {
            self.undo();
        }
    }

    /// Takes away what was made: the missing directories, the contents of the empty ones (and
    /// their permissions back). `false` when something could not be, or when no directory was
    /// made here, so the store stays and is announced.
    fn undo(&self) -> bool {
        let gone = |r: std::io::Result<()>| r.is_ok() || r.is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        let mut all = !(self.missing.is_empty() && self.empty.is_empty());
        for dir in &self.missing {
            all &= gone(std::fs::remove_dir_all(dir));
        }
        for (dir, permissions) in &self.empty {
            let entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(_) => {
                    all = false;
                    continue;
                }
            };
            for entry in entries {
                // The entry itself, never what a link in it points to.
                let is_dir = entry.symlink_metadata().is_ok_and(|m| m.is_dir());
                let removed = if is_dir { std::fs::remove_dir_all(&entry) } else { std::fs::remove_file(&entry) };
                all &= gone(removed);
            }
            all &= std::fs::set_permissions(dir, permissions.clone()).is_ok();
        }
        all
    }
}

/// The refusal of a command that needs a store where `data_dir` holds none (and no
/// `database_url` is set): the directory meant, whole and escaped.
fn no_store(settings: &Settings) -> anyhow::Error {
    anyhow!(
        "no store in {} (is data_dir right? With PostgreSQL, set database_url as the servers have it)",
        printable(&absolute(&settings.data_dir).display().to_string())
    )
}

/// `path` from the root, for messages that must say which directory was meant; as given when
/// the working directory cannot be read.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Where `store copy` writes: a database or a sled directory.
enum Target {
    Database(DatabaseUrl),
    Directory(PathBuf),
}

impl Target {
    /// A `postgres://` or `postgresql://` URL, else a directory. Errors never quote the
    /// password (`DatabaseUrl::parse`).
    fn parse(text: &str) -> anyhow::Result<Target> {
        let lower = text.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return DatabaseUrl::parse(text).map(Target::Database).map_err(|e| anyhow!("invalid --to URL: {e}"));
        }
        if text.is_empty() || lower.contains("://") {
            bail!("--to must be a postgres:// URL or a directory");
        }
        // A mistyped URL (`postgres:/u:pw@h/db`) would otherwise become a directory named
        // after it, password and all, and the copy would seem to have worked (review 148).
        if crate::postgres::url::looks_like_a_database_url(text) {
            bail!(
                "--to looks like a database URL but is not a postgres:// one (for a directory of that name, put ./ before it)"
            );
        }
        Ok(Target::Directory(PathBuf::from(text)))
    }
}

impl std::fmt::Display for Target {
    /// The URL with `***` for the password, or the directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Database(url) => write!(f, "{url}"),
            Target::Directory(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// `portcullis store copy --to TARGET` (SPEC.md, "Several instances, one truth"): opens the
/// configured store and the target (migrating a database's schema), refuses a target that
/// holds anything, copies, and prints the counts only once every write is durable.
async fn store_copy(settings: Settings, to: &str) -> anyhow::Result<()> {
    let target = if to == "-" {
        let mut line = Zeroizing::new(String::new());
        if std::io::stdin().is_terminal() {
            // Typed, not piped: asked for, and not echoed (it may hold the database password).
            *line = rpassword::prompt_password("Target (postgres:// URL or directory): ")
                .context("cannot read the target from the terminal")?;
        } else {
            crate::files::read_bounded_line(std::io::stdin().lock(), &mut line)
                .context("cannot read the target from standard input")?;
        }
        // Spaces around it are a slip of the pen (`echo " $URL"`), never part of a URL or path.
        if line.trim().is_empty() {
            // `printenv PGURL` of a variable set without `export` prints nothing.
            bail!("--to -: nothing was read from standard input (is the variable exported?)");
        }
        Target::parse(line.trim())?
    } else {
        Target::parse(to)?
    };
    // data_dir's factor key is read (and carried) even when the store is a database: from a
    // directory of this user's only, on a path nobody else can change.
    crate::store::ensure_ours(&settings.data_dir).context("cannot read data_dir's factor key")?;
    // A sled store copied into a database already is its past: copied again, a second database
    // or an unmarked sled copy would serve it (review 216).
    if settings.database_url.is_none() {
        crate::store::copy::refuse_moved(&settings.data_dir)?;
    }
    let from = open_configured(&settings).await?;
    // Before the target is opened, made or given the factor key (found by a review: a refused
    // copy left a new store and a copy of the key behind).
    if crate::store::copy::unfinished(&from).await? {
        bail!(crate::store::copy::CopyError::SourceUnfinished);
    }
    // The key's fingerprint travels with the secrets: servers on the copy refuse to start
    // without that key even when no user has a second factor yet. Before the target is made:
    // a copy a server could not start on is no copy.
    let secrets = from.secrets.export().await?;
    let fingerprint = secrets.into_iter().find(|(n, _)| n == crate::factors::key::FINGERPRINT_NAME).map(|(_, f)| f);
    refuse_a_key_the_source_was_not_used_with(fingerprint, &settings.data_dir.join(crate::factors::key::KEY_FILE))?;
    let into = match &target {
        Target::Database(url) => Store::connect_command(url, &settings.instance_name)
            .await
            .with_context(|| format!("cannot open the target database {url}"))?,
        Target::Directory(dir) => {
            if settings.database_url.is_none() && same_directory(dir, &settings.data_dir) {
                bail!("the target {} is the configured store itself", dir.display());
            }
            // A file, a path through one (`file/`) or a link to nothing is not a directory a
            // store can be made in; only a path that does not exist at all is made.
            let new = matches!(std::fs::metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
                && std::fs::symlink_metadata(dir).is_err();
            if !new && !dir.is_dir() {
                bail!(
                    "the target {} is not a directory: give a new or empty directory for the sled store",
                    dir.display()
                );
            }
            // Opening a store makes its directory private (0700) and writes into it: never do
            // that to a directory named by mistake (`--to /etc`). A new or empty directory, one
            // holding only a factor key (compared with ours below), or a sled store (checked
            // for records below), only.
            let other_files = std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.flatten().any(|e| e.file_name() != std::ffi::OsStr::new(crate::factors::key::KEY_FILE))
            });
            refuse_another_factor_key(&settings.data_dir.join(crate::factors::key::KEY_FILE), dir)?;
            if !Store::exists(dir) && other_files {
                bail!(
                    "the target directory {} holds other files: give a new or empty directory for the sled store",
                    dir.display()
                );
            }
            Store::open(dir).map_err(|e| match e {
                StoreError::Locked(dir) => anyhow!("the target store in {dir} is in use by a running server"),
                other => anyhow!(other).context(format!("cannot open the target store in {}", dir.display())),
            })?
        }
    };
    // The factor key before any record: TOTP secrets and recovery codes are useless without
    // it, so a copy that cannot carry it writes nothing.
    let key_file = settings.data_dir.join(crate::factors::key::KEY_FILE);
    let key_carried = match &target {
        Target::Directory(dir) => carry_factor_key(&key_file, dir)?,
        Target::Database(_) => false,
    };
    let copied = crate::store::copy::copy(&from, &into).await.with_context(|| format!("cannot copy into {target}"))?;
    let mut text = format!("copied {copied} into {target}\n");
    // The sled source is marked moved, so a server that lost its database_url does not serve
    // it again ([`crate::store::copy::MOVED`]).
    if let (None, Target::Database(_)) = (&settings.database_url, &target) {
        let marker = settings.data_dir.join(crate::store::copy::MOVED);
        let line = format!("copied to {target} at {} by store copy\n", crate::audit::rfc3339(crate::store::now_ms()));
        // A copy made again from it (to another database) marks it anew.
        let _ = std::fs::remove_file(&marker);
        crate::files::write_new(&marker, line.as_bytes(), 0o600)
            .with_context(|| format!("copied, but could not mark the sled store moved ({})", marker.display()))?;
        text += &format!(
            "marked the sled store in {} moved ({}): servers and commands refuse it while that file is there\n",
            settings.data_dir.display(),
            marker.display()
        );
    }
    if copied.factors > 0 || fingerprint.is_some() {
        // Without the same key, copied TOTP users cannot finish a sign-in and recovery codes
        // do not match: say so where the operator looks (README, "Moving between engines").
        text += &match (&target, key_carried) {
            (_, true) => format!("copied {} into {target} (second factors are sealed under it)\n", key_file.display()),
            (Target::Database(_), _) => format!(
                "second factors are sealed under {}: every server on {target} needs the same file in its data_dir (mode 0600)\n",
                key_file.display()
            ),
            (Target::Directory(_), false) => format!(
                "second factors are sealed under a factor.key that is not in {}: the servers on {target} need the one they were made with\n",
                settings.data_dir.display()
            ),
        };
    }
    print_out(&text)
}

/// The configured store, opened by this process: the database in `database_url`, or the
/// sled store in `data_dir`, which must exist and not be held by a running server.
async fn open_configured(settings: &Settings) -> anyhow::Result<Store> {
    Ok(match &settings.database_url {
        Some(url) => Store::connect_command(url, &settings.instance_name)
            .await
            .with_context(|| format!("cannot open the PostgreSQL store at {url}"))?,
        None => {
            if !Store::exists(&settings.data_dir) {
                return Err(no_store(settings));
            }
            Store::open(&settings.data_dir).map_err(|e| match e {
                StoreError::Locked(dir) => anyhow!("the store in {dir} is in use by a running server: stop it first"),
                other => anyhow!(other).context(format!("cannot open the store in {}", settings.data_dir.display())),
            })?
        }
    })
}

/// `portcullis store forget-factor-key --yes`: removes every user's TOTP secret and recovery
/// codes (sealed or keyed under the lost key, so unusable) and the key's recorded
/// fingerprint; the next server start records its own `data_dir/factor.key`.
async fn forget_factor_key(settings: Settings, yes: bool) -> anyhow::Result<()> {
    if !yes {
        return Err(Failure {
            status: 2,
            message: "this removes every user's authenticator app and recovery codes and the recorded factor key: run it again with --yes".into(),
        }
        .into());
    }
    // Not made here: "forgot the key" of a store nobody uses would hide a wrong data_dir. (A
    // service's directory is refused as such when opened, below.)
    let foreign = crate::store::foreign_owner(&settings.data_dir).is_some();
    if settings.database_url.is_none() && !foreign && !Store::exists(&settings.data_dir) {
        return Err(no_store(&settings));
    }
    // On sled the store's lock says a server runs (below); on PostgreSQL, its connections do:
    // a server left running seals new second factors under the key being forgotten, and
    // records it again, so the next instance with a new key refuses to start (review 163).
    // The lock is held until the command ends: a server starting meanwhile waits to claim
    // its key until the forgetting is done (review 165).
    let _held = match &settings.database_url {
        Some(url) => {
            let (held, others) = crate::postgres::connect::lock_out_instances(url)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store at {url}"))?;
            if others > 0 {
                bail!(
                    "{others} connection(s) of portcullis servers or commands are open on this database: stop every instance first"
                );
            }
            Some(held)
        }
        None => None,
    };
    // Opened as the `user` commands open it, for the auth log: each user whose factors go is
    // logged as a reset, as `user reset-factors` logs one.
    let services = match Services::open_command(&settings, 1).await {
        Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Locked(_))) => {
            bail!("the store in {} is in use by a running server: stop it first", settings.data_dir.display())
        }
        other => other?,
    };
    let store = &services.store;
    let mut cleared = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = store.factors.export(after.as_deref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_key.clone());
        for user in &page {
            let removed = store.factors.clear(&user.user_key).await?;
            if removed.totp || removed.recovery_codes > 0 {
                cleared += 1;
                let name = store.users.get(&user.user_key).await?.map_or(user.user_key.clone(), |u| u.display_name);
                services.audit.record(&crate::audit::AuthEvent::FactorsReset {
                    username: &name,
                    sessions: 0,
                    by: "store forget-factor-key",
                });
            }
        }
    }
    let forgotten = store.secrets.forget(crate::factors::key::FINGERPRINT_NAME).await?;
    print_out(&format!(
        "removed the authenticator apps and recovery codes of {cleared} user(s); {}\n",
        if forgotten { "the next server start records its data_dir/factor.key" } else { "no factor key was recorded" }
    ))
}

/// Copies the factor key `key_file` (if there is one) into the sled target directory `dir`
/// as `factor.key`, mode 0600 and synced, so the copy's TOTP secrets open and its recovery
/// codes match (`factors::key`). A key already there must be the same one. Returns whether
/// the target now holds the source's key.
///
/// # Errors
/// When the key cannot be read or written, or the target holds a different key.
fn carry_factor_key(key_file: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = match crate::files::read_small(key_file, crate::factors::key::MAX_KEY_FILE_BYTES) {
        Ok(key) => Zeroizing::new(key),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(anyhow!(e).context(format!("cannot read the factor key {}", key_file.display()))),
    };
    let into = dir.join(crate::factors::key::KEY_FILE);
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&into) {
        Ok(mut f) => {
            f.write_all(&key)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", into.display()))?;
            // The directory entry too, so the key is there whenever the records are.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", dir.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            refuse_another_factor_key(key_file, dir)?;
            Ok(true)
        }
        Err(e) => Err(anyhow!(e).context(format!("cannot write {}", into.display()))),
    }
}

/// Refuses a copy from a store whose recorded factor-key fingerprint (`recorded`, if any) is
/// not that of the key in `key_file` (this host's `data_dir/factor.key`, which a sled target
/// gets): a server on the copy would refuse to start.
///
/// # Errors
/// When the fingerprints differ, or the key is missing or cannot be read.
fn refuse_a_key_the_source_was_not_used_with(
    recorded: Option<[u8; 32]>,
    key_file: &std::path::Path,
) -> anyhow::Result<()> {
    let Some(recorded) = recorded else { return Ok(()) };
    let text = match crate::files::read_small_text(key_file, crate::factors::key::MAX_KEY_FILE_BYTES) {
        Ok(text) => Zeroizing::new(text),
        // A sled copy would be made without the key, and every server on it refuse to start;
        // a database copy's servers would need a key this run could not check (review 107).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "there is no {}, and this store's second factors are sealed under the factor key it was first used with: copy that key here first (servers on the copy need it)",
            key_file.display()
        ),
        Err(e) => return Err(anyhow!(e).context(format!("cannot read the factor key {}", key_file.display()))),
    };
    let key = crate::factors::FactorKey::parse(&text)
        .ok_or_else(|| anyhow!("the factor key {} is not 64 hexadecimal digits", key_file.display()))?;
    if key.fingerprint() != recorded {
        bail!(
            "{} is not the factor key this store was first used with: copy the right one here first (servers on the copy need it)",
            key_file.display()
        );
    }
    Ok(())
}

/// Refuses the sled target directory `dir` when it holds a factor key other than the one in
/// `key_file` (checked before anything is written there, and again when the key is carried).
///
/// # Errors
/// When the target's key differs, or cannot be read.
fn refuse_another_factor_key(key_file: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let into = dir.join(crate::factors::key::KEY_FILE);
    let there = match crate::files::read_small(&into, crate::factors::key::MAX_KEY_FILE_BYTES) {
        Ok(there) => Zeroizing::new(there),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow!(e).context(format!("cannot read {}", into.display()))),
    };
    let Ok(ours) = crate::files::read_small(key_file, crate::factors::key::MAX_KEY_FILE_BYTES).map(Zeroizing::new)
    else {
        return Ok(());
    };
    if there.trim_ascii() != ours.trim_ascii() {
        bail!("the target holds another factor key ({}): remove it, or copy into a new directory", into.display());
    }
    Ok(())
}

/// Whether two paths name one existing directory (a target that does not exist yet is not
/// the source).
fn same_directory(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

async fn audit(settings: Settings, args: AuditArgs) -> anyhow::Result<()> {
    // Every filter given applies or is refused: an empty one would read as "any" (review 133).
    // (The admin page's form sends an unused filter empty; from the command line it is a mistake.)
    let given = [
        ("--since", &args.since),
        ("--until", &args.until),
        ("--user", &args.user),
        ("--ip", &args.ip),
        ("--reason", &args.reason),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, v)| v.as_deref().is_some_and(|v| v.trim().is_empty())) {
        bail!("{flag} is empty: leave it out to match every record");
    }
    if args.summary && args.limit.is_some() {
        bail!(
            "--limit does not apply to --summary, which counts every matching record (up to the newest {})",
            crate::review::SUMMARY_SCAN_LIMIT
        );
    }
    let filters = FilterArgs {
        since: args.since,
        until: args.until,
        // As the table shows names: escaped, so what is copied from it finds its records.
        user: args.user.map(|u| crate::text::unprintable(&u).into_owned()),
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
    print_out(&text)?;
    if more {
        eprintln!("(more records match: raise --limit or narrow the filters)");
    }
    Ok(())
}

/// `user list` as text: a table, or JSON lines with `json`.
fn users_text(users: &[UserSummary], json: bool) -> String {
    if json {
        return users
            .iter()
            .map(|u| format!("{}\n", escape_json(&serde_json::to_string(u).unwrap_or_default())))
            .collect();
    }
    // Names are shown escaped: a user made before invisible characters were refused must not
    // read as another (`admin` + U+2060 shows as `admin\u{2060}`).
    let names: Vec<String> = users.iter().map(|u| printable(&u.username).into_owned()).collect();
    // Names are shown whole (they are what `user passwd NAME` and the rest take), but one wider
    // than a name column can reasonably be pushes only its own row right, not every row.
    const WIDE: usize = 32;
    let width = names.iter().map(|n| crate::text::columns(n)).filter(|&n| n <= WIDE).max().unwrap_or(0).max(8);
    let mut text = format!(
        "{:<width$}  {:<5}  {:<24}  {:<24}  {:<8}  {:<8}  GROUPS\n",
        "USERNAME", "ADMIN", "CREATED", "LAST LOGIN", "SESSIONS", "STATE"
    );
    for (u, name) in users.iter().zip(&names) {
        // Every field escaped, not only names: the answer came over a socket, and what a
        // server of ours keeps to a narrow alphabet (groups, times) another process answering
        // there need not (found by a review).
        let groups = if u.groups.is_empty() { "-".to_string() } else { u.groups.join(",") };
        text += &format!(
            "{}  {:<5}  {:<24}  {:<24}  {:<8}  {:<8}  {}\n",
            crate::text::pad(name, width),
            if u.admin { "yes" } else { "no" },
            printable(&u.created_at),
            printable(u.last_login_at.as_deref().unwrap_or("never")),
            u.active_sessions,
            if u.disabled { "disabled" } else { "active" },
            printable(&groups)
        );
    }
    text
}

/// One line from standard input, or a prompt (twice, without echo) on a terminal. Every
/// copy this function holds is wiped on every path, errors included.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        // Room for the longest accepted password (4 bytes a character) and a line ending, so
        // reading never reallocates and leaves a partial copy behind in freed memory.
        let mut line = Zeroizing::new(String::with_capacity(4 * crate::password::MAX_PASSWORD_CHARS + 2));
        crate::files::read_bounded_line(std::io::stdin().lock(), &mut line)
            .context("cannot read the password from standard input")?;
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
    fn the_top_level_help_says_its_settings_flags_are_serves() {
        // `portcullis --audit-max-records 10 config check` is refused; the help listed them
        // as `portcullis [OPTIONS]` without a word (review 128).
        let help = <Cli as clap::CommandFactory>::command().render_help().to_string();
        assert!(help.contains("Settings of `serve`, the default command"), "{help}");
    }

    #[test]
    fn the_user_table_escapes_every_field_an_answer_brings() {
        let u = crate::users::UserSummary {
            username: "eve".into(),
            admin: false,
            created_at: "2026\u{1b}[2J".into(),
            last_login_at: Some("\u{9b}31m".into()),
            active_sessions: 0,
            disabled: false,
            groups: vec!["ops\u{1b}]0;title\u{7}".into()],
        };
        let text = super::users_text(&[u], false);
        assert!(!text.chars().any(|c| c == '\u{1b}' || c == '\u{9b}' || c == '\u{7}'), "{text:?}");
        assert!(text.contains("ops\\u{1b}]0;title\\u{7}"), "{text}");
    }

    /// A plain user of that name, as `user list` gets one.
    fn user(name: &str) -> crate::users::UserSummary {
        crate::users::UserSummary {
            username: name.into(),
            admin: false,
            created_at: "2026-12-02T00:00:00.000Z".into(),
            last_login_at: None,
            active_sessions: 0,
            disabled: false,
            groups: vec![],
        }
    }

    #[test]
    fn the_user_table_keeps_its_columns_in_line_for_wide_names() {
        // Two CJK characters take four columns, as `abcd` does; a combining mark takes none.
        let text = super::users_text(&[user("山田"), user("abcdefghij"), user("e\u{301}mile")], false);
        let admin: Vec<usize> = text
            .lines()
            .map(|l| crate::text::columns(&l[..l.find("ADMIN").or_else(|| l.find("no")).unwrap()]))
            .collect();
        assert!(admin.windows(2).all(|w| w[0] == w[1]), "{text}\n{admin:?}");
    }

    #[test]
    fn a_name_too_wide_for_the_user_table_is_shown_whole_and_widens_only_its_own_row() {
        let long = "山".repeat(64);
        let text = super::users_text(&[user("alice"), user(&long), user("bob")], false);
        let widths: Vec<usize> = text.lines().map(crate::text::columns).collect();
        assert!(text.contains(&format!("{long}  no")), "whole, not cut: {text}");
        assert_eq!(widths[1], widths[3], "{text}");
        assert!(widths[1] < 100, "{text}");
        assert!(widths[2] > widths[1] + 100, "{text}");
    }

    /// Every command and subcommand, hidden ones included, with its path.
    fn every_command(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            every_command(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_commands_help_says_what_it_does_and_shows_an_example() {
        let mut all = Vec::new();
        every_command(&<Cli as clap::CommandFactory>::command(), "portcullis".into(), &mut all);
        assert!(all.len() > 10, "{}", all.len());
        for (path, cmd) in all {
            if path.ends_with(" help") {
                continue; // clap's own `help` subcommand
            }
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.trim().is_empty(), "`{path} --help` does not say what it does");
            let example = cmd.get_after_help().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                (example.contains("Example:\n  ") || example.contains("Examples:\n  ")) && example.contains(&path),
                "`{path} --help` shows no example of itself: {example:?}"
            );
        }
    }

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
