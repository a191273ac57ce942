//! Keeping what portcullis writes private to its owner: the data and log directories and the
//! process's file-creation mask, whatever the engine.

use std::path::Path;

/// Makes `dir` private to its owner: creates it (and parents) with mode 0700, or, when it
/// already exists, takes group and other access away from it and from the entries in it that
/// `ours` names (recursively for directories: 0700 / 0600 at most), with a warning per
/// change. Other entries are left alone (the directory's own 0700 already closes them to
/// others), so a misconfigured shared directory such as `/var/log` does not have everything
/// in it changed; symbolic links are never followed inside (they may point at things that
/// are not ours, such as `/dev/full`).
///
/// Tightening rather than refusing to start: the files are ours and hold secrets (password
/// hashes, the CSRF and captcha keys, the auth log), so every start that leaves them readable
/// is a leak, and a refusal would leave them exposed until someone acted; systemd's
/// `StateDirectory=` also recreates 0755 directories by default (issue 11 §4, ASVS 4.0
/// V14.1).
///
/// # Errors
/// The directory belongs to another user than this process's, or creating it or changing a
/// mode failed; the message says which path and how to fix it by hand.
pub fn ensure_private_dir(dir: &Path, ours: impl Fn(&str) -> bool) -> std::io::Result<()> {
    ensure_private(dir, ours, true)
}

/// [`ensure_private_dir`] for a directory whose own entries are files (the log directory):
/// an entry `ours` names that is a directory is not gone into, since none of ours is one (a
/// review's `auth.log.2026-10-05/` had everything in it made private).
///
/// # Errors
/// As [`ensure_private_dir`].
pub fn ensure_private_dir_of_files(dir: &Path, ours: impl Fn(&str) -> bool) -> std::io::Result<()> {
    ensure_private(dir, ours, false)
}

/// [`ensure_private_dir`], going into the directories among `ours` entries only when
/// `recurse`.
fn ensure_private(dir: &Path, ours: impl Fn(&str) -> bool, recurse: bool) -> std::io::Result<()> {
    trusted_ancestors(dir)?;
    if !dir.exists() {
        // A link to nothing is not created through: where it points was chosen by whoever made
        // the link, and "File exists" would not say what is wrong.
        if let Ok(target) = std::fs::read_link(dir.components().as_path()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is a link to {}, which does not exist", dir.display(), target.display()),
            ));
        }
        return make_private(dir, ours, recurse);
    }
    judge_found(dir, ours, recurse)
}

/// Makes `dir` (and its parents) with mode 0700, then judges it as one found: another user may
/// have made it, or a directory on its path, between the look that found it missing and the
/// making, and a directory that exists is made without a word (review 159: a user looping
/// `mkdir` in `/tmp` had root's `store copy --to` write its copy into her directory, 1 run in
/// 158). Once judged ours in a sticky directory, nobody else can rename it away.
fn make_private(dir: &Path, ours: impl Fn(&str) -> bool, recurse: bool) -> std::io::Result<()> {
    make_dirs(dir)?;
    trusted_ancestors(dir)?;
    judge_found(dir, ours, recurse)
}

/// Makes `dir` and each missing directory above it, one at a time with mode 0700, each only
/// once the path to it is judged trusted ([`trusted_ancestors`]): a parent another user made
/// in between is refused before anything is made inside it (review 160 raced `mkdir p` in a
/// sticky directory and found root's empty `p/race` left in her `p`).
///
/// # Errors
/// As [`trusted_ancestors`], or the making's own error.
pub fn make_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::path::absolute(dir)?;
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| std::fs::symlink_metadata(d).is_err()).collect();
    for each in missing.into_iter().rev() {
        trusted_ancestors(each)?;
        match std::fs::DirBuilder::new().mode(0o700).create(each) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The rest of [`ensure_private`] for a `dir` that exists.
fn judge_found(dir: &Path, ours: impl Fn(&str) -> bool, recurse: bool) -> std::io::Result<()> {
    // A file named by mistake (`--log-dir /etc/passwd`, or a link to one) is refused before
    // its mode is touched.
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    refuse_foreign(dir, &meta)?;
    refuse_shared(dir, &meta)?;
    tighten(dir, true, false)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if ours(&entry.file_name().to_string_lossy()) && (recurse || !entry.file_type()?.is_dir()) {
            tighten(&entry.path(), false, recurse)?;
        }
    }
    Ok(())
}

