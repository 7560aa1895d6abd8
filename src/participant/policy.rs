//! The outgoing call policy: which hosts the coordinator may call (a defence against SSRF).
//!
//! Clients hand the coordinator URLs, and it calls them from inside the network. Link-local
//! and cloud metadata addresses are always refused; `--allow-participant` narrows the rest.
//! A URL is checked when it arrives (create, join, a try's answer), and the addresses its
//! name resolves to are checked again at every call, by the resolver the HTTP client uses:
//! a name that resolves elsewhere later (DNS rebinding) is refused then too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Name, Resolve, Resolving};
use url::Host;

use crate::domain::ParticipantUrl;

/// Host names of cloud metadata services, refused whatever the allow-list says.
const METADATA_NAMES: [&str; 7] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.tencentyun.com",
];

/// Addresses of cloud metadata services outside the link-local ranges.
const METADATA_V4: [Ipv4Addr; 1] = [Ipv4Addr::new(100, 100, 100, 200)]; // Alibaba Cloud
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)]; // AWS

/// How long a name may take to resolve when a URL is checked on arrival.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// One `--allow-participant` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// `stock.internal`: this host, any port.
    Host(String),
    /// `stock.internal:8080`: this host on this port.
    HostPort(String, u16),
    /// `*.internal`: any host under this domain (not the domain itself). Stored with its dot.
    Suffix(String),
    /// `10.0.0.0/8` or one address: hosts whose every address lies in the network.
    Net(IpNet),
}

/// An `--allow-participant` value that is none of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a host, host:port, *.domain or CIDR network")]
pub struct AllowRuleError(String);

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let bad = || AllowRuleError(text.to_owned());
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::HostPort(addr.ip().to_string(), addr.port()));
        }
        let is_name = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if let Some(domain) = s.strip_prefix("*.") {
            return is_name(domain)
                .then(|| Self::Suffix(format!(".{domain}")))
                .ok_or_else(bad);
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            let port = port.parse::<u16>().map_err(|_| bad())?;
            return is_name(host)
                .then(|| Self::HostPort(host.to_owned(), port))
                .ok_or_else(bad);
        }
        is_name(&s).then(|| Self::Host(s.clone())).ok_or_else(bad)
    }
}

/// Why the coordinator will not call a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("`{0}` is a cloud metadata service, which the coordinator never calls")]
    Metadata(String),
    #[error("{}", forbidden(host, *addr))]
    Forbidden { host: String, addr: IpAddr },
    #[error("`{0}` is not allowed by the coordinator's --allow-participant list")]
    NotAllowed(String),
    #[error("`{host}` cannot be resolved, so --allow-participant cannot be checked: {error}")]
    Unresolvable { host: String, error: String },
}

/// Answers name lookups for participant calls. The system resolver unless a test gives its own.
#[derive(Clone)]
pub struct NameResolver(pub Arc<dyn Resolve>);

impl fmt::Debug for NameResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameResolver(..)")
    }
}

impl Default for NameResolver {
    fn default() -> Self {
        Self(Arc::new(SystemResolver))
    }
}

/// getaddrinfo, through tokio's blocking pool.
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Which hosts the coordinator may call. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    rules: Arc<Vec<AllowRule>>,
    resolver: NameResolver,
}

impl CallPolicy {
    #[must_use]
    pub fn new(rules: Vec<AllowRule>, resolver: NameResolver) -> Self {
        Self {
            rules: Arc::new(rules),
            resolver,
        }
    }

