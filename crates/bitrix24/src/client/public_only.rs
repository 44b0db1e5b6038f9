//! Outbound requests only to public addresses (the application server's production mode): a portal's address
//! comes from outside, so a host that resolves to loopback, a private network, link-local (cloud metadata at
//! 169.254.169.254) or another special range must not be reached with a token. The check runs where the
//! connection is made — [`PublicOnly`] is the client's DNS resolver and drops such addresses from every answer,
//! so a name that resolved to a public address a moment ago (DNS rebinding) still cannot connect inside — and an
//! IP-literal URL, which reqwest connects to without resolving, is refused before the request
//! ([`check_destination`]), redirects included ([`redirects`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use crate::error::Error;

/// A DNS resolver that answers only public addresses; a name with none is refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "host {host:?} resolves only to loopback, private or reserved addresses; refused"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Refuses a URL whose host is an IP literal outside the public internet (names are checked by [`PublicOnly`]
/// when they are resolved).
pub fn check_destination(url: &Url) -> Result<(), Error> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "address {ip} is loopback, private or reserved; refused"
        )))
    }
}

/// A redirect policy that follows at most `max` redirects and never to a non-public IP literal.
pub fn redirects(max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= max {
            attempt.error("too many redirects")
        } else if let Err(e) = check_destination(attempt.url()) {
            attempt.error(e.to_string())
        } else {
            attempt.follow()
        }
    })
}

/// Whether `ip` is an ordinary public unicast address. IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4)
/// is judged as the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const REFUSED: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),       // "this network"
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // carrier-grade NAT (some clouds' metadata, e.g. 100.100.100.200)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata 169.254.169.254
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved and broadcast
    ];
    !REFUSED.iter().any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let in_v6 = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // ::a.b.c.d (compatible), ::ffff:a.b.c.d (mapped), 64:ff9b::a.b.c.d (NAT64): the IPv4 address decides.
    if in_v6(0, 96) || in_v6(0xffff_0000_0000, 96) || in_v6(0x0064_ff9b << 96, 96) {
        return is_public_v4(low_v4);
    }
    // 2002:a.b.c.d::/48 (6to4).
    if in_v6(0x2002 << 112, 16) {
        return is_public_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    const REFUSED: [(u128, u32); 8] = [
        (0x0064_ff9b_0001 << 80, 48), // local-use NAT64
        (0x0100 << 112, 64),          // discard
        (0x2001 << 112, 32),          // Teredo (the IPv4 address is hidden)
        (0x2001_0db8 << 96, 32),      // documentation
        (0xfc00 << 112, 7),           // unique local (AWS metadata fd00:ec2::254)
        (0xfe80 << 112, 10),          // link-local
        (0xfec0 << 112, 10),          // site-local (deprecated)
        (0xff00 << 112, 8),           // multicast
    ];
    !REFUSED.iter().any(|(net, prefix)| in_v6(*net, *prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn special_addresses_are_refused_public_ones_pass() {
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!public(refused), "{refused} must be refused");
        }
        for ok in [
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2a02:6b8::2:242",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(public(ok), "{ok} is public");
        }
    }

    #[test]
    fn ip_literal_urls_are_checked_before_connecting() {
        for refused in [
            "http://127.0.0.1:8080/rest/",
            "https://10.0.0.5/rest/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/rest/",
            "http://[::ffff:127.0.0.1]/rest/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            let url = Url::parse(refused).unwrap();
            assert!(check_destination(&url).is_err(), "{refused}");
        }
        for ok in ["https://acme.bitrix24.ru/rest/", "https://8.8.8.8/"] {
            assert!(check_destination(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
    }

    /// A listener on 127.0.0.1 that counts the connections it accepts.
    async fn counting_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        (port, accepted)
    }

    fn client(webhook: &str, public_hosts_only: bool) -> crate::Bitrix24Client {
        crate::Bitrix24Client::new(
            crate::Credentials::Webhook(crate::WebhookUrl::parse(webhook).unwrap()),
            crate::ClientConfig {
                max_attempts: 1,
                public_hosts_only,
                ..crate::ClientConfig::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_public_only_client_never_connects_inside_a_local_one_does() {
        use std::sync::atomic::Ordering;
        let (port, accepted) = counting_listener().await;
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"] {
            let c = client(&format!("https://{host}:{port}/rest/1/secret/"), true);
            let err = c.call("profile", serde_json::json!({})).await.unwrap_err();
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection inside");
        // The local-emulator mode lets loopback through.
        let c = client(&format!("http://127.0.0.1:{port}/rest/1/secret/"), false);
        let _ = c.call("profile", serde_json::json!({})).await;
        assert!(accepted.load(Ordering::SeqCst) >= 1, "local mode connects");
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused() {
        let r = PublicOnly.resolve("localhost".parse().unwrap()).await;
        assert!(r.is_err(), "localhost resolves to loopback only");
    }
}