/// A refusal to use a path, with the line that says why and what to do.
fn denied(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, message)
}

/// The checks of [`ensure_private_dir`] that look at `dir`'s path, owner and mode, without
/// changing anything: [`trusted_ancestors`], and when it exists, that it is a directory of
/// this process's user's (as `serve` refuses another's) that others cannot write to ([`refuse_shared`]).
/// `config check` asks them, so a unit's `ExecStartPre=` stops where the start would (review
/// 194: a `data_dir` of another user's passed the check and stopped the start).
///
/// # Errors
/// As those, and `NotADirectory` for a file, or a path under one.
pub fn refuse_changeable(dir: &Path) -> std::io::Result<()> {
    judge_changeable(dir, Owners::Mine)
}

/// [`refuse_changeable`] as the start of `dir`'s owner would judge it: for root checking a
/// service's settings (`config check`), whose directories belong to the service's user once it
/// has run (review 215: the README's check before a restart failed on every such host). The
/// path and the mode are judged all the same.
///
/// # Errors
/// As [`refuse_changeable`], but for a directory of another user's.
pub fn refuse_changeable_by_its_owner(dir: &Path) -> std::io::Result<()> {
    judge_changeable(dir, Owners::Any)
}

/// [`refuse_changeable`] for a directory only read, such as `cert_dir`, which may also be
/// root's (as `/etc/letsencrypt` is, read by a service's user): the certificate's loading
/// takes it so (review 213: the check before the start refused the README's
/// `/etc/portcullis/certs` for a server not run as root).
///
/// # Errors
/// As [`refuse_changeable`], but for a directory of root's.
pub fn refuse_changeable_but_roots(dir: &Path) -> std::io::Result<()> {
    judge_changeable(dir, Owners::MineOrRoots)
}

/// Whose directory [`judge_changeable`] takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owners {
    Mine,
    MineOrRoots,
    Any,
}

fn judge_changeable(dir: &Path, owners: Owners) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    trusted_ancestors(dir)?;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let taken = match owners {
                Owners::Mine => false,
                Owners::MineOrRoots => meta.uid() == 0,
                Owners::Any => true,
            };
            if !taken {
                refuse_foreign(dir, &meta)?;
            }
            refuse_shared(dir, &meta)
        }
        Ok(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, format!("{} is not a directory", dir.display())))
        }
        // Under a file (`file/sub`): it can never be made (review 198).
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} cannot be made: part of its path is a file", dir.display()),
        )),
        Err(_) => Ok(()),
    }
}

/// Refuses a symbolic link among the entries of `dir` that `ours` names, and under those that
/// are directories: a store file that is a link is written through, wherever it points (review
/// 157: a service's user left `db -> /root/file` in its store, root copied the store with
/// `cp -a` and `chown -R`, and a root command on the copy overwrote the file).
///
/// # Errors
/// `PermissionDenied` naming the link and where it points.
pub fn refuse_links(dir: &Path, ours: impl Fn(&str) -> bool) -> std::io::Result<()> {
    fn walk(path: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap_or_default();
            return Err(denied(format!(
                "{} is a link to {}, and the store would be written through it: put the file itself there",
                path.display(),
                target.display()
            )));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path())?;
            }
        }
        Ok(())
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if ours(&entry.file_name().to_string_lossy()) {
            walk(&entry.path())?;
        }
    }
    Ok(())
}

