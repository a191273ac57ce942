//! Reading what an operator names (a settings file, a key, a certificate, a line on standard
//! input): bounded in size, and only from a regular file, so a path to `/dev/zero`, a FIFO or
//! a log fails in one line instead of filling the memory or waiting forever (review 150).
//! And writing a file whole under another name before it is linked into place, so a process
//! killed meanwhile leaves no half-written file under the real name (reviews 184, 186).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// Most bytes read from a PEM file (a certificate chain, a CA bundle, a private key): the
/// system's whole CA bundle is about 220 KiB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Most bytes of one line read from standard input (a password, a `store copy` target):
/// far beyond any password (`min_password_length` caps at 1,024 characters) or URL.
pub const MAX_LINE_BYTES: u64 = 64 * 1024;

/// The whole of `path`, at most `max_bytes` long.
///
/// # Errors
/// The open's or read's error; `InvalidInput` when `path` is not a regular file (a FIFO, a
/// device, a directory: opened without blocking, so a FIFO with no writer does not hang);
/// `InvalidData` when it is longer than `max_bytes`.
pub fn read_small(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_long(max_bytes));
    }
    Ok(bytes)
}

/// [`read_small`] as UTF-8 text.
///
/// # Errors
/// As [`read_small`], and `InvalidData` when the bytes are not UTF-8.
pub fn read_small_text(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    String::from_utf8(read_small(path, max_bytes)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// One line from `reader` into `line` (its end included, as `read_line` gives it), at most
/// [`MAX_LINE_BYTES`].
///
/// # Errors
/// The read's error; `InvalidData` when the line is longer.
pub fn read_bounded_line(reader: impl BufRead, line: &mut String) -> std::io::Result<usize> {
    let read = reader.take(MAX_LINE_BYTES + 1).read_line(line)?;
    if read as u64 > MAX_LINE_BYTES {
        return Err(too_long(MAX_LINE_BYTES));
    }
    Ok(read)
}

/// What [`read_small`] and [`read_bounded_line`] found: more than `max_bytes`.
#[derive(Debug)]
struct TooLong {
    max_bytes: u64,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "longer than {} KiB", self.max_bytes / 1024)
    }
}

impl std::error::Error for TooLong {}

fn too_long(max_bytes: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, TooLong { max_bytes })
}

/// Whether `error` (from [`read_small`], [`read_small_text`] or [`read_bounded_line`]) says
/// the input was longer than its bound.
pub fn is_too_long(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<TooLong>())
}

/// What names a file written whole carry between the real name and a random suffix, before
/// the file is linked into place ([`unlinked_name`]).
const UNLINKED: &str = ".new-";

/// A name in `dir` to write `name` under before linking it into place: `NAME.new-` and 16
/// random hex digits, so two processes writing at once do not meet.
///
/// # Errors
/// [`crate::random::RandomError`] when the system's random source fails.
pub fn unlinked_name(dir: &Path, name: &str) -> Result<PathBuf, crate::random::RandomError> {
    let mut suffix = [0u8; 8];
    crate::random::fill(&mut suffix)?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!("{name}{UNLINKED}{suffix}")))
}

/// Whether `entry` (a file name) is one [`unlinked_name`] gave for `name`.
pub fn is_unlinked_name_of(entry: &str, name: &str) -> bool {
    entry.strip_prefix(name).is_some_and(|rest| rest.starts_with(UNLINKED))
}

/// Removes what a process killed between writing a file and linking it into place left in
/// `dir` ([`unlinked_name`]s of any of `names`): files nobody uses. A file that cannot be
/// removed is left.
pub fn remove_unlinked(dir: &Path, names: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        if names.iter().any(|name| is_unlinked_name_of(&entry_name.to_string_lossy(), name)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `contents` to a new file `path` (refused if it exists) with `mode`, on disk before
/// it returns.
///
/// # Errors
/// The create's, write's or sync's error (`AlreadyExists` when `path` is there).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_small_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_small(&file, 3).unwrap(), b"abc");
        assert_eq!(read_small(&file, 2).unwrap_err().to_string(), "longer than 0 KiB");
        assert!(is_too_long(&read_small(&file, 2).unwrap_err()));
        assert!(!is_too_long(&read_small(dir.path(), 10).unwrap_err()));
        assert_eq!(read_small(dir.path(), 10).unwrap_err().to_string(), "not a regular file");
        assert_eq!(read_small(Path::new("/dev/zero"), 10).unwrap_err().to_string(), "not a regular file");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_small(&fifo, 10).unwrap_err().to_string(),
            "not a regular file",
            "without waiting for a writer"
        );
    }

    #[test]
    fn a_line_longer_than_the_bound_is_refused() {
        let mut line = String::new();
        assert_eq!(read_bounded_line(&b"pw\nrest"[..], &mut line).unwrap(), 3);
        assert_eq!(line, "pw\n");
        let long = vec![b'b'; MAX_LINE_BYTES as usize + 1];
        let mut line = String::new();
        assert!(read_bounded_line(&long[..], &mut line).is_err());
    }
}
