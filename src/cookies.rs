//! Reading and writing cookies by hand, with every attribute explicit (poem's helpers leave
//! SameSite unset and drop `Secure` on removal, which browsers reject for `__Host-` names).

use poem::Request;

/// The first cookie called `name` in the request's `Cookie` headers.
pub fn get(req: &Request, name: &str) -> Option<String> {
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
