//! Building and running the server: the shared state, the HTTPS and redirect listeners, the
//! admin socket and the background tasks, and an orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use poem::http::{header, StatusCode};
use poem::{handler, EndpointExt, Request, Response};
use tokio::task::JoinHandle;

use crate::audit::Audit;
use crate::authentication::Authenticator;
use crate::brute_force::{BruteForceState, InMemory};
use crate::captcha::Captchas;
use crate::config::Settings;
use crate::csrf::Csrf;
use crate::factors::SecondFactors;
use crate::password::{HashPool, Password, PasswordPolicy};
use crate::rate_limit::username_digest;
use crate::session::Sessions;
use crate::sign_in::SignIn;
use crate::store::Store;
use crate::users::UserAdmin;
use crate::{admin_socket, routes, serve, tls};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = serve::CLOSE_GRACE;

/// The idle timeout on the redirector, where keep-alive is off and this only bounds a slow
/// response.
const REDIRECT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler can reach.
pub struct AppState {
    pub settings: Settings,
    /// The brute-force state every defence consults (shared between instances when an
    /// engine provides it).
    pub brute_force: Arc<dyn BruteForceState>,
    /// The same state when it lives in this process: for the pruning task, measurements
    /// and tests.
    pub in_memory: Option<Arc<InMemory>>,
    pub captchas: Arc<Captchas>,
    /// The brute-force sequence of a password sign-in (`POST /login`).
    pub sign_in: SignIn,
    pub sessions: Sessions,
    pub csrf: Csrf,
    pub auth: Authenticator,
    pub users: UserAdmin,
    pub audit: Audit,
    pub pool: HashPool,
    /// The storage handle, for `GET /readyz` only: handlers reach data through the services.
    pub store: Store,
    /// WebAuthn: passkeys and their ceremonies (issue 14).
    pub passkeys: crate::passkeys::Passkeys,
    /// Users' second factors (TOTP, recovery codes) and pending two-step sign-ins.
    pub factors: SecondFactors,
    /// What `GET /metrics` shows; counts nothing when `metrics_addr` is off.
    pub metrics: crate::metrics::Metrics,
    /// Sessions used from another client than they signed in from, noted once each.
    pub client_changes: crate::session::ClientChanges,
}

/// The services that sit on one open store; shared by the server and by CLI commands that
/// run without a server.
pub struct Services {
    pub store: Store,
    pub pool: HashPool,
    pub sessions: Sessions,
    pub audit: Audit,
    pub users: UserAdmin,
    /// The brute-force state the store's engine shares between instances (PostgreSQL), which
    /// `user unlock` clears; `None` on sled, where it lives in the server's memory.
    pub shared_brute_force: Option<Arc<dyn BruteForceState>>,
}

impl Services {
    /// Opens the store `settings` name: PostgreSQL at `database_url` (its schema migrated
    /// first) when set, otherwise sled in `data_dir`; and the services on it.
    ///
    /// # Errors
    /// When the store cannot be opened or reached, the hash pool cannot start, or the audit
    /// log cannot be opened.
    pub async fn open(settings: &Settings, hash_workers: usize) -> anyhow::Result<Self> {
        Self::open_with(settings, hash_workers, true, true).await
    }

    /// As [`Services::open`], for a command that changes something (`user add`): a database's
    /// older schema is refused, not upgraded ([`Store::connect_command`]). Errors as
    /// [`Services::open`], and for such a schema.
    pub async fn open_command(settings: &Settings, hash_workers: usize) -> anyhow::Result<Self> {
        Self::open_with(settings, hash_workers, true, false).await
    }

    /// As [`Services::open`], for a command that records nothing (`user list`, `audit`):
    /// without the auth log, so it makes no `log_dir` where it runs, and neither makes nor
    /// upgrades a database's schema. Errors as [`Services::open_command`].
    pub async fn open_reading(settings: &Settings, hash_workers: usize) -> anyhow::Result<Self> {
        Self::open_with(settings, hash_workers, false, false).await
    }

