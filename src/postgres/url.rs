//! `database_url`: where the PostgreSQL store is, parsed once into a type that cannot show
//! its password (SPEC.md: the database password never appears in a log line, an error or
//! `--help`).
//!
//! Accepted forms, a subset of libpq's connection URIs (PostgreSQL 15 docs §34.1.1.2):
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?sslmode=…&sslrootcert=FILE]`, with the
//! host and port also accepted as query parameters (`?host=…&port=…`, which win over the
//! authority's, as in libpq), so a Unix socket directory is written either
//! `postgres://USER@/DBNAME?host=/run/postgresql` (libpq's documented form; the host part
//! may be empty, or hold only `:PORT`) or percent-encoded as the host
//! (`postgres://USER@%2Frun%2Fpostgresql/DBNAME`). `postgresql://` is the same. Other query
//! parameters, and libpq's lists of several hosts, are refused, so a typo is an error, not
//! a silent default.

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

/// How TLS to the database is used: libpq's `sslmode` values (PostgreSQL 15 docs §34.19.3,
/// table 34.1), except `allow`, which tries plaintext first and so protects nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate; plaintext otherwise.
    /// libpq's default, and so ours: it stops passive listeners only.
    Prefer,
    /// TLS always, certificate not checked (libpq: unless a root file is given, which makes
    /// it `VerifyCa`; [`DatabaseUrl::ssl_mode`] applies that rule).
    Require,
    /// TLS always, certificate chain checked against the roots, host name not checked.
    VerifyCa,
    /// TLS always, chain and host name checked: the only mode that stops an active attacker.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "sslmode `{}` is not supported: use disable, prefer, require, verify-ca or verify-full",
                crate::text::printable(other)
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A host name or an IP address (IPv6 without brackets).
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.PORT`).
    Socket(PathBuf),
}

impl Endpoint {
    /// libpq's reading of a `host` value: a directory when it starts with `/`, a host name or
    /// address otherwise (PostgreSQL 15 docs §34.1.2, `host`).
    fn parse(value: &str) -> Result<Endpoint, String> {
        if value.starts_with('/') {
            // libpq splits `host` at commas, socket directories too: `/run/a,/run/b` is two.
            if value.contains(',') {
                return Err("names several hosts: only one host is supported".into());
            }
            return Ok(Endpoint::Socket(PathBuf::from(value)));
        }
        check_host(value)?;
        Ok(Endpoint::Tcp(value.to_string()))
    }
}

/// Refuses what libpq would read differently or no resolver could find: an empty host, a
/// list of hosts (libpq tries each in turn; we connect to one), a relative socket path.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        Err("host is empty: name a host, an address, or a socket directory starting with /".into())
    } else if host.contains(',') {
        Err("names several hosts: only one host is supported".into())
    } else if host.contains('/') || host.chars().any(char::is_whitespace) || host.chars().any(char::is_control) {
        Err(format!(
            "host `{}` is neither a host name, an address, nor a socket directory starting with /",
            crate::text::printable(host)
        ))
    } else {
        Ok(())
    }
}

/// `text` with a stand-in host when its authority has none (`postgres://USER@/DB`,
/// `postgres://USER@:5433/DB`, `postgres:///DB`), and whether it had none. The authority
/// ends at the first `/`, `?` or `#` (RFC 3986 §3.2), and its host starts after the last `@`.
fn with_stand_in_host(text: &str) -> (std::borrow::Cow<'_, str>, bool) {
    let Some((at, host_and_port)) = host_and_port(text) else { return (text.into(), false) };
    if !host_and_port.is_empty() && !host_and_port.starts_with(':') {
        return (text.into(), false);
    }
    (format!("{}stand-in.invalid{}", &text[..at], &text[at..]).into(), true)
}

