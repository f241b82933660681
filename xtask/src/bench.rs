//! `cargo xtask bench kernel`: what the XDP filter costs, against the kernel's own LPM trie and
//! against nftables, measured in one run on this machine.
//!
//! 1. Program time per packet (BPF_PROG_TEST_RUN, repeat 1,000,000) for pass and drop, IPv4 and
//!    IPv6, at 0, 10k, 100k and 1M prefixes from a real country database: ours and an LPM-trie
//!    program with the same parsing (gateway-ebpf `lpm_baseline`).
//! 2. Kernel memory of the tables, time to compile, load and swap 1M prefixes, time to fill the
//!    LPM trie with the same prefixes.
//! 3. Real traffic over veth from one sender: CPU time per packet and packets per second when
//!    dropped by our program, dropped by nftables (netdev ingress, interval sets of the same
//!    prefixes), and with no filter (received by a userspace socket).
//!
//! Every loop is bounded; traffic goes only between namespaces the benchmark creates.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::programs::Xdp;
use clap::Subcommand;
use portcullis::kernel::testrun::test_run;
use portcullis::kernel::{AttachMode, Generation, KernelControl, PinLayout, map_memlock, objects};
use portcullis::rules::table::compile;
use portcullis::rules::{CountryCode, GeoRules, Mode, Prefix, RuleSet, UnknownCountry};
use portcullis_tests::netns::{GATEWAY_V4, Link};
use portcullis_tests::packets::Frame;
use portcullis_tests::pins::PinRoot;

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// XDP program time per packet against the kernel LPM trie, traffic over veth against
    /// nftables and no filter, table memory, load and swap times.
    Kernel,
    /// The proxy against Envoy and the bare backend: requests/s, p50/p99 over TLS 1.3 (h1, h2),
    /// RSS idle and with 10,000 idle TLS connections.
    Proxy,
}

const REPEAT: u32 = 1_000_000;
const ADDRESSES_PER_CASE: usize = 8;
const SIZES: [usize; 4] = [0, 10_000, 100_000, 1_000_000];

pub fn run(what: Which) -> anyhow::Result<()> {
    match what {
        Which::Kernel => crate::in_release("kernel", kernel),
        Which::Proxy => crate::in_release("proxy", crate::bench_proxy::run),
    }
}

/// A small deterministic generator (xorshift), so every run measures the same addresses.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn database() -> anyhow::Result<PathBuf> {
    let root = std::env::var_os("PORTCULLIS_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("../shared/testdata"));
    let db = root.join("mmdb/real/dbip-country/dbip-country.mmdb");
    if !db.exists() {
        bail!(
            "{} not found: the kernel benchmark needs the real country database (set PORTCULLIS_TESTDATA)",
            db.display()
        );
    }
    Ok(db)
}

/// Every second country (in code order) is blocked, so the prefix set holds both passing and
/// dropping networks spread over the whole address space.
fn blocked(countries: &BTreeSet<CountryCode>) -> BTreeSet<CountryCode> {
    countries.iter().step_by(2).copied().collect()
}

struct Case {
    label: &'static str,
    v6: bool,
    drop: bool,
}

const CASES: [Case; 4] = [
    Case {
        label: "IPv4 pass",
        v6: false,
        drop: false,
    },
    Case {
        label: "IPv4 drop",
        v6: false,
        drop: true,
    },
    Case {
        label: "IPv6 pass",
        v6: true,
        drop: false,
    },
    Case {
        label: "IPv6 drop",
        v6: true,
        drop: true,
    },
];

/// A host address inside `p` (random host bits).
fn inside(p: &Prefix, rng: &mut Rng) -> IpAddr {
    let host = ((rng.next() as u128) << 64) | rng.next() as u128;
    if p.is_v6() {
        let mask = if p.len() == 128 {
            0
        } else {
            u128::MAX >> p.len()
        };
        IpAddr::V6(Ipv6Addr::from(p.bits() | (host & mask)))
    } else {
        let base = (p.bits() >> 96) as u32;
        let mask = if p.len() == 32 {
            0
        } else {
            u32::MAX >> p.len()
        };
        IpAddr::V4(Ipv4Addr::from(base | (host as u32 & mask)))
    }
}