    async fn open_with(settings: &Settings, hash_workers: usize, log: bool, upgrade: bool) -> anyhow::Result<Self> {
        let log_dir = || {
            crate::store::ensure_private_dir_of_files(&settings.log_dir, crate::audit::is_log_file_name)
                .with_context(|| format!("cannot use {}", settings.log_dir.display()))
        };
        // The log directory is judged before the store is opened, so a start or command refused
        // for it leaves no new, empty store behind; one still to be made is made only once the
        // store is open, so a start refused for the store (another user's, a factor key without
        // one, a database that never answers) leaves no empty log directory (review 203).
        let make_log_dir = if !log {
            false
        } else if settings.log_dir.try_exists().unwrap_or(true) {
            log_dir()?;
            false
        } else {
            crate::store::refuse_changeable(&settings.log_dir)
                .with_context(|| format!("cannot use {}", settings.log_dir.display()))?;
            true
        };
        let store = match &settings.database_url {
            // The URL's Display shows no password.
            // A read makes nothing, as on sled ("no store in data"): a mistyped database name
            // is said to be one, not given a new, empty schema and answered with nothing.
            Some(url) if !log => Store::connect_existing(url, &settings.instance_name)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store at {url}"))?,
            Some(url) if upgrade => Store::connect(url, &settings.instance_name)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store at {url}"))?,
            Some(url) => Store::connect_command(url, &settings.instance_name)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store at {url}"))?,
            None => {
                // A factor key without a store: a first start here would make a new store and
                // administrator in place of the lost one (review 184), as commands refuse to.
                if let Some(why) = Store::keyed_without_store(&settings.data_dir) {
                    anyhow::bail!(why);
                }
                crate::store::copy::refuse_moved(&settings.data_dir)?;
                Store::open(&settings.data_dir)?
            }
        };
        if crate::store::copy::unfinished(&store).await? {
            anyhow::bail!(crate::store::copy::UNFINISHED_MESSAGE);
        }
        if make_log_dir {
            log_dir()?;
        }
        let pool = HashPool::start(settings.argon2, hash_workers, settings.hash_queue)?;
        let sessions = Sessions::new(store.clone(), settings.session_idle_timeout, settings.session_absolute_timeout);
        let keep_days = (settings.audit_retention.as_secs() / 86_400).max(1) as usize;
        let audit = if log {
            Audit::open_as(&settings.log_dir, keep_days, Some(store.clone()), &settings.instance_name)?
                .with_limits(crate::audit::DiskLimits::from_settings(settings))
        } else {
            Audit::reading(store.clone(), &settings.instance_name)
        };
        let policy = PasswordPolicy { min_length: settings.min_password_length };
        let shared_brute_force = store.shared_brute_force(settings.failure_window, settings.captcha_after_failures);
        // Failure records on the clock the shared quotas count on: the database's.
        let audit = match &shared_brute_force {
            Some(state) => {
                let state = Arc::clone(state);
                audit.with_records_clock(Arc::new(move || state.on_shared_clock(crate::store::now_ms())))
            }
            None => audit,
        };
        let mut users = UserAdmin::new(store.clone(), pool.clone(), policy, sessions.clone(), audit.clone());
        if let Some(state) = &shared_brute_force {
            users = users.with_unlock_hook(unlock_hook(Arc::clone(state)));
        }
        Ok(Services { store, pool, sessions, audit, users, shared_brute_force })
    }
}

/// What `user unlock` does to the brute-force state besides the store: clears the username's
/// failures there.
fn unlock_hook(state: Arc<dyn BruteForceState>) -> crate::users::UnlockHook {
    Arc::new(move |key: &str| {
        let (state, digest) = (Arc::clone(&state), username_digest(key));
        Box::pin(async move { state.clear_username(digest).await.map(|_| ()) })
    })
}

pub struct Application {
    https: tls::Listener,
    http: Option<tls::Listener>,
    metrics: Option<tls::Listener>,
    state: Arc<AppState>,
    background: Vec<JoinHandle<()>>,
    /// Removes its socket file when dropped, also when a later step of the start fails.
    admin_socket: Option<admin_socket::Listening>,
    /// Whether a development certificate was generated at this start.
    pub generated_certificate: bool,
    /// The first administrator's password, when this start created them. Shown once.
    pub initial_admin_password: Option<Password>,
}

