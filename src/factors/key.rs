//! The factor key: 32 random bytes in `data_dir/factor.key`, outside the store, under which
//! TOTP secrets are sealed (AES-256-GCM) and recovery codes are hashed (HMAC-SHA-256). A copy
//! of the store (a sled directory without this file, or a PostgreSQL dump) therefore gives
//! neither the codes an authenticator app computes nor a way to test recovery-code guesses
//! offline (OWASP ASVS 4.0 §6.4.1: keys apart from the data they protect).

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The file name in `data_dir`.
pub const KEY_FILE: &str = "factor.key";

/// Most bytes read from `factor.key`: 64 hex digits and a line break, with room for blanks.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Sealed-secret format version (the first byte of every sealed value).
const VERSION: u8 = 1;
/// The name under which the store keeps [`FactorKey::fingerprint`] (among its secrets).
pub const FINGERPRINT_NAME: &str = "factor_key_fingerprint";

/// Bytes of the key id after the version byte: tells "another key" from "damaged".
const KEY_ID_LEN: usize = 4;

/// Why the factor key or a sealed value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or create the factor key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the factor key {0} is not 64 hexadecimal digits")]
    Malformed(PathBuf),
    #[error("a second factor was sealed under another factor key: every instance needs the same data_dir/factor.key")]
    OtherKey,
    #[error("a sealed second factor is damaged")]
    Damaged,
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

/// The factor key and the subkeys derived from it.
pub struct FactorKey {
    seal: LessSafeKey,
    recovery: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID_LEN],
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for FactorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FactorKey({:02x?})", self.id)
    }
}

/// HMAC-SHA-256 of `parts` (each length-prefixed, so no two lists collide) under `key`.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else { return [0; 32] };
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Refuses a key that belongs neither to this process's user nor to root: another user could
/// have chosen it, and every second factor would be sealed under it (review 153, with a key
/// planted in a shared directory). Root's key, installed for the service's user to read, is
/// fine, as ssh's StrictModes takes root's files.
fn refuse_untrusted_owner(path: &Path) -> std::io::Result<()> {
    // The link and what it names (review 155: a link of ours to another user's file passed).
    for meta in [std::fs::symlink_metadata(path), std::fs::metadata(path)].into_iter().flatten() {
        if let Some(uid) = crate::store::untrusted_owner(&meta) {
            let me = crate::store::effective_uid();
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("it belongs to uid {uid}, neither this process's user (uid {me}) nor root: give it to the service's user, mode 0600"),
            ));
        }
    }
    Ok(())
}

/// A key copied in readable by others (`install -m 0644`) loses group and other access, with
/// a warning, when it is this process's user's own; one of another owner (`root:portcullis
/// 0640`, as configuration tools install secrets) is left as it is, with a warning, since its
/// mode is not ours to change and the server may still read it. Nothing is done for a key
/// that is private already or not there; a change that fails is warned about, with its error.
fn make_private_if_ours(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() || mode & 0o077 == 0 {
        return;
    }
    let me = crate::store::effective_uid();
    let (private, shown) = (mode & 0o700, path.display());
    let (from, to) = (format!("{mode:04o}"), format!("{private:04o}"));
    let advice = "give it to the service's user, mode 0600";
    if meta.uid() != me {
        tracing::warn!(path = %shown, mode = %from, owner = meta.uid(), "the factor key is readable by others than its owner: {advice}");
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)) {
        Ok(()) => {
            tracing::warn!(path = %shown, from = %from, to = %to, "took group and other access away from the factor key")
        }
        Err(e) => {
            tracing::warn!(path = %shown, mode = %from, error = %e, "the factor key is readable by others: {advice}")
        }
    }
}

/// `error` with the key's owner and mode when it is a refusal to read (a root-owned 0600 key
/// for a service that runs as another user said only "Permission denied", review 155).
fn unreadable_why(path: &Path, error: std::io::Error) -> std::io::Error {
    use std::os::unix::fs::MetadataExt;
    if error.kind() != std::io::ErrorKind::PermissionDenied {
        return error;
    }
    let Ok(meta) = std::fs::metadata(path) else { return error };
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "{error}: it belongs to uid {}, mode {:04o}, and this process runs as uid {}: give it to the service's user, mode 0600 (or root:<the service's group>, 0640)",
            meta.uid(),
            meta.mode() & 0o7777,
            crate::store::effective_uid()
        ),
    )
}

