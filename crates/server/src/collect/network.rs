//! `system.network`: one entry per network interface with its link state,
//! addresses, counters and byte rates.
//!
//! The interface list comes from `<procfs>/net/dev`, because that is the one
//! file that names every interface of the network namespace together with its
//! counters; it is the only file whose absence or damage fails the sample.
//! Everything else (sysfs attributes, addresses) is decoration: a missing file
//! shows up as `null` or as fewer addresses, never as an error, so a container
//! without `/sys` or a kernel without IPv6 still gets counters.
//!
//! # Where the IPv4 addresses come from
//!
//! Linux has no `/proc` file listing IPv4 addresses per interface (IPv6 has
//! `net/if_inet6`); the proper interface is rtnetlink, which needs a socket
//! (and a dependency or `unsafe`) rather than file reads below a root we can
//! point at fixtures. We therefore reconstruct them from two routing files:
//!
//! * `net/fib_trie` lists every local address as a `/32 host LOCAL` entry, but
//!   without the interface or the prefix length.
//! * `net/route` (the main table) holds the connected route the kernel adds for
//!   each address (`192.168.1.0/24 dev eth0`), with the interface and the mask.
//!   Each local address is given the interface and prefix of the longest
//!   on-link route (no gateway, prefix > 0) that contains it; ties go to the
//!   lowest metric.
//! * Addresses on a loopback device get their prefix route as a `host LOCAL`
//!   entry shorter than /32 in the local table (`127.0.0.0/8`), which
//!   `net/route` does not show; such an entry places an address on the
//!   loopback interface.
//!
//! Known limits of this reconstruction, all of which rtnetlink would lift: an
//! address without a containing connected route (a `/32` from DHCP as on some
//! clouds, a point-to-point peer address, addresses of an administratively down
//! interface, whose routes the kernel removes) is left out rather than guessed;
//! two interfaces on the same subnet both get the addresses to whichever route
//! wins; a device route broader than the address's own prefix (`10.0.0.0/8 dev
//! wg0` for a `10.0.0.5/32`) reports that broader prefix.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Roots, Sample, Source, SourceError, read};

/// `ARPHRD_LOOPBACK` in `/sys/class/net/<if>/type`.
const ARPHRD_LOOPBACK: u32 = 772;

/// `RTF_UP` in the `Flags` column of `net/route`.
const RTF_UP: u32 = 0x0001;

/// `RTF_GATEWAY`: the route goes through a router, so it says nothing about
/// which subnet a local address is on.
const RTF_GATEWAY: u32 = 0x0002;

/// `RTF_REJECT`: unreachable/prohibit routes, shown with interface `*`.
const RTF_REJECT: u32 = 0x0200;

/// The `system.network` source. Keeps the previous byte counters so that each
/// sample can report rates.
pub struct NetworkSource {
    roots: Roots,
    previous: Option<Baseline>,
}

/// Byte counters of the last good sample and when it was taken.
struct Baseline {
    at: Instant,
    /// Interface name → (rx_bytes, tx_bytes).
    bytes: HashMap<String, (u64, u64)>,
}

impl NetworkSource {
    /// A source reading below `roots`; its first sample reports rates of 0.
    pub fn new(roots: Roots) -> NetworkSource {
        NetworkSource { roots, previous: None }
    }