/// Addresses for a case: inside networks of the set with the wanted verdict; with no such
/// network (the empty set), addresses from the whole database.
fn probes(
    set: &[(Prefix, CountryCode)],
    all: &[(Prefix, CountryCode)],
    blocked: &BTreeSet<CountryCode>,
    case: &Case,
    rng: &mut Rng,
) -> Vec<IpAddr> {
    let pick = |list: &[(Prefix, CountryCode)]| -> Vec<Prefix> {
        list.iter()
            .filter(|(p, c)| p.is_v6() == case.v6 && blocked.contains(c) == case.drop)
            .map(|(p, _)| *p)
            .collect()
    };
    let mut candidates = pick(set);
    if candidates.is_empty() {
        candidates = pick(all);
    }
    (0..ADDRESSES_PER_CASE)
        .map(|_| inside(&candidates[rng.below(candidates.len())], rng))
        .collect()
}

fn rules_for(set: &[(Prefix, CountryCode)], blocked: &BTreeSet<CountryCode>) -> RuleSet {
    RuleSet {
        geo: Some(GeoRules {
            mode: Mode::Enforce,
            blocked: blocked.clone(),
            unknown: UnknownCountry::Pass,
            networks: set.to_vec(),
        }),
        ..RuleSet::default()
    }
}

/// The baseline program with the same prefixes in LPM tries (value 1 = drop, 0 = pass).
struct Baseline {
    ebpf: aya::Ebpf,
    fill_time: Duration,
}

impl Baseline {
    fn load(
        set: &[(Prefix, CountryCode)],
        blocked: &BTreeSet<CountryCode>,
    ) -> anyhow::Result<Self> {
        let n4 = set.iter().filter(|(p, _)| !p.is_v6()).count() as u32;
        let n6 = set.len() as u32 - n4;
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries("LPM4", n4.max(1))
            .map_max_entries("LPM6", n6.max(1))
            .load(objects::LPM_BASELINE)
            .context("loading the LPM baseline")?;
        let started = Instant::now();
        {
            let [m4, m6] = ebpf.maps_disjoint_mut(["LPM4", "LPM6"]);
            let mut lpm4: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(m4.context("LPM4")?)?;
            let mut lpm6: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(m6.context("LPM6")?)?;
            for (p, c) in set {
                let value = u32::from(blocked.contains(c));
                let o = p.octets();
                if p.is_v6() {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&o);
                    lpm6.insert(&Key::new(u32::from(p.len()), a), value, 0)?;
                } else {
                    let mut a = [0u8; 4];
                    a.copy_from_slice(&o);
                    lpm4.insert(&Key::new(u32::from(p.len()), a), value, 0)?;
                }
            }
        }
        let fill_time = started.elapsed();
        let prog: &mut Xdp = ebpf
            .program_mut("lpm_baseline")
            .context("lpm_baseline program")?
            .try_into()?;
        prog.load()?;
        Ok(Self { ebpf, fill_time })
    }

    fn fd(&self) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        let prog: &Xdp = self
            .ebpf
            .program("lpm_baseline")
            .context("lpm_baseline")?
            .try_into()?;
        Ok(prog.fd()?.as_fd())
    }

    fn memory(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for name in ["LPM4", "LPM6"] {
            total += map_memlock(self.ebpf.map(name).context(name)?)?;
        }
        Ok(total)
    }
}

/// Mean and worst program time over the addresses, checking the verdict on the way.
fn time_case(
    fd: std::os::fd::BorrowedFd<'_>,
    addrs: &[IpAddr],
    want_drop: bool,
) -> anyhow::Result<(f64, u32)> {
    let mut sum = 0u64;
    let mut worst = 0;
    for a in addrs {
        let frame = Frame::udp_from(*a).build();
        let r = test_run(fd, &frame, REPEAT).context("BPF_PROG_TEST_RUN")?;
        let dropped = r.retval == 1;
        if dropped != want_drop {
            bail!(
                "{a}: verdict {} but expected {}",
                r.retval,
                if want_drop { "drop" } else { "pass" }
            );
        }
        sum += u64::from(r.duration_ns);
        worst = worst.max(r.duration_ns);
    }
    Ok((sum as f64 / addrs.len() as f64, worst))
}

