//! HTTPS: certificate files (loading, a generated development pair, reload without restart)
//! and the listener that puts rustls, connection caps and deadlines in front of hyper (the
//! plain-HTTP redirector uses the same listener without TLS).
//!
//! We use tokio-rustls directly rather than poem's `RustlsListener`: poem's acceptor races
//! config loading against accepting (a first connection can be dropped), does not check
//! that key and certificate match, and has no connection cap. Here the certificate lives in a
//! resolver that a reload task swaps atomically, so there is always exactly one valid pair.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

use crate::stall::Owed;

/// What a listener bounds; each field is the setting of the same name (for the redirector,
/// the `http_` one where there is one).
pub struct Limits {
    /// Connections served at once; the rest wait in the kernel's listen queue.
    pub max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold at once; addresses in
    /// `exempt` (trusted proxies) are not capped. Connections past the cap are closed at
    /// once, so that one host cannot take every slot under `max_connections`.
    pub max_connections_per_ip: usize,
    /// Trusted proxies (`trusted_proxies`): everyone behind one shares its address.
    pub exempt: Vec<ipnet::IpNet>,
    /// How long a client may take over the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take over each request head, HTTP/2 frame or header block once
    /// begun (see [`crate::stall`]).
    pub header_read_timeout: Duration,
}

impl Limits {
    /// The HTTPS listener's limits.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Limits {
            max_connections: settings.max_connections,
            max_connections_per_ip: settings.max_connections_per_ip,
            exempt: settings.trusted_proxies.clone(),
            handshake_timeout: settings.handshake_timeout,
            header_read_timeout: settings.header_read_timeout,
        }
    }

    /// The plain-HTTP redirector's limits: its own small caps, so that it can never take the
    /// descriptors the HTTPS side needs, and the same header deadline (it has no handshake).
    pub fn redirector_from_settings(settings: &crate::config::Settings) -> Self {
        Limits {
            max_connections: settings.http_max_connections,
            max_connections_per_ip: settings.http_max_connections_per_ip,
            exempt: settings.trusted_proxies.clone(),
            handshake_timeout: settings.handshake_timeout,
            header_read_timeout: settings.header_read_timeout,
        }
    }
}

/// Installs aws-lc-rs as the process's rustls provider (several crates pull rustls in, and
/// rustls refuses to guess between two compiled-in providers).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn cert_path(dir: &Path) -> PathBuf {
    dir.join("cert.pem")
}

pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("key.pem")
}

/// The names a generated development certificate covers; the start-up line names them all.
pub const DEV_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Whether `dir` holds both `cert.pem` and `key.pem` (true) or neither (false). One without
/// the other is an error: it usually means a deployment went half-way.
fn pair_present(dir: &Path) -> anyhow::Result<bool> {
    let (cert, key) = (cert_path(dir), key_path(dir));
    // A link to nothing is neither there nor absent: a pair generated beside it stopped at
    // "cannot create key.pem: File exists" (review 157), and where it points was someone's
    // choice.
    for path in [&cert, &key] {
        if !path.exists() {
            if let Ok(target) = std::fs::read_link(path) {
                bail!(
                    "{} is a link to {}, which does not exist: put the file there, or remove the link for a development pair",
                    crate::text::printable(&path.display().to_string()),
                    crate::text::printable(&target.display().to_string())
                );
            }
        }
    }
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) if development_certificate_alone(dir).is_some() => bail!(
            "{} is a development certificate without its key {}: a start makes a new pair once it is {} s old (another start may be writing this one), or remove it",
            cert.display(),
            key.display(),
            CUT_SHORT_AFTER.as_secs()
        ),
        // What to do, said (review 213): the README's fix was not in the line.
        (true, false) => bail!(
            "{} exists but {} is missing: put the certificate's key there, or remove both for a new development pair",
            cert.display(),
            key.display()
        ),
        (false, true) => bail!(
            "{} exists but {} is missing: put the key's certificate chain there, or remove both for a new development pair",
            key.display(),
            cert.display()
        ),
    }
}

/// Refuses a certificate directory that [`ensure_certificate`] and [`load_certified_key`]
/// would refuse (one file of the pair without the other, a pair that does not load or does
/// not match), and accepts one with neither file. Asked before the store is opened, so such a
/// start leaves no `data_dir` or `log_dir` behind (review 133).
pub fn check_existing_certificate(dir: &Path) -> anyhow::Result<()> {
    refuse_a_file_for_the_directory(dir)?;
    if development_certificate_cut_short(dir) || unlinked_key_of_a_development_certificate(dir).is_some() {
        return Ok(());
    }
    if pair_present(dir)? {
        load_certified_key(dir)?;
    }
    Ok(())
}

/// `cert_dir` naming something other than a directory: "cannot create X: File exists" said
/// nothing of what X was (review 150).
/// Nor one another user could have filled with a pair of their own to be served: one others
/// may write in (`/tmp`; review 153), one owned by a user other than root or this process's
/// (`/etc/letsencrypt` is root's, read by the service's user), or one under a directory
/// others may change (review 155 swapped a parent under a 0777 directory, and linked
/// `cert.pem` to `/etc/shadow` in a directory of their own).
fn refuse_a_file_for_the_directory(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("cert_dir {} is not a directory", crate::text::printable(&dir.display().to_string()));
    }
    crate::store::trusted_ancestors(dir).context("cert_dir")?;
    if let Ok(meta) = std::fs::metadata(dir) {
        crate::store::refuse_shared(dir, &meta).context("cert_dir")?;
        if let Some(uid) = crate::store::untrusted_owner(&meta) {
            bail!(
                "cert_dir {} belongs to uid {uid}, neither this process's user (uid {}) nor root, who could have put a key of their own there",
                crate::text::printable(&dir.display().to_string()),
                crate::store::effective_uid(),
            );
        }
    }
    Ok(())
}

