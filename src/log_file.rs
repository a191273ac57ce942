//! The auth log's daily file, `log_dir/auth.log.YYYY-MM-DD` (UTC), appended to line by line
//! and opened again whenever the file at today's name is not the one open: a new day, or an
//! operator or logrotate that removed or renamed it (review 194: with tracing-appender's
//! rolling file, every line went on into the unlinked file until midnight, sign-ins answered
//! 303 and nothing was on the record).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The daily file's name's prefix: `auth.log.` and the UTC date.
pub const PREFIX: &str = "auth.log";

/// The log file in `dir` of the UTC day of `now_ms` (Unix milliseconds).
pub fn path_of(dir: &Path, now_ms: u64) -> PathBuf {
    dir.join(format!("{PREFIX}.{}", &crate::audit::rfc3339(now_ms)[..10]))
}

/// A daily log file, opened at [`DailyFile::open`] and again as [`DailyFile::write_line`]
/// finds it is due.
pub struct DailyFile {
    dir: PathBuf,
    open: Mutex<Option<Open>>,
    /// Times the file was opened again mid-day because the one open was no longer at its
    /// name (removed or renamed), since the start.
    reopened: AtomicU64,
}

/// The file open now: its UTC day and its identity on disk (device, inode).
struct Open {
    file: File,
    day: u64,
    id: (u64, u64),
}

impl DailyFile {
    /// Opens (creating it, private) today's file in `dir`, creating `dir` (mode 0700) if it is
    /// missing.
    ///
    /// # Errors
    /// When the directory or the file cannot be made or opened (a FIFO no one reads cannot).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let daily = DailyFile { dir: dir.to_path_buf(), open: Mutex::new(None), reopened: AtomicU64::new(0) };
        let now = crate::store::now_ms();
        *daily.lock() = Some(daily.open_at(now)?);
        Ok(daily)
    }

    /// How often the file was opened again mid-day since the start, because the one open had
    /// been removed or renamed.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }

    /// Appends `line` (whole, in one write) to today's file, opening it first when the day
    /// changed or today's name no longer names the file open (a `stat` per line, about a
    /// microsecond: the line is a sign-in's record).
    ///
    /// # Errors
    /// When the file cannot be opened or written; the next line tries to open it again.
    pub fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        self.write_line_after(line, false)
    }

    /// [`DailyFile::write_line`], after a line that may have been cut short (`cut`): then the
    /// line starts on a line of its own, unless the file it lands in is empty (a file made
    /// again after the failure: review 215 found it begun with an empty line, not JSON).
    ///
    /// # Errors
    /// As [`DailyFile::write_line`].
    pub fn write_line_after(&self, line: &[u8], cut: bool) -> std::io::Result<()> {
        let now = crate::store::now_ms();
        let mut open = self.lock();
        let path = path_of(&self.dir, now);
        let due = match &*open {
            Some(o) if o.day == now / DAY_MS => {
                // Followed through a link, as opening it does.
                let here = std::fs::metadata(&path).map(|m| (m.dev(), m.ino()));
                if here.is_ok_and(|id| id == o.id) {
                    false
                } else {
                    self.reopened.fetch_add(1, Ordering::Relaxed);
                    true
                }
            }
            _ => true,
        };
        let current = match open.as_mut() {
            Some(o) if !due => o,
            _ => {
                // A failure leaves none open, so the next line tries again rather than writing
                // to the file that was replaced.
                *open = None;
                open.insert(self.open_at(now)?)
            }
        };
        if cut && current.file.metadata()?.len() > 0 {
            let mut whole = Vec::with_capacity(line.len() + 1);
            whole.push(b'\n');
            whole.extend_from_slice(line);
            return current.file.write_all(&whole);
        }
        current.file.write_all(line)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        // A panic while writing leaves nothing half-done that the next line must not touch.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_at(&self, now: u64) -> std::io::Result<Open> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let path = path_of(&self.dir, now);
        // What the start refuses, refused here too (review 198: a file or link of another
        // user's put at today's name was written to): the directory through links, the name
        // itself without, then the file opened.
        refuse_untrusted(&self.dir, &std::fs::metadata(&self.dir)?)?;
        if let Ok(found) = std::fs::symlink_metadata(&path) {
            refuse_untrusted(&path, &found)?;
        }
        // Without waiting for a reader, should a FIFO be there (review 151: the open held the
        // start, deaf to SIGTERM): with none, it is an error.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?;
        let meta = file.metadata()?;
        refuse_untrusted(&path, &meta)?;
        Ok(Open { file, day: now / DAY_MS, id: (meta.dev(), meta.ino()) })
    }
}