fn kernel() -> anyhow::Result<()> {
    let db = database()?;
    let started = Instant::now();
    let all = portcullis::rules::geo::load_country_networks(&db)?;
    let geo_load = started.elapsed();
    println!(
        "loaded {} networks from {} in {:.2?}",
        all.len(),
        db.display(),
        geo_load
    );
    let countries: BTreeSet<CountryCode> = all.iter().map(|(_, c)| *c).collect();
    let blocked = blocked(&countries);

    // One shuffled order; each size takes a prefix of it, so sets are nested and comparable.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut order = all.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut report = String::new();
    writeln!(
        report,
        "Reading the database ({} networks) took {:.0} ms.\n",
        all.len(),
        geo_load.as_secs_f64() * 1e3
    )?;
    writeln!(
        report,
        "## Program time per packet (BPF_PROG_TEST_RUN, repeat {REPEAT}, mean of {ADDRESSES_PER_CASE} addresses, worst in brackets)\n"
    )?;
    writeln!(
        report,
        "| prefixes | case | Portcullis (ns) | kernel LPM trie (ns) |"
    )?;
    writeln!(report, "|---:|---|---:|---:|")?;
    let mut memory_rows = Vec::new();
    for &size in &SIZES {
        let size = size.min(order.len());
        let set = &order[..size];
        let rules = rules_for(set, &blocked);
        let t = Instant::now();
        let compiled = compile(&rules)?;
        let compile_time = t.elapsed();
        let pins = PinRoot::new();
        let layout = PinLayout::new(pins.path());
        let t = Instant::now();
        let ours = Generation::load(&layout, &compiled)?;
        let load_time = t.elapsed();
        let baseline = Baseline::load(set, &blocked)?;
        for case in &CASES {
            let addrs = probes(set, &all, &blocked, case, &mut rng);
            // With no prefixes nothing can drop.
            let want_drop = case.drop && size > 0;
            let (ours_mean, ours_worst) = time_case(ours.program_fd()?, &addrs, want_drop)?;
            let (lpm_mean, lpm_worst) = time_case(baseline.fd()?, &addrs, want_drop)?;
            let row = format!(
                "| {size} | {} | {ours_mean:.1} ({ours_worst}) | {lpm_mean:.1} ({lpm_worst}) |",
                case.label
            );
            println!("{row}");
            writeln!(report, "{row}")?;
        }
        memory_rows.push(format!(
            "| {size} | {} | {} | {:.1} MiB | {:.1} MiB | {:.0} ms | {:.0} ms | {:.0} ms |",
            compiled.stats.nodes_v4,
            compiled.stats.nodes_v6,
            ours.table_memory()? as f64 / (1 << 20) as f64,
            baseline.memory()? as f64 / (1 << 20) as f64,
            compile_time.as_secs_f64() * 1e3,
            load_time.as_secs_f64() * 1e3,
            baseline.fill_time.as_secs_f64() * 1e3,
        ));
    }
    writeln!(
        report,
        "\n## Tables: memory (kernel memlock accounting) and load times\n"
    )?;
    writeln!(
        report,
        "| prefixes | nodes v4 | nodes v6 | Portcullis memory | LPM trie memory | compile | load (create, fill, verify) | LPM fill |"
    )?;
    writeln!(report, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in &memory_rows {
        writeln!(report, "{r}")?;
    }

    let full = &order[..SIZES[3].min(order.len())];
    let swap = swap_time(full, &blocked)?;
    writeln!(report, "\n{swap}")?;
    println!("{swap}");

    let traffic = traffic(full, &blocked)?;
    writeln!(report, "\n{traffic}")?;

    let out = crate::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("kernel.md"), &report)?;
    println!("\n{report}\nwritten to target/bench/kernel.md");
    Ok(())
}

