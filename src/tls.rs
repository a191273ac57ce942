//! HTTPS: certificate files (loading, a generated development pair, reload without restart)
//! and the acceptor that puts rustls, a connection cap and a handshake deadline in front of
//! poem.
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
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

/// What the HTTPS listener bounds; each field is the setting of the same name.
pub struct Limits {
    pub max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold at once; addresses in
    /// `exempt` (trusted proxies) are not capped. Connections past the cap are closed at
    /// once, so that one host cannot take every slot under `max_connections`.
    pub max_connections_per_ip: usize,
    pub exempt: Vec<ipnet::IpNet>,
    /// How long a client may take over the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take over each request's headers.
    pub header_read_timeout: Duration,
}

impl Limits {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Limits {
            max_connections: settings.max_connections,
            max_connections_per_ip: settings.max_connections_per_ip,
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

/// Makes sure `dir` holds a certificate and key. When both are absent, writes a self-signed
/// pair for localhost and 127.0.0.1 (the key with mode 0600) and returns true. One without
/// the other is an error: it usually means a deployment went half-way.
pub fn ensure_certificate(dir: &Path) -> anyhow::Result<bool> {
    let (cert, key) = (cert_path(dir), key_path(dir));
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(false),
        (true, false) => bail!("{} exists but {} is missing", cert.display(), key.display()),
        (false, true) => bail!("{} exists but {} is missing", key.display(), cert.display()),
        (false, false) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let generated = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])
            .context("cannot generate a development certificate")?;
            write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert, generated.cert.pem()).with_context(|| format!("cannot write {}", cert.display()))?;
            Ok(true)
        }
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// Reads the pair in `dir` and checks that the key belongs to the certificate.
pub fn load_certified_key(dir: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let (cert, key) = (cert_path(dir), key_path(dir));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key_der =
        PrivateKeyDer::from_pem_file(&key).with_context(|| format!("{} is not a PEM private key", key.display()))?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .with_context(|| format!("{} does not match {}", key.display(), cert.display()))?;
    Ok(Arc::new(certified))
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
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| Arc::clone(&k))
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
fn fingerprint(dir: &Path) -> Option<(SystemTime, u64, SystemTime, u64)> {
    let c = std::fs::metadata(cert_path(dir)).ok()?;
    let k = std::fs::metadata(key_path(dir)).ok()?;
    Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
}

/// Re-reads the pair whenever the files change. A pair that is half-written or mismatched
/// is skipped (and retried at the next change), keeping the one in service.
pub fn spawn_reloader(dir: PathBuf, resolver: Arc<CertResolver>, every: Duration) -> tokio::task::JoinHandle<()> {
    // Taken now rather than when the task first runs: a change landing in between would
    // otherwise become the baseline and never be loaded.
    let mut seen = fingerprint(&dir);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = fingerprint(&dir);
            if now.is_none() || now == seen {
                continue;
            }
            match load_certified_key(&dir) {
                Ok(key) => {
                    resolver.replace(key);
                    seen = now;
                    tracing::info!(dir = %dir.display(), "certificate reloaded");
                }
                Err(e) => {
                    // Remember this version too: it is retried when the files change again
                    // (a half-written pair completes), not warned about every tick.
                    seen = now;
                    tracing::warn!(error = %format!("{e:#}"), "certificate change ignored; keeping the current one")
                }
            }
        }
    })
}

/// Accepts TCP connections up to a cap and wraps each in a TLS server stream whose handshake
/// runs lazily in the connection's own task, with a deadline; then gives each request's headers
/// a deadline too (see [`HeadDeadline`]).
pub struct TlsAcceptor {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    per_address: Arc<AddressCounts>,
}

/// Connections the kernel queues for us while every slot is taken (tokio's default is 128:
/// past the queue, clients see dropped SYNs and retry a second or more later).
const LISTEN_BACKLOG: u32 = 1024;