/// Refuses a `cert.pem` or `key.pem` another user (not root) owns, or reached through a link
/// or directory another user could change (review 157: links in root's 0700 `cert_dir` to a
/// pair in another user's directory were served, at start and at every reload, and that user
/// knew the key).
fn refuse_untrusted_file(path: &Path) -> anyhow::Result<()> {
    let shown = crate::text::printable(&path.display().to_string()).into_owned();
    crate::store::trusted_ancestors(path).with_context(|| format!("cannot use {shown}"))?;
    if let Some(uid) = std::fs::metadata(path).ok().and_then(|meta| crate::store::untrusted_owner(&meta)) {
        bail!(
            "{shown} belongs to uid {uid}, neither this process's user (uid {}) nor root, who could have put a key of their own there",
            crate::store::effective_uid()
        );
    }
    Ok(())
}

/// Makes sure `dir` holds a certificate and key. When both are absent, writes a self-signed
/// pair for [`DEV_CERT_NAMES`] (the key with mode 0600) and returns true. One without
/// the other is an error: it usually means a deployment went half-way, but for a development
/// certificate a first start cut short left: finished with the key it wrote beside it, or,
/// with none there, removed once 10 s old, with a warning, and a new pair made.
///
/// Each file is written whole under another name and linked into place, the certificate
/// first: a start killed while writing left a `key.pem` without its `cert.pem`, which every
/// later start refused (review 186's kill points, 30–40 ms into a first start).
pub fn ensure_certificate(dir: &Path) -> anyhow::Result<bool> {
    refuse_a_file_for_the_directory(dir)?;
    // Its key written beside it: the pair is finished as the start cut short would have
    // finished it (review 192 stopped one between the two links; another start finishing the
    // same pair this moment links the same file).
    if let Some(written) = unlinked_key_of_a_development_certificate(dir) {
        let key = key_path(dir);
        match std::fs::hard_link(&written, &key) {
            Ok(()) => {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("cannot write {}", dir.display()))?;
                tracing::warn!(
                    dir = %dir.display(),
                    "finished a development pair a first start stopped before linking key.pem"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot write {}", key.display()))),
        }
    }
    if development_certificate_cut_short(dir) {
        let cert = cert_path(dir);
        std::fs::remove_file(&cert).with_context(|| format!("cannot remove {}", cert.display()))?;
        tracing::warn!(
            dir = %dir.display(),
            "removed a development certificate without its key (a first start stopped before it wrote key.pem): a new pair is made"
        );
    }
    if pair_present(dir)? {
        crate::files::remove_unlinked(dir, &["cert.pem", "key.pem"]);
        return Ok(false);
    }
    let (cert, key) = (cert_path(dir), key_path(dir));
    make_directory(dir)?;
    let (cert_pem, key_pem) = development_pair().context("cannot generate a development certificate")?;
    let key_pem = zeroize::Zeroizing::new(key_pem);
    let (cert_new, key_new) =
        (crate::files::unlinked_name(dir, "cert.pem")?, crate::files::unlinked_name(dir, "key.pem")?);
    let linked = crate::files::write_new(&key_new, key_pem.as_bytes(), 0o600)
        .and_then(|()| crate::files::write_new(&cert_new, cert_pem.as_bytes(), 0o644))
        // A link is made only where nothing is (`AlreadyExists` otherwise).
        .and_then(|()| std::fs::hard_link(&cert_new, &cert))
        .and_then(|()| std::fs::hard_link(&key_new, &key));
    // The names they were written under go either way (a start killed before this leaves
    // them: `files::remove_unlinked` at the next).
    for path in [&cert_new, &key_new] {
        let _ = std::fs::remove_file(path);
    }
    match linked {
        Ok(()) => {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot write {}", dir.display()))?;
            crate::files::remove_unlinked(dir, &["cert.pem", "key.pem"]);
            Ok(true)
        }
        // Another start linked its certificate first (its instances share `cert_dir`): its
        // key follows at once, and its pair is the one to serve.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !key.exists() && cert.exists() => {
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while !key.exists() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            pair_present(dir).map(|_| false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => pair_present(dir).map(|_| false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot write a development pair in {}", dir.display()))),
    }
}

/// How long ago a development certificate without its key must have been written before a
/// start takes it for one a first start cut short: a younger one may be another start's,
/// whose key is being linked this moment.
const CUT_SHORT_AFTER: Duration = Duration::from_secs(10);

/// Whether `dir` holds what a first start killed between linking its development certificate
/// and linking its key left: `cert.pem` a development certificate ([`DEV_CERT_NAME`], whose
/// key nobody else has), written more than [`CUT_SHORT_AFTER`] ago, and no `key.pem`, not even
/// a link. An operator's certificate without its key is still refused ([`pair_present`]).
fn development_certificate_cut_short(dir: &Path) -> bool {
    if development_certificate_alone(dir).is_none() {
        return false;
    }
    let written = std::fs::symlink_metadata(cert_path(dir)).and_then(|m| m.modified());
    written.ok().and_then(|at| at.elapsed().ok()).is_some_and(|age| age >= CUT_SHORT_AFTER)
}

/// The leaf of `cert.pem` when it is a development certificate ([`DEV_CERT_NAME`]), a file,
/// and `key.pem` is not there at all, not even as a link.
fn development_certificate_alone(dir: &Path) -> Option<CertificateDer<'static>> {
    let (cert, key) = (cert_path(dir), key_path(dir));
    if std::fs::symlink_metadata(&key).is_ok() || !std::fs::symlink_metadata(&cert).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let pem = crate::files::read_small(&cert, crate::files::MAX_PEM_BYTES).ok()?;
    let leaf = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    let development = x509_parser::parse_x509_certificate(&leaf)
        .is_ok_and(|(_, parsed)| parsed.subject().to_string().contains(&format!("CN={DEV_CERT_NAME}")));
    development.then_some(leaf)
}

/// The key a first start wrote for the development certificate in `cert.pem` and was stopped
/// before linking as `key.pem` (`key.pem.new-*`, matching the certificate), when `key.pem` is
/// not there at all.
fn unlinked_key_of_a_development_certificate(dir: &Path) -> Option<PathBuf> {
    let leaf = development_certificate_alone(dir)?;
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|path| {
        let named =
            path.file_name().is_some_and(|n| crate::files::is_unlinked_name_of(&n.to_string_lossy(), "key.pem"));
        let ours = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
        let matches = || {
            let key_pem = zeroize::Zeroizing::new(crate::files::read_small(path, crate::files::MAX_PEM_BYTES).ok()?);
            let der = PrivateKeyDer::from_pem_slice(&key_pem).ok()?;
            CertifiedKey::from_der(vec![leaf.clone()], der, &provider()).ok()
        };
        named && ours && matches().is_some()
    })
}

/// Makes `dir` (and its parents), then judges it as [`ensure_certificate`] judged it missing:
/// another user may have made it, or a directory on its path, in between, and would then have
/// swapped in a key of their own (review 159 raced `store copy --to` so).
fn make_directory(dir: &Path) -> anyhow::Result<()> {
    crate::store::make_dirs(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    refuse_a_file_for_the_directory(dir)
}

/// How long a generated development certificate is valid, in days (as mkcert's): a developer
/// may import it as trusted, and a copy of its key should not be good for ever (rcgen's
/// default ran to the year 4096; found by a review). Past it the start says so
/// ([`warnings`]), and removing both files makes a new pair.
pub const DEV_CERT_DAYS: i64 = 825;

/// The common name of a generated development certificate.
const DEV_CERT_NAME: &str = "portcullis development certificate";

/// A self-signed certificate for [`DEV_CERT_NAMES`] and its key, both PEM.
fn development_pair() -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(DEV_CERT_NAMES.map(str::to_string).to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, DEV_CERT_NAME);
    // From a day back, so a client whose clock is a little behind accepts it at once; no
    // longer than 825 days in all, and for server authentication, as Apple's platforms
    // require of a TLS server certificate (found by a review).
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = params.not_before + time::Duration::days(DEV_CERT_DAYS);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Within this many days of its end a certificate is said to need renewing at start.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Reads the pair in `dir` and checks that the key belongs to the certificate.
///
/// # Errors
/// Also when either file, through its links, could have been chosen by a user other than root
/// and this process's (`refuse_untrusted_file`).
pub fn load_certified_key(dir: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let (cert, key) = (cert_path(dir), key_path(dir));
    refuse_untrusted_file(&key)?;
    refuse_untrusted_file(&cert)?;
    let cert_pem = crate::files::read_small(&cert, crate::files::MAX_PEM_BYTES)
        .with_context(|| format!("cannot read {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key_pem = zeroize::Zeroizing::new(
        crate::files::read_small(&key, crate::files::MAX_PEM_BYTES)
            .with_context(|| {
                format!(
                    "cannot read {} (it must be readable by the user running portcullis, uid {}: e.g. install -m 0600 -o USER)",
                    key.display(),
                    crate::store::effective_uid()
                )
            })?,
    );
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .with_context(|| format!("{} does not match {}", key.display(), cert.display()))?;
    Ok(Arc::new(certified))
}

/// What an operator should hear about the pair in `dir` as loaded (`key`), one line each:
/// a leaf that does not name `public_host` (`public_url`'s host), which every browser would
/// refuse (the development certificate names only localhost: a review started one behind
/// `public_url = https://login.example.com` without a word), and a `key.pem` other users
/// may read. Empty when both are fine.
pub fn warnings(dir: &Path, key: &CertifiedKey, public_host: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(host), Ok(leaf)) = (public_host, key.end_entity_cert()) {
        let named = rustls::pki_types::ServerName::try_from(host.to_string()).ok().is_some_and(|name| {
            webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        if !named {
            out.push(format!(
                "{} does not name public_url's host {}: browsers will refuse it (the development certificate names only {})",
                cert_path(dir).display(),
                crate::text::printable(host),
                DEV_CERT_NAMES.join(", ")
            ));
        }
    }
    out.extend(dates_warning(dir, key).map(|(_, warning)| warning));
    out.extend(key_mode_warning(dir));
    out
}

/// What to say of a private key in `dir` that users other than its owner (and group) may
/// read, at start and at each reload: renewals are when keys are copied in with the wrong
/// mode (review 194: a reload put a 0644 key in service without a word).
fn key_mode_warning(dir: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let key_file = key_path(dir);
    let mode = std::fs::metadata(&key_file).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} may be read by other users (mode {mode:03o}): chmod 600 it, or 640 for a group only the server is in",
            key_file.display()
        )
    })
}