/// Time for a reload of 1M prefixes on an attached interface: compile, load, swap.
fn swap_time(
    set: &[(Prefix, CountryCode)],
    blocked: &BTreeSet<CountryCode>,
) -> anyhow::Result<String> {
    let link = Link::new(&["100.64.0.10"]);
    let pins = PinRoot::new();
    let interfaces = vec![link.gateway_if.clone()];
    let first = compile(&rules_for(set, blocked))?;
    // The second set differs (one more blocked country) so the reload is a real swap.
    let mut other = blocked.clone();
    if let Some(c) = set.iter().map(|(_, c)| *c).find(|c| !blocked.contains(c)) {
        other.insert(c);
    }
    let t = Instant::now();
    let second = compile(&rules_for(set, &other))?;
    let compile_time = t.elapsed();
    let (first_apply, reload) =
        link.gateway
            .enter(|| -> anyhow::Result<(Duration, Duration)> {
                let mut k = KernelControl::new(pins.path());
                let t = Instant::now();
                k.apply(&first, &interfaces, AttachMode::Auto)?;
                let first_apply = t.elapsed();
                let t = Instant::now();
                k.apply(&second, &interfaces, AttachMode::Auto)?;
                Ok((first_apply, t.elapsed()))
            })?;
    Ok(format!(
        "Reload of {} prefixes on an attached interface: compile {:.0} ms, load and atomic swap {:.0} ms (first attach {:.0} ms).",
        set.len(),
        compile_time.as_secs_f64() * 1e3,
        reload.as_secs_f64() * 1e3,
        first_apply.as_secs_f64() * 1e3
    ))
}

// ---------------------------------------------------------------------------------------------
// Real traffic over veth
// ---------------------------------------------------------------------------------------------

const TRAFFIC_PACKETS: usize = 2_000_000;
const TRAFFIC_LIMIT: Duration = Duration::from_secs(10);

/// Busy CPU time of the whole machine, in nanoseconds, from /proc/stat.
fn busy_cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v.get(7).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(busy * 1_000_000_000 / hz)
}

/// Sends up to TRAFFIC_PACKETS datagrams from `src` with sendmmsg; returns (sent, elapsed).
fn blast(link: &Link, src: IpAddr, port: u16) -> anyhow::Result<(usize, Duration)> {
    let sock = link.client.enter(|| std::net::UdpSocket::bind((src, 0)))?;
    sock.connect((GATEWAY_V4.parse::<IpAddr>()?, port))?;
    use std::os::fd::AsRawFd as _;
    let payload = [0u8; 18];
    const BATCH: usize = 64;
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid; each points at one iovec that outlives the calls.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let mut sent = 0;
    while sent < TRAFFIC_PACKETS && started.elapsed() < TRAFFIC_LIMIT {
        // SAFETY: msgs holds BATCH initialised headers for a connected socket.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as usize;
        }
    }
    Ok((sent, started.elapsed()))
}

struct TrafficRow {
    name: &'static str,
    handled: u64,
    sent: usize,
    elapsed: Duration,
    cpu_ns: u64,
}