/// Raises the open-files limit and lowers the connection caps to what it holds (see
/// [`crate::descriptors`]), with one warning line when it had to lower them.
///
/// # Errors
/// When the limit holds fewer than [`MIN_CONNECTIONS`] HTTPS connections: a server that
/// one client could fill is refused rather than started (review 150 started one with a cap
/// of 1 under `ulimit -n 40`).
fn fit_descriptors(settings: &mut Settings) -> anyhow::Result<()> {
    let http = if settings.http_addr.is_some() { settings.http_max_connections } else { 0 };
    let fit = crate::descriptors::raise_and_fit(settings.max_connections, http);
    let wanted = (settings.max_connections + http) as u64 + crate::descriptors::RESERVE;
    if fit.https < MIN_CONNECTIONS.min(settings.max_connections) {
        // What is left, not the cap of 1 `fit` keeps: a limit below the reserve holds none
        // (review 153 read "only 1" under `ulimit -n 10` and 30 alike).
        let room = fit.limit.saturating_sub(crate::descriptors::RESERVE).saturating_sub(fit.http as u64);
        let holds = match room {
            0 => "no HTTPS connections".to_string(),
            1 => "only 1 HTTPS connection".to_string(),
            n => format!("only {n} HTTPS connections"),
        };
        anyhow::bail!(
            "the open-files limit ({}) holds {holds} beside the {} descriptors the server keeps for itself and the redirector's share: raise it (ulimit -n, LimitNOFILE= in systemd) to at least {wanted}",
            fit.limit,
            crate::descriptors::RESERVE,
        );
    }
    if fit.lowered(settings.max_connections, http) {
        let redirector = if settings.http_addr.is_some() {
            format!(" and http_max_connections from {http} to {}", fit.http)
        } else {
            String::new()
        };
        tracing::warn!(
            open_files_limit = fit.limit,
            max_connections = fit.https,
            http_max_connections = fit.http,
            "the open-files limit holds only {} connections: max_connections lowered from {} to {}{redirector}; raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd) to at least {wanted}",
            fit.limit.saturating_sub(crate::descriptors::RESERVE),
            settings.max_connections,
            fit.https,
        );
        // The per-address caps shrink with the totals, so it still takes as many addresses
        // as before to hold every slot.
        let before = (settings.max_connections_per_ip, settings.http_max_connections_per_ip);
        settings.max_connections_per_ip = scaled(settings.max_connections_per_ip, fit.https, settings.max_connections);
        settings.max_connections = fit.https;
        if settings.http_addr.is_some() {
            settings.http_max_connections_per_ip =
                scaled(settings.http_max_connections_per_ip, fit.http, settings.http_max_connections);
            settings.http_max_connections = fit.http;
        }
        let after = (settings.max_connections_per_ip, settings.http_max_connections_per_ip);
        if after == before {
            return Ok(());
        }
        tracing::warn!(
            max_connections_per_ip = settings.max_connections_per_ip,
            http_max_connections_per_ip = settings.http_max_connections_per_ip,
            "the per-address caps were lowered with them"
        );
    }
    Ok(())
}

/// Fewest HTTPS connections a server starts with (unless `max_connections` asks for fewer).
const MIN_CONNECTIONS: usize = 16;

/// `per_ip` lowered as `total` is lowered to `fitted` (at least 1, never raised), but only as
/// far as it takes [`ADDRESSES_TO_FILL`] addresses to hold every fitted slot: asking for
/// far more connections than the limit holds (1,000,000 into 19,952) left one connection per
/// address, less than a browser opens (review 148).
fn scaled(per_ip: usize, fitted: usize, total: usize) -> usize {
    if total == 0 || fitted >= total {
        return per_ip;
    }
    let proportional = per_ip.saturating_mul(fitted) / total;
    let enough = per_ip.min(fitted / ADDRESSES_TO_FILL);
    proportional.max(enough).clamp(1, per_ip.max(1))
}

/// A listener bound at `addr` (the setting `key`'s) without TLS yet, or none when it is off.
///
/// # Errors
/// The address cannot be bound (in use, not local, no permission), naming `key`.
async fn bind(key: &str, addr: Option<SocketAddr>, limits: tls::Limits) -> anyhow::Result<Option<tls::Listener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener =
        tls::Listener::bind(addr, None, limits).await.with_context(|| format!("cannot listen on {key} {addr}"))?;
    Ok(Some(listener))
}

