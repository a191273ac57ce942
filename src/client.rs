//! Who is on the other end: the client address (believing X-Forwarded-For only from trusted
//! proxies) and the user agent, as audit records want them.

use std::net::IpAddr;

use ipnet::IpNet;
use poem::Request;

use crate::audit::Client;

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
    Client { ip: client_ip(peer, &xff, trusted), user_agent }
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
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        let trusted = nets(&["127.0.0.1"]);
        let ip = client_ip("127.0.0.1".parse().unwrap(), &["not-an-ip"], &trusted);
        assert_eq!(ip.to_string(), "127.0.0.1");
    }
}
