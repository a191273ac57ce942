//! Connections to the database: a deadpool-postgres pool over tokio-postgres, with TLS
//! through tokio-postgres-rustls (rustls and aws-lc-rs, as the listeners). What each
//! `sslmode` checks follows libpq (PostgreSQL 15 docs §34.19.1, table 34.1); see [`SslMode`].
//!
//! Every wait is bounded ([`TIMEOUT`]; each statement's by [`super::db`]), so a database that is down or unreachable turns into
//! an error the caller answers with 503 (fail closed), and the pool makes new connections by
//! itself once the database answers again: no restart is needed.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::db::Db;
use super::url::{DatabaseUrl, SslMode};
use super::PgError;

/// Longest wait for the schema's migrations at start (`PgStore::open`): they may wait for
/// another instance's migrations (an advisory lock) or build an index on a large table.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest wait for a new connection, for a free one from the pool, for a recycled one's
/// check, and for the answer to each statement (`db`): past it the caller gets an error (and
/// answers 503). A hung database is a database that is down.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Connections one instance keeps at most. Requests that need the database are bounded by
/// the async workers and the hash pool; 16 covers both on a few cores while leaving a default
/// PostgreSQL (`max_connections` 100) room for several instances.
pub const POOL_SIZE: usize = 16;

/// A pool of connections to `url`, none opened yet (the first use connects), every statement
/// bounded by [`TIMEOUT`] ([`Db`]).
///
/// # Errors
/// [`PgError::Setup`] when the TLS settings cannot be built (an unreadable or empty
/// `sslrootcert`, no system roots for `verify-full`).
pub fn pool(url: &DatabaseUrl, size: usize) -> Result<Db, PgError> {
    let mut config = url.driver_config();
    config.connect_timeout(TIMEOUT).keepalives(true).keepalives_idle(Duration::from_secs(30));
    let manager = Manager::from_config(
        config,
        make_tls(url)?,
        // Fast: a connection the driver has not seen fail is reused without a round trip; one
        // that failed is dropped and replaced on the next get.
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts { wait: Some(TIMEOUT), create: Some(TIMEOUT), recycle: Some(TIMEOUT) })
        .post_create(Hook::async_fn(|client, _| Box::pin(server_limits(client))))
        .build()
        .map(Db::new)
        .map_err(|e| PgError::Setup(e.to_string()))
}

/// The database's side of [`TIMEOUT`], set on each new pooled connection. A statement the
/// client gave up on is cancelled by the server too, a second later, so the client's limit is
/// the one a caller meets (else the query of a dropped connection runs on, holding its locks,
/// until it next writes to the socket). A transaction left open by a client that vanished
/// without closing its socket (a partition: no FIN) ends after twice the limit instead of
/// holding its row locks until TCP keepalive notices. Sent as `SET` rather than the startup
/// `options`, which connection poolers such as PgBouncer refuse. The isolation level too: see
/// [`ISOLATION`].
async fn server_limits(client: &mut deadpool_postgres::ClientWrapper) -> Result<(), HookError> {
    let ms = TIMEOUT.as_millis();
    let sql = format!(
        "{ISOLATION}; SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
        ms + 1000,
        ms.saturating_mul(2)
    );
    match tokio::time::timeout(TIMEOUT, client.batch_execute(&sql)).await {
        Ok(done) => done.map_err(HookError::Backend),
        Err(_) => Err(HookError::Message("the database did not answer the session settings in time".into())),
    }
}

/// Every statement portcullis sends is written for READ COMMITTED, PostgreSQL's default: its
/// functions take an advisory lock, then read with a fresh snapshot per statement, which sees
/// what the lock's previous holder wrote. A database whose default is REPEATABLE READ (`ALTER
/// DATABASE … SET default_transaction_isolation`) would take the snapshot before the lock wait
/// and let 32 concurrent checks past a threshold of 3; SERIALIZABLE would fail them. So each
/// connection sets it for itself.
const ISOLATION: &str = "SET default_transaction_isolation = 'read committed'";