    /// Whether an allow-list is set (without one, every host but the forbidden ones is allowed).
    #[must_use]
    pub fn is_restricted(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Checks a URL as it arrives: its host, and every address its name resolves to now.
    ///
    /// # Errors
    /// [`PolicyError`] saying why the coordinator will not call it.
    pub async fn check(&self, url: &ParticipantUrl) -> Result<(), PolicyError> {
        let port = url.as_url().port_or_known_default();
        match url.as_url().host() {
            Some(Host::Domain(name)) => {
                let name = normalise(name);
                if is_metadata_name(&name) {
                    return Err(PolicyError::Metadata(name));
                }
                let by_name = !self.is_restricted() || self.name_allowed(&name, port);
                let addrs = match self.lookup(&name).await {
                    Ok(addrs) => addrs,
                    // Allowed by name: the call-time check will look at the addresses.
                    Err(_) if by_name => return Ok(()),
                    Err(error) => {
                        return Err(PolicyError::Unresolvable { host: name, error });
                    }
                };
                for addr in addrs {
                    self.check_addr(&name, addr, by_name)?;
                }
                Ok(())
            }
            Some(Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip), port),
            Some(Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip), port),
            None => Err(PolicyError::NotAllowed(url.to_string())),
        }
    }

    /// Checks a URL right before a call. Names are checked by the client's resolver
    /// ([`CallPolicy::resolver`]); this covers URLs whose host is an address.
    ///
    /// # Errors
    /// [`PolicyError`] saying why the coordinator will not call it.
    pub fn check_before_call(&self, url: &ParticipantUrl) -> Result<(), PolicyError> {
        let port = url.as_url().port_or_known_default();
        match url.as_url().host() {
            Some(Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip), port),
            Some(Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip), port),
            Some(Host::Domain(_)) => Ok(()),
            None => Err(PolicyError::NotAllowed(url.to_string())),
        }
    }

    /// The resolver for the HTTP client: resolves, then keeps only the addresses the policy
    /// allows, and fails when none is left.
    #[must_use]
    pub fn resolver(&self) -> Arc<dyn Resolve> {
        Arc::new(self.clone())
    }

    fn check_literal(&self, ip: IpAddr, port: Option<u16>) -> Result<(), PolicyError> {
        if self.rules.is_empty() && !is_forbidden(ip) {
            // Every other address is allowed: no need to write this one out (checked at
            // every call, so it counts).
            return Ok(());
        }
        let host = ip.to_string();
        let by_name = self.name_allowed(&host, port);
        self.check_addr(&host, ip, by_name)
    }

    fn check_addr(&self, host: &str, addr: IpAddr, by_name: bool) -> Result<(), PolicyError> {
        if is_forbidden(addr) {
            return Err(PolicyError::Forbidden {
                host: host.to_owned(),
                addr,
            });
        }
        let by_net = || {
            self.rules
                .iter()
                .any(|r| matches!(r, AllowRule::Net(net) if net.contains(&addr)))
        };
        if self.rules.is_empty() || by_name || by_net() {
            Ok(())
        } else {
            Err(PolicyError::NotAllowed(host.to_owned()))
        }
    }

    /// Whether a name rule allows `host` (on `port`, when known).
    fn name_allowed(&self, host: &str, port: Option<u16>) -> bool {
        self.rules.iter().any(|rule| match rule {
            AllowRule::Host(h) => h == host,
            AllowRule::HostPort(h, p) => h == host && port.is_none_or(|port| port == *p),
            AllowRule::Suffix(suffix) => host.ends_with(suffix.as_str()),
            AllowRule::Net(_) => false,
        })
    }

    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = Name::from_str(host).map_err(|_| "not a valid host name".to_owned())?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.0.resolve(name)).await {
            Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs())),
        }
    }
}