    /// [`Source::sample`] with the clock passed in, so tests control the
    /// interval the rates are computed over.
    fn sample_at(&mut self, now: Instant) -> Result<Sample, SourceError> {
        let dev_path = self.roots.proc("net/dev");
        let counters = parse_net_dev(&read(&dev_path)?).map_err(|e| SourceError::parse(&dev_path, e))?;

        let links: Vec<Link> = counters
            .iter()
            .map(|c| read_link(&self.roots.sys("class/net").join(&c.name), &c.name))
            .collect();
        let mut addresses = self.addresses(&counters, &links);

        let elapsed = self
            .previous
            .as_ref()
            .map(|p| now.saturating_duration_since(p.at).as_secs_f64());
        let mut interfaces: Vec<(&str, Value)> = counters
            .iter()
            .zip(&links)
            .map(|(c, link)| {
                let before = self.previous.as_ref().and_then(|p| p.bytes.get(&c.name));
                let rx_rate = rate(before.map(|b| b.0), c.rx_bytes, elapsed);
                let tx_rate = rate(before.map(|b| b.1), c.tx_bytes, elapsed);
                let value = json!({
                    "name": c.name,
                    "state": link.operstate,
                    "mac": link.mac,
                    "mtu": link.mtu,
                    "addresses": addresses.remove(&c.name).unwrap_or_default(),
                    "rx_bytes": c.rx_bytes,
                    "tx_bytes": c.tx_bytes,
                    "rx_bytes_per_sec": rx_rate,
                    "tx_bytes_per_sec": tx_rate,
                    "rx_packets": c.rx_packets,
                    "tx_packets": c.tx_packets,
                    "rx_errors": c.rx_errors,
                    "tx_errors": c.tx_errors,
                    "rx_dropped": c.rx_dropped,
                    "tx_dropped": c.tx_dropped,
                    "speed_mbps": link.speed_mbps,
                    "loopback": link.loopback,
                });
                (c.name.as_str(), value)
            })
            .collect();
        interfaces.sort_by(|a, b| a.0.cmp(b.0));
        let state = json!({ "interfaces": interfaces.into_iter().map(|(_, v)| v).collect::<Vec<_>>() });

        // Only a good sample becomes the baseline, so a failed read does not
        // shorten the next interval or lose the counters.
        self.previous = Some(Baseline {
            at: now,
            bytes: counters
                .iter()
                .map(|c| (c.name.clone(), (c.rx_bytes, c.tx_bytes)))
                .collect(),
        });
        Ok(Sample {
            state,
            events: Vec::new(),
        })
    }

    /// Interface name → its addresses as `addr/prefix` strings, IPv4 before
    /// IPv6, each family in address order (the kernel files are in hash order,
    /// which would make the state change between identical samples).
    fn addresses(&self, counters: &[DevCounters], links: &[Link]) -> HashMap<String, Vec<String>> {
        // Missing files mean "no addresses of that family" (IPv6 disabled, a
        // fixture without them); they are not worth failing the counters for.
        let optional = |rel: &str| std::fs::read_to_string(self.roots.proc(rel)).unwrap_or_default();
        let loopback = counters
            .iter()
            .zip(links)
            .filter(|(_, l)| l.loopback)
            .map(|(c, _)| c.name.as_str())
            .min();

        let fib = parse_fib_trie(&optional("net/fib_trie"));
        let routes = parse_route(&optional("net/route"));
        let mut v4 = ipv4_addresses(&fib, &routes, loopback);
        v4.sort();
        let mut v6 = parse_if_inet6(&optional("net/if_inet6"));
        v6.sort_by_key(|a| (a.addr, a.prefix));

        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for a in v4 {
            out.entry(a.iface).or_default().push(format!("{}/{}", a.addr, a.prefix));
        }
        for a in v6 {
            out.entry(a.iface).or_default().push(format!("{}/{}", a.addr, a.prefix));
        }
        out
    }
}

impl Source for NetworkSource {
    fn name(&self) -> &str {
        "network"
    }

    fn topic(&self) -> &'static str {
        "system.network"
    }

    fn sample(&mut self) -> Result<Sample, SourceError> {
        self.sample_at(Instant::now())
    }
}

/// Bytes per second since the baseline, rounded. 0 without a baseline (first
/// sample, new interface), over an empty interval, and when the counter went
/// backwards (driver reset, interface re-created, 32-bit wrap): a negative or
/// wrapped-around rate would be a lie, and the current value becomes the new
/// baseline anyway.
fn rate(before: Option<u64>, now: u64, elapsed_secs: Option<f64>) -> u64 {
    match (before, elapsed_secs) {
        (Some(before), Some(secs)) if now >= before && secs > 0.0 => ((now - before) as f64 / secs).round() as u64,
        _ => 0,
    }
}

