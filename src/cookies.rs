//! Reading and writing cookies by hand, with every attribute explicit (poem's helpers leave
//! SameSite unset and drop `Secure` on removal, which browsers reject for `__Host-` names),
//! and their [`Scope`]: host-only, or every host under `cookie_domain`.

use poem::Request;

/// The first cookie called `name` (a `__Host-` name, renamed by the request's [`Scope`]) in
/// the request's `Cookie` headers.
pub fn get(req: &Request, name: &str) -> Option<String> {
    values(req, name).next()
}

/// Every cookie called `name` (as [`get`] reads it) in the request, without repeats, in the
/// order sent: a browser sends one per path and domain it holds under that name, the
/// longest path first, so a host under `cookie_domain` can put its own before ours for a
/// path of its choosing (cookie tossing, see [`clear_under`]).
pub fn get_all(req: &Request, name: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for v in values(req, name) {
        if !all.contains(&v) {
            all.push(v);
        }
    }
    all
}

/// The values of the cookies called `name` under the request's [`Scope`], in order.
fn values<'a>(req: &'a Request, name: &str) -> impl Iterator<Item = String> + 'a {
    let name = match req.extensions().get::<Scope>() {
        Some(scope) => scope.name(name).into_owned(),
        None => name.to_string(),
    };
    req.headers()
        .get_all(poem::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

/// `Set-Cookie` values removing the cookies called `name` that a browser would send with a
/// request for `path` on a path of their own (`/wiki`, `/wiki/`, `/wiki/page` for
/// `/wiki/page`): those only a host under `cookie_domain` sets (cookie tossing), since every
/// cookie this server sets has `Path=/`, which is never removed. For at most the first
/// [`TOSSED_DEPTH`] segments, so that the answer's headers stay small enough for a proxy's
/// buffer; a path that cannot be a cookie's (`;`, controls, blanks, over 1,024 bytes) is
/// skipped, and `/` always is.
pub fn clear_under(name: &str, path: &str) -> Vec<String> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut paths: Vec<&str> = Vec::new();
    for (i, _) in path.match_indices('/').skip(1).take(TOSSED_DEPTH) {
        paths.extend([&path[..i], &path[..=i]]);
    }
    if path.matches('/').count() <= TOSSED_DEPTH && path.len() > 1 && !path.ends_with('/') {
        paths.push(path);
    }
    paths.dedup();
    paths
        .into_iter()
        // Never `/`, which is ours: a path that begins `//` has `/` as its first segment's
        // prefix, and clearing it signed the browser out at any other site's navigation to
        // `/login?rd=https://app.example.com//x` (review 195). Nor one with blanks, which a
        // browser trims from the attribute.
        .filter(|p| *p != "/" && p.len() <= 1024 && !p.chars().any(|c| c == ';' || c.is_control() || c.is_whitespace()))
        .map(|p| format!("{name}=; Path={p}; Secure; HttpOnly; SameSite=Lax; Max-Age=0"))
        .collect()
}

/// How many segments of a path [`clear_under`] clears tossed cookies under.
pub const TOSSED_DEPTH: usize = 8;

/// A `Set-Cookie` value for a host-only, HTTPS-only cookie that scripts cannot read.
/// `max_age` of `None` makes it last until the browser closes.
pub fn set(name: &str, value: &str, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

/// A `Set-Cookie` value that removes the cookie (same attributes, so browsers accept it).
pub fn clear(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// Where cookies are scoped, for every cookie this server sets and reads: without
/// `cookie_domain` each is host-only under its `__Host-` name; with it each is renamed
/// `__Secure-…` and carries `Domain=` that value, so it reaches every host under it (the
/// applications that forward auth gates). Applied once, at the edge ([`scoped`]), so no cookie,
/// present or future, can miss the rule (SPEC.md, "Gating other applications": the pre-login
/// and any other cookie follow the session cookie's rule), but those in `HOST_ONLY`.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    domain: Option<String>,
}

impl Scope {
    /// `domain`: the checked `cookie_domain` (see `config`), or `None` for host-only cookies.
    pub fn new(domain: Option<String>) -> Self {
        Scope { domain }
    }

    /// The name a cookie written as `__Host-NAME` has on the wire under this scope.
    pub fn name<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        if HOST_ONLY.contains(&name) {
            return std::borrow::Cow::Borrowed(name);
        }
        match (&self.domain, name.strip_prefix(HOST_PREFIX)) {
            (Some(_), Some(rest)) => std::borrow::Cow::Owned(format!("{SECURE_PREFIX}{rest}")),
            _ => std::borrow::Cow::Borrowed(name),
        }
    }

    /// A `Set-Cookie` value as written by [`set`] or [`clear`], rewritten for this scope.
    fn rewrite(&self, value: &str) -> Option<String> {
        let domain = self.domain.as_deref()?;
        if HOST_ONLY.iter().any(|name| value.strip_prefix(name).is_some_and(|rest| rest.starts_with('='))) {
            return None;
        }
        let rest = value.strip_prefix(HOST_PREFIX)?;
        Some(format!("{SECURE_PREFIX}{rest}; Domain={domain}"))
    }
}

/// Cookies that keep their `__Host-` name and no `Domain` under any scope: the device
/// cookie ([`crate::csrf::DEVICE_COOKIE`]) is read only by this host's login forms, so no gated
/// application needs it, and a sibling host could otherwise set one over it (cookie tossing)
/// to put its holder back among strangers during a flood.
const HOST_ONLY: [&str; 1] = [crate::csrf::DEVICE_COOKIE];