/// What to say of the dates of `key`'s certificate now ([`validity_warning`]).
fn dates_warning(dir: &Path, key: &CertifiedKey) -> Option<(Dates, String)> {
    validity_warning(dir, key.end_entity_cert().ok()?, time::OffsetDateTime::now_utc())
}

/// What is wrong with a certificate's dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dates {
    Expired,
    NotYetValid,
    /// Within [`EXPIRY_WARNING_DAYS`] of its end.
    EndingSoon,
}

/// What to say of `leaf`'s dates at `now`: expired, not valid yet, or ending within
/// [`EXPIRY_WARNING_DAYS`]; `None` when none of these (or the dates cannot be read).
fn validity_warning(dir: &Path, leaf: &CertificateDer<'_>, now: time::OffsetDateTime) -> Option<(Dates, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let validity = cert.validity();
    let (from, until) = (validity.not_before.to_datetime(), validity.not_after.to_datetime());
    let day = |t: time::OffsetDateTime| t.date().to_string();
    let path = cert_path(dir);
    let path = path.display();
    if until <= now {
        // Renewing is the advice for a real certificate; a development pair is made anew.
        let development = cert.subject().to_string().contains(DEV_CERT_NAME);
        let what = if development { "remove cert.pem and key.pem for a new development pair" } else { "renew it" };
        return Some((Dates::Expired, format!("{path} expired on {}: browsers refuse it ({what})", day(until))));
    }
    if from > now {
        // To the minute: it may be today (found by a review: the date alone said nothing then).
        let when = format!("{} {:02}:{:02} UTC", day(from), from.hour(), from.minute());
        let warning = format!("{path} is not valid until {when}: browsers refuse it until then");
        return Some((Dates::NotYetValid, warning));
    }
    let left = until - now;
    // Whole days rounded up, as the date reads: ten days from now, less a second, is "in 10".
    let days = (left.whole_seconds() + 86_399) / 86_400;
    let days = if days == 1 { "1 day".to_string() } else { format!("{days} days") };
    (left < time::Duration::days(EXPIRY_WARNING_DAYS))
        .then(|| (Dates::EndingSoon, format!("{path} expires on {} (in {days}): renew it", day(until))))
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertResolver { current: RwLock::new(key) })
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
    }

    /// The pair in service.
    /// When the certificate in service ends (its leaf's notAfter), in Unix seconds; `None`
    /// when its dates cannot be read. For `portcullis_tls_certificate_not_after_seconds`: a
    /// pair refused at a reload leaves the old one counting down, which only the log said
    /// (review 215).
    pub fn not_after_unix(&self) -> Option<i64> {
        let key = self.current()?;
        let leaf = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| Arc::clone(&k))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// TLS 1.2 and 1.3 only, forward-secret suites only (aws-lc-rs offers no others), ALPN h2
