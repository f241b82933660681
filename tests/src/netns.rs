//! Network namespaces joined by veth pairs, created with iproute2 and removed on drop.
//! Code runs "inside" a namespace on a thread that has joined it with setns(2), so sockets and
//! interface lookups made there belong to that namespace.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs a command, panicking with its output if it fails (test set-up must not half-succeed).
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop (with every interface in it).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = crate::unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs any command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program` in this network namespace only. Unlike `ip netns exec`,
    /// which also gives the child a private mount namespace with a fresh /sys (and so no bpffs
    /// at /sys/fs/bpf), nsenter joins just the network namespace, and execs: the child's pid
    /// is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has joined this namespace and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns on a valid namespace fd affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by one veth pair: `client` sends, `gateway` runs the filter.
pub struct Link {
    pub client: Netns,
    pub gateway: Netns,
    /// Interface name of the client end (in `client`).
    pub client_if: String,
    /// Interface name of the gateway end (in `gateway`), where XDP is attached.
    pub gateway_if: String,
}

/// The gateway's addresses on the link.
pub const GATEWAY_V4: &str = "198.18.0.1";
pub const GATEWAY_V6: &str = "2001:db8:ffff::1";

impl Link {
    /// Creates the pair and gives the client end every address in `client_addrs` (so one
    /// client namespace can speak from several known ranges). Routes are on-link both ways.
    pub fn new(client_addrs: &[&str]) -> Self {
        let client = Netns::new("pcc");
        let gateway = Netns::new("pcg");
        let client_if = crate::unique("vc");
        let gateway_if = crate::unique("vg");
        run(
            "ip",
            &[
                "link",
                "add",
                &client_if,
                "netns",
                client.name(),
                "type",
                "veth",
                "peer",
                "name",
                &gateway_if,
                "netns",
                gateway.name(),
            ],
        );
        for (ns, dev) in [(&client, &client_if), (&gateway, &gateway_if)] {
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["route", "add", "default", "dev", dev]);
            ns.ip(&["-6", "route", "add", "default", "dev", dev]);
        }
        gateway.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_V4}/32"),
            "dev",
            &gateway_if,
        ]);
        gateway.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_V6}/128"),
            "dev",
            &gateway_if,
            "nodad",
        ]);
        for a in client_addrs {
            let (prefix, extra): (String, &[&str]) = if a.contains(':') {
                (format!("{a}/128"), &["nodad"])
            } else {
                (format!("{a}/32"), &[])
            };
            let mut args = vec!["addr", "add", prefix.as_str(), "dev", client_if.as_str()];
            args.extend_from_slice(extra);
            client.ip(&args);
        }
        // Static neighbours both ways: resolution must not depend on ARP/NDP packets whose
        // source the filter under test may be dropping.
        let gw_mac = mac(&gateway, &gateway_if);
        let client_mac = mac(&client, &client_if);
        for gw in [GATEWAY_V4, GATEWAY_V6] {
            client.ip(&[
                "neigh",
                "replace",
                gw,
                "lladdr",
                &gw_mac,
                "dev",
                &client_if,
                "nud",
                "permanent",
            ]);
        }
        for a in client_addrs {
            gateway.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &client_mac,
                "dev",
                &gateway_if,
                "nud",
                "permanent",
            ]);
        }
        Self {
            client,
            gateway,
            client_if,
            gateway_if,
        }
    }

    /// Sends `count` UDP datagrams from each source address to the gateway and returns how
    /// many the gateway's socket received from each, waiting `settle` after the last.
    pub fn udp_exchange(&self, sources: &[IpAddr], count: usize) -> HashMap<IpAddr, usize> {
        let rx = self.receiver();
        let senders = self.senders(sources);
        for _ in 0..count {
            for (src, sock) in &senders {
                send_to_gateway(sock, *src, rx.port);
            }
        }
        rx.collect()
    }

    /// A UDP socket in the gateway namespace, on both families.
    pub fn receiver(&self) -> Receiver {
        let socket = self
            .gateway
            .enter(|| UdpSocket::bind("[::]:0").expect("bind the gateway socket"));
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("socket timeout");
        // A large buffer so a burst is never lost in the socket: losses must be the filter's.
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt with a valid fd and an int-sized option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let port = socket.local_addr().expect("local address").port();
        Receiver { socket, port }
    }

    /// One UDP socket per source address, bound in the client namespace.
    pub fn senders(&self, sources: &[IpAddr]) -> Vec<(IpAddr, UdpSocket)> {
        self.client.enter(|| {
            sources
                .iter()
                .map(|a| {
                    let s = UdpSocket::bind(SocketAddr::new(*a, 0))
                        .unwrap_or_else(|e| panic!("bind {a} in the client namespace: {e}"));
                    (*a, s)
                })
                .collect()
        })
    }
}

/// Sends one datagram from `sock` (bound to `src`) to the gateway address of its family.
/// Returns whether the kernel accepted it (a full queue refuses with ENOBUFS).
pub fn send_to_gateway(sock: &UdpSocket, src: IpAddr, port: u16) -> bool {
    let dst: IpAddr = if src.is_ipv4() {
        GATEWAY_V4.parse().unwrap()
    } else {
        GATEWAY_V6.parse().unwrap()
    };
    sock.send_to(b"portcullis test datagram", SocketAddr::new(dst, port))
        .is_ok()
}

/// The gateway's receiving socket.
pub struct Receiver {
    pub socket: UdpSocket,
    pub port: u16,
}

impl Receiver {
    /// Drains the socket until it has been quiet for its timeout; counts by source.
    pub fn collect(&self) -> HashMap<IpAddr, usize> {
        let mut counts = HashMap::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.socket.recv_from(&mut buf) {
                Ok((_, from)) => *counts.entry(from.ip().to_canonical()).or_insert(0) += 1,
                Err(_) => break,
            }
        }
        counts
    }
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(&["link", "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev}: {text}"))
        .to_string()
}

/// The XDP mode `ip link` reports for `dev` in `ns`: "xdp" (native), "xdpgeneric", or none.
pub fn xdp_mode(ns: &Netns, dev: &str) -> Option<String> {
    let out = ns.ip(&["link", "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .map(|w| w.to_string())
}
