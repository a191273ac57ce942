//! Who is on the other end: the client address (believing X-Forwarded-For only from trusted
//! proxies), the user agent, as audit records want them, and the one key ([`AddressKey`])
//! every per-address defence counts by.

use std::net::IpAddr;

use ipnet::IpNet;
use poem::Request;

use crate::audit::Client;

/// "The client address" as every per-address defence counts it: the login quota, the
/// failure counts that demand a captcha, captcha drawing and the connection caps. IPv4 is one
/// address; IPv6 is its /64, one subscriber's usual allocation (RFC 6177, RIPE-690 §4.2), so
/// cycling through it gains nothing; an IPv4 client seen through an IPv6 socket
/// (`::ffff:a.b.c.d`) is the IPv4 address it is. The field is private: the only way to get a
/// key is [`AddressKey::of`], so no defence can count by a different notion of address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key for a client address.
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => AddressKey(IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())),
            v4 => AddressKey(v4),
        }
    }

    /// The address the key stands for (for IPv6, the first address of the /64).
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(_) => write!(f, "{}/64", self.0),
            v4 => v4.fmt(f),
        }
    }
}

impl Client {
    /// This client's key for every per-address defence.
    pub fn key(&self) -> AddressKey {
        AddressKey::of(self.ip)
    }
}

/// The client address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy. Entries left of that
/// were written by the client and prove nothing.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for.iter().rev().flat_map(|h| h.rsplit(',')) {
        let Some(ip) = parse_entry(entry) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One X-Forwarded-For entry: an address, possibly with a port or in brackets.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    e.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok()).map(canonical)
}

/// The request's client as audit records see it. The user agent is cut to 256 characters.
pub fn client(req: &Request, trusted: &[IpNet]) -> Client {
    let peer =
        req.remote_addr().as_socket_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let xff: Vec<&str> = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let user_agent = req
        .headers()
        .get(poem::http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(256).collect())
        .unwrap_or_default();
    Client { ip: client_ip(peer, &xff, trusted), user_agent, session: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| crate::config::parse_net(s).unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let ip = client_ip("203.0.113.9".parse().unwrap(), &["1.2.3.4"], &nets(&["10.0.0.0/8"]));
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1"]);
        let ip = client_ip("127.0.0.1".parse().unwrap(), &["6.6.6.6, 198.51.100.7, 10.1.1.1"], &trusted);
        assert_eq!(ip.to_string(), "198.51.100.7");
        let ip = client_ip("127.0.0.1".parse().unwrap(), &["6.6.6.6", "198.51.100.8:5555"], &trusted);
        assert_eq!(ip.to_string(), "198.51.100.8");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| AddressKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!(key("2001:db8:1:2::9").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        let trusted = nets(&["127.0.0.1"]);
        let ip = client_ip("127.0.0.1".parse().unwrap(), &["not-an-ip"], &trusted);
        assert_eq!(ip.to_string(), "127.0.0.1");
    }
}
