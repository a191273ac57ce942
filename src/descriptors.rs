//! The open-files limit (RLIMIT_NOFILE) against the connection caps: raised as far as the
//! system allows at start, and the caps lowered to fit when it is still too small.
//!
//! Without this, silent connections used every descriptor well below `max_connections`
//! (1024 against a common soft limit of 1024 or 256) and HTTPS `accept` failed with EMFILE,
//! so the cap never took effect.

/// Descriptors kept back for everything that is not a client connection: the store's files,
/// the log files and their rotation, the admin socket and its clients, both listeners, the
/// runtime's epoll and event descriptors, standard streams and a certificate reload's reads.
/// A served process uses about 30 of them; the rest is margin.
pub const RESERVE: u64 = 48;

/// The caps the limit can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Connections the HTTPS listener may hold (`max_connections`, or fewer).
    pub https: usize,
    /// Connections the redirector may hold (`http_max_connections`, or fewer; 0 without one).
    pub http: usize,
    /// The soft open-files limit after raising it.
    pub limit: u64,
}

impl Fit {
    /// Whether either cap had to be lowered.
    pub fn lowered(&self, https: usize, http: usize) -> bool {
        self.https < https || self.http < http
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go's runtime and nginx's
/// `worker_rlimit_nofile` do: the soft limit of 1024 exists for old `select` users, which
/// tokio is not), then fits the caps into it.
///
/// # Errors
/// None: when the limit cannot be read or raised the caps are fitted to what it is; a limit
/// that cannot be read at all leaves them as they are.
pub fn raise_and_fit(https: usize, http: usize) -> Fit {
    let limit = raise_soft_limit();
    match limit {
        Some(limit) => fit(https, http, limit),
        None => Fit { https, http, limit: u64::MAX },
    }
}

/// The soft limit after trying to raise it to the hard one; `None` if it cannot be read.
fn raise_soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit on this process with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The caps that `limit` descriptors hold beside [`RESERVE`]. The redirector gives way first
/// (it only sends people to HTTPS): it keeps at most an eighth of what is left.
pub fn fit(https: usize, http: usize, limit: u64) -> Fit {
    let available = usize::try_from(limit.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
    if https.saturating_add(http) <= available {
        return Fit { https, http, limit };
    }
    let http_fit = if http == 0 { 0 } else { http.min((available / 8).max(1)) };
    let https_fit = available.saturating_sub(http_fit).clamp(1, https);
    Fit { https: https_fit, http: http_fit, limit }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(fit(1024, 64, 20_000), Fit { https: 1024, http: 64, limit: 20_000 });
        assert_eq!(fit(1024, 64, 1024 + 64 + RESERVE), Fit { https: 1024, http: 64, limit: 1136 });
    }

    #[test]
    fn caps_that_do_not_fit_are_lowered_with_the_redirector_giving_way_first() {
        let f = fit(1024, 64, 256);
        assert_eq!(f, Fit { https: 208 - 26, http: 26, limit: 256 });
        assert!(f.lowered(1024, 64));
        assert_eq!(fit(1024, 0, 256).https, 208);
        assert_eq!(fit(1024, 0, 256).http, 0);
        // Even a tiny limit leaves one slot each: the server still serves, slowly.
        assert_eq!(fit(1024, 64, 10), Fit { https: 1, http: 1, limit: 10 });
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let f = raise_and_fit(1, 1);
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit with a valid pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(f.limit, lim.rlim_cur);
    }
}