/// Takes group and other permissions away from `path` (following it only when `follow`),
/// and, with `recurse`, from everything under it if it is a directory.
///
/// # Errors
/// Also when `path`, or an entry under it, belongs to a user other than this process's and
/// root ([`untrusted_owner`]).
fn tighten(path: &Path, follow: bool, recurse: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = if follow { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) }?;
    // Another user's (not root's) file or link among ours was put there to be written to, or
    // through (review 157: a link planted for today's log while the directory was open to all,
    // then used once it was made 0700; a hard link to a file its owner reads).
    if let Some(uid) = untrusted_owner(&meta) {
        return Err(denied(format!(
            "{} belongs to uid {uid}, neither this process's user (uid {}) nor root, and portcullis would write to it: remove it, since whoever put it there would read what is written, or have it written elsewhere",
            path.display(),
            effective_uid()
        )));
    }
    if !(meta.is_dir() || meta.is_file()) {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    // A file with other names (hard links) may be someone else's, reached from elsewhere: its
    // mode is theirs to change (a review's link made a file outside the directory private).
    if meta.is_file() && std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "a file portcullis keeps private has other names (hard links): its mode was left as it is");
        }
        return Ok(());
    }
    // Nor is root's file (root may change it, but it is not root's to change).
    let me = effective_uid();
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != me {
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), owner, "a file portcullis keeps private belongs to another user: its mode was left as it is");
        }
        return Ok(());
    }
    if mode & 0o077 != 0 {
        let private = mode & 0o700;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{} is mode {mode:04o} and cannot be made private ({e}): run `chmod -R go-rwx {}` as its owner",
                    path.display(),
                    path.display()
                ),
            )
        })?;
        let what = if meta.is_dir() { "a directory" } else { "a file" };
        tracing::warn!(
            path = %path.display(), from = %format!("{mode:04o}"), to = %format!("{private:04o}"),
            "took group and other access away from {what} portcullis keeps private"
        );
    }
    if recurse && meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path(), false, true)?;
        }
    }
    Ok(())
}

/// Refuses a directory others may write in (`meta` is `dir`'s, links followed): `/tmp`, one
/// made `chmod 1777`, or one its group may write, where anyone could have put the files portcullis reads (a `factor.key`
/// of their choosing), and whose mode is not portcullis's to take away from everyone else
/// (review 153: `data_dir = "/tmp"` as root would have made `/tmp` mode 0700).
///
/// # Errors
/// [`std::io::ErrorKind::PermissionDenied`], with a line saying what to do, when it is so.
pub fn refuse_shared(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    // Group members too (review 155: a 2770 directory's group planted a link that root's
    // store was then written through).
    if mode & 0o1022 != 0 {
        return Err(denied(format!(
            "{} may be written by other users (mode {mode:04o}), who could have put files there: give portcullis a directory of its own (`mkdir -m 700 DIR`)",
            dir.display()
        )));
    }
    Ok(())
}

