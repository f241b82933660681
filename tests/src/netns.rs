//! Network namespaces joined by veth pairs, created with iproute2 and removed on drop.
//! Code runs "inside" a namespace on a thread that has joined it with setns(2), so sockets and
//! interface lookups made there belong to that namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

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

    /// Runs `f` on a thread that has joined this namespace and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns on a valid namespace fd affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
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
                "link", "add", &client_if, "netns", client.name(), "type", "veth", "peer", "name",
                &gateway_if, "netns", gateway.name(),
            ],
        );
        for (ns, dev) in [(&client, &client_if), (&gateway, &gateway_if)] {
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["route", "add", "default", "dev", dev]);
            ns.ip(&["-6", "route", "add", "default", "dev", dev]);
        }
        gateway.ip(&["addr", "add", &format!("{GATEWAY_V4}/32"), "dev", &gateway_if]);
        gateway.ip(&["addr", "add", &format!("{GATEWAY_V6}/128"), "dev", &gateway_if, "nodad"]);
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
        Self {
            client,
            gateway,
            client_if,
            gateway_if,
        }
    }
}
