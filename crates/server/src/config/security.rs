//! Security settings of `sigmavault serve`: tokens, limits, TLS, origins, proxies.
//!
//! Kept apart from the rest of the configuration because every value here has
//! a documented default chosen for a NAS on a home or office network, and the
//! load tools raise them through exactly these keys (there is no exemption for
//! loopback: behind a reverse proxy every client is loopback).

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, Layers, count, duration, err, long_duration, nonempty};

/// Security flags, flattened into `sigmavault serve`.
#[derive(Debug, Default, Clone, Args)]
pub struct SecurityArgs {
    /// Lifetime of access tokens [default: 15m].
    #[arg(long)]
    pub access_token_ttl: Option<String>,
    /// Lifetime of a login session (its refresh tokens) [default: 30d].
    #[arg(long)]
    pub refresh_token_ttl: Option<String>,
    /// Clock leeway when checking token times, at most 30s [default: 5s].
    #[arg(long)]
    pub token_leeway: Option<String>,
    /// File with the token-signing secret (≥ 32 bytes); generated in the data dir when absent [default: DATA_DIR/jwt-secret].
    #[arg(long)]
    pub jwt_secret_file: Option<String>,
    /// A socket is sent `auth.expiring` this long before its token expires [default: 60s].
    #[arg(long)]
    pub auth_expiry_warning: Option<String>,
    /// An upgrade without credentials must send `auth` within this time, else 4401 [default: 5s].
    #[arg(long)]
    pub ws_auth_timeout: Option<String>,
    /// REST requests per client IP: N/PERIOD, a bucket of N refilled over PERIOD; `off` disables [default: 300/1m].
    #[arg(long)]
    pub http_rate_limit: Option<String>,
    /// Login attempts per client IP [default: 20/1m].
    #[arg(long)]
    pub login_rate_limit: Option<String>,
    /// Login attempts per (username, client IP) [default: 5/1m].
    #[arg(long)]
    pub login_user_rate_limit: Option<String>,
    /// Concurrent logins hashing passwords at once (argon2id costs ~19 MiB and tens of ms each) [default: 2].
    #[arg(long)]
    pub password_hash_concurrency: Option<String>,
    /// Open WebSockets per client IP; 0 = no limit [default: 64].
    #[arg(long)]
    pub ws_max_per_ip: Option<String>,
    /// Open WebSockets per user (all their sessions and keys); 0 = no limit [default: 128].
    #[arg(long)]
    pub ws_max_per_user: Option<String>,
    /// A browser origin (scheme://host[:port]) allowed to use the API and /ws besides the server's own; repeat for several [default: none].
    #[arg(
        long = "allowed-origin",
        visible_alias = "allowed-origins",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// A proxy (IP or CIDR) whose X-Forwarded-For is believed; repeat for several [default: none].
    #[arg(
        long = "trusted-proxy",
        visible_alias = "trusted-proxies",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// PEM certificate chain: serve HTTPS and WSS [default: none].
    #[arg(long)]
    pub tls_cert: Option<String>,
    /// PEM private key for --tls-cert [default: none].
    #[arg(long)]
    pub tls_key: Option<String>,
    /// Allow plain HTTP on a non-loopback address (tokens and passwords then cross the network in clear) [default: false].
    #[arg(long)]
    pub insecure_http: Option<String>,
}

/// A token bucket: `burst` requests, refilled over `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Bucket size.
    pub burst: u32,
    /// Time to refill the whole bucket.
    pub period: Duration,
}

impl RateSpec {
    /// Parses `N/PERIOD` (`300/1m`, `5/30s`) or `off`.
    pub fn parse(s: &str) -> Result<Option<RateSpec>, String> {
        if s == "off" || s == "0" {
            return Ok(None);
        }
        let (n, period) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not N/PERIOD (e.g. 300/1m) or off"))?;
        let burst = count(n.trim(), 1, 10_000_000)? as u32;
        let period = duration(period.trim())?;
        Ok(Some(RateSpec { burst, period }))
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr = IpAddr::from_str(a.trim()).map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The environment variable with the first admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "SIGMAVAULT_ADMIN_PASSWORD";

/// Validated security settings.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// The first admin's password (environment only; used when there are no users).
    pub admin_password: Option<sigmavault_proto::Secret>,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Session (refresh family) lifetime.
    pub refresh_token_ttl: Duration,
    /// Leeway on token times.
    pub token_leeway: Duration,
    /// Secret file (None: `DATA_DIR/jwt-secret`).
    pub jwt_secret_file: Option<PathBuf>,
    /// `auth.expiring` lead time.
    pub auth_expiry_warning: Duration,
    /// First-message auth deadline.
    pub ws_auth_timeout: Duration,
    /// REST limit per IP.
    pub http_rate_limit: Option<RateSpec>,
    /// Login limit per IP.
    pub login_rate_limit: Option<RateSpec>,
    /// Login limit per (username, IP).
    pub login_user_rate_limit: Option<RateSpec>,
    /// Concurrent password hashes.
    pub password_hash_concurrency: usize,
    /// WebSockets per IP (0 = none).
    pub ws_max_per_ip: usize,
    /// WebSockets per user (0 = none).
    pub ws_max_per_user: usize,
    /// Extra allowed origins, normalised `scheme://host:port` lower-case.
    pub allowed_origins: Vec<String>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// TLS certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP allowed on non-loopback addresses.
    pub insecure_http: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            admin_password: None,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            token_leeway: Duration::from_secs(5),
            jwt_secret_file: None,
            auth_expiry_warning: Duration::from_secs(60),
            ws_auth_timeout: Duration::from_secs(5),
            http_rate_limit: Some(RateSpec {
                burst: 300,
                period: Duration::from_secs(60),
            }),
            login_rate_limit: Some(RateSpec {
                burst: 20,
                period: Duration::from_secs(60),
            }),
            login_user_rate_limit: Some(RateSpec {
                burst: 5,
                period: Duration::from_secs(60),
            }),
            password_hash_concurrency: 2,
            ws_max_per_ip: 64,
            ws_max_per_user: 128,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
        }
    }
}