fn traffic(
    set: &[(Prefix, CountryCode)],
    blocked: &BTreeSet<CountryCode>,
) -> anyhow::Result<String> {
    // The sender's address lies in a blocked network of the set, so both filters drop it.
    let src_prefix = set
        .iter()
        .find(|(p, c)| !p.is_v6() && blocked.contains(c) && p.len() <= 24)
        .map(|(p, _)| *p)
        .context("no blocked IPv4 network to send from")?;
    let src = inside(&src_prefix, &mut Rng(7));
    let src_s = src.to_string();
    let mut rows = Vec::new();

    // 1. No filter: every packet reaches a userspace socket.
    {
        let link = Link::new(&[&src_s]);
        let rx = link.receiver();
        let (handled, row) =
            std::thread::scope(|s| -> anyhow::Result<(u64, (usize, Duration, u64))> {
                let counter = s.spawn(|| {
                    let mut n = 0u64;
                    let mut buf = [0u8; 64];
                    while rx.socket.recv(&mut buf).is_ok() {
                        n += 1;
                    }
                    n
                });
                let cpu0 = busy_cpu_ns()?;
                let (sent, elapsed) = blast(&link, src, rx.port)?;
                let cpu = busy_cpu_ns()? - cpu0;
                Ok((counter.join().expect("receiver"), (sent, elapsed, cpu)))
            })?;
        rows.push(TrafficRow {
            name: "no filter (userspace socket receives)",
            handled,
            sent: row.0,
            elapsed: row.1,
            cpu_ns: row.2,
        });
    }

    // 2. Our XDP program, native mode on the gateway's veth.
    {
        let link = Link::new(&[&src_s]);
        let pins = PinRoot::new();
        let compiled = compile(&rules_for(set, blocked))?;
        let interfaces = vec![link.gateway_if.clone()];
        link.gateway.enter(|| {
            KernelControl::new(pins.path())
                .apply(&compiled, &interfaces, AttachMode::Auto)
                .map(drop)
        })?;
        let counters = portcullis::kernel::Counters::open(&PinLayout::new(pins.path()))?;
        let dropped = |c: &portcullis::kernel::Counters| -> anyhow::Result<u64> {
            Ok(c.read()?
                .iter()
                .filter(|r| r.verdict() == "drop")
                .map(|r| r.packets)
                .sum())
        };
        let before = dropped(&counters)?;
        let cpu0 = busy_cpu_ns()?;
        let (sent, elapsed) = blast(&link, src, 9)?;
        let cpu = busy_cpu_ns()? - cpu0;
        rows.push(TrafficRow {
            name: "Portcullis XDP drop (native, veth)",
            handled: dropped(&counters)? - before,
            sent,
            elapsed,
            cpu_ns: cpu,
        });
    }

    // 3. nftables: netdev ingress on the same interface, interval sets of the same prefixes.
    {
        let link = Link::new(&[&src_s]);
        let file = tempfile::NamedTempFile::new()?;
        let mut ruleset = String::new();
        writeln!(ruleset, "table netdev pcbench {{")?;
        for (family, ty) in [(false, "ipv4_addr"), (true, "ipv6_addr")] {
            let elems: Vec<String> = set
                .iter()
                .filter(|(p, c)| p.is_v6() == family && blocked.contains(c))
                .map(|(p, _)| p.to_string())
                .collect();
            let name = if family { "deny6" } else { "deny4" };
            writeln!(
                ruleset,
                "  set {name} {{ type {ty}; flags interval; auto-merge;"
            )?;
            if !elems.is_empty() {
                writeln!(ruleset, "    elements = {{ {} }}", elems.join(", "))?;
            }
            writeln!(ruleset, "  }}")?;
        }
        writeln!(
            ruleset,
            "  chain ingress {{ type filter hook ingress device \"{}\" priority -500; policy accept;",
            link.gateway_if
        )?;
        writeln!(ruleset, "    ip saddr @deny4 counter drop")?;
        writeln!(ruleset, "    ip6 saddr @deny6 counter drop")?;
        writeln!(ruleset, "  }}\n}}")?;
        std::fs::write(file.path(), ruleset)?;
        let t = Instant::now();
        link.gateway
            .exec("nft", &["-f", &file.path().to_string_lossy()]);
        let nft_load = t.elapsed();
        let cpu0 = busy_cpu_ns()?;
        let (sent, elapsed) = blast(&link, src, 9)?;
        let cpu = busy_cpu_ns()? - cpu0;
        let listing = String::from_utf8_lossy(
            &link
                .gateway
                .exec("nft", &["list", "chain", "netdev", "pcbench", "ingress"])
                .stdout,
        )
        .into_owned();
        let handled = listing
            .lines()
            .find(|l| l.contains("@deny4"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "packets").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        rows.push(TrafficRow {
            name: "nftables drop (netdev ingress, interval set)",
            handled,
            sent,
            elapsed,
            cpu_ns: cpu,
        });
        eprintln!("nftables loaded the set in {nft_load:.2?}");
    }

    let mut out = String::new();
    writeln!(
        out,
        "## Real traffic over veth (one UDP sender, sendmmsg, up to {TRAFFIC_PACKETS} packets or {TRAFFIC_LIMIT:?}; {} prefixes loaded)\n",
        set.len()
    )?;
    writeln!(
        out,
        "CPU per packet is the whole machine's busy time (/proc/stat) divided by packets sent, so it includes the sender's own cost, which is the same in every row.\n"
    )?;
    writeln!(
        out,
        "| path | packets sent | handled by the path | packets/s | CPU ns per packet |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for r in &rows {
        writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} |",
            r.name,
            r.sent,
            r.handled,
            r.sent as f64 / r.elapsed.as_secs_f64(),
            r.cpu_ns as f64 / r.sent.max(1) as f64
        )?;
    }
    println!("{out}");
    Ok(out)
}
