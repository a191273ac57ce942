//! Reading and writing cookies by hand, with every attribute explicit (poem's helpers leave
//! SameSite unset and drop `Secure` on removal, which browsers reject for `__Host-` names),
//! and their [`Scope`]: host-only, or every host under `cookie_domain`.

use poem::Request;

/// The first cookie called `name` (a `__Host-` name, renamed by the request's [`Scope`]) in
/// the request's `Cookie` headers.
pub fn get(req: &Request, name: &str) -> Option<String> {
    let name = match req.extensions().get::<Scope>() {
        Some(scope) => scope.name(name),
        None => std::borrow::Cow::Borrowed(name),
    };
    let name = name.as_ref();
    req.headers()
        .get_all(poem::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

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
/// and any other cookie follow the session cookie's rule), but those in [`HOST_ONLY`].
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
    let mut resp = ep.call(req).await?.into_response();
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
    fn reading_follows_the_scope_so_a_host_only_cookie_is_not_read_under_a_domain() {
        let mut req = Request::builder().header("cookie", "__Host-portcullis=a; __Secure-portcullis=b").finish();
        assert_eq!(get(&req, "__Host-portcullis").as_deref(), Some("a"));
        req.extensions_mut().insert(Scope::new(Some("example.com".into())));
        assert_eq!(get(&req, "__Host-portcullis").as_deref(), Some("b"));
    }
}
