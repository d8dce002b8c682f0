//! The proxies a server trusts
//! ([`Server::trusted_proxies`](crate::Server::trusted_proxies)): an address, or a
//! network in CIDR form, and whether an address is in it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A proxy, or a network of proxies, whose `X-Forwarded-For` and `X-Forwarded-Proto` the
/// server believes: an address (`10.0.0.7`, `::1`) or a network in CIDR form
/// (`10.0.0.0/8`, `fd00::/8`).
///
/// # Examples
///
/// ```
/// use syncbridge::TrustedProxy;
///
/// let net: TrustedProxy = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("192.0.2.1".parse().unwrap()));
/// // gunicorn's FORWARDED_ALLOW_IPS form: a comma-separated list.
/// let list: Result<Vec<TrustedProxy>, _> =
///     "127.0.0.1, ::1".split(',').map(|p| p.trim().parse()).collect();
/// assert_eq!(list.unwrap().len(), 2);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustedProxy {
    /// The network's address, its host bits zero.
    addr: IpAddr,
    prefix_len: u8,
}

impl TrustedProxy {
    /// The network of `addr`'s first `prefix_len` bits (at most 32 for IPv4, 128 for
    /// IPv6; the host bits are ignored). An IPv4-mapped IPv6 address counts as the
    /// IPv4 one: `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
    ///
    /// # Errors
    ///
    /// [`ParseTrustedProxyError::Prefix`] when `prefix_len` is longer than the address,
    /// or shorter than 96 for an IPv4-mapped one: such a network would hold IPv4
    /// clients and IPv6 ones at once, and an IPv4 client is in no IPv6 network.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, ParseTrustedProxyError> {
        match addr {
            IpAddr::V4(v4) if prefix_len <= 32 => Ok(TrustedProxy {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix_len))),
                prefix_len,
            }),
            // `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
            IpAddr::V6(v6) if prefix_len <= 128 => match v6.to_ipv4_mapped() {
                Some(v4) if prefix_len >= 96 => TrustedProxy::new(IpAddr::V4(v4), prefix_len - 96),
                Some(_) => Err(ParseTrustedProxyError::Prefix),
                None => Ok(TrustedProxy {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix_len))),
                    prefix_len,
                }),
            },
            _ => Err(ParseTrustedProxyError::Prefix),
        }
    }

    /// Whether `ip` is this proxy, or in this network. An IPv4-mapped IPv6 address (a
    /// dual-stack listener's IPv4 client) counts as the IPv4 one. An IPv4 address is in
    /// no IPv6 network (`::/0` holds no IPv4 client), as in Python's `ipaddress`; an
    /// IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 one (`10.0.0.0/8`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix_len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix_len) == u128::from(net)
            }
            // An IPv4 address is in no IPv6 network, as Python's `ipaddress` has it (and
            // uvicorn's list): `::/0` trusting every IPv4 client too would surprise a list
            // like `10.0.0.0/8, ::/0`. `::ffff:0:0/96` and longer are IPv4 networks (`new`).
            (IpAddr::V6(_), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn mask32(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask128(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl From<IpAddr> for TrustedProxy {
    fn from(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        TrustedProxy { addr, prefix_len }
    }
}

impl From<Ipv4Addr> for TrustedProxy {
    fn from(addr: Ipv4Addr) -> Self {
        IpAddr::V4(addr).into()
    }
}

impl From<Ipv6Addr> for TrustedProxy {
    fn from(addr: Ipv6Addr) -> Self {
        IpAddr::V6(addr).into()
    }
}

impl FromStr for TrustedProxy {
    type Err = ParseTrustedProxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            None => s
                .parse::<IpAddr>()
                .map(TrustedProxy::from)
                .map_err(|_| ParseTrustedProxyError::Addr),
            Some((addr, len)) => {
                let addr = addr
                    .parse::<IpAddr>()
                    .map_err(|_| ParseTrustedProxyError::Addr)?;
                // Digits only: `u8::from_str` would take a `+`.
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseTrustedProxyError::Prefix);
                }
                let len = len.parse().map_err(|_| ParseTrustedProxyError::Prefix)?;
                TrustedProxy::new(addr, len)
            }
        }
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = matches!(
            (self.addr, self.prefix_len),
            (IpAddr::V4(_), 32) | (IpAddr::V6(_), 128)
        );
        if host {
            self.addr.fmt(f)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix_len)
        }
    }
}

impl fmt::Debug for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedProxy({self})")
    }
}

/// Why a [`TrustedProxy`] could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseTrustedProxyError {
    /// The part before any `/` is not an IPv4 or IPv6 address.
    Addr,
    /// The prefix length is not a number, is longer than the address, or is shorter than
    /// 96 for an IPv4-mapped IPv6 address.
    Prefix,
}

impl fmt::Display for ParseTrustedProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseTrustedProxyError::Addr => {
                "a trusted proxy is an IP address or a network (10.0.0.0/8, fd00::/8)"
            }
            ParseTrustedProxyError::Prefix => {
                "a network's prefix length is at most 32 for IPv4 and 128 for IPv6, and at \
                 least 96 for an IPv4-mapped IPv6 address"
            }
        })
    }
}

impl std::error::Error for ParseTrustedProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_networks() {
        let net: TrustedProxy = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        // A dual-stack listener's IPv4 client.
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!("::1".parse::<TrustedProxy>().unwrap().to_string(), "::1");
        assert_eq!(
            "::ffff:10.0.0.0/104"
                .parse::<TrustedProxy>()
                .unwrap()
                .to_string(),
            "10.0.0.0/8"
        );
        let v6: TrustedProxy = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let mapped: TrustedProxy = "::ffff:0:0/96".parse().unwrap();
        assert!(mapped.contains("192.0.2.1".parse().unwrap()));
        let everything: TrustedProxy = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("192.0.2.1".parse().unwrap()));
        assert!(!everything.contains("2001:db8::1".parse().unwrap()));
        let refused = [
            ("10.0.0.0/33", ParseTrustedProxyError::Prefix),
            ("::/129", ParseTrustedProxyError::Prefix),
            ("10.0.0.0/+8", ParseTrustedProxyError::Prefix),
            ("10.0.0.0/", ParseTrustedProxyError::Prefix),
            ("localhost", ParseTrustedProxyError::Addr),
            ("10.0.0/8", ParseTrustedProxyError::Addr),
        ];
        for (input, error) in refused {
            assert_eq!(input.parse::<TrustedProxy>(), Err(error), "{input}");
        }
    }

    #[test]
    fn an_ipv4_address_is_in_no_ipv6_network() {
        for net in ["::/0", "::/80", "64:ff9b::/96"] {
            let net: TrustedProxy = net.parse().unwrap();
            assert!(!net.contains("192.0.2.1".parse().unwrap()), "{net}");
            assert!(!net.contains("::ffff:192.0.2.1".parse().unwrap()), "{net}");
        }
        assert!("::/0"
            .parse::<TrustedProxy>()
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        // Mapped, shorter than 96: IPv4 and IPv6 clients at once, refused.
        assert_eq!(
            "::ffff:0:0/95".parse::<TrustedProxy>(),
            Err(ParseTrustedProxyError::Prefix)
        );
    }
}