/// How many client addresses it takes at least to hold every connection slot, as with the
/// defaults (1024 connections, 32 per address).
const ADDRESSES_TO_FILL: usize = 32;

/// Removes `dir`, which a refused start made, when it holds nothing but empty files (the day's
/// auth log opened and never written): a start refused after its store was opened (a factor
/// key that is not the store's, a certificate that does not load) leaves no log directory
/// behind (review 208). Anything written stays, and so does the directory.
fn remove_unused_log_dir(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut empty = Vec::new();
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(meta) if meta.is_file() && meta.len() == 0 => empty.push(entry.path()),
            _ => return,
        }
    }
    for file in empty {
        if std::fs::remove_file(file).is_err() {
            return;
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Application {
    /// Opens the store, prepares TLS and binds the listeners (port 0 picks a free port). A
    /// start refused after it made the log directory removes it again while nothing was
    /// written there.
    ///
    /// # Errors
    /// Whatever keeps the server from starting, in one line: a port in use, a directory, a
    /// certificate, the store or its factor key.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let log_dir = settings.log_dir.clone();
        let had_log_dir = log_dir.try_exists().unwrap_or(true);
        let built = Self::build_in(settings).await;
        if built.is_err() && !had_log_dir {
            remove_unused_log_dir(&log_dir);
        }
        built
    }

    async fn build_in(mut settings: Settings) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        fit_descriptors(&mut settings)?;
        // Before the store and the log are opened (and their directories made), so a start
        // refused for its certificate, a directory or a port leaves nothing behind (review 194:
        // a port in use had made a store, a factor key and a development pair first).
        if let Some(why) = settings.unusable_directory() {
            anyhow::bail!(why);
        }
        tls::check_existing_certificate(&settings.cert_dir)?;
        // Bound now, served only once the certificate is there: until then connections wait
        // in the kernel's backlog.
        let https = bind("https_addr", Some(settings.https_addr), tls::Limits::from_settings(&settings))
            .await?
            .context("https_addr is always set")?;
        let http = bind("http_addr", settings.http_addr, tls::Limits::redirector_from_settings(&settings)).await?;
        let metrics_listener = bind("metrics_addr", settings.metrics_addr, crate::metrics::limits(&settings)).await?;
        let services = Services::open(&settings, settings.hash_worker_count()).await?;
        // Said at the start, not first at the first refusal (found by a review).
        if services.audit.below_disk_reserve() {
            tracing::warn!(
                reserve_mib = settings.disk_reserve_bytes >> 20,
                "less free disk space than disk_reserve_mib where the store or the log is: refused logins will be answered 503 and not recorded until space is freed"
            );
        }
        // A missing key is made only for a store that never had one: otherwise the start is
        // refused before a new key is written, which would only stand in the way of the right
        // one (an instance started before its factor.key was copied in).
        let key_file = settings.data_dir.join(crate::factors::key::KEY_FILE);
        if !key_file.try_exists().unwrap_or(true) {
            let keyed = services.store.secrets.get(crate::factors::key::FINGERPRINT_NAME).await?.is_some();
            if keyed || services.store.factors.any_totp().await?.is_some() {
                anyhow::bail!(
                    "there is no {}, and this store was first used with one: copy factor.key from another instance or from a backup (if that key is lost for good: portcullis store forget-factor-key)",
                    key_file.display()
                );
            }
        }
        let factor_key = crate::factors::FactorKey::load_or_create(&settings.data_dir)
            .context("cannot open the factor key (data_dir/factor.key)")?;
        // A key that does not open the store's second factors (an instance started without
        // the first one's factor.key) would fail every TOTP sign-in: refuse to start instead.
        if let Some((user, totp)) = services.store.factors.any_totp().await? {
            if let Err(crate::factors::KeyError::OtherKey) = factor_key.open(&user, &totp.sealed_secret) {
                anyhow::bail!(
                    "{} is not the key this store's second factors were sealed with: copy factor.key from the instance (or backup) that made them",
                    settings.data_dir.join(crate::factors::key::KEY_FILE).display()
                );
            }
        }
        // Checked before any background task holds the store, so a refusal lets go of it, and
        // before a development certificate is made: a refused start leaves nothing new behind
        // but the store.
        // The first start records the key's fingerprint; an instance with another key (one
        // started without the first one's factor.key) refuses to start rather than keying
        // second factors no other instance can check.
        let fingerprint = factor_key.fingerprint();
        let other_key = || {
            anyhow::anyhow!(
                "{} is not the factor key this store was first used with: copy factor.key from another instance or from a backup (if that key is lost for good: portcullis store forget-factor-key)",
                settings.data_dir.join(crate::factors::key::KEY_FILE).display()
            )
        };
        if services.store.secrets.get(crate::factors::key::FINGERPRINT_NAME).await?.is_some_and(|r| r != fingerprint) {
            return Err(other_key());
        }
        let generated_certificate = tls::ensure_certificate(&settings.cert_dir)?;
        if generated_certificate {
            tracing::warn!(
                dir = %settings.cert_dir.display(),
                "generated a self-signed development certificate for {}",
                tls::DEV_CERT_NAMES.join(", ")
            );
        }
        let certified = tls::load_certified_key(&settings.cert_dir)?;
        let public_host = settings.public_url.as_deref().and_then(crate::config::origin_host);
        for warning in tls::warnings(&settings.cert_dir, &certified, public_host.as_deref()) {
            tracing::warn!("{warning}");
        }
        let resolver = tls::CertResolver::new(certified);
        let tls_config = tls::server_config(Arc::clone(&resolver))?;
        let https = https.with_tls(tls_config);
        let mut background = Vec::new();
        // Recorded only once every port is bound: after `store forget-factor-key`, a start that
        // fails for its port (another server there) must not fix the store to the key it held,
        // and refuse the right start after it (review 166). Claimed, not written: of two
        // instances with different keys started together, one records its key and the other
        // stops here.
        let recorded = services.store.secrets.claim(crate::factors::key::FINGERPRINT_NAME, &fingerprint).await?;
        if recorded != fingerprint {
            return Err(other_key());
        }
        let metrics = if metrics_listener.is_some() {
            crate::metrics::Metrics::new(&services.pool, &services.audit, Arc::clone(&resolver))
        } else {
            crate::metrics::Metrics::off()
        };
        background.extend(metrics.spawn_session_count(services.store.clone()));

        let mut csrf = Csrf::new(services.store.secrets.secret("csrf").await?);
        // With PostgreSQL the state is the database's, shared by every instance on it; with
        // sled it is this process's.
        let (brute_force, in_memory) = match services.shared_brute_force.clone() {
            Some(shared) => (shared, None),
            None => {
                let in_memory = Arc::new(InMemory::new(
                    settings.login_quota_per_ip,
                    settings.login_quota_per_user,
                    settings.failure_window,
                    settings.captcha_after_failures,
                ));
                // Its retired pre-login ids go with the process, so must its forms.
                csrf = csrf.of_this_process()?;
                (Arc::clone(&in_memory) as Arc<dyn BruteForceState>, Some(in_memory))
            }
        };
        let captchas =
            Arc::new(Captchas::new(services.store.secrets.secret("captcha").await?, Arc::clone(&brute_force)));
        let users = services.users.with_unlock_hook(unlock_hook(Arc::clone(&brute_force)));
        let auth = Authenticator::new(services.store.clone(), services.pool.clone());
        if let Err(e) = auth.choose_dummy().await {
            // The first unknown username will count them instead.
            tracing::warn!(error = %e, "could not count the stored password hashes at start");
        }
        background.push(tls::spawn_reloader(settings.cert_dir.clone(), resolver, settings.cert_check_interval));
        // With PostgreSQL the CLI works on the database itself, from any host: no socket.
        let admin_socket = match settings.database_url {
            None => Some(
                admin_socket::serve(&settings.data_dir, users.clone(), services.audit.clone())
                    .context("cannot open the admin socket")?,
            ),
            Some(_) => None,
        };
        let origin = settings.public_url.clone().unwrap_or_else(|| format!("https://{}", https.local_addr()));
        let origin = url::Url::parse(&origin).with_context(|| format!("public_url {origin} is not a URL"))?;
        let rp_id = crate::passkeys::rp_id(
            settings.webauthn_rp_id.as_deref().or(settings.cookie_domain.as_ref().map(|d| d.as_str())),
            &origin,
        )
        .with_context(|| format!("public_url {origin} has no host for webauthn_rp_id"))?;
        let passkeys =
            crate::passkeys::Passkeys::new(services.store.clone(), &rp_id, &origin, settings.login_quota_per_ip)?;
        if !passkeys.enabled() {
            tracing::info!(rp_id, "passkeys are off: WebAuthn needs a host name, not an IP address (set public_url)");
        }
        background.push(spawn_ceremony_purge(passkeys.clone()));
        let factors = SecondFactors::new(services.store.clone(), Arc::new(factor_key)).with_passkeys(passkeys.clone());
        background.push(spawn_session_purge(services.sessions.clone(), factors.clone()));
        background.push(spawn_retention(
            services.store.clone(),
            services.audit.clone(),
            settings.log_dir.clone(),
            settings.audit_retention,
            settings.audit_max_records,
        ));
        background.push(spawn_count_closing(services.audit.clone()));
        // PostgreSQL's readiness check is real; sled's always passes, so there the store counts
        // as working again only after an interval without a fault.
        let quiet = if settings.database_url.is_some() { crate::fault_log::TICK } else { crate::fault_log::INTERVAL };
        background.push(crate::fault_log::spawn_watch(services.store.clone(), services.audit.clone(), quiet));
        // Last of the steps that can fail: a start refused after the administrator was made
        // would lose the password shown only once.
        let initial_admin_password = if users.is_empty().await? {
            // A password from a failed random source would be predictable: no start without one.
            let password =
                crate::users::generate_password().context("cannot create the first administrator's password")?;
            let copy = Password::new(password.expose());
            match users.add("admin", password, true, "first start").await {
                Ok(_) => Some(copy),
                // Another instance on the same database made it at the same moment (found by
                // name, or by the lookalike check), and shows its password; this one has none
                // to show.
                Err(crate::users::UserError::AlreadyExists(_) | crate::users::UserError::LooksLike(_))
                    if services.store.users.get("admin").await?.is_some() =>
                {
                    None
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            // Users but no administrator who can sign in (a `user add` run first, or the last
            // one disabled or deleted): nobody can open /admin, and no first start will make
            // one. Said at the start (review 138: an operator was left without a word).
            if !users.list().await?.iter().any(|u| u.admin && !u.disabled) {
                tracing::warn!(
                    "no enabled administrator: nobody can open /admin (portcullis user admin NAME --grant or user add NAME --admin makes one, or user enable NAME)"
                );
            }
            // A first start stopped between making `admin` and printing its password (review
            // 182) left an administrator nobody knows, and no later start said a word. Which
            // start printed it cannot be told, so the line stands until `admin` has signed in
            // or its password has changed.
            if let Some(admin) = services.store.users.get("admin").await? {
                if admin.admin
                    && !admin.disabled
                    && admin.last_login_at.is_none()
                    && admin.password_changed_at == admin.created_at
                {
                    tracing::info!(
                        "the administrator admin has not signed in yet: if its password was not seen (a first start stopped before printing it), set one with: portcullis user passwd admin"
                    );
                }
            }
            None
        };

        let sign_in = SignIn {
            state: Arc::clone(&brute_force),
            per_address: settings.login_quota_per_ip,
            per_username: settings.login_quota_per_user,
            captchas: Arc::clone(&captchas),
            csrf: csrf.clone(),
            auth: auth.clone(),
            sessions: services.sessions.clone(),
            audit: services.audit.clone(),
            factors: factors.clone(),
            policy: settings.second_factor,
            wrong_codes: crate::sign_in::WrongCodes {
                threshold: settings.captcha_after_failures,
                window_ms: u64::try_from(settings.failure_window.as_millis()).unwrap_or(u64::MAX),
            },
        };
        let state = Arc::new(AppState {
            passkeys,
            settings,
            sign_in,
            brute_force,
            in_memory,
            captchas,
            sessions: services.sessions,
            csrf,
            auth,
            users,
            audit: services.audit,
            pool: services.pool,
            store: services.store,
            factors,
            metrics,
            client_changes: crate::session::ClientChanges::default(),
        });
        background.push(spawn_pruning(Arc::clone(&state)));
        Ok(Application {
            https,
            http,
            metrics: metrics_listener,
            state,
            background,
            admin_socket,
            generated_certificate,
            initial_admin_password,
        })
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https.local_addr()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(tls::Listener::local_addr)
    }

    /// The metrics listener's address, when `metrics_addr` is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(tls::Listener::local_addr)
    }

    pub fn hash_workers(&self) -> usize {
        self.state.pool.workers()
    }

    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// The origin that redirects point to.
    pub fn public_origin(&self) -> String {
        self.state.settings.public_url.clone().unwrap_or_else(|| format!("https://{}", self.https_addr()))
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// finish (up to [`SHUTDOWN_GRACE`]), and writes the last counts of repeated refusals
    /// (every other store write was durable when it returned).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };

        let origin = self.public_origin();
        let app = routes::router(Arc::clone(&self.state));
        let settings = &self.state.settings;
        let https = serve::serve(
            self.https,
            app,
            serve::Options {
                name: "https",
                idle_timeout: settings.idle_timeout,
                body_read_timeout: settings.body_read_timeout,
                keep_alive: true,
                http2: true,
            },
            stopped(stop_rx.clone()),
        );
        let http = async {
            if let Some(listener) = self.http {
                let redirect = redirect_to_https.data(RedirectTarget(origin)).around(|ep, req| async move {
                    Ok(routes::security_headers(ep.as_ref(), req, &routes::Policies::default()).await)
                });
                let options = serve::Options {
                    name: "http",
                    idle_timeout: REDIRECT_IDLE_TIMEOUT,
                    body_read_timeout: settings.body_read_timeout,
                    keep_alive: false,
                    http2: false,
                };
                serve::serve(listener, redirect, options, stopped(stop_rx.clone())).await;
            }
        };
        let metrics = async {
            if let Some(listener) = self.metrics {
                let options = serve::Options {
                    name: "metrics",
                    idle_timeout: settings.idle_timeout,
                    body_read_timeout: settings.body_read_timeout,
                    // Prometheus keeps its connection between scrapes.
                    keep_alive: true,
                    http2: false,
                };
                let endpoint = crate::metrics::endpoint(self.state.metrics.clone());
                serve::serve(listener, endpoint, options, stopped(stop_rx.clone())).await;
            }
        };
        tokio::join!(https, http, metrics);
        for task in &self.background {
            task.abort();
        }
        // An aborted task is dropped, with the store handle it holds, only when its runtime
        // next gets to it: wait for that, so the store can be reopened once this returns (a
        // restart on a loaded machine found it still locked).
        for task in self.background {
            let _ = task.await;
        }
        if let Some(socket) = self.admin_socket {
            socket.stop().await;
        }
        if let Err(e) = self.state.audit.close_counts(self.state.audit.records_now_ms(), true).await {
            tracing::error!(error = %e, "cannot write the last counts of repeated refusals");
        }
        Ok(())
    }
}

/// Removes expired passkey ceremonies once a minute (each lives [`crate::passkeys::CEREMONY_LIFETIME`]).
fn spawn_ceremony_purge(passkeys: crate::passkeys::Passkeys) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = passkeys.purge().await {
                let what = "could not purge expired passkey ceremonies";
                crate::fault_log::report_error(what, crate::fault_log::Severity::Warn, e.is_unavailable(), &e);
            }
        }
    })
}