/// and http/1.1.
pub fn server_config(resolver: Arc<CertResolver>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().context("TLS session tickets")?;
    Ok(Arc::new(config))
}

/// What identifies a version of the files on disk.
fn fingerprint(dir: &Path) -> Option<[FileVersion; 2]> {
    Some([FileVersion::of(&cert_path(dir))?, FileVersion::of(&key_path(dir))?])
}

/// What tells one version of a file from another: its contents' time and length, its inode
/// (a pair moved into place), and its status change time, which a `chown` or `chmod` alone
/// moves (review 194: a pair refused for its owner was not tried again after a `chown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    modified: SystemTime,
    len: u64,
    inode: u64,
    changed: (i64, i64),
}

impl FileVersion {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(FileVersion {
            modified: m.modified().ok()?,
            len: m.len(),
            inode: m.ino(),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Re-reads the pair whenever the files change, and at SIGHUP (what operators and their
/// renewal hooks send to mean "reload": the default action killed the server, review 194).
/// A pair that is half-written or mismatched is skipped (and retried at the next change, or
/// the next SIGHUP), keeping the one in service. The dates and the key's mode of the pair in
/// service are said as at start ([`warnings`]) when a new pair is loaded, and the dates once a
/// UTC day, so a server running past a failed renewal says so before browsers do (found by
/// a review: only the start said it).
pub fn spawn_reloader(dir: PathBuf, resolver: Arc<CertResolver>, every: Duration) -> tokio::task::JoinHandle<()> {
    // Taken now rather than when the task first runs: a change landing in between would
    // otherwise become the baseline and never be loaded.
    let mut seen = fingerprint(&dir);
    // Installed now too, so a SIGHUP once the server says it listens never kills it.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // The start has said today's.
    let mut dates_said = time::OffsetDateTime::now_utc().date();
    // The version of the files last deferred as not valid yet (said once, not every tick).
    let mut deferred = None;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let asked = tokio::select! {
                _ = ticker.tick() => false,
                _ = hangup => true,
            };
            if asked {
                tracing::info!(dir = %dir.display(), "SIGHUP: the certificate pair is read again (the auth log needs no reopening)");
                // Read again even unchanged: a pair refused for what a SIGHUP's sender mended
                // outside the files (its directory's owner, say) is tried once more.
                seen = None;
                deferred = None;
            }
            let today = time::OffsetDateTime::now_utc().date();
            if today != dates_said {
                dates_said = today;
                if let Some((_, warning)) = resolver.current().and_then(|key| dates_warning(&dir, &key)) {
                    tracing::warn!("{warning}");
                }
            }
            let now = fingerprint(&dir);
            if now.is_none() || now == seen {
                continue;
            }
            match load_certified_key(&dir) {
                // Not put in service in place of the one there (found by a review): an expired
                // pair never will be good, so it is kept out until the files change again; one
                // not valid yet is looked at again each tick, and loaded once it is.
                Ok(key) => match dates_warning(&dir, &key) {
                    Some((Dates::Expired, warning)) => {
                        seen = now;
                        tracing::warn!("certificate change ignored, keeping the current one: {warning}");
                    }
                    Some((Dates::NotYetValid, warning)) => {
                        if deferred != now {
                            deferred = now;
                            tracing::warn!("certificate change deferred, keeping the current one: {warning}");
                        }
                    }
                    warning => {
                        resolver.replace(key);
                        seen = now;
                        tracing::info!(dir = %dir.display(), "certificate reloaded");
                        for warning in warning.map(|(_, w)| w).into_iter().chain(key_mode_warning(&dir)) {
                            tracing::warn!("{warning}");
                        }
                    }
                },
                Err(e) => {
                    // Remember this version too: it is retried when the files change again
                    // (a half-written pair completes), not warned about every tick.
                    seen = now;
                    tracing::warn!(error = %crate::text::error_chain(e.as_ref()), "certificate change ignored; keeping the current one")
                }
            }
        }
    })
}

/// Accepts TCP connections up to a cap, closes those past their address's share, and wraps
/// each in a [`Connection`]: TLS (its handshake run lazily in the connection's own task, under
/// a deadline) or plain (the redirector), with what the client owes under a deadline too (see
/// [`crate::stall`]).
pub struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    per_address: Arc<AddressCounts>,
    backoff: crate::serve::Backoff,
}