const DAY_MS: u64 = 86_400_000;

/// `PermissionDenied` when `meta` (of `path`) belongs to a user other than this process's and
/// root ([`crate::store::untrusted_owner`]): whoever put it there would read what is written.
fn refuse_untrusted(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    match crate::store::untrusted_owner(meta) {
        Some(uid) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {uid}, not to this process's user nor root: the log is not written there",
                path.display()
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today(dir: &Path) -> PathBuf {
        path_of(dir, crate::store::now_ms())
    }

    /// After a line that may have been cut short, the next starts on a line of its own, but a
    /// file made again since starts with the line itself, not an empty one (review 215).
    #[test]
    fn a_line_after_a_cut_one_starts_a_line_of_its_own_but_never_a_file_with_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let daily = DailyFile::open(dir.path()).unwrap();
        daily.write_line(b"{\"cut").unwrap();
        daily.write_line_after(b"{}\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(today(dir.path())).unwrap(), "{\"cut\n{}\n");
        std::fs::rename(today(dir.path()), dir.path().join("rotated")).unwrap();
        daily.write_line_after(b"{}\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(today(dir.path())).unwrap(), "{}\n", "a new file, no empty first line");
    }

    #[test]
    fn a_removed_or_renamed_file_is_made_again_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let daily = DailyFile::open(&logs).unwrap();
        daily.write_line(b"one\n").unwrap();
        assert_eq!(std::fs::read_to_string(today(&logs)).unwrap(), "one\n");
        // Renamed, as logrotate does: the next line goes to a new file at today's name.
        std::fs::rename(today(&logs), dir.path().join("rotated")).unwrap();
        daily.write_line(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(today(&logs)).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("rotated")).unwrap(), "one\n");
        // The whole directory removed: made again, private.
        std::fs::remove_dir_all(&logs).unwrap();
        daily.write_line(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(today(&logs)).unwrap(), "three\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!((mode(&logs), mode(&today(&logs))), (0o700, 0o600));
        assert_eq!(daily.reopened(), 2);
        // Left alone, it stays the one file.
        daily.write_line(b"four\n").unwrap();
        assert_eq!(std::fs::read_to_string(today(&logs)).unwrap(), "three\nfour\n");
        assert_eq!(daily.reopened(), 2);
    }

    /// As root, who can give a file away: another user's file or link at today's name is not
    /// written to (review 198), and the next line after its removal is.
    #[test]
    fn another_users_file_at_todays_name_is_refused() {
        if crate::store::effective_uid() != 0 {
            println!("not root: skipped (only root can give a file away)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let daily = DailyFile::open(dir.path()).unwrap();
        std::fs::remove_file(today(dir.path())).unwrap();
        std::fs::write(today(dir.path()), "theirs\n").unwrap();
        std::os::unix::fs::chown(today(dir.path()), Some(65534), Some(65534)).unwrap();
        let e = daily.write_line(b"lost\n").unwrap_err();
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        assert_eq!(std::fs::read_to_string(today(dir.path())).unwrap(), "theirs\n");
        std::fs::remove_file(today(dir.path())).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, today(dir.path())).unwrap();
        std::os::unix::fs::lchown(today(dir.path()), Some(65534), Some(65534)).unwrap();
        assert!(daily.write_line(b"lost\n").is_err(), "their link");
        assert!(!elsewhere.exists());
        std::fs::remove_file(today(dir.path())).unwrap();
        daily.write_line(b"kept\n").unwrap();
        assert_eq!(std::fs::read_to_string(today(dir.path())).unwrap(), "kept\n");
    }

    #[test]
    fn what_cannot_be_opened_is_an_error_and_the_next_line_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let daily = DailyFile::open(dir.path()).unwrap();
        std::fs::remove_file(today(dir.path())).unwrap();
        std::fs::create_dir(today(dir.path())).unwrap();
        assert!(daily.write_line(b"lost\n").is_err(), "a directory at its name");
        std::fs::remove_dir(today(dir.path())).unwrap();
        // A FIFO with no reader: refused at once, not waited on.
        let fifo = std::ffi::CString::new(today(dir.path()).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(daily.write_line(b"lost\n").is_err(), "a FIFO at its name");
        std::fs::remove_file(today(dir.path())).unwrap();
        daily.write_line(b"kept\n").unwrap();
        assert_eq!(std::fs::read_to_string(today(dir.path())).unwrap(), "kept\n");
    }
}