/// Where the authority's `host[:port]` part of `text` starts, and that part (after any
/// `user@`, before the path, query or fragment); `None` without `://`.
fn host_and_port(text: &str) -> Option<(usize, &str)> {
    let start = text.find("://")? + 3;
    let rest = &text[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    Some((start + host_start, &rest[host_start..authority_end]))
}

/// The query's `key=value` pairs, percent-decoded as libpq decodes them (a `+` stays a `+`:
/// it is not a form).
fn query_params(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let decode = |s: &str| percent_decode(s).ok_or_else(|| BAD_ESCAPE.to_string());
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("parameter `{}` has no value (KEY=VALUE)", crate::text::printable(&decode(pair)?)));
        };
        let key = decode(key)?;
        // libpq keeps the last of a repeated parameter; a repeat is more likely a mistake.
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("parameter `{}` is given twice", crate::text::printable(&key)));
        }
        out.push((key, decode(value)?));
    }
    Ok(out)
}

/// A parsed `database_url`. `Debug` and `Display` show `***` for the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    user: String,
    password: Option<SecretString>,
    endpoint: Endpoint,
    port: u16,
    dbname: String,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
}

/// What a bad `%` escape is told (without saying where: it may be in the password).
const BAD_ESCAPE: &str =
    "holds a bad %-escape: % must be followed by two hex digits (write % itself as %25), and the bytes must be UTF-8";

/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;