/// The `net/dev` counters we publish for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DevCounters {
    name: String,
    rx_bytes: u64,
    rx_packets: u64,
    rx_errors: u64,
    rx_dropped: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_errors: u64,
    tx_dropped: u64,
}

/// Parses `net/dev`: two header lines, then `name: 8 receive + 8 transmit
/// counters`. Strict, because these counters are the substance of the topic
/// and a file that does not look like this is not `net/dev`.
fn parse_net_dev(text: &str) -> Result<Vec<DevCounters>, String> {
    let mut lines = text.lines();
    for n in 1..=2 {
        match lines.next() {
            Some(line) if line.contains('|') => {}
            _ => return Err(format!("line {n}: expected a header line")),
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let n = i + 3;
        if line.trim().is_empty() {
            continue;
        }
        // Split at the first ':' (names cannot contain one); older kernels
        // print no space between it and a wide first counter.
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| format!("line {n}: no ':' after the name"))?;
        let name = name.trim();
        if !valid_ifname(name) {
            return Err(format!("line {n}: invalid interface name {name:?}"));
        }
        if !seen.insert(name) {
            return Err(format!("line {n}: interface {name:?} listed twice"));
        }
        let fields = rest
            .split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("line {n}: {e}"))?;
        if fields.len() < 16 {
            return Err(format!("line {n}: {} counters, expected 16", fields.len()));
        }
        out.push(DevCounters {
            name: name.to_owned(),
            rx_bytes: fields[0],
            rx_packets: fields[1],
            rx_errors: fields[2],
            rx_dropped: fields[3],
            tx_bytes: fields[8],
            tx_packets: fields[9],
            tx_errors: fields[10],
            tx_dropped: fields[11],
        });
    }
    Ok(out)
}

/// Whether `name` can be an interface name. The name becomes a path
/// component below the sysfs root, so `..` or a `/` must not get that far.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// What sysfs says about one interface; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Link {
    operstate: Option<String>,
    mac: Option<String>,
    mtu: Option<u64>,
    speed_mbps: Option<u64>,
    loopback: bool,
}

/// Reads `<dir>/{operstate,address,mtu,speed,type}`. Unreadable attributes
/// are normal (`speed` of a down or virtual link fails with EINVAL, interfaces
/// without a link-layer address have an empty `address`, the directory may not
/// exist at all), so they just become `None`.
fn read_link(dir: &Path, name: &str) -> Link {
    let attr = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let kind = attr("type").and_then(|t| t.parse::<u32>().ok());
    Link {
        operstate: attr("operstate"),
        mac: attr("address"),
        mtu: attr("mtu").and_then(|m| m.parse().ok()),
        speed_mbps: attr("speed").as_deref().and_then(parse_speed),
        loopback: kind == Some(ARPHRD_LOOPBACK) || name == "lo",
    }
}

/// `speed` in Mb/s; the kernel prints `SPEED_UNKNOWN` as `-1`, which (like
/// any negative or unparsable value) means "unknown".
fn parse_speed(text: &str) -> Option<u64> {
    text.trim().parse::<i64>().ok().and_then(|s| u64::try_from(s).ok())
}

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct IfAddr<A> {
    iface: String,
    addr: A,
    prefix: u8,
}

/// Parses `net/if_inet6`: `address(32 hex) ifindex prefix_len scope flags
/// name` per line, numbers in hex. Lines that do not parse are skipped: the
/// addresses are decoration, not worth failing the counters for.
fn parse_if_inet6(text: &str) -> Vec<IfAddr<Ipv6Addr>> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [hex, _index, prefix, _scope, _flags, name] = f[..] else {
                return None;
            };
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !valid_ifname(name) {
                return None;
            }
            let addr = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            let prefix = u8::from_str_radix(prefix, 16).ok().filter(|p| *p <= 128)?;
            Some(IfAddr {
                iface: name.to_owned(),
                addr,
                prefix,
            })
        })
        .collect()
}

