//! A private `redis-server` for a test: on a free loopback port, in a temporary directory,
//! with persistence off, stopped (and its directory removed) when the guard drops. It can be
//! stopped and started again on the same port, to test what clients do when Redis goes away.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) test Redis.
pub struct Redis {
    port: u16,
    /// Its working directory (empty: persistence is off), removed on drop.
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `redis-server` arguments (`--requirepass`, ...), kept for restarts.
    extra: Vec<String>,
    /// Serving TLS only (its port is the TLS port): readiness is an accepted connection, as a
    /// plain PING cannot be answered.
    tls: bool,
}

/// The `redis-server` binary: `REDIS_SERVER`, or the one on the PATH (Debian's
/// `redis-server`, installed by `xtask/setup.sh`). `None` (and a message) when absent.
pub fn redis_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return Some(path.into());
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("redis-server not found (install Debian's redis-server; xtask/setup.sh does)");
    }
    found
}

impl Redis {
    /// Starts one on a free port; panics if it cannot (the caller checked for the binary).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments, such as `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("portcullis-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory for redis");
        let tls = extra.contains(&"--tls-port");
        let mut redis = Self {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            tls,
        };
        redis.restart();
        redis
    }

    /// Starts one that speaks TLS only, with `cert` and `key`, and requires clients to present
    /// a certificate that chains to `client_ca`.
    pub fn start_tls(cert: &Path, key: &Path, client_ca: &Path) -> Self {
        let path = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
        let (cert, key, ca) = (path(cert), path(key), path(client_ca));
        // The port given to `start_with` becomes the TLS port; the plain one is closed.
        Self::start_with(&[
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
        ])
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as with a
    /// server stuck or a network path that drops packets.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).expect("pid");
            // SAFETY: kill has no memory preconditions; the pid is our own child, not reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Starts the server again on the same port (after [`Redis::stop`]) and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let bin = redis_server().expect("redis-server");
        let port = self.port.to_string();
        let (plain, extra): (&str, Vec<String>) = if self.tls {
            // `{port}` in the extra arguments is this server's port.
            let extra = self
                .extra
                .iter()
                .map(|a| a.replace("{port}", &port))
                .collect();
            ("0", extra)
        } else {
            (&port, self.extra.clone())
        };
        let child = Command::new(bin)
            .args(["--port", plain])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                // Accepting is not enough while it loads: PING must answer (PONG, or NOAUTH
                // when a password is required). Over TLS the empty data set loads at once.
                if self.tls || ping(&mut s) {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer on port {} within 10 s",
            self.port
        );
    }

    /// Sends one command with a blocking connection of its own and returns the raw reply,
    /// for test set-up and inspection (`SCRIPT FLUSH`, `PTTL key`, ...).
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut frame = format!("*{}\r\n", args.len());
        for a in args {
            frame.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(frame.as_bytes()).expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn ping(s: &mut TcpStream) -> bool {
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// A port nothing listens on now (the kernel's choice for an ephemeral bind).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A paused server would not die of SIGKILL any slower, but resume it anyway so no
        // stopped process lingers if the kill fails.
        self.resume();
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