const HOST_PREFIX: &str = "__Host-";
const SECURE_PREFIX: &str = "__Secure-";

/// Runs `ep` with `scope` known to [`get`], and rewrites every `__Host-` cookie the response
/// sets to the scope's name and domain.
pub async fn scoped<E: poem::Endpoint>(ep: &E, mut req: Request, scope: Scope) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    req.extensions_mut().insert(scope.clone());
    // A name sent twice means a cookie of that name scoped to this path or above it was set
    // by some other host under the domain (ours all have `Path=/`): it goes, whatever this
    // request makes of it, so that it cannot keep a browser signed out or signed in as
    // someone else here.
    // Not on the verify endpoints: the cookies there are an application's, sent for its path,
    // and ours for the endpoint's path would mean nothing (`GET /login` clears those).
    let verify = req.uri().path().starts_with("/api/authz/");
    let tossed: Vec<String> = match scope.domain {
        Some(_) if !verify => crate::routes::SCOPED_COOKIES
            .iter()
            .filter(|n| values(&req, n).nth(1).is_some())
            .flat_map(|n| clear_under(n, req.uri().path()))
            .collect(),
        _ => Vec::new(),
    };
    let mut resp = ep.call(req).await?.into_response();
    for v in tossed.iter().filter_map(|v| v.parse().ok()) {
        resp.headers_mut().append(poem::http::header::SET_COOKIE, v);
    }
    if scope.domain.is_some() {
        let values: Vec<_> = resp.headers().get_all(poem::http::header::SET_COOKIE).iter().cloned().collect();
        if !values.is_empty() {
            let headers = resp.headers_mut();
            headers.remove(poem::http::header::SET_COOKIE);
            for v in values {
                let rewritten = v.to_str().ok().and_then(|s| scope.rewrite(s)).and_then(|s| s.parse().ok());
                headers.append(poem::http::header::SET_COOKIE, rewritten.unwrap_or(v));
            }
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_domain_renames_host_cookies_and_adds_the_domain() {
        let scope = Scope::new(Some("example.com".into()));
        assert_eq!(scope.name("__Host-portcullis"), "__Secure-portcullis");
        assert_eq!(
            scope.rewrite(&set("__Host-portcullis-pre", "v", Some(60))).unwrap(),
            "__Secure-portcullis-pre=v; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60; Domain=example.com"
        );
        assert_eq!(
            scope.rewrite(&clear("__Host-portcullis")).unwrap(),
            "__Secure-portcullis=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0; Domain=example.com"
        );
        let device = crate::csrf::DEVICE_COOKIE;
        assert_eq!(scope.name(device), device, "the device cookie stays host-only");
        assert_eq!(scope.rewrite(&set(device, "v", Some(60))), None);
        let host_only = Scope::default();
        assert_eq!(host_only.name("__Host-portcullis"), "__Host-portcullis");
        assert_eq!(host_only.rewrite(&set("__Host-portcullis", "v", None)), None);
    }

    #[test]
    fn tossed_cookies_are_cleared_on_every_path_a_request_would_send_them_but_ours() {
        let paths = |path: &str| -> Vec<String> {
            clear_under("n", path)
                .iter()
                .map(|c| c.strip_prefix("n=; Path=").unwrap().split(';').next().unwrap().to_string())
                .collect()
        };
        assert_eq!(paths("/"), Vec::<String>::new());
        assert_eq!(paths("/wiki"), ["/wiki"]);
        assert_eq!(paths("/wiki/page?x=/y#z"), ["/wiki", "/wiki/", "/wiki/page"]);
        assert_eq!(paths("/wiki/"), ["/wiki", "/wiki/"]);
        // Ours, `Path=/`, is never among them, however the path begins.
        assert_eq!(paths("//x"), ["//", "//x"]);
        assert_eq!(paths("//"), ["//"]);
        assert_eq!(paths("///?x"), ["//", "///"]);
        assert!(paths("/a;b/c").is_empty(), "no cookie has a `;` in its path");
        let deep = "/a".repeat(TOSSED_DEPTH + 3);
        assert_eq!(paths(&deep).len(), 2 * TOSSED_DEPTH);
        assert!(clear_under("n", "/x").iter().all(|c| c.ends_with("; Secure; HttpOnly; SameSite=Lax; Max-Age=0")));
    }

    #[test]
    fn every_value_of_a_name_is_read_once_in_the_order_sent() {
        let req = Request::builder().header("cookie", "n=b; m=x; n=a; n=b").header("cookie", "n=c").finish();
        assert_eq!(get_all(&req, "n"), ["b", "a", "c"]);
        assert_eq!(get(&req, "n").as_deref(), Some("b"));
    }

    #[test]
    fn reading_follows_the_scope_so_a_host_only_cookie_is_not_read_under_a_domain() {
        let mut req = Request::builder().header("cookie", "__Host-portcullis=a; __Secure-portcullis=b").finish();
        assert_eq!(get(&req, "__Host-portcullis").as_deref(), Some("a"));
        req.extensions_mut().insert(Scope::new(Some("example.com".into())));
        assert_eq!(get(&req, "__Host-portcullis").as_deref(), Some("b"));
    }
}