/// One connection outside a pool (migrations at start, and tools), with its driver task
/// spawned on the current runtime. The whole handshake is bounded by [`TIMEOUT`]: a stopped
/// server accepts the TCP connection (the kernel does) but never answers the startup.
///
/// # Errors
/// As [`pool`], [`PgError::Db`] when the database cannot be reached or refuses, and
/// [`PgError::Timeout`] when it does not answer.
pub async fn connect(url: &DatabaseUrl) -> Result<tokio_postgres::Client, PgError> {
    let mut config = url.driver_config();
    config.connect_timeout(TIMEOUT);
    let tls = make_tls(url)?;
    let (client, connection) =
        tokio::time::timeout(TIMEOUT, config.connect(tls)).await.map_err(|_| PgError::Timeout(TIMEOUT))??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    tokio::time::timeout(TIMEOUT, client.batch_execute(ISOLATION)).await.map_err(|_| PgError::Timeout(TIMEOUT))??;
    Ok(client)
}

/// The TLS connector for `url`'s `sslmode`. `disable` still gets one (it is never used),
/// so the pool has one type whatever the mode.
fn make_tls(url: &DatabaseUrl) -> Result<MakeRustlsConnect, PgError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Setup(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match url.ssl_mode() {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(WithoutHostName { roots: None, provider }),
        SslMode::VerifyCa => Arc::new(WithoutHostName { roots: Some(Arc::new(roots(url)?)), provider }),
        SslMode::VerifyFull => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots(url)?), provider)
                .build()
                .map_err(|e| PgError::Setup(e.to_string()))?
        }
    };
    let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The roots to check the server against: `sslrootcert`, else the system's.
fn roots(url: &DatabaseUrl) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    match url.root_cert() {
        Some(path) => {
            let shown = path.display();
            let pem = crate::files::read_small(path, crate::files::MAX_PEM_BYTES)
                .map_err(|e| PgError::Setup(format!("cannot read sslrootcert {shown}: {e}")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| PgError::Setup(format!("sslrootcert {shown}: {e}")))?;
                store.add(cert).map_err(|e| PgError::Setup(format!("sslrootcert {shown}: {e}")))?;
            }
            if store.is_empty() {
                return Err(PgError::Setup(format!("sslrootcert {shown} holds no PEM certificate")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err(PgError::Setup("no root certificates to verify the database with (set sslrootcert)".into()));
    }
    Ok(store)
}

/// The verifier for the modes that do not check the host name. Without `roots` (`prefer`, and
/// `require` without a root file): encryption against passive listeners only, as libpq does.
/// With them (`verify-ca`): the chain must lead to one of the roots. Either way the
/// handshake's signatures are checked, so the session keys are bound to the certificate
/// presented (which tls-server-end-point channel binding then pins).
#[derive(Debug)]
struct WithoutHostName {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for WithoutHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection of its own that holds [`super::secrets::FORGETTING_LOCK`] alone until it is
/// dropped (a server's start waits for it to claim its factor key), made first by a command
/// that must not run beside a server (`store forget-factor-key`), and how many other
/// connections of portcullis (its servers and commands, which all connect as application
/// `portcullis`) are open on `url`'s database once it holds it. `pg_stat_activity` shows every
/// role's connections' database and application name to any role.
///
/// # Errors
/// As [`connect`], and [`PgError::Timeout`] when a start's claim holds the lock past
/// [`TIMEOUT`].
pub async fn lock_out_instances(url: &DatabaseUrl) -> Result<(tokio_postgres::Client, u64), PgError> {
    use super::db::Statements;
    let client = connect(url).await?;
    Statements::query(&client, "SELECT pg_advisory_lock($1)", &[&super::secrets::FORGETTING_LOCK]).await?;
    let row = Statements::query_one(
        &client,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'portcullis' AND pid <> pg_backend_pid()",
        &[],
    )
    .await?;
    let others = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    Ok((client, others))
}