/// Refuses a directory of another user's (`meta` is `dir`'s, links followed), as ssh's
/// StrictModes and PostgreSQL's data directory check refuse theirs. Only root could have gone
/// on: its files there would be left for that user's server to trip over, and that user could
/// point the names root opens (the day's log file, `factor.key`) at any file on the host.
fn refuse_foreign(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(denied(format!(
            "{} belongs to uid {}, not to this process (uid {me}): run portcullis as its owner",
            dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Checks, without changing anything, that `dir` is one portcullis may read its own files
/// from: this process's user's (if it exists), on a path nobody else can change. For a
/// directory only read, such as `data_dir` for its `factor.key` when the store is a database.
///
/// # Errors
/// As [`ensure_private_dir`] refuses another user's directory or path.
pub fn ensure_ours(dir: &Path) -> std::io::Result<()> {
    trusted_ancestors(dir)?;
    match std::fs::metadata(dir) {
        Ok(meta) => refuse_foreign(dir, &meta),
        Err(_) => Ok(()),
    }
}

/// The first gid of groups of people rather than of system services: Debian's and most
/// distributions' `SYS_GID_MAX` (`/etc/login.defs`) is 999.
const FIRST_PEOPLES_GID: u32 = 1000;

/// Whether `gid` is a group of people rather than of a system service: from
/// [`FIRST_PEOPLES_GID`] up, and Debian's `users` (100, which `adduser` may give every new
/// user) and `staff` (50, local administrators; `/usr/local` and `/var/local` are 2775
/// `root:staff`) below it (review 158).
fn is_peoples_group(gid: u32) -> bool {
    gid >= FIRST_PEOPLES_GID || gid == 100 || gid == 50
}

/// Checks that nobody but root and this process's user can change what `dir` names. The path
/// is followed one component at a time, as the kernel would, links included: every directory
/// a component is looked up in belongs to root or to this process's user and is not writable
/// by others unless sticky (as `/tmp`), and every link met belongs to root or to this user.
/// Otherwise the owner of such a directory or link could aim the name elsewhere (a relative
/// `logs` at `/etc`, then made 0700; a `data` at another server's socket) or swap it back and
/// forth while the store is opened. A directory its group may write is refused as well, unless
/// the group is a system group (gid below `FIRST_PEOPLES_GID`, 1000, but for `users` and
/// `staff`): Ubuntu makes `/var/log`
/// writable by `syslog`, whose only member is the log daemon, while a group of people
/// (`ops`, `2775`) is one whose members could rename `data` away and put their own, with an
/// admin socket root's commands would send passwords to (review 157).
///
/// # Errors
/// `PermissionDenied` naming the first such directory or link and its owner.
pub fn trusted_ancestors(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Component, PathBuf};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // "Its own user" read as the directory's owner (review 213): said as the user running this.
    let refuse = |what: String| {
        Err(denied(format!(
            "{} {what}: put it where only root and the user running portcullis (uid {me}) can change the path",
            dir.display()
        )))
    };
    let mut pending: std::collections::VecDeque<PathBuf> =
        std::path::absolute(dir)?.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut current = PathBuf::from("/");
    // As the kernel's ELOOP: a chain of links this long is no path.
    let mut links = 0;
    while let Some(step) = pending.pop_front() {
        match step.components().next() {
            Some(Component::RootDir) => current = PathBuf::from("/"),
            Some(Component::CurDir) | None => {}
            Some(Component::ParentDir) => {
                current.pop();
            }
            Some(Component::Normal(name)) => {
                let meta = std::fs::metadata(&current)?;
                let sticky = meta.mode() & 0o1000 != 0;
                if meta.mode() & 0o002 != 0 && !sticky {
                    return refuse(format!("is inside {}, which anyone may change", current.display()));
                }
                if meta.mode() & 0o020 != 0 && !sticky && is_peoples_group(meta.gid()) {
                    return refuse(format!(
                        "is inside {}, which the members of group {} may change",
                        current.display(),
                        meta.gid()
                    ));
                }
                if meta.uid() != 0 && meta.uid() != me {
                    return refuse(format!(
                        "is inside {}, which belongs to uid {} (run this as that user instead, e.g. with sudo -u '#{}')",
                        current.display(),
                        meta.uid(),
                        meta.uid()
                    ));
                }
                let next = current.join(name);
                let Ok(entry) = std::fs::symlink_metadata(&next) else {
                    // Not there yet: what is made from here on is made by this process.
                    return Ok(());
                };
                if !entry.file_type().is_symlink() {
                    current = next;
                    continue;
                }
                if entry.uid() != 0 && entry.uid() != me {
                    return refuse(format!("passes through {}, a link of uid {}", next.display(), entry.uid()));
                }
                links += 1;
                if links > 40 {
                    return refuse("passes through too many links".to_string());
                }
                let target = std::fs::read_link(&next)?;
                for c in target.components().rev() {
                    pending.push_front(PathBuf::from(c.as_os_str()));
                }
            }
            Some(Component::Prefix(_)) => {}
        }
    }
    Ok(())
}

/// The uid of the owner `meta` gives when it is neither this process's user nor root: one who
/// could have chosen what a file of settings, keys or certificates holds. Root's files, which
/// configuration tools install for a service to read, are trusted as ssh's StrictModes trusts
/// them.
pub fn untrusted_owner(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    (meta.uid() != effective_uid() && meta.uid() != 0).then_some(meta.uid())
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of `dir`'s owner (links followed) when that is not this process's user.
pub fn foreign_owner(dir: &Path) -> Option<u32> {
    foreign_entry(dir).filter(|(found, _)| found == dir).map(|(_, uid)| uid)
}

/// The first entry of `dir` (or `dir` itself) that belongs to a user other than this process's,
/// with that user's uid: what to name when a store or log cannot be opened for permissions.
pub fn foreign_entry(dir: &Path) -> Option<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let foreign = |p: &Path, meta: std::io::Result<std::fs::Metadata>| {
        meta.ok().filter(|m| m.uid() != me).map(|m| (p.to_path_buf(), m.uid()))
    };
    // The directory through a link (systemd's `DynamicUser=` links `/var/lib/NAME` to
    // `private/NAME`); what is in it as it is.
    foreign(dir, std::fs::metadata(dir)).or_else(|| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| foreign(&e.path(), std::fs::symlink_metadata(e.path())))
    })
}

/// The first entry of `dir` (or `dir` itself) whose owner may not both read and write it (and,
/// for a directory, enter it), with its mode: what a permission error in a store of one's own
/// comes from, which sled does not name.
pub fn entry_closed_to_its_owner(dir: &Path) -> Option<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let closed = |p: &Path, meta: std::io::Result<std::fs::Metadata>| {
        let meta = meta.ok()?;
        let mode = meta.permissions().mode() & 0o7777;
        let needed = if meta.is_dir() { 0o700 } else { 0o600 };
        (!meta.file_type().is_symlink() && mode & needed != needed).then(|| (p.to_path_buf(), mode))
    };
    closed(dir, std::fs::metadata(dir)).or_else(|| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| closed(&e.path(), std::fs::symlink_metadata(e.path())))
    })
}