impl DatabaseUrl {
    /// Parses a `postgres://` URL (module docs).
    ///
    /// # Errors
    /// A one-line message saying what is wrong; it never quotes the password.
    pub fn parse(text: &str) -> Result<DatabaseUrl, String> {
        // The URL standard's parser refuses an empty host after a user (`USER@/DB`) or before
        // a port (`:5433`); libpq reads it as "no host here" (a `host` parameter, or its
        // default, supplies one). Parsed with a stand-in host, which is then ignored.
        let text = text.trim();
        // A URL's fragment: everything after a `#` would be dropped without a word,
        // `?sslmode=verify-full` with it; and one in a password ends the authority there, so
        // it must be caught before the URL is parsed (found by reviews).
        if text.contains('#') {
            return Err(
                "holds a `#`, after which everything would be ignored: write a `#` in a password or a name as %23"
                    .into(),
            );
        }
        // The URL standard's parser drops tabs and line breaks wherever they are, so
        // `port<TAB>cullis` would name `portcullis` and a tab in a password vanish (review 150).
        if text.chars().any(char::is_control) {
            return Err(
                "holds a control character (a tab or a line break?): write one in a password as %09 or %0A".into()
            );
        }
        // libpq's `host1:port1,host2:port2`: the URL parser would call it a bad port.
        if host_and_port(text).is_some_and(|(_, h)| h.contains(',')) {
            return Err("names several hosts: only one host is supported".into());
        }
        let (text, no_host) = with_stand_in_host(text);
        let url = url::Url::parse(&text).map_err(|e| format!("not a postgres:// URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err("must start with postgres:// or postgresql://".into());
        }
        let decode = |s: &str| -> Result<String, String> { percent_decode(s).ok_or_else(|| BAD_ESCAPE.to_string()) };
        let mut user = decode(url.username())?;
        let password = match url.password() {
            Some(p) => Some(SecretString::from(decode(p)?)),
            None => None,
        };
        let mut endpoint = match url.host() {
            _ if no_host => None,
            Some(url::Host::Domain(d)) if !d.is_empty() => {
                let d = decode(d)?;
                // libpq: a host starting with a slash (written %2F) is a socket directory.
                if d.starts_with('/') {
                    Some(Endpoint::Socket(PathBuf::from(d)))
                } else {
                    Some(Endpoint::Tcp(d))
                }
            }
            Some(url::Host::Ipv4(a)) => Some(Endpoint::Tcp(a.to_string())),
            Some(url::Host::Ipv6(a)) => Some(Endpoint::Tcp(a.to_string())),
            _ => None,
        };
        let mut port = url.port();
        let mut ssl_mode = None;
        let mut root_cert = None;
        for (key, value) in query_params(url.query().unwrap_or(""))? {
            match key.as_str() {
                "host" => endpoint = Some(Endpoint::parse(&value)?),
                "port" => port = Some(value.parse().map_err(|_| "port must be a number from 1 to 65535".to_string())?),
                "user" => user = value,
                "sslmode" => ssl_mode = Some(SslMode::parse(&value)?),
                "sslrootcert" if value.is_empty() => return Err("sslrootcert is empty: name a PEM file".into()),
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                "password" => return Err("put the password before the @ (postgres://USER:PASSWORD@HOST/DB)".into()),
                other => {
                    return Err(format!(
                        "unknown parameter `{}`: only host, port, user, sslmode and sslrootcert are accepted",
                        crate::text::printable(other)
                    ))
                }
            }
        }
        if port == Some(0) {
            return Err("port must be a number from 1 to 65535".into());
        }
        let endpoint =
            endpoint.ok_or("names no host: use postgres://HOST/DB or postgres://USER@/DB?host=/socket/dir")?;
        if let Endpoint::Tcp(host) = &endpoint {
            check_host(host)?;
        }
        if user.is_empty() {
            // libpq's default: the operating-system user (peer authentication on a socket).
            user = os_user().ok_or("names no user, and the operating-system user is unknown")?;
        }
        let path = decode(url.path().trim_start_matches('/'))?;
        if path.contains('/') {
            return Err("the path must be just the database name".into());
        }
        // libpq's default database is the user's name.
        let dbname = if path.is_empty() { user.clone() } else { path };
        Ok(DatabaseUrl {
            user,
            password,
            endpoint,
            port: port.unwrap_or(DEFAULT_PORT),
            dbname,
            ssl_mode: ssl_mode.unwrap_or(SslMode::Prefer),
            root_cert,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The password, for the driver only.
    pub fn password(&self) -> Option<&SecretString> {
        self.password.as_ref()
    }

    /// The root certificates file (`sslrootcert`), if given.
    pub fn root_cert(&self) -> Option<&std::path::Path> {
        self.root_cert.as_deref()
    }

    /// The TLS mode in effect, with libpq's rules applied: TLS is never used on a Unix socket
    /// (the server does not offer it there), and `require` with a root file is `verify-ca`.
    pub fn ssl_mode(&self) -> SslMode {
        match (&self.endpoint, self.ssl_mode) {
            (Endpoint::Socket(_), _) => SslMode::Disable,
            (Endpoint::Tcp(_), SslMode::Require) if self.root_cert.is_some() => SslMode::VerifyCa,
            (Endpoint::Tcp(_), mode) => mode,
        }
    }

    /// The same database with another name (tests make one database per test).
    pub fn with_dbname(&self, dbname: &str) -> DatabaseUrl {
        DatabaseUrl { dbname: dbname.to_string(), ..self.clone() }
    }

    /// The driver's configuration (without TLS, which [`super::connect`] adds).
    pub fn driver_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user).dbname(&self.dbname).port(self.port).application_name("portcullis");
        match &self.endpoint {
            Endpoint::Tcp(host) => c.host(host),
            Endpoint::Socket(dir) => c.host_path(dir),
        };
        if let Some(p) = &self.password {
            c.password(p.expose_secret());
        }
        c.ssl_mode(match self.ssl_mode() {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        c
    }
}

impl fmt::Display for DatabaseUrl {
    /// The URL with `***` for the password, for logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = enc(&self.user);
        let pass = if self.password.is_some() { ":***" } else { "" };
        let db = enc(&self.dbname);
        match &self.endpoint {
            Endpoint::Tcp(host) if host.contains(':') => write!(f, "postgres://{user}{pass}@[{host}]")?,
            Endpoint::Tcp(host) => write!(f, "postgres://{user}{pass}@{}", enc(host))?,
            // libpq's form for a socket directory as the host: the slashes written %2F.
            Endpoint::Socket(dir) => write!(f, "postgres://{user}{pass}@{}", enc(&dir.to_string_lossy()))?,
        }
        write!(f, ":{}/{db}?sslmode={}", self.port, self.ssl_mode.as_str())?;
        if let Some(root) = &self.root_cert {
            write!(f, "&sslrootcert={}", enc(&root.to_string_lossy()))?;
        }
        Ok(())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `text` (a `database_url` as written, perhaps not parseable) with any password replaced by
/// `***`, for an error message that quotes the value.
pub fn redact(text: &str) -> String {
    // Written for text that may not parse: a password may hold `#`, `/`, `?` or `@` unencoded,
    // so the userinfo runs to the LAST `@` (a host cannot hold one), whatever comes between.
    let start = text.find("://").map_or(0, |i| i + 3);
    let rest = &text[start..];
    let mut out = match rest.rfind('@') {
        Some(at) => {
            // An encoded `:` (`u%3As3cret@`) is a username to libpq, but what follows it was
            // meant as a password (review 157).
            let encoded = rest[..at].to_ascii_lowercase().find("%3a");
            match rest[..at].find(':').or(encoded) {
                Some(colon) => format!("{}{}:***{}", &text[..start], &rest[..colon], &rest[at..]),
                None => text.to_string(),
            }
        }
        // No `@` (forgotten, encoded `%40`, or a full-width `＠`; review 155): a `:` not before
        // a port's digits begins a password, and everything after it is hidden, since where
        // it ends cannot be told.
        None if start > 0 => {
            let after_host = if rest.starts_with('[') { rest.find(']').map_or(0, |i| i + 1) } else { 0 };
            match rest[after_host..].find(':').map(|c| after_host + c) {
                Some(colon) => {
                    let port = rest[colon + 1..].split(['/', '?', '#']).next().unwrap_or("");
                    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                        text.to_string()
                    } else {
                        format!("{}{}:***", &text[..start], &rest[..colon])
                    }
                }
                None => text.to_string(),
            }
        }
        None => text.to_string(),
    };
    // The query of a URL that names a password in any spelling (`?password=`, `pass%77ord=`,
    // `password%3D…`, `password[]=`; refused, but quoted in the refusal otherwise; review
    // 153): all of it, as no one spelling can be told from the rest.
    if let Some(scheme_end) = out.find("://") {
        if let Some(q) = out[scheme_end..].find('?').map(|q| scheme_end + q) {
            let decoded = percent_encoding::percent_decode_str(&out[q + 1..]).decode_utf8_lossy().to_lowercase();
            if decoded.contains("pass") {
                out.replace_range(q + 1.., "***");
            }
        }
    }
    keyword_passwords_masked(&out)
}

/// `text` with the value after each `password` keyword, as libpq's keyword form writes it
/// (`password=s3cret`, `password = s3cret`, `password='s 3cret'`, any case, blanks around
/// the `=`; review 153), replaced by `***`: up to the next blank, `&` or `"`, or within quotes.
fn keyword_passwords_masked(text: &str) -> String {
    const KEYWORD: &str = "password";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.to_ascii_lowercase().find(KEYWORD) {
        let after_keyword = &rest[i + KEYWORD.len()..];
        let blanks =
            |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_whitespace() || c == '[' || c == ']').len();
        let equals = blanks(after_keyword);
        out.push_str(&rest[..i + KEYWORD.len()]);
        if !after_keyword[equals..].starts_with('=') {
            rest = after_keyword;
            continue;
        }
        let value_at = equals + 1 + blanks(&after_keyword[equals + 1..]);
        out.push_str(&after_keyword[..value_at]);
        let value = &after_keyword[value_at..];
        let value_len = match value.strip_prefix('\'') {
            // libpq: a quoted value runs to the next quote not after a backslash.
            Some(quoted) => {
                let mut escaped = false;
                let close = quoted.char_indices().find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                });
                close.map_or(value.len(), |(at, _)| at + 2)
            }
            None => value.find(|c: char| c.is_whitespace() || c == '&' || c == '"').unwrap_or(value.len()),
        };
        out.push_str("***");
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

/// Whether `text`, given where a path, a name or a `store copy` target goes, looks like a
/// database URL, perhaps mistyped (`postgres:/u:pw@h/db`, `u:pw@h/db`): such a value is
/// refused and shown redacted, since taken as a path it would name a directory after the
/// password, and as `instance_name` write it into every log line (reviews 148 and 150).
pub fn looks_like_a_database_url(text: &str) -> bool {
    let lower = text.trim_start().to_ascii_lowercase();
    let scheme_like = ["postgres:", "postgresql:", "postgres//", "postgresql//"].iter().any(|s| lower.starts_with(s));
    let credentials_like = lower.find(':').is_some_and(|colon| lower[colon..].contains('@'));
    // `user@host:5432/db` without its scheme, and libpq's keyword form (`host=h password=p`;
    // review 151).
    let host_port_like = lower.split_once('@').is_some_and(|(_, after)| {
        after.split_once(':').is_some_and(|(_, port)| port.starts_with(|c: char| c.is_ascii_digit()))
    });
    let keywords_like = lower.contains("password=") || (lower.contains("host=") && lower.contains("dbname="));
    scheme_like || credentials_like || host_port_like || keywords_like || lower.contains("://")
}

/// `text` (a message) with [`redact`] applied to each word in it that holds `://` or
/// `password=`, words ending at whitespace and quotes: a command line's stray argument or a
/// setting's value quoted in an error (`invalid https_addr = "postgres://u:pw@h/db"`) keeps
/// its password out of the line (SPEC.md: the database password never appears in an error).
pub fn redact_words(text: &str) -> String {
    // A keyword's value may stand apart from it (`password = s3cret`): masked in the whole
    // text first.
    let text = &keyword_passwords_masked(text);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let lower = word.to_ascii_lowercase();
        if lower.contains("://") || lower.contains("password=") {
            out.push_str(&redact(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// `s` percent-decoded; `None` when a `%` is not followed by two hex digits (libpq refuses
/// such a URL, "invalid percent-encoded token": a password with a stray `%` would otherwise
/// fail later as a wrong password; found by a review) or the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| b.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

/// The effective user's login name (libpq's default user).
fn os_user() -> Option<String> {
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`, whose sizes it is given; the name
    // pointer it returns points into `buf`, read before `buf` goes out of scope.
    unsafe {
        let mut pwd = std::mem::MaybeUninit::<libc::passwd>::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result = std::ptr::null_mut();
        let rc = libc::getpwuid_r(libc::geteuid(), pwd.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*result).pw_name);
        name.to_str().ok().map(str::to_string)
    }
}

/// This machine's host name (the default `instance_name`), or `portcullis` when it has none.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "portcullis".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_url_parses_with_its_parts_and_libpq_defaults() {
        let u = DatabaseUrl::parse("postgres://app:s%40cret@db.example.com/auth").unwrap();
        assert_eq!(u.user(), "app");
        assert_eq!(u.password().unwrap().expose_secret(), "s@cret");
        assert_eq!(u.endpoint(), &Endpoint::Tcp("db.example.com".into()));
        assert_eq!(u.port(), 5432);
        assert_eq!(u.dbname(), "auth");
        assert_eq!(u.ssl_mode(), SslMode::Prefer, "libpq's default");
        let u =
            DatabaseUrl::parse("postgresql://app@[::1]:6543/auth?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(u.endpoint(), &Endpoint::Tcp("::1".into()));
        assert_eq!((u.port(), u.ssl_mode()), (6543, SslMode::VerifyFull));
        assert_eq!(u.root_cert(), Some(std::path::Path::new("/etc/ca.pem")));
    }

    #[test]
    fn a_socket_url_names_the_directory_and_never_uses_tls() {
        let u = DatabaseUrl::parse("postgres:///auth?host=/run/postgresql&sslmode=require").unwrap();
        assert_eq!(u.endpoint(), &Endpoint::Socket("/run/postgresql".into()));
        assert_eq!(u.dbname(), "auth");
        assert!(!u.user().is_empty(), "the operating-system user");
        assert_eq!(u.ssl_mode(), SslMode::Disable, "libpq uses no TLS on a socket");
        let u = DatabaseUrl::parse("postgres://me@%2Fvar%2Frun%2Fpostgresql/auth").unwrap();
        assert_eq!(u.endpoint(), &Endpoint::Socket("/var/run/postgresql".into()));
    }

    #[test]
    fn libpqs_socket_form_with_an_empty_host_and_the_host_as_a_parameter_is_accepted() {
        let socket = Endpoint::Socket("/path/to/socket".into());
        for (text, user, port, db) in [
            ("postgres://user@/db?host=/path/to/socket", "user", 5432, "db"),
            ("postgresql://user:pw@/db?host=/path/to/socket", "user", 5432, "db"),
            ("postgres://user@/db?host=/path/to/socket&port=5433", "user", 5433, "db"),
            ("postgres://user@:5433/db?host=/path/to/socket", "user", 5433, "db"),
            ("postgres://:5433/db?host=/path/to/socket&user=user", "user", 5433, "db"),
            ("postgres://user@/db?host=%2Fpath%2Fto%2Fsocket", "user", 5432, "db"),
            ("postgres://user@/?host=/path/to/socket", "user", 5432, "user"),
            ("postgres://user@/db?port=5433&host=/path/to/socket&sslmode=disable", "user", 5433, "db"),
            // The parameter wins over the authority's host, as in libpq.
            ("postgres://user@db.example.com/db?host=/path/to/socket", "user", 5432, "db"),
            ("postgres://user@%2Fother/db?host=/path/to/socket", "user", 5432, "db"),
        ] {
            let u = DatabaseUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((u.endpoint(), u.user(), u.port(), u.dbname()), (&socket, user, port, db), "{text}");
            assert_eq!(u.ssl_mode(), SslMode::Disable, "{text}");
            // What it shows (logs, `config check`) reads back as the same place.
            let again = DatabaseUrl::parse(&u.to_string()).unwrap();
            assert_eq!((again.endpoint(), again.port(), again.dbname()), (&socket, port, db), "{u}");
        }
        let u = DatabaseUrl::parse("postgres://me@/db?host=/run/a+b").unwrap();
        assert_eq!(u.endpoint(), &Endpoint::Socket("/run/a+b".into()), "a + is not a space, as in libpq");
        let u = DatabaseUrl::parse("postgres://me@/db?host=db.example.com&port=6543").unwrap();
        assert_eq!((u.endpoint(), u.port()), (&Endpoint::Tcp("db.example.com".into()), 6543));
        assert_eq!(u.ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn a_malformed_host_or_port_is_refused_in_one_line_without_the_password() {
        for (bad, says) in [
            ("postgres://user:hunter2@/db", "names no host"),
            ("postgres://user:hunter2@:5433/db", "names no host"),
            ("postgres://user:hunter2@/db?host=", "host is empty"),
            ("postgres://user:hunter2@/db?host=relative/dir", "neither a host name"),
            ("postgres://user:hunter2@/db?host=a,b", "several hosts"),
            ("postgres://user:hunter2@a,b/db", "several hosts"),
            ("postgres://user:hunter2@127.0.0.1:5432,127.0.0.2:5432/db", "several hosts"),
            ("postgres://user:hunter2@/db?host=/run/a,/run/b", "several hosts"),
            ("postgres://user:hunter2@/db?host=/run/a&host=/run/b", "given twice"),
            ("postgres://user:hunter2@db/db?sslmode=require&sslmode=disable", "given twice"),
            ("postgres://user:hunter2@/db?host=/s&port=", "port must be"),
            ("postgres://user:hunter2@/db?host=/s&port=0", "port must be"),
            ("postgres://user:hunter2@/db?host=/s&port=5432,5433", "port must be"),
            ("postgres://user:hunter2@:0/db?host=/s", "port must be"),
            ("postgres://user:hunter2@:x/db?host=/s", "port"),
            ("postgres://user:hunter2@/db?host=/s&sslrootcert=", "sslrootcert is empty"),
            ("postgres://user:hunter2@/db?host=/s&sslmode", "no value"),
            ("postgres://user:hunter2@/db/x?host=/s", "just the database name"),
            ("postgres://user:hun%ZZter2@h/db", "bad %-escape"),
            ("postgres://user:hunter2%4@h/db", "bad %-escape"),
            ("postgres://user:hunter2%@h/db", "bad %-escape"),
            ("postgres://user:hunter2@h/db?sslrootcert=/ca%G1.pem", "bad %-escape"),
            ("postgres://user:hunter2@h/d%b", "bad %-escape"),
            ("postgres://user:hunter2@h/db#?sslmode=verify-full", "holds a `#`"),
            ("postgres://user:hunter2@h/db?sslmode=verify-full#x", "holds a `#`"),
            ("postgres://user:hunter2@h/db#fr%ag", "holds a `#`"),
            ("postgres://user:hunter2@/db#?host=/s", "holds a `#`"),
            ("postgres://user:hunter2#x@h/db", "holds a `#`"),
            ("postgres://user:hun#ter2@127.0.0.1:5432/db", "holds a `#`"),
            ("postgres://us#er:hunter2@h/db", "holds a `#`"),
        ] {
            let err = DatabaseUrl::parse(bad).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("hunter2") && !err.contains('\n'), "{bad}: {err}");
            assert!(!err.contains("stand-in"), "the stand-in host never shows: {err}");
        }
    }

    #[test]
    fn require_with_a_root_file_verifies_the_chain_as_libpq_does() {
        let u = DatabaseUrl::parse("postgres://a@h/d?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(u.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(DatabaseUrl::parse("postgres://a@h/d?sslmode=require").unwrap().ssl_mode(), SslMode::Require);
    }

    #[test]
    fn the_password_never_shows_in_debug_display_or_errors() {
        let u = DatabaseUrl::parse("postgres://app:hunter2-secret@db/auth?sslmode=require").unwrap();
        for text in [format!("{u}"), format!("{u:?}"), format!("{:?}", Some(u.clone()))] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        assert_eq!(u.to_string(), "postgres://app:***@db:5432/auth?sslmode=require");
        let driver = format!("{:?}", u.driver_config());
        assert!(!driver.contains("hunter2"), "{driver}");
        for bad in [
            "postgres://app:hunter2-secret@db/auth?sslmode=allow",
            "postgres://app:hunter2-secret@db/auth?bogus=1",
            "postgres://app:hunter2-secret@db:99999/auth",
            "postgres://app:hunter2-secret@db/a/b",
        ] {
            let err = DatabaseUrl::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(!redact(bad).contains("hunter2"), "{}", redact(bad));
        }
        assert_eq!(redact("postgres://a:b@c/d"), "postgres://a:***@c/d");
        for text in ["postgres://u:p@h/port\tcullis", "postgres://u:p\tw@h/db"] {
            let e = DatabaseUrl::parse(text).unwrap_err();
            assert!(e.contains("control character"), "{text:?}: {e}");
        }
        assert_eq!(
            redact_words("invalid https_addr = \"postgres://u:S3@h/db\" (see 'x://a:b@c')"),
            "invalid https_addr = \"postgres://u:***@h/db\" (see 'x://a:***@c')"
        );
        assert_eq!(redact_words("no user named alice:x@y"), "no user named alice:x@y", "not a URL");
        assert_eq!(redact("postgres://a:p@ss@c/d"), "postgres://a:***@c/d");
        assert_eq!(redact("postgres://a@c/d"), "postgres://a@c/d");
        // An encoded `:` in the userinfo (review 157).
        assert_eq!(redact("postgres://u%3AS3cr3t@c/d"), "postgres://u:***@c/d");
        assert_eq!(redact("postgres://u%3as3cr3t%40x@c/d"), "postgres://u:***@c/d");
        // Passwords that stop a URL parser (found in review): never quoted back.
        for (bad, secret) in [
            ("postgres://pc:Sek#r3t@127.0.0.1:55432/pc", "Sek#r3t"),
            ("postgres://pc:a/b?c@h/d", "a/b?c"),
            ("postgres://a@h/d?sslmode=require&password=Sekr3tDbPass", "Sekr3tDbPass"),
            ("postgres://a@h/d?PASSWORD=Sekr3tDbPass&password=again", "again"),
            ("pc:Sekr3t@h/d", "Sekr3t"),
        ] {
            let err = DatabaseUrl::parse(bad).unwrap_err();
            assert!(!err.contains(secret), "{err}");
            assert!(!redact(bad).contains(secret), "{}", redact(bad));
        }
        // Any spelling of the parameter's name, and libpq's keywords with blanks (review 153),
        // also where a message quotes them.
        for (bad, secret) in [
            ("postgres://u@h/db?pass%77ord=s3cretpw", "s3cretpw"),
            ("postgres://u@h/db?password%3Ds3cretpw", "s3cretpw"),
            ("postgres://u@h/db?password[]=s3cretpw", "s3cretpw"),
            ("host=h password = s3cretpw dbname=db", "s3cretpw"),
            ("host=h password\t=s3cretpw", "s3cretpw"),
            ("host=h PASSWORD='s3cret pw' dbname=db", "s3cret"),
            ("host=h password='it\\'s s3cret' dbname=db", "s3cret"),
        ] {
            assert!(!redact(bad).contains(secret), "{}", redact(bad));
            let message = redact_words(&format!("invalid database_url = \"{bad}\": bad"));
            assert!(!message.contains(secret), "{message}");
        }
        assert_eq!(redact("host=h password = s3cret dbname=db"), "host=h password = *** dbname=db");
        // No `@` after the password (review 155): hidden from its `:` on; a port is not.
        for (bad, secret) in [
            ("postgres://pc1:SEKRETpw1zzq%40127.0.0.1/pc1", "SEKRET"),
            ("postgres://pc1:SEKRETpw1zzq", "SEKRET"),
            ("postgres://pc1:SEKRETpw1zzq/pc1?host=/tmp", "SEKRET"),
            ("postgres://pc1:SEKRET:pw1zzq", "SEKRET"),
            ("postgres://pc1:SEKRETpw1zzq\u{ff20}127.0.0.1/pc1", "SEKRET"),
        ] {
            assert!(!redact(bad).contains(secret), "{}", redact(bad));
            assert!(!redact_words(&format!("invalid database_url = \"{bad}\"")).contains(secret), "{bad}");
        }
        for fine in ["postgres://h:5432/db", "postgres://[::1]:5432/db", "postgres://[::1]/db", "postgres://h/db"] {
            assert_eq!(redact(fine), fine);
        }
        assert_eq!(redact("postgres://u@h/db?sslmode=require"), "postgres://u@h/db?sslmode=require");
    }

    #[test]
    fn what_libpq_would_misread_is_refused() {
        for bad in [
            "mysql://a@h/d",
            "postgres://a@h/d?sslmode=allow",
            "postgres://a@h/d?sslmode=verify_full",
            "postgres://a@h/d?connect_timeout=1",
            "postgres://a@h/d?password=x",
            "postgres://a@h:0/d",
            "postgres:///d",
            "not a url",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips_without_the_password() {
        for text in [
            "postgres://app@db.example.com:5433/auth?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
            "postgres://app@[::1]:5432/auth?sslmode=disable",
            "postgres://app@%2Frun%2Fpostgresql:5432/auth?sslmode=prefer",
        ] {
            let u = DatabaseUrl::parse(text).unwrap();
            assert_eq!(u.to_string(), text);
            assert_eq!(DatabaseUrl::parse(&u.to_string()).unwrap().to_string(), text);
        }
    }
}