impl Resolve for CallPolicy {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = normalise(name.as_str());
            if is_metadata_name(&host) {
                return Err(PolicyError::Metadata(host).into());
            }
            // The port is not known here; a host:port rule was checked with its port when
            // the URL arrived.
            let by_name = policy.name_allowed(&host, None);
            let resolved = policy.resolver.0.resolve(name).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .filter(|a| match policy.check_addr(&host, a.ip(), by_name) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match refused {
                Some(error) if allowed.is_empty() => Err(error.into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

fn forbidden(host: &str, addr: IpAddr) -> String {
    let what = "a link-local or cloud metadata address, which the coordinator never calls";
    if host == addr.to_string() {
        format!("{addr} is {what}")
    } else {
        format!("`{host}` resolves to {addr}, {what}")
    }
}

fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_metadata_name(host: &str) -> bool {
    METADATA_NAMES.contains(&host)
}

/// Link-local (169.254.0.0/16, fe80::/10) and cloud metadata addresses, also when written
/// as IPv4-mapped, IPv4-compatible or NAT64 IPv6 addresses.
fn is_forbidden(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local() || METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => {
            let embedded_v4 = v6.to_ipv4().or_else(|| {
                // 64:ff9b::/96, the NAT64 well-known prefix.
                (v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
                    let o = v6.octets();
                    Ipv4Addr::new(o[12], o[13], o[14], o[15])
                })
            });
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || METADATA_V6.contains(&v6)
                || embedded_v4.is_some_and(|v4| is_forbidden(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> AllowRule {
        text.parse().unwrap()
    }

    #[test]
    fn allow_rules_read_as_host_host_port_suffix_or_network() {
        assert_eq!(
            rule("Stock.Internal"),
            AllowRule::Host("stock.internal".into())
        );
        assert_eq!(
            rule("stock.internal:8080"),
            AllowRule::HostPort("stock.internal".into(), 8080)
        );
        assert_eq!(rule("*.internal"), AllowRule::Suffix(".internal".into()));
        assert_eq!(
            rule("10.0.0.0/8"),
            AllowRule::Net("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            rule("10.1.2.3"),
            AllowRule::Net("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(rule("[::1]:8080"), AllowRule::HostPort("::1".into(), 8080));
        for bad in [
            "",
            "*.",
            "http://x",
            "a b",
            "host:port",
            "10.0.0.0/33",
            "*.a..b",
        ] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn link_local_and_metadata_addresses_are_forbidden_in_every_spelling() {
        for addr in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_forbidden(addr.parse().unwrap()), "{addr}");
        }
        for addr in [
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "fec0::1",
            "fd00:ec2::253",
            "8.8.8.8",
        ] {
            assert!(!is_forbidden(addr.parse().unwrap()), "{addr}");
        }
        assert!(is_metadata_name(&normalise("Metadata.Google.Internal.")));
    }

    fn policy(rules: &[&str]) -> CallPolicy {
        CallPolicy::new(
            rules.iter().map(|r| rule(r)).collect(),
            NameResolver::default(),
        )
    }

    fn url(text: &str) -> ParticipantUrl {
        ParticipantUrl::parse(text).unwrap()
    }

    #[tokio::test]
    async fn without_rules_everything_but_the_forbidden_is_allowed() {
        let open = policy(&[]);
        assert!(open.check(&url("http://127.0.0.1:9/x")).await.is_ok());
        assert!(open.check(&url("http://localhost:9/x")).await.is_ok());
        assert!(matches!(
            open.check(&url("http://169.254.169.254/latest/meta-data"))
                .await,
            Err(PolicyError::Forbidden { .. })
        ));
        assert!(matches!(
            open.check(&url("http://[fe80::1]/")).await,
            Err(PolicyError::Forbidden { .. })
        ));
        assert_eq!(
            open.check(&url("http://metadata.google.internal/x")).await,
            Err(PolicyError::Metadata("metadata.google.internal".into()))
        );
    }

    /// Knows no name at all.
    struct NoNames;

    impl Resolve for NoNames {
        fn resolve(&self, _: Name) -> Resolving {
            Box::pin(async { Err(std::io::Error::other("no such host").into()) })
        }
    }

    #[tokio::test]
    async fn an_unresolvable_name_passes_only_when_the_rules_allow_it_by_name() {
        let resolver = NameResolver(Arc::new(NoNames));
        let open = CallPolicy::new(vec![], resolver.clone());
        assert!(open
            .check(&url("http://not-yet-in-dns.internal/x"))
            .await
            .is_ok());
        let by_name = CallPolicy::new(vec![rule("*.internal")], resolver.clone());
        assert!(by_name
            .check(&url("http://not-yet-in-dns.internal/x"))
            .await
            .is_ok());
        let by_net = CallPolicy::new(vec![rule("10.0.0.0/8")], resolver);
        assert!(matches!(
            by_net.check(&url("http://not-yet-in-dns.internal/x")).await,
            Err(PolicyError::Unresolvable { .. })
        ));
    }

    #[tokio::test]
    async fn with_rules_only_matching_hosts_ports_and_networks_are_allowed() {
        let p = policy(&["stock.internal:8080", "*.pay.internal", "127.0.0.0/8"]);
        assert!(p.check_before_call(&url("http://127.0.0.1:1/")).is_ok());
        assert!(p.check(&url("http://127.0.0.1:1/")).await.is_ok());
        assert!(
            p.check(&url("http://localhost:1/")).await.is_ok(),
            "resolves into 127/8"
        );
        assert!(p.name_allowed("stock.internal", Some(8080)));
        assert!(!p.name_allowed("stock.internal", Some(8081)));
        assert!(p.name_allowed("eu.pay.internal", Some(1)));
        assert!(!p.name_allowed("pay.internal", Some(1)));
        assert!(!p.name_allowed("evilpay.internal", Some(1)));
        assert_eq!(
            p.check(&url("http://10.0.0.1/")).await,
            Err(PolicyError::NotAllowed("10.0.0.1".into()))
        );
        assert!(matches!(
            p.check(&url("http://169.254.169.254/")).await,
            Err(PolicyError::Forbidden { .. })
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn reading_an_allow_rule_never_panics(text in "[ -~]{0,40}|\\PC{0,20}") {
                let _ = text.parse::<AllowRule>();
            }

            /// An IPv4 address is judged the same however it is written in IPv6.
            #[test]
            fn every_spelling_of_an_ipv4_address_gets_the_same_verdict(bits in any::<u32>()) {
                let v4 = Ipv4Addr::from(bits);
                let verdict = is_forbidden(IpAddr::V4(v4));
                prop_assert_eq!(is_forbidden(IpAddr::V6(v4.to_ipv6_mapped())), verdict);
                let o = v4.octets();
                let nat64 = Ipv6Addr::new(
                    0x64, 0xff9b, 0, 0, 0, 0,
                    u16::from_be_bytes([o[0], o[1]]),
                    u16::from_be_bytes([o[2], o[3]]),
                );
                prop_assert_eq!(is_forbidden(IpAddr::V6(nat64)), verdict);
            }
        }
    }
}