fn spawn_session_purge(sessions: Sessions, factors: SecondFactors) -> JoinHandle<()> {
    let every = (sessions.idle_timeout() / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            match sessions.purge_expired().await {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "expired sessions removed"),
                Err(e) => {
                    let what = "session purge failed";
                    crate::fault_log::report_error(what, crate::fault_log::Severity::Warn, e.is_unavailable(), &e)
                }
                _ => {}
            }
            // Pending two-step sign-ins that were never finished.
            if let Err(e) = factors.purge().await {
                let what = "pending sign-in purge failed";
                crate::fault_log::report_error(what, crate::fault_log::Severity::Warn, e.is_unavailable(), &e);
            }
        }
    })
}

/// Keeps the brute-force state small: limiter keys back at a full bucket, failure counts
/// past the window, expired captcha challenges and retired pre-login ids are dropped.
fn spawn_pruning(state: Arc<AppState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(crate::rate_limit::PRUNE_EVERY);
        loop {
            ticker.tick().await;
            if let Err(e) = state.brute_force.prune(crate::store::now_ms()).await {
                // Once per kind every 10 s with the cause, as the requests' faults are logged.
                let what = "cannot prune the brute-force state";
                crate::fault_log::report_error(what, crate::fault_log::Severity::Warn, true, &e);
            }
        }
    })
}

