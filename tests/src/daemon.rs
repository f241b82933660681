//! A `portcullis run` process for tests: its stderr (the log) collected line by line, SIGTERM
//! on request, killed on drop if still running, so a failing test leaves no gateway behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::portcullis_bin;

pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `portcullis run -c <config>`.
    pub fn start(config: &Path) -> Self {
        Self::spawn(Command::new(portcullis_bin()), config)
    }

    /// Starts `portcullis run -c <config>` through `cmd`, whose program is (or execs)
    /// `portcullis`: [`Netns::command`](crate::netns::Netns::command) runs it in a namespace.
    pub fn spawn(mut cmd: Command, config: &Path) -> Self {
        let mut child = cmd
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Daemon { child, lines }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The log so far as one text, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// SIGTERM (a graceful stop) and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait for portcullis")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill signals this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` every 50 ms for up to 20 s; panics naming `what` when it never holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Sends `request` as written (one write) to 127.0.0.1:`port` and reads until the server
/// closes: (status, body). (0, "") when the connection fails or closes without an answer,
/// as a userspace ban may make it.
pub fn http_raw(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// The head of a config for `portcullis run` on loopback: no kernel layer, the admin endpoint
/// on `admin`, one plain-HTTP listener `web` on `listen`, and a pool `app` of `backend`. Routes
/// and the rest follow.
pub fn loopback_head(listen: u16, admin: u16, backend: std::net::SocketAddr) -> String {
    format!(
        r#"[kernel]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
bind = "127.0.0.1:{listen}"
protocol = "http"
http_mode = "serve"

[[pools]]
name = "app"
endpoints = ["{backend}"]
"#
    )
}