/// What `net/fib_trie` tells about local IPv4 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FibLocal {
    /// `/32 host LOCAL` entries: the addresses assigned to this host.
    addresses: BTreeSet<Ipv4Addr>,
    /// `LOCAL` entries shorter than /32: prefix routes of addresses on a
    /// loopback device (the kernel makes those local rather than unicast).
    loopback_nets: BTreeSet<(Ipv4Addr, u8)>,
}

/// Parses `net/fib_trie`. Leaves are `|-- a.b.c.d` lines, each followed by
/// one `/len scope TYPE [tos=N]` line per route at that key; everything else
/// (table headers, `+--` inner nodes) ends the current leaf. Tables repeat
/// entries, hence the sets. Unparsable lines are skipped.
fn parse_fib_trie(text: &str) -> FibLocal {
    let mut out = FibLocal::default();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(addr) = line.strip_prefix("|--") {
            leaf = addr.trim().parse().ok();
        } else if let Some(alias) = line.strip_prefix('/') {
            let Some(key) = leaf else { continue };
            let mut parts = alias.split_whitespace();
            let (Some(len), Some(_scope), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(len) = len.parse::<u8>().ok().filter(|l| *l <= 32) else {
                continue;
            };
            if kind != "LOCAL" {
                continue;
            }
            if len == 32 {
                out.addresses.insert(key);
            } else {
                out.loopback_nets.insert((network(key, len), len));
            }
        } else {
            leaf = None;
        }
    }
    out
}

/// One route of `net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    iface: String,
    dest: Ipv4Addr,
    prefix: u8,
    gateway: bool,
    metric: u32,
}

/// Parses `net/route` (the main table): a header, then tab-separated `Iface
/// Destination Gateway Flags RefCnt Use Metric Mask …`. Destination and mask
/// are the raw big-endian words printed as native integers in hex, so the
/// native byte order recovers the octets. Routes that are not up, reject
/// routes, non-contiguous masks and lines that do not parse are skipped.
fn parse_route(text: &str) -> Vec<Route> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let ip = |s: &str| hex(s).map(|v| Ipv4Addr::from(v.to_ne_bytes()));
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !valid_ifname(f[0]) {
                return None;
            }
            let flags = hex(f[3])?;
            let mask = u32::from(ip(f[7])?);
            if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || mask.leading_ones() != mask.count_ones() {
                return None;
            }
            Some(Route {
                iface: f[0].to_owned(),
                dest: ip(f[1])?,
                prefix: mask.count_ones() as u8,
                gateway: flags & RTF_GATEWAY != 0,
                metric: f[6].parse().ok()?,
            })
        })
        .collect()
}