/// Writes the counts of repeated refusals whose minute is over (see `Audit::close_counts`).
fn spawn_count_closing(audit: Audit) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            if let Err(e) = audit.close_counts(audit.records_now_ms(), false).await {
                tracing::warn!(error = %e, "cannot write the counts of repeated refusals");
            }
        }
    })
}

/// Counts the failed-login records once (so `audit_max_records` applies from then on,
/// dropping the oldest beyond it), then deletes records older than `audit_retention`, the
/// notes of whose removed passkeys were, and the daily log files in `log_dir` past it, at
/// start and hourly.
fn spawn_retention(
    store: Store,
    audit: Audit,
    log_dir: std::path::PathBuf,
    retention: Duration,
    max_records: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        match store.failures.enforce_cap(Some(max_records)).await {
            Ok(capped) => {
                tracing::debug!(records = capped.kept, "failed-login records counted");
                // A lower cap than before, or a copied store that held more: said and counted
                // as the records an append pushes out are (found by a review).
                audit.note_records_dropped(capped.dropped);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the failed-login records"),
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(3600).min(retention));
        loop {
            ticker.tick().await;
            let cutoff = crate::store::now_ms().saturating_sub(retention.as_millis() as u64);
            match store.failures.purge_before(cutoff).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "old failed-login records removed"),
                Err(e) => tracing::warn!(error = %e, "failed-login retention failed"),
                _ => {}
            }
            // Whose removed passkeys were, kept as long as the records that name them.
            if let Err(e) = store.passkeys.purge_removed_passkeys(cutoff).await {
                tracing::warn!(error = %e, "could not forget old removed passkeys");
            }
            // Directory listing and deletes: file-system calls, kept off the async workers.
            let dir = log_dir.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                crate::audit::prune_log_files(&dir, retention, crate::store::now_ms())
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|deleted| deleted);
            match pruned {
                Ok(n) if n > 0 => tracing::info!(removed = n, "old log files removed"),
                Err(e) => tracing::warn!(error = %e, "cannot delete old log files"),
                _ => {}
            }
        }
    })
}

