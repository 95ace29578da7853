//! Which peer addresses the relay may send to. By default every address that reaches into
//! the server's own networks is denied (loopback, RFC 1918, CGNAT, link-local, multicast,
//! broadcast, unspecified, unique-local, IETF-reserved and benchmarking ranges), including the
//! IPv4-mapped, IPv4-compatible, 6to4 and NAT64 spellings of those addresses that naive
//! checks miss, plus the server's own listening and relay addresses. `allowed_peers` opens
//! ranges explicitly; `denied_peers` closes more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

pub struct PeerPolicy {
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
    own: Vec<SocketAddr>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<IpNet>, denied: Vec<IpNet>, own: Vec<SocketAddr>) -> Self {
        PeerPolicy {
            allowed,
            denied,
            own,
        }
    }

    /// Whether a permission may be installed for `peer` (port 0 when only the IP is known).
    pub fn permits(&self, peer: IpAddr) -> bool {
        let canon = embedded_v4(peer).map_or(peer, IpAddr::V4);
        if self
            .denied
            .iter()
            .any(|n| n.contains(&peer) || n.contains(&canon))
        {
            return false;
        }
        if self
            .allowed
            .iter()
            .any(|n| n.contains(&peer) || n.contains(&canon))
        {
            return true;
        }
        !is_internal(canon) && !is_internal(peer)
    }

    /// Whether a packet may be sent to this exact peer transport address: never to one of the
    /// server's own sockets (a relay looping into itself or into its listeners).
    pub fn permits_addr(&self, peer: SocketAddr) -> bool {
        let canon = embedded_v4(peer.ip()).map_or(peer.ip(), IpAddr::V4);
        if self.own.iter().any(|o| {
            o.port() == peer.port()
                && (o.ip() == canon || o.ip() == peer.ip() || o.ip().is_unspecified())
        }) {
            return false;
        }
        self.permits(peer.ip())
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
/// (::a.b.c.d), 6to4 (2002:AABB:CCDD::/16) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48).
pub fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        return Some(tail);
    }
    // SIIT "IPv4-translated" form ::ffff:0:a.b.c.d (RFC 2765).
    if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return Some(tail);
    }
    None
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_internal_v4(a),
        IpAddr::V6(a) => is_internal_v6(a),
    }
}

fn is_internal_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_unspecified()
        || o[0] == 0 // 0.0.0.0/8 "this network"
        || a.is_loopback()
        || a.is_private()
        || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64.0.0/10 CGNAT
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || o[0] >= 240 // reserved
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xFE) == 18) // 198.18.0.0/15 benchmarking
}

fn is_internal_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site local (deprecated)
        || s[..6] == [0, 0, 0, 0, 0, 0] // any other ::/96 form
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // 100::/64 discard-only
        // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): its translator may use a /48../64
        // layout (RFC 6052) where the IPv4 address is not the last 32 bits.
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny_all_default() -> PeerPolicy {
        PeerPolicy::new(vec![], vec![], vec!["203.0.113.10:3478".parse().unwrap()])
    }

    #[test]
    fn denies_every_internal_range_and_its_ipv6_spellings() {
        let p = deny_all_default();
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "64:ff9b::7f00:1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "::ffff:0:0",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!p.permits(ip), "{ip} should be denied");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(p.permits(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn own_addresses_are_denied_and_allowed_ranges_open() {
        let p = PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            vec!["8.8.4.0/24".parse().unwrap()],
            vec!["127.0.0.1:3478".parse().unwrap()],
        );
        assert!(p.permits("127.0.0.1".parse().unwrap()));
        assert!(p.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(p.permits_addr("127.0.0.1:5000".parse().unwrap()));
        assert!(!p.permits_addr("127.0.0.1:3478".parse().unwrap()));
        assert!(!p.permits_addr("[::ffff:127.0.0.1]:3478".parse().unwrap()));
        assert!(!p.permits("8.8.4.4".parse().unwrap()));
        assert!(!p.permits("::ffff:8.8.4.4".parse().unwrap()));
        assert!(!p.permits("10.0.0.1".parse().unwrap()));
    }
}