/// How long to pause after a failed `accept` (out of file descriptors, most likely): the
/// connection stays queued, so retrying at once would fail again and spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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

impl TlsAcceptor {
    pub async fn bind(addr: SocketAddr, config: Arc<rustls::ServerConfig>, limits: Limits) -> io::Result<Self> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let local_addr = listener.local_addr()?;
        Ok(TlsAcceptor {
            listener,
            local_addr,
            tls: tokio_rustls::TlsAcceptor::from(config),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            handshake_timeout: limits.handshake_timeout,
            header_read_timeout: limits.header_read_timeout,
            per_address: AddressCounts::new(limits.max_connections_per_ip, limits.exempt),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Acceptor for TlsAcceptor {
    type Io = TlsConnection;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![LocalAddr(self.local_addr.into())]
    }

    async fn accept(&mut self) -> io::Result<(TlsConnection, LocalAddr, RemoteAddr, Scheme)> {
        // Waiting for a slot before accepting leaves excess clients in the kernel's backlog
        // instead of holding memory for them here.
        let permit = Arc::clone(&self.slots).acquire_owned().await.map_err(|_| io::Error::other("listener closed"))?;
        let (stream, peer, address_slot) = loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    return Err(e);
                }
            };
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
        let handshake = self.tls.accept(stream);
        let timeout = self.handshake_timeout;
        let handshake = async move {
            tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        };
        let conn = TlsConnection {
            state: State::Handshaking(Box::pin(handshake)),
            head: HeadDeadline::new(self.header_read_timeout),
            _slot: permit,
            _address_slot: address_slot,
        };
        Ok((conn, LocalAddr(self.local_addr.into()), RemoteAddr(peer.into()), Scheme::HTTPS))
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<TlsStream<TcpStream>>> + Send>>;

enum State {
    Handshaking(Handshake),
    Ready(Box<TlsStream<TcpStream>>),
    Failed,
}

/// The slowloris defence: each request's headers must arrive within a deadline.
///
/// poem drives hyper without a timer, so hyper's own `header_read_timeout` is off, and poem's
/// idle timeout restarts with every byte read: a client sending one header byte a minute
/// would hold its connection (and a slot under the cap) for ever. This watches the decrypted
/// bytes instead, below hyper, and fails the read once the deadline passes:
///
/// - the deadline starts when the TLS handshake completes (the first request), or when the
///   first byte of a later request arrives on a keep-alive connection, whose idle time in
///   between is poem's idle timeout's business;
/// - it ends with the blank line that ends an HTTP/1 request head (`\r\n\r\n`); the body
///   and the handler's time do not count;
/// - the server's next write (its response) means the next bytes start a new request.
///
/// HTTP/2 frames its requests itself: there the deadline covers only the connection preface
/// (which ends with a blank line as well), after which hyper's HTTP/2 limits apply.
struct HeadDeadline {
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A complete head arrived and no response has been written since.
    head_complete: bool,
    /// The last bytes of the previous read, for a blank line split across reads.
    tail: [u8; 3],
    /// HTTP/2: only the preface is timed.
    done: bool,
    /// Nothing has been read yet (an HTTP/2 preface without ALPN shows in the first bytes).
    fresh: bool,
}

impl HeadDeadline {
    fn new(timeout: Duration) -> Self {
        HeadDeadline { timeout, sleep: None, head_complete: false, tail: [0; 3], done: false, fresh: true }
    }

    /// The handshake finished: the first request's head is due from now.
    fn start(&mut self, h2: bool) {
        self.arm();
        self.done = h2;
    }

    fn arm(&mut self) {
        self.tail = [0; 3];
        let deadline = tokio::time::Instant::now() + self.timeout;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    fn armed(&self) -> bool {
        self.sleep.is_some()
    }

    /// Decrypted bytes arrived.
    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || (self.done && !self.armed()) {
            return;
        }
        if std::mem::take(&mut self.fresh) && bytes.starts_with(b"PRI * HTTP/2.0") {
            self.done = true;
        }
        if !self.armed() {
            if self.head_complete {
                return; // a body, or a pipelined request behind a complete head
            }
            self.arm();
        }
        if ends_head(&self.tail, bytes) {
            self.sleep = None;
            self.head_complete = true;
        } else {
            // The last three bytes seen so far, from this read and, if it is shorter, the tail.
            let (joined, len) = join_tail(&self.tail, &bytes[bytes.len().saturating_sub(3)..]);
            self.tail.copy_from_slice(&joined[len - 3..len]);
        }
    }

    /// The server is answering: whatever the client sends next is a new request.
    fn on_write(&mut self) {
        if !self.armed() {
            self.head_complete = false;
        }
    }

    /// Whether the deadline has passed (registering for a wake-up if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

/// Whether `bytes`, after the `tail` of the previous read, contain the blank line ending a head.
fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    const BLANK: &[u8] = b"\r\n\r\n";
    let (start, len) = join_tail(tail, &bytes[..bytes.len().min(3)]);
    start[..len].windows(4).any(|w| w == BLANK) || bytes.windows(4).any(|w| w == BLANK)
}

/// `tail` followed by up to three `more` bytes, on the stack (this runs on every read of a
/// request head): the bytes and how many are used.
fn join_tail(tail: &[u8; 3], more: &[u8]) -> ([u8; 6], usize) {
    let more = &more[..more.len().min(3)];
    let mut joined = [0u8; 6];
    joined[..3].copy_from_slice(tail);
    joined[3..3 + more.len()].copy_from_slice(more);
    (joined, 3 + more.len())
}

/// One client connection. Holds its slot under the connection cap until dropped.
pub struct TlsConnection {
    state: State,
    head: HeadDeadline,
    _slot: OwnedSemaphorePermit,
    _address_slot: Option<AddressSlot>,
}

impl TlsConnection {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut TlsStream<TcpStream>>> {
        if let State::Handshaking(fut) = &mut self.state {
            match fut.as_mut().poll(cx) {
                Poll::Ready(Ok(stream)) => {
                    self.head.start(stream.get_ref().1.alpn_protocol() == Some(b"h2"));
                    self.state = State::Ready(Box::new(stream));
                }
                Poll::Ready(Err(e)) => {
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match &mut self.state {
            State::Ready(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "TLS handshake failed"))),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let stream = match this.poll_ready(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.head.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.head.expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request headers not received in time")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.head.on_write();
        match this.poll_ready(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_ready(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_development_pair_is_generated_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_certificate(dir.path()).unwrap());
        assert!(!ensure_certificate(dir.path()).unwrap());
        let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        load_certified_key(dir.path()).unwrap();
    }

    #[test]
    fn one_file_without_the_other_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(cert_path(dir.path()), "x").unwrap();
        let err = ensure_certificate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("key.pem is missing"), "{err}");
    }

    #[tokio::test]
    async fn the_blank_line_ending_a_head_is_found_even_split_across_reads() {
        assert!(ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(ends_head(b"x\r\n", b"\r\nbody"));
        assert!(ends_head(b"\r\n\r", b"\n"));
        assert!(ends_head(b"\n\r\n", b"\r\n"));
        assert!(!ends_head(b"\r\n\r", b"x\n"));
        let mut d = HeadDeadline::new(Duration::from_secs(20));
        // A keep-alive request arriving in pieces: armed by its first byte, done at its end.
        d.on_read(b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(d.armed());
        d.on_read(b"\n\r");
        assert!(d.armed());
        d.on_read(b"\n");
        assert!(!d.armed() && d.head_complete);
        // Its body does not re-arm; the response makes the next bytes a new request.
        d.on_read(b"csrf=x");
        assert!(!d.armed());
        d.on_write();
        d.on_read(b"G");
        assert!(d.armed());
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