/// Sets the process's file-creation mask to 0o077, so that every file and directory this
/// process creates (store files, log files, the generated key, the admin socket) is readable
/// only by its owner, whatever the mask it was started with (issue 11 §4; ASVS 4.0 V14.1).
pub fn private_umask() {
    // SAFETY: umask(2) only sets the process's mask; it cannot fail and touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dangling_link_is_named_as_one_with_or_without_a_trailing_slash() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("logs");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &link).unwrap();
        for dir in [link.clone(), Path::new(&format!("{}/", link.display())).to_path_buf()] {
            let e = ensure_private_dir(&dir, |_| true).unwrap_err();
            assert!(e.to_string().contains("is a link to") && e.to_string().contains("nowhere"), "{dir:?}: {e}");
        }
        assert!(!tmp.path().join("nowhere").exists(), "nothing made where the link points");
    }

    #[test]
    fn a_log_directory_is_not_gone_into_past_its_files_nor_a_hard_link_changed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let open = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (logs, elsewhere) = (tmp.path().join("logs"), tmp.path().join("elsewhere"));
        let named_dir = logs.join("auth.log.2026-10-05");
        std::fs::create_dir_all(&named_dir).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let (inside, outside, linked) =
            (named_dir.join("keepme"), elsewhere.join("theirs"), logs.join("auth.log.2026-10-06"));
        for file in [&inside, &outside, &logs.join("auth.log.2026-10-07")] {
            std::fs::write(file, "x").unwrap();
            open(file);
        }
        std::fs::hard_link(&outside, &linked).unwrap();
        ensure_private_dir_of_files(&logs, crate::audit::is_log_file_name).unwrap();
        assert_eq!(mode(&logs.join("auth.log.2026-10-07")), 0o600, "ours is made private");
        assert_eq!(mode(&inside), 0o644, "a directory so named is not gone into");
        assert_eq!(mode(&outside), 0o644, "a file with another name elsewhere keeps its mode");
    }

    /// A directory others may write in is refused before anything in it is read or changed
    /// (review 153: a 1777 `data_dir` was made 0700 and a planted `factor.key` taken).
    #[test]
    fn a_directory_others_may_write_in_is_refused_and_left_as_it_is() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        for shared in [0o1777, 0o777, 0o1700, 0o702, 0o770, 0o2770] {
            let dir = tmp.path().join(format!("d{shared:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(shared)).unwrap();
            let e = ensure_private_dir(&dir, |_| true).unwrap_err();
            assert!(e.to_string().contains("may be written by other users"), "{shared:o}: {e}");
            assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777, shared);
        }
    }

    /// A directory inside one a group of people may change is refused (review 157: a member of
    /// `ops` swapped root's `data` for one of hers); a system group's (Ubuntu's `/var/log`) or
    /// a sticky one's is not. Giving a directory to another group needs root.
    #[test]
    fn a_directory_inside_one_a_group_of_people_may_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        if effective_uid() != 0 {
            eprintln!("skipping: giving a directory to another group needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for (mode, gid, refused) in [
            (0o2775, 4321, true),
            (0o775, 4321, true),
            (0o3775, 4321, false),
            (0o775, 104, false),
            (0o755, 4321, false),
        ] {
            let parent = tmp.path().join(format!("p{mode:o}-{gid}"));
            std::fs::create_dir(&parent).unwrap();
            std::os::unix::fs::chown(&parent, None, Some(gid)).unwrap();
            std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = ensure_private_dir(&parent.join("data"), |_| true);
            if refused {
                let e = result.unwrap_err().to_string();
                assert!(e.contains(&format!("which the members of group {gid} may change")), "{mode:o} {gid}: {e}");
                assert!(!parent.join("data").exists(), "nothing made");
            } else {
                result.unwrap();
            }
        }
    }

    /// A directory another user made between the look that found it missing and the making
    /// is judged as one found, and refused (review 159 raced `store copy --to` in `/tmp` so):
    /// `make_private` is what runs after that look. Giving a directory away needs root.
    #[test]
    fn a_directory_another_user_made_just_before_it_was_made_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (made, theirs) = (tmp.path().join("made"), tmp.path().join("theirs"));
        make_private(&made, |_| true, true).unwrap();
        assert!(made.is_dir());
        if effective_uid() != 0 {
            eprintln!("skipping the rest: giving a directory to another user needs root");
            return;
        }
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4321), Some(4321)).unwrap();
        let e = make_private(&theirs, |_| true, true).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 4321"), "{e}");
        // A parent of it they made: refused before anything is made inside (review 160).
        let e = make_private(&theirs.join("data"), |_| true, true).unwrap_err().to_string();
        assert!(e.contains("which belongs to uid 4321"), "{e}");
        assert!(!theirs.join("data").exists(), "nothing of ours made in their directory");
    }

    /// One of portcullis's own names that another user (not root) owns, a link or a hard link
    /// to their file, is refused, not written through (review 157); root's, and a system
    /// log's undated `auth.log`, are let be. Giving a file to another user needs root.
    #[test]
    fn an_entry_of_ours_another_user_planted_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let syslogs = logs.join("auth.log");
        std::fs::write(&syslogs, "sshd: ...").unwrap();
        std::fs::set_permissions(&syslogs, std::fs::Permissions::from_mode(0o640)).unwrap();
        ensure_private_dir_of_files(&logs, crate::audit::is_log_file_name).unwrap();
        assert_eq!(std::fs::metadata(&syslogs).unwrap().permissions().mode() & 0o777, 0o640, "not ours");
        if effective_uid() != 0 {
            eprintln!("skipping the rest: giving a file to another user needs root");
            return;
        }
        let elsewhere = tmp.path().join("theirs");
        std::fs::create_dir(&elsewhere).unwrap();
        let (victim, spy) = (elsewhere.join("victim"), elsewhere.join("spy"));
        std::fs::write(&victim, "precious").unwrap();
        std::fs::write(&spy, "").unwrap();
        std::os::unix::fs::chown(&spy, Some(4321), Some(4321)).unwrap();
        let today = logs.join("auth.log.2026-12-10");
        std::os::unix::fs::symlink(&victim, &today).unwrap();
        std::os::unix::fs::lchown(&today, Some(4321), Some(4321)).unwrap();
        let e = ensure_private_dir_of_files(&logs, crate::audit::is_log_file_name).unwrap_err().to_string();
        assert!(e.contains("auth.log.2026-12-10 belongs to uid 4321"), "{e}");
        std::fs::remove_file(&today).unwrap();
        std::fs::hard_link(&spy, &today).unwrap();
        let e = ensure_private_dir_of_files(&logs, crate::audit::is_log_file_name).unwrap_err().to_string();
        assert!(e.contains("auth.log.2026-12-10 belongs to uid 4321"), "a hard link: {e}");
        // Root's link (as a test's to /dev/full) is root's to make.
        std::fs::remove_file(&today).unwrap();
        std::os::unix::fs::symlink(&victim, &today).unwrap();
        ensure_private_dir_of_files(&logs, crate::audit::is_log_file_name).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    /// A link among the store's files is refused whoever made it (review 157: a copy's
    /// `db -> /root/file`, root's after `chown -R`, was overwritten by a root command).
    #[test]
    fn a_link_among_the_stores_files_is_refused_and_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, victim) = (tmp.path().join("data"), tmp.path().join("precious"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, data.join("db")).unwrap();
        let e = crate::store::sled::SledStore::open(&data).err().unwrap().to_string();
        assert!(e.contains("db is a link to") && e.contains("precious"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(data.join("db")).unwrap();
        std::fs::create_dir(data.join("blobs")).unwrap();
        std::os::unix::fs::symlink(&victim, data.join("blobs/1")).unwrap();
        let e = crate::store::sled::SledStore::open(&data).err().unwrap().to_string();
        assert!(e.contains("blobs/1 is a link to"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir, |_| true).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
    }
}