#[derive(Clone)]
struct RedirectTarget(String);

/// Everything on the plain-HTTP listener: 308 to the same path on HTTPS.
#[handler]
fn redirect_to_https(req: &Request, target: poem::web::Data<&RedirectTarget>) -> Response {
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path = if path.starts_with('/') { path } else { "/" };
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, format!("{}{}", target.0 .0, path))
        .finish()
}

/// Services on a temporary sled store in `dir`, with argon2 at 1 MiB and one pass (cheap for
/// unit tests) and the user `alice` with `password`: what unit tests of the domain services
/// build on.
#[cfg(test)]
pub(crate) async fn services_with_alice(dir: &std::path::Path, password: &str) -> Services {
    let settings = Settings {
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        argon2: crate::config::HashParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Settings::default()
    };
    let services = Services::open(&settings, 1).await.unwrap();
    services.users.add("alice", crate::password::Password::new(password), false, "test").await.unwrap();
    services
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_address_caps_shrink_with_their_totals_but_never_to_zero_or_up() {
        assert_eq!(super::scaled(32, 182, 1024), 5);
        assert_eq!(super::scaled(4, 26, 64), 1);
        assert_eq!(super::scaled(4, 1, 64), 1);
        assert_eq!(super::scaled(32, 1024, 1024), 32);
        assert_eq!(super::scaled(32, 2048, 1024), 32);
        // Far more asked for than the limit holds: each address keeps what it had while it
        // still takes 32 of them to fill every slot.
        assert_eq!(super::scaled(32, 19_952, 1_000_000), 32);
        assert_eq!(super::scaled(1000, 19_952, 1_000_000), 623);
    }
}