impl FactorKey {
    /// The key from 32 bytes.
    pub fn from_bytes(master: &[u8; 32]) -> Self {
        let seal_key = Zeroizing::new(mac(master, &[b"portcullis totp seal v1"]));
        let recovery = Zeroizing::new(mac(master, &[b"portcullis recovery codes v1"]));
        let digest = Sha256::digest([&b"portcullis factor key id\0"[..], master].concat());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let fingerprint = Sha256::digest([&b"portcullis factor key fingerprint\0"[..], master].concat()).into();
        // AES-256 takes any 32-byte key: this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, &seal_key[..]).unwrap_or_else(|_| unreachable!());
        FactorKey { seal: LessSafeKey::new(unbound), recovery, id, fingerprint }
    }

    /// A SHA-256 fingerprint of the key (32 bytes), which tells keys apart and reveals
    /// nothing of them: the store records it at first start ([`FINGERPRINT_NAME`]), so an
    /// instance with another key refuses to start instead of keying factors no other
    /// instance can check.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Reads `dir/factor.key`, creating it (mode 0600, 32 random bytes as hex) when absent.
    ///
    /// # Errors
    /// [`KeyError::Io`] when the file cannot be read or written, [`KeyError::Malformed`] when
    /// it does not hold 64 hex digits, [`KeyError::Random`] when no random bytes are to be had.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io { path: path.clone(), source };
        crate::store::ensure_private_dir(dir, |_| false).map_err(io)?;
        refuse_untrusted_owner(&path).map_err(io)?;
        make_private_if_ours(&path);
        match crate::files::read_small_text(&path, MAX_KEY_FILE_BYTES) {
            Ok(text) => {
                crate::files::remove_unlinked(dir, &[KEY_FILE]);
                return Self::parse(&text).ok_or_else(|| KeyError::Malformed(path.clone()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(unreadable_why(&path, e))),
        }
        let mut master = Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut master[..])?;
        let hex = Zeroizing::new(master.iter().map(|b| format!("{b:02x}")).collect::<String>());
        // Written whole beside it, then linked into place: a start killed while writing left
        // an empty factor.key, which every later start refused (review 184). The link is made
        // only if no key is there: of two first starts, one links and the other reads its key.
        let tmp = crate::files::unlinked_name(dir, KEY_FILE)?;
        let line = Zeroizing::new(format!("{}\n", hex.as_str()));
        let written = crate::files::write_new(&tmp, line.as_bytes(), 0o600);
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
        // The name it was written under goes either way (a start killed just here leaves it:
        // a key nobody uses).
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                // The directory entry too, so the key is there whenever the records it seals are.
                std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                // A start killed before its link left its key beside, unused (review 186: the
                // next start, the one making the key, left it).
                crate::files::remove_unlinked(dir, &[KEY_FILE]);
                Ok(Self::from_bytes(&master))
            }
            // Another start linked its key first (NotFound: and took this one's unlinked file
            // away as a leftover, `files::remove_unlinked`): theirs is the key.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotFound) => {
                let text = crate::files::read_small_text(&path, MAX_KEY_FILE_BYTES).map_err(io)?;
                Self::parse(&text).ok_or(KeyError::Malformed(path))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key from the text of a `factor.key` file: 64 hexadecimal digits, surrounding
    /// whitespace ignored; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut master = Zeroizing::new([0u8; 32]);
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            master[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self::from_bytes(&master))
    }

    /// Seals `secret` for `user_key` (the user is the associated data, so a sealed secret
    /// moved to another user's record does not open): version, key id, nonce, ciphertext.
    ///
    /// # Errors
    /// [`KeyError::Random`] when no nonce can be drawn.
    pub fn seal(&self, user_key: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::random::fill(&mut nonce)?;
        let mut buf = secret.to_vec();
        self.seal
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(user_key.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Damaged)?;
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    /// Opens what [`FactorKey::seal`] sealed for `user_key`.
    ///
    /// # Errors
    /// [`KeyError::OtherKey`] when it was sealed under another factor key, [`KeyError::Damaged`]
    /// when it does not open.
    pub fn open(&self, user_key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let head = 1 + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < head || sealed[0] != VERSION {
            return Err(KeyError::Damaged);
        }
        if sealed[1..1 + KEY_ID_LEN] != self.id {
            return Err(KeyError::OtherKey);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1 + KEY_ID_LEN..head]).map_err(|_| KeyError::Damaged)?;
        let mut buf = Zeroizing::new(sealed[head..].to_vec());
        let len = self
            .seal
            .open_in_place(nonce, Aad::from(user_key.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Damaged)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// The keyed hash a recovery code is stored as (HMAC-SHA-256 under a subkey, over the
    /// user and the normalised code): without the key file, stolen hashes cannot be tested.
    pub fn recovery_hash(&self, user_key: &str, code: &str) -> [u8; 32] {
        mac(&self.recovery[..], &[user_key.as_bytes(), code.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key another user (not root) owns is refused, not read nor changed (review 153). Needs
    /// root to give a file away; says so and passes otherwise.
    #[test]
    fn a_key_another_user_owns_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: giving a file to another user needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = tmp.path().join(KEY_FILE);
        std::fs::write(&path, format!("{}\n", "0".repeat(64))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&path, Some(101), None).unwrap();
        let e = FactorKey::load_or_create(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("belongs to uid 101"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644, "left as it is");
        // Nor through a link of ours (review 155).
        let other = tempfile::tempdir().unwrap();
        let theirs = other.path().join("theirs.key");
        std::fs::rename(&path, &theirs).unwrap();
        std::os::unix::fs::symlink(&theirs, &path).unwrap();
        let e = FactorKey::load_or_create(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("belongs to uid 101"), "through a link: {e}");
        // Root's own key, as configuration tools install it, is read.
        std::os::unix::fs::chown(&theirs, Some(0), None).unwrap();
        assert!(FactorKey::load_or_create(tmp.path()).is_ok());
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_user_under_its_key() {
        let key = FactorKey::from_bytes(&[7; 32]);
        let sealed = key.seal("alice", b"twenty bytes secret!").unwrap();
        assert_eq!(&key.open("alice", &sealed).unwrap()[..], b"twenty bytes secret!");
        assert!(!sealed.windows(6).any(|w| w == b"twenty"), "the secret is not in clear");
        assert!(matches!(key.open("bob", &sealed), Err(KeyError::Damaged)));
        let other = FactorKey::from_bytes(&[8; 32]);
        assert!(matches!(other.open("alice", &sealed), Err(KeyError::OtherKey)));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(key.open("alice", &flipped), Err(KeyError::Damaged)));
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // What a first start killed before its link left, before any key is there.
        std::fs::write(dir.path().join(format!("{KEY_FILE}.new-0123")), "unused").unwrap();
        let a = FactorKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Written whole under another name first, which is gone (review 184: a start killed
        // while writing left an empty key that every later start refused).
        let names = || -> Vec<_> { std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect() };
        assert_eq!(names(), [KEY_FILE]);
        assert_eq!(std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap().len(), 65);
        // What a start killed before the link left is taken away by the next (review 185).
        std::fs::write(dir.path().join(format!("{KEY_FILE}.new-00ff")), "unused").unwrap();
        FactorKey::load_or_create(dir.path()).unwrap();
        assert_eq!(names(), [KEY_FILE]);
        let b = FactorKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        // Copied in readable by others (`install -m 0644`): made private, and still the key.
        let file = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(FactorKey::load_or_create(dir.path()).unwrap().id, a.id);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        // Another owner's: see `a_key_another_user_owns_is_refused`.
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        assert!(matches!(FactorKey::load_or_create(dir.path()), Err(KeyError::Malformed(_))));
    }
}