/// Connections the kernel queues for us while every slot is taken (tokio's default is 128:
/// past the queue, clients see dropped SYNs and retry a second or more later).
const LISTEN_BACKLOG: u32 = 1024;

/// Open connections per client address, for `max_connections_per_ip`.
struct AddressCounts {
    max: usize,
    exempt: Vec<ipnet::IpNet>,
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// Whether a new connection may stay.
enum Admission {
    /// Counted against its address until dropped.
    Counted(AddressSlot),
    /// From a trusted proxy: not counted (everyone behind it shares its address).
    Exempt,
    /// Its address already holds its share.
    Refused,
}

impl AddressCounts {
    fn new(max: usize, exempt: Vec<ipnet::IpNet>) -> Arc<Self> {
        Arc::new(AddressCounts { max: max.max(1), exempt, open: Default::default() })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let ip = crate::client::canonical(ip);
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Admission::Exempt;
        }
        let key = crate::client::AddressKey::of(ip).ip();
        // A poisoned lock only means a thread panicked while holding it; the counts are
        // plain integers that are never left half-updated, so carry on with them.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return Admission::Refused;
        }
        *n += 1;
        Admission::Counted(AddressSlot { counts: Arc::clone(self), key })
    }
}

/// One connection's place in its address's count; given back when the connection ends.
struct AddressSlot {
    counts: Arc<AddressCounts>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Listener {
    /// Binds `addr` with `limits`; `tls` is `None` for the plain-HTTP redirector.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission).
    pub async fn bind(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>, limits: Limits) -> io::Result<Self> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let local_addr = listener.local_addr()?;
        let backoff = crate::serve::Backoff::new(if tls.is_some() { "https" } else { "http" });
        let tls_acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        Ok(Listener {
            listener,
            local_addr,
            tls: tls_acceptor,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            handshake_timeout: limits.handshake_timeout,
            header_read_timeout: limits.header_read_timeout,
            per_address: AddressCounts::new(limits.max_connections_per_ip, limits.exempt),
            backoff,
        })
    }