/// The first address of the `/len` network containing `addr`.
fn network(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// Attributes each local address to an interface and prefix (see the module
/// documentation); addresses that cannot be attributed are left out.
fn ipv4_addresses(fib: &FibLocal, routes: &[Route], loopback: Option<&str>) -> Vec<IfAddr<Ipv4Addr>> {
    fib.addresses
        .iter()
        .filter_map(|&addr| {
            let on_loopback = fib
                .loopback_nets
                .iter()
                .filter(|(net, len)| network(addr, *len) == *net)
                .map(|(_, len)| *len)
                .max();
            if let (Some(prefix), Some(lo)) = (on_loopback, loopback) {
                return Some(IfAddr {
                    iface: lo.to_owned(),
                    addr,
                    prefix,
                });
            }
            let route = routes
                .iter()
                .filter(|r| !r.gateway && r.prefix > 0 && network(addr, r.prefix) == r.dest)
                .max_by_key(|r| (r.prefix, Reverse(r.metric)))?;
            Some(IfAddr {
                iface: route.iface.clone(),
                addr,
                prefix: route.prefix,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/network/basic")
    }

    fn fixture_roots() -> Roots {
        Roots {
            procfs: fixture().join("proc"),
            sysfs: fixture().join("sys"),
        }
    }

    /// A writable copy of the fixture's `proc/net`, with the fixture's sysfs.
    fn proc_copy() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        for f in ["dev", "if_inet6", "fib_trie", "route"] {
            std::fs::copy(fixture().join("proc/net").join(f), dir.path().join("net").join(f)).unwrap();
        }
        let roots = Roots {
            procfs: dir.path().to_owned(),
            sysfs: fixture().join("sys"),
        };
        (dir, roots)
    }

    fn dev_file(lines: &[(&str, u64, u64)]) -> String {
        let mut text = String::from("Inter-|   Receive  |  Transmit\n face |bytes packets|bytes packets\n");
        for (name, rx, tx) in lines {
            text.push_str(&format!("{name:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n"));
        }
        text
    }

    fn iface<'a>(sample: &'a Sample, name: &str) -> &'a Value {
        sample.state["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no interface {name} in {}", sample.state))
    }

    #[test]
    fn fixture_sample_is_exact() {
        let mut source = NetworkSource::new(fixture_roots());
        assert_eq!(source.name(), "network");
        assert_eq!(source.topic(), "system.network");
        let sample = source.sample().unwrap();
        assert!(sample.events.is_empty());
        let expected = json!({ "interfaces": [
            {
                "name": "eth0", "state": "up", "mac": "00:1b:21:3c:4d:5e", "mtu": 1500,
                "addresses": ["192.168.1.5/24", "192.168.1.77/24", "2001:db8::5/64", "fe80::21b:21ff:fe3c:4d5e/64"],
                "rx_bytes": 987654321u64, "tx_bytes": 123456789u64, "rx_bytes_per_sec": 0, "tx_bytes_per_sec": 0,
                "rx_packets": 654321, "tx_packets": 234567, "rx_errors": 3, "tx_errors": 1,
                "rx_dropped": 17, "tx_dropped": 2, "speed_mbps": 1000, "loopback": false,
            },
            {
                "name": "eth1", "state": "down", "mac": "00:1b:21:3c:4d:5f", "mtu": 1500, "addresses": [],
                "rx_bytes": 0, "tx_bytes": 0, "rx_bytes_per_sec": 0, "tx_bytes_per_sec": 0,
                "rx_packets": 0, "tx_packets": 0, "rx_errors": 0, "tx_errors": 0,
                "rx_dropped": 0, "tx_dropped": 0, "speed_mbps": null, "loopback": false,
            },
            {
                // In net/dev but without a sysfs directory.
                "name": "ghost0", "state": null, "mac": null, "mtu": null, "addresses": [],
                "rx_bytes": 500, "tx_bytes": 600, "rx_bytes_per_sec": 0, "tx_bytes_per_sec": 0,
                "rx_packets": 5, "tx_packets": 6, "rx_errors": 0, "tx_errors": 0,
                "rx_dropped": 0, "tx_dropped": 0, "speed_mbps": null, "loopback": false,
            },
            {
                "name": "lo", "state": "unknown", "mac": "00:00:00:00:00:00", "mtu": 65536,
                "addresses": ["127.0.0.1/8", "::1/128"],
                "rx_bytes": 1048576, "tx_bytes": 1048576, "rx_bytes_per_sec": 0, "tx_bytes_per_sec": 0,
                "rx_packets": 2048, "tx_packets": 2048, "rx_errors": 0, "tx_errors": 0,
                "rx_dropped": 0, "tx_dropped": 0, "speed_mbps": null, "loopback": true,
            },
        ]});
        assert_eq!(sample.state, expected);
    }

    #[test]
    fn rates_are_bytes_per_second_over_the_interval() {
        let (dir, roots) = proc_copy();
        let dev = dir.path().join("net/dev");
        let mut source = NetworkSource::new(roots);
        let t0 = Instant::now();
        std::fs::write(&dev, dev_file(&[("lo", 1000, 2000), ("eth0", 10_000, 500)])).unwrap();
        let first = source.sample_at(t0).unwrap();
        assert_eq!(iface(&first, "eth0")["rx_bytes_per_sec"], 0);
        assert_eq!(iface(&first, "eth0")["tx_bytes_per_sec"], 0);

        std::fs::write(
            &dev,
            dev_file(&[("lo", 1000, 2000), ("eth0", 30_000, 1_500), ("eth1", 100, 100)]),
        )
        .unwrap();
        let second = source.sample_at(t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(iface(&second, "eth0")["rx_bytes_per_sec"], 5_000);
        assert_eq!(iface(&second, "eth0")["tx_bytes_per_sec"], 250);
        assert_eq!(iface(&second, "lo")["rx_bytes_per_sec"], 0);
        // New since the last sample: no baseline yet.
        assert_eq!(iface(&second, "eth1")["rx_bytes_per_sec"], 0);
        assert_eq!(iface(&second, "eth0")["rx_bytes"], 30_000);

        // A failed sample keeps the baseline: the next rate spans both intervals.
        std::fs::write(&dev, "garbage").unwrap();
        assert_eq!(
            source.sample_at(t0 + Duration::from_secs(5)).unwrap_err().code,
            "parse_failed"
        );
        std::fs::write(&dev, dev_file(&[("eth0", 36_000, 1_500)])).unwrap();
        let third = source.sample_at(t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(iface(&third, "eth0")["rx_bytes_per_sec"], 3_000);
    }

    #[test]
    fn counter_going_backwards_reports_zero_and_rebases() {
        let (dir, roots) = proc_copy();
        let dev = dir.path().join("net/dev");
        let mut source = NetworkSource::new(roots);
        let t0 = Instant::now();
        std::fs::write(&dev, dev_file(&[("eth0", 1_000_000, 1_000_000)])).unwrap();
        source.sample_at(t0).unwrap();
        std::fs::write(&dev, dev_file(&[("eth0", 100, 2_000_000)])).unwrap();
        let reset = source.sample_at(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(iface(&reset, "eth0")["rx_bytes_per_sec"], 0);
        assert_eq!(iface(&reset, "eth0")["tx_bytes_per_sec"], 1_000_000);
        std::fs::write(&dev, dev_file(&[("eth0", 300, 2_000_000)])).unwrap();
        let after = source.sample_at(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(iface(&after, "eth0")["rx_bytes_per_sec"], 100);
        assert_eq!(iface(&after, "eth0")["tx_bytes_per_sec"], 0);
    }

    #[test]
    fn missing_net_dev_is_read_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = NetworkSource::new(Roots {
            procfs: dir.path().to_owned(),
            sysfs: dir.path().to_owned(),
        });
        let err = source.sample().unwrap_err();
        assert_eq!(err.code, "read_failed");
        assert!(err.message.contains("net/dev"), "{err}");
    }

    #[test]
    fn garbage_net_dev_is_parse_failed() {
        for garbage in [
            "",
            "hello world\n",
            "Inter-|\n face |\n  eth0: 1 2 3\n",
            "Inter-|\n face |\n  eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
            "Inter-|\n face |\n  eth0: 1 2 3 4 5 6 7 8 x 10 11 12 13 14 15 16\n",
            "Inter-|\n face |\n  ..: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
        ] {
            let (dir, roots) = proc_copy();
            std::fs::write(dir.path().join("net/dev"), garbage).unwrap();
            let err = NetworkSource::new(roots).sample().unwrap_err();
            assert_eq!(err.code, "parse_failed", "{garbage:?}: {err}");
        }
    }

    #[test]
    fn missing_optional_files_are_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/dev"), dev_file(&[("eth0", 1, 2)])).unwrap();
        let mut source = NetworkSource::new(Roots {
            procfs: dir.path().to_owned(),
            sysfs: dir.path().join("no-such-sys"),
        });
        let sample = source.sample().unwrap();
        let eth0 = iface(&sample, "eth0");
        assert_eq!(eth0["addresses"], json!([]));
        assert_eq!(eth0["state"], Value::Null);
        assert_eq!(eth0["loopback"], false);
    }

    #[test]
    fn parsers_survive_truncated_input() {
        let files = ["dev", "if_inet6", "fib_trie", "route"]
            .map(|f| std::fs::read_to_string(fixture().join("proc/net").join(f)).unwrap());
        for text in &files {
            for end in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
                let cut = &text[..end];
                let _ = parse_net_dev(cut);
                let _ = parse_if_inet6(cut);
                let fib = parse_fib_trie(cut);
                let routes = parse_route(cut);
                let _ = ipv4_addresses(&fib, &routes, Some("lo"));
            }
        }
        for speed in ["", "-", "-1", "99999999999999999999", "1000\n"] {
            let _ = parse_speed(speed);
        }
    }

    #[test]
    fn speed() {
        assert_eq!(parse_speed("1000\n"), Some(1000));
        assert_eq!(parse_speed("-1\n"), None);
        assert_eq!(parse_speed("fast"), None);
    }

    #[test]
    fn ipv4_attribution() {
        let fib = FibLocal {
            addresses: ["10.0.0.5", "10.9.9.9", "127.0.0.1", "192.168.1.5", "172.16.0.9"]
                .map(|a| a.parse().unwrap())
                .into(),
            loopback_nets: [("127.0.0.0".parse().unwrap(), 8)].into(),
        };
        let route = |iface: &str, dest: &str, prefix, gateway, metric| Route {
            iface: iface.into(),
            dest: dest.parse().unwrap(),
            prefix,
            gateway,
            metric,
        };
        let routes = [
            // The default route and gateway routes do not place addresses.
            route("eth0", "0.0.0.0", 0, true, 100),
            route("eth0", "10.0.0.0", 8, true, 100),
            route("wg0", "172.16.0.0", 12, false, 0),
            route("wg0", "0.0.0.0", 0, false, 0),
            // Longest prefix wins, then the lowest metric.
            route("eth1", "10.0.0.0", 16, false, 10),
            route("eth2", "10.0.0.0", 24, false, 20),
            route("eth3", "10.0.0.0", 24, false, 10),
            route("eth0", "192.168.1.0", 24, false, 100),
        ];
        let got: Vec<String> = ipv4_addresses(&fib, &routes, Some("lo"))
            .into_iter()
            .map(|a| format!("{} {}/{}", a.iface, a.addr, a.prefix))
            .collect();
        // 10.9.9.9 has no on-link route: left out, not guessed.
        assert_eq!(
            got,
            [
                "eth3 10.0.0.5/24",
                "lo 127.0.0.1/8",
                "wg0 172.16.0.9/12",
                "eth0 192.168.1.5/24"
            ]
        );
    }

    #[test]
    fn route_words_are_native_endian() {
        let mut text = std::fs::read_to_string(fixture().join("proc/net/route")).unwrap();
        text.push_str("*\t0000000A\t00000000\t0201\t0\t0\t0\t000000FF\t0\t0\t0\n");
        let routes = parse_route(&text);
        if cfg!(target_endian = "little") {
            assert_eq!(routes.len(), 3);
            assert_eq!(routes[2].dest, Ipv4Addr::new(192, 168, 1, 0));
            assert_eq!(routes[2].prefix, 24);
            assert!(!routes[2].gateway);
            assert_eq!(routes[2].metric, 100);
        }
    }

    #[test]
    fn real_machine_has_loopback() {
        let mut source = NetworkSource::new(Roots::default());
        let sample = source.sample().unwrap();
        let lo = iface(&sample, "lo");
        assert_eq!(lo["loopback"], true);
        assert!(
            lo["addresses"].as_array().unwrap().contains(&json!("127.0.0.1/8")),
            "{lo}"
        );
        let names: Vec<&str> = sample.state["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert!(names.is_sorted(), "{names:?}");
    }
}