/// Keys a config file may use for these settings.
pub(super) const KEYS: &[&str] = &[
    "access-token-ttl",
    "refresh-token-ttl",
    "token-leeway",
    "jwt-secret-file",
    "auth-expiry-warning",
    "ws-auth-timeout",
    "http-rate-limit",
    "login-rate-limit",
    "login-user-rate-limit",
    "password-hash-concurrency",
    "ws-max-per-ip",
    "ws-max-per-user",
    "allowed-origin",
    "allowed-origins",
    "trusted-proxy",
    "trusted-proxies",
    "tls-cert",
    "tls-key",
    "insecure-http",
];

/// Lower-cases an origin and adds the default port, so `https://NAS.local`
/// and `https://nas.local:443` compare equal.
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return None;
    }
    let has_port = match rest.rfind(':') {
        Some(i) => !rest[i..].contains(']') && rest[i + 1..].parse::<u16>().is_ok(),
        None => false,
    };
    Some(if has_port {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}:{default_port}")
    })
}

fn flag(s: &str) -> Result<bool, String> {
    s.parse::<bool>().map_err(|_| format!("{s:?} is not true or false"))
}

impl SecurityConfig {
    pub(super) fn load(args: &SecurityArgs, layers: &Layers<'_>) -> Result<SecurityConfig, ConfigError> {
        let mut c = SecurityConfig {
            admin_password: (layers.env)(ADMIN_PASSWORD_ENV).map(sigmavault_proto::Secret),
            ..SecurityConfig::default()
        };
        macro_rules! set {
            ($field:ident, $key:literal, $parse:expr) => {
                if let Some(text) = layers.get($key, &args.$field)? {
                    c.$field = $parse(text.trim()).map_err(|problem: String| err($key, problem))?;
                }
            };
        }
        set!(access_token_ttl, "access-token-ttl", duration);
        set!(refresh_token_ttl, "refresh-token-ttl", long_duration);
        set!(token_leeway, "token-leeway", |s: &str| {
            if s == "0" || s == "0s" {
                return Ok(Duration::ZERO);
            }
            let d = duration(s)?;
            if d > Duration::from_secs(30) {
                return Err("at most 30s".to_owned());
            }
            Ok(d)
        });
        set!(jwt_secret_file, "jwt-secret-file", |s: &str| nonempty(s)
            .map(|p| Some(PathBuf::from(p))));
        set!(auth_expiry_warning, "auth-expiry-warning", duration);
        set!(ws_auth_timeout, "ws-auth-timeout", duration);
        set!(http_rate_limit, "http-rate-limit", RateSpec::parse);
        set!(login_rate_limit, "login-rate-limit", RateSpec::parse);
        set!(login_user_rate_limit, "login-user-rate-limit", RateSpec::parse);
        set!(password_hash_concurrency, "password-hash-concurrency", |s| count(
            s, 1, 64
        ));
        set!(ws_max_per_ip, "ws-max-per-ip", |s| count(s, 0, 10_000_000));
        set!(ws_max_per_user, "ws-max-per-user", |s| count(s, 0, 10_000_000));
        c.allowed_origins = layers
            .list("allowed-origin", &args.allowed_origins)?
            .iter()
            .map(|o| {
                normalize_origin(o).ok_or_else(|| {
                    err(
                        "allowed-origin",
                        format!("{o:?} is not an origin (scheme://host[:port], http or https)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        c.trusted_proxies = layers
            .list("trusted-proxy", &args.trusted_proxies)?
            .iter()
            .map(|p| Cidr::parse(p).map_err(|e| err("trusted-proxy", e)))
            .collect::<Result<_, _>>()?;
        set!(tls_cert, "tls-cert", |s: &str| nonempty(s)
            .map(|p| Some(PathBuf::from(p))));
        set!(tls_key, "tls-key", |s: &str| nonempty(s)
            .map(|p| Some(PathBuf::from(p))));
        set!(insecure_http, "insecure-http", flag);
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(err("tls-cert", "--tls-cert and --tls-key must be given together"));
        }
        if c.access_token_ttl < Duration::from_secs(1) {
            return Err(err("access-token-ttl", "at least 1s"));
        }
        Ok(c)
    }

    /// Whether TLS is configured.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(RateSpec::parse("off"), Ok(None));
        assert_eq!(
            RateSpec::parse("5/1m"),
            Ok(Some(RateSpec {
                burst: 5,
                period: Duration::from_secs(60)
            }))
        );
        assert!(RateSpec::parse("5").is_err());
        assert!(RateSpec::parse("x/1s").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(
            normalize_origin("https://NAS.local").as_deref(),
            Some("https://nas.local:443")
        );
        assert_eq!(normalize_origin("http://x:8080/").as_deref(), Some("http://x:8080"));
        assert_eq!(normalize_origin("http://[::1]").as_deref(), Some("http://[::1]:80"));
        assert_eq!(normalize_origin("http://[::1]:81").as_deref(), Some("http://[::1]:81"));
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin("ftp://x"), None);
    }
}