    /// This listener, its connections' TLS handshakes made with `tls` from now on (bound
    /// before the certificate was loaded, so a start refused for its port made nothing).
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(tls));
        self.backoff = crate::serve::Backoff::new("https");
        self
    }

    /// The address actually bound (port 0 becomes a free port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next admitted connection and its peer. Never fails: a failed `accept` (out of file
    /// descriptors, most likely) is retried after a growing pause, so the listener works
    /// again as soon as descriptors are free.
    pub async fn accept(&mut self) -> (Connection, SocketAddr) {
        // Waiting for a slot before accepting leaves excess clients in the kernel's backlog
        // instead of holding memory (and a descriptor) for them here.
        let permit = loop {
            // The semaphore is never closed; `acquire_owned` fails only then.
            if let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await {
                break permit;
            }
        };
        let (stream, peer, address_slot) = loop {
            let listener = &self.listener;
            let (stream, peer) = self.backoff.accept(|| listener.accept()).await;
            match self.per_address.admit(peer.ip()) {
                Admission::Counted(slot) => break (stream, peer, Some(slot)),
                Admission::Exempt => break (stream, peer, None),
                Admission::Refused => {
                    tracing::debug!(peer = %peer.ip(), "connection closed: its address holds its share already");
                    drop(stream);
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let mut owed = Owed::new(self.header_read_timeout);
        let state = match &self.tls {
            Some(tls) => {
                let handshake = tls.accept(stream);
                let timeout = self.handshake_timeout;
                State::Handshaking(Box::pin(async move {
                    tokio::time::timeout(timeout, handshake)
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                }))
            }
            None => {
                owed.start(false);
                State::Plain(stream)
            }
        };
        (Connection { state, owed, _slot: permit, _address_slot: address_slot }, peer)
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<TlsStream<TcpStream>>> + Send>>;

enum State {
    Handshaking(Handshake),
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
    Failed,
}

/// One client connection. Holds its slot under the connection cap (and its address's) until
/// dropped. Reads fail once the client has owed bytes for longer than `header_read_timeout`
/// (see [`Owed`]): poem's and hyper's own header timeouts do not cover HTTP/2 frames, and
/// hyper's HTTP/1 one also runs while a keep-alive connection is idle.
pub struct Connection {
    state: State,
    owed: Owed,
    _slot: OwnedSemaphorePermit,
    _address_slot: Option<AddressSlot>,
}

/// A connection's stream once it is ready to carry HTTP.
enum Ready<'a> {
    Tls(&'a mut TlsStream<TcpStream>),
    Plain(&'a mut TcpStream),
}

impl Connection {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Ready<'_>>> {
        if let State::Handshaking(fut) = &mut self.state {
            match fut.as_mut().poll(cx) {
                Poll::Ready(Ok(stream)) => {
                    self.owed.start(stream.get_ref().1.alpn_protocol() == Some(b"h2"));
                    self.state = State::Tls(Box::new(stream));
                }
                Poll::Ready(Err(e)) => {
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match &mut self.state {
            State::Tls(stream) => Poll::Ready(Ok(Ready::Tls(stream))),
            State::Plain(stream) => Poll::Ready(Ok(Ready::Plain(stream))),
            _ => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "TLS handshake failed"))),
        }
    }
}

impl Connection {
    /// Completes the TLS handshake (nothing to do for plain TCP) and says whether ALPN chose
    /// HTTP/2 (`true`) or not (`false`: HTTP/1.1, or no ALPN at all). HTTP/2 over TLS is only
    /// what ALPN names "h2" (RFC 9113 §3.2), so the server speaks what was negotiated.
    ///
    /// # Errors
    /// The handshake's error: refused, broken off, or past `handshake_timeout`.
    pub async fn negotiate(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| {
            self.poll_ready(cx)
                .map_ok(|ready| matches!(ready, Ready::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2")))
        })
        .await
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match this.poll_ready(cx) {
            Poll::Ready(Ok(Ready::Tls(stream))) => Pin::new(stream).poll_read(cx, buf),
            Poll::Ready(Ok(Ready::Plain(stream))) => Pin::new(stream).poll_read(cx, buf),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        match read {
            Poll::Ready(Ok(())) => {
                this.owed.on_read(&buf.filled()[before..]);
                if this.owed.overrun() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more bytes after a request head than any answer reads",
                    )));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.owed.expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request headers not received in time")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.owed.on_write();
        let written = match this.poll_ready(cx) {
            Poll::Ready(Ok(Ready::Tls(stream))) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Ok(Ready::Plain(stream))) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        if let Poll::Ready(Ok(n)) = written {
            this.owed.on_written(n);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(Ready::Tls(stream))) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Ok(Ready::Plain(stream))) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            State::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pair refused for its owner or mode is tried again after a `chown` or `chmod` alone,
    /// which moves only the status change time (review 194).
    #[test]
    fn a_change_of_owner_or_mode_alone_is_a_new_version_of_the_pair() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(cert_path(dir.path()), "c").unwrap();
        std::fs::write(key_path(dir.path()), "k").unwrap();
        let before = fingerprint(dir.path());
        assert!(before.is_some());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::set_permissions(key_path(dir.path()), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(fingerprint(dir.path()), before);
    }

    #[test]
    fn a_certificate_not_naming_public_urls_host_or_a_key_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        ensure_certificate(dir.path()).unwrap();
        let key = load_certified_key(dir.path()).unwrap();
        for named in [None, Some("localhost"), Some("127.0.0.1"), Some("::1")] {
            assert_eq!(warnings(dir.path(), &key, named), Vec::<String>::new(), "{named:?}");
        }
        let w = warnings(dir.path(), &key, Some("login.example.com"));
        assert!(w.len() == 1 && w[0].contains("does not name public_url's host login.example.com"), "{w:?}");
        std::fs::set_permissions(key_path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = warnings(dir.path(), &key, Some("localhost"));
        assert!(w.len() == 1 && w[0].contains("mode 644"), "{w:?}");
    }

    /// A pair another user owns, or reached through a directory of theirs, is not served
    /// (review 157), at start or at a reload. Giving files away needs root.
    #[test]
    fn a_pair_another_user_could_have_chosen_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        install_crypto_provider();
        if crate::store::effective_uid() != 0 {
            eprintln!("skipping: giving a file to another user needs root");
            return;
        }
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        ensure_certificate(theirs.path()).unwrap();
        std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["cert.pem", "key.pem"] {
            std::os::unix::fs::symlink(theirs.path().join(name), ours.path().join(name)).unwrap();
        }
        assert!(load_certified_key(ours.path()).is_ok(), "root's pair, through root's links");
        std::os::unix::fs::chown(theirs.path(), Some(4321), None).unwrap();
        let e = format!("{:#}", load_certified_key(ours.path()).unwrap_err());
        assert!(e.contains("which belongs to uid 4321"), "root's files in another user's directory: {e}");
        std::os::unix::fs::chown(theirs.path(), Some(0), None).unwrap();
        std::os::unix::fs::chown(theirs.path().join("key.pem"), Some(4321), None).unwrap();
        let e = format!("{:#}", load_certified_key(ours.path()).unwrap_err());
        assert!(e.contains("key.pem belongs to uid 4321"), "another user's key: {e}");
    }

    /// A link to nothing in place of `cert.pem` or `key.pem` is named as such, not met with
    /// "File exists" when a development pair is written beside it (review 157).
    #[test]
    fn a_link_to_nothing_in_the_pair_is_named() {
        install_crypto_provider();
        for name in ["key.pem", "cert.pem"] {
            let dir = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(dir.path().join("gone.pem"), dir.path().join(name)).unwrap();
            let e = format!("{:#}", ensure_certificate(dir.path()).unwrap_err());
            assert!(e.contains(&format!("{name} is a link to")) && e.contains("gone.pem, which does not exist"), "{e}");
            assert!(!dir.path().join("gone.pem").exists(), "nothing written through it");
        }
    }

    /// A `cert_dir` another user made between the look that found it missing and the making
    /// is refused before a key is written into it (review 159): `make_directory` is what runs
    /// after that look. Giving a directory away needs root.
    #[test]
    fn a_cert_dir_another_user_made_just_before_it_was_made_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        make_directory(&tmp.path().join("made")).unwrap();
        if crate::store::effective_uid() != 0 {
            eprintln!("skipping the rest: giving a directory to another user needs root");
            return;
        }
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4321), None).unwrap();
        let e = format!("{:#}", make_directory(&theirs).unwrap_err());
        assert!(e.contains("belongs to uid 4321"), "{e}");
        let e = format!("{:#}", make_directory(&theirs.join("certs")).unwrap_err());
        assert!(e.contains("which belongs to uid 4321"), "a parent of theirs: {e}");
        assert!(!theirs.join("certs").exists(), "nothing of ours made in their directory");
    }

    #[test]
    fn a_development_pair_is_generated_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_certificate(dir.path()).unwrap());
        assert!(!ensure_certificate(dir.path()).unwrap());
        let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = load_certified_key(dir.path()).unwrap();
        // Valid from a day back for DEV_CERT_DAYS, not to the year 4096 (found by a review).
        let leaf = key.end_entity_cert().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let (from, until) = (cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime());
        assert_eq!((until - from).whole_days(), DEV_CERT_DAYS);
        let eku = cert.extended_key_usage().unwrap().expect("an extended key usage");
        assert!(eku.value.server_auth, "for TLS servers");
        assert!(cert.subject().to_string().contains("portcullis development certificate"));
        assert_eq!(warnings(dir.path(), &key, Some("localhost")), Vec::<String>::new(), "nothing to say at once");
    }

    /// A certificate past its end, before its start, or near its end is said at start; the
    /// server still starts (an operator renewing it needs it running to be reached at all).
    #[test]
    fn an_expired_or_expiring_certificate_is_said() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        ensure_certificate(dir.path()).unwrap();
        let key = load_certified_key(dir.path()).unwrap();
        let leaf = key.end_entity_cert().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let at = |days: i64| validity_warning(dir.path(), leaf, now + time::Duration::days(days));
        let at_text = |days: i64| at(days).map(|(_, warning)| warning);
        // It ends DEV_CERT_DAYS - 1 days from its making, less the moments since.
        assert_eq!(at_text(0), None);
        assert_eq!(at_text(DEV_CERT_DAYS - EXPIRY_WARNING_DAYS - 2), None, "15 days left");
        assert!(at(DEV_CERT_DAYS - EXPIRY_WARNING_DAYS - 1).is_some(), "14 days left, less a moment");
        let (kind, soon) = at(DEV_CERT_DAYS - 6).unwrap();
        assert!(kind == Dates::EndingSoon && soon.contains("expires on") && soon.contains("(in 5 days)"), "{soon}");
        let (_, last) = at(DEV_CERT_DAYS - 2).unwrap();
        assert!(last.contains("(in 1 day)"), "{last}");
        let (kind, past) = at(DEV_CERT_DAYS).unwrap();
        assert!(kind == Dates::Expired && past.contains("expired on"), "{past}");
        assert!(past.contains("remove cert.pem and key.pem for a new development pair"), "{past}");
        let (kind, early) = at(-2).unwrap();
        assert!(
            kind == Dates::NotYetValid && early.contains("is not valid until") && early.contains(" UTC:"),
            "{early}"
        );
    }

    /// A pair put in `cert_dir` while the server runs replaces the one in service only when
    /// its dates are good now: an expired one is left out, one not valid yet waits until it
    /// is (found by a review: both were put in service).
    #[tokio::test]
    async fn a_reload_keeps_the_current_pair_when_the_new_one_is_expired_or_not_valid_yet() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        ensure_certificate(dir.path()).unwrap();
        let first = load_certified_key(dir.path()).unwrap();
        let resolver = CertResolver::new(Arc::clone(&first));
        let reloader = spawn_reloader(dir.path().to_path_buf(), Arc::clone(&resolver), Duration::from_millis(20));
        let served = || resolver.current().unwrap().end_entity_cert().unwrap().to_vec();
        let first_der = served();
        for (from, until) in [(-30, -1), (2, 30)] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            let now = time::OffsetDateTime::now_utc();
            (params.not_before, params.not_after) =
                (now + time::Duration::days(from), now + time::Duration::days(until));
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            std::fs::write(key_path(dir.path()), key.serialize_pem()).unwrap();
            std::fs::write(cert_path(dir.path()), cert.pem()).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(served(), first_der, "days {from}..{until}: the current pair stays in service");
        }
        // A good one is loaded.
        std::fs::remove_file(cert_path(dir.path())).unwrap();
        std::fs::remove_file(key_path(dir.path())).unwrap();
        ensure_certificate(dir.path()).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while served() == first_der {
            assert!(std::time::Instant::now() < until, "a good new pair is loaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reloader.abort();
    }

    #[test]
    fn one_file_without_the_other_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(cert_path(dir.path()), "x").unwrap();
        let err = ensure_certificate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("key.pem is missing"), "{err}");
    }

    /// Killed between the two links, a first start leaves its key written beside the
    /// certificate (review 192, with strace): the next start finishes that pair at once, young
    /// or not, and nothing is left beside it.
    #[test]
    fn a_development_pair_cut_short_between_its_links_is_finished_with_its_own_key() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_certificate(dir.path()).unwrap());
        let (cert, key) = (cert_path(dir.path()), key_path(dir.path()));
        let written = dir.path().join("key.pem.new-0123456789abcdef");
        std::fs::rename(&key, &written).unwrap();
        std::fs::hard_link(&cert, dir.path().join("cert.pem.new-0123456789abcdef")).unwrap();
        // Another pair's key beside it is not taken.
        let (_, other) = development_pair().unwrap();
        std::fs::write(dir.path().join("key.pem.new-00"), other).unwrap();
        let certificate = std::fs::read(&cert).unwrap();
        check_existing_certificate(dir.path()).unwrap();
        assert!(!ensure_certificate(dir.path()).unwrap(), "finished, not made anew");
        assert_eq!(std::fs::read(&cert).unwrap(), certificate);
        load_certified_key(dir.path()).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, ["cert.pem", "key.pem"], "nothing left beside the pair");
    }

    /// What a first start killed between linking its certificate and its key left, a
    /// development certificate alone, is mended at the next start once it is older than
    /// another start's linking would take; an operator's certificate alone, or a young one,
    /// is still refused. Leftovers written under other names go.
    #[test]
    fn a_development_certificate_a_first_start_left_without_its_key_is_made_anew() {
        use std::os::unix::fs::PermissionsExt;
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let backdate = |path: &Path| {
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(60)).unwrap();
        };
        assert!(ensure_certificate(dir.path()).unwrap());
        std::fs::remove_file(key_path(dir.path())).unwrap();
        for leftover in ["cert.pem.new-0011223344556677", "key.pem.new-0011223344556677"] {
            std::fs::write(dir.path().join(leftover), "x").unwrap();
        }
        let young = format!("{:#}", check_existing_certificate(dir.path()).unwrap_err());
        assert!(young.contains("is a development certificate without its key"), "{young}");
        assert!(young.contains("once it is 10 s old (another start may be writing this one)"), "{young}");
        assert!(ensure_certificate(dir.path()).is_err());
        backdate(&cert_path(dir.path()));
        check_existing_certificate(dir.path()).unwrap();
        assert!(ensure_certificate(dir.path()).unwrap(), "a new pair");
        load_certified_key(dir.path()).unwrap();
        let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, ["cert.pem", "key.pem"], "nothing left beside the pair");

        // An operator's certificate whose key is missing is a deployment gone half-way.
        let theirs = tempfile::tempdir().unwrap();
        let params = rcgen::CertificateParams::new(vec!["login.example.com".to_string()]).unwrap();
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(cert_path(theirs.path()), cert.pem()).unwrap();
        backdate(&cert_path(theirs.path()));
        let e = format!("{:#}", check_existing_certificate(theirs.path()).unwrap_err());
        assert!(e.contains("key.pem is missing"), "{e}");
        assert!(ensure_certificate(theirs.path()).is_err());
        assert_eq!(std::fs::read_to_string(cert_path(theirs.path())).unwrap(), cert.pem(), "left as it was");
    }

    #[test]
    fn one_address_gets_its_share_of_connections_and_proxies_are_exempt() {
        let counts = AddressCounts::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let a = counts.admit(ip);
        let b = counts.admit("::ffff:203.0.113.5".parse().unwrap());
        assert!(matches!((&a, &b), (Admission::Counted(_), Admission::Counted(_))));
        assert!(matches!(counts.admit(ip), Admission::Refused));
        assert!(matches!(counts.admit("203.0.113.6".parse().unwrap()), Admission::Counted(_)));
        drop(a);
        assert!(matches!(counts.admit(ip), Admission::Counted(_)), "a slot comes back when its connection ends");
        // One IPv6 /64 is one address; a trusted proxy is never refused.
        let v6: Vec<_> =
            ["2001:db8::1", "2001:db8::2", "2001:db8::3"].iter().map(|a| counts.admit(a.parse().unwrap())).collect();
        assert!(matches!(v6[2], Admission::Refused));
        for _ in 0..10 {
            assert!(matches!(counts.admit("10.1.2.3".parse().unwrap()), Admission::Exempt));
        }
    }

    #[test]
    fn a_key_from_another_pair_is_refused() {
        install_crypto_provider();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        ensure_certificate(a.path()).unwrap();
        ensure_certificate(b.path()).unwrap();
        std::fs::copy(key_path(b.path()), key_path(a.path())).unwrap();
        assert!(load_certified_key(a.path()).is_err());
    }
}
