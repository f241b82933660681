//! One multiplexed connection to Redis, owned by a background task. Callers hand it encoded
//! commands through a channel and wait for their reply; the task writes them in order and
//! matches replies first in, first out (Redis answers in order on a connection). Many requests
//! share the socket at once, so the hot path never opens a connection nor waits for another
//! request's reply.
//!
//! When the connection is lost the task fails what is in flight, then reconnects with
//! exponential backoff and jitter; meanwhile calls fail at once with "not connected" rather
//! than queueing behind a connect that may take seconds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::resp::{self, ProtocolError, Value};
use super::{ClusterConfig, PasswordSource};
use crate::metrics::ClusterMetrics;

/// A byte stream to Redis: plain TCP, or TLS over it with `[cluster.tls]`.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to Redis, authenticated and answering.
pub(crate) type Stream = Box<dyn Io>;

/// Why a call got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error("no reply within the call timeout")]
    Timeout,
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("Redis error reply: {0}")]
    Server(String),
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
}

/// Why a connection could not be set up. Messages never carry the password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("connecting to {address}: no answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("reading the Redis password: {0}")]
    Password(String),
    #[error("authentication refused by Redis: {0}")]
    Auth(String),
    #[error("during the handshake: {0}")]
    Handshake(String),
}

/// A request for the connection task.
struct Request {
    frame: BytesMut,
    reply: oneshot::Sender<Result<Value, CallError>>,
}

/// A command sent and not yet answered: when it was sent and who waits for the reply (`None`
/// for an internal PING whose reply nobody waits for).
type Pending = (Instant, Option<oneshot::Sender<Result<Value, CallError>>>);

/// What the connection task and the callers share.
struct Shared {
    connected: AtomicBool,
    notify: tokio::sync::Notify,
}

/// Handle on the connection task; clones share the connection. The task ends when the last
/// handle is dropped.
#[derive(Clone)]
pub(crate) struct Connection {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    pub(crate) timeout: Duration,
}

/// Requests queued for the socket at most; beyond that callers wait (within their timeout).
const QUEUE: usize = 4096;
/// An idle connection is checked with a PING this often, so a peer that vanished without a
/// reset (a partition, a dead host) is noticed before the next real call.
pub(crate) const IDLE_PING: Duration = Duration::from_secs(5);

impl Connection {
    /// Starts the task; it connects in the background.
    pub(crate) fn start(config: Arc<ClusterConfig>, metrics: ClusterMetrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
        });
        let timeout = config.timeout;
        tokio::spawn(run(config, metrics, rx, shared.clone()));
        Self {
            tx,
            shared,
            timeout,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Waits until connected, at most `within`.
    pub(crate) async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.notify.notified();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected();
            }
        }
    }

    /// Sends one command and waits for its reply, within the configured timeout. An error
    /// reply from Redis is [`CallError::Server`].
    pub(crate) async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Value, CallError> {
        self.call_within(args, self.timeout).await
    }

    /// [`Connection::call`] with what is left of a caller's own deadline.
    pub(crate) async fn call_within<A: AsRef<[u8]>>(
        &self,
        args: &[A],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        if timeout.is_zero() {
            return Err(CallError::Timeout);
        }
        if !self.is_connected() {
            return Err(CallError::NotConnected);
        }
        let mut frame = BytesMut::new();
        resp::encode(args, &mut frame);
        let (reply, rx) = oneshot::channel();
        let exchange = async {
            self.tx
                .send(Request { frame, reply })
                .await
                .map_err(|_| CallError::NotConnected)?;
            rx.await
                .map_err(|_| CallError::Lost("reply dropped".into()))?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Value::Error(e))) => Err(CallError::Server(e)),
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        }
    }
}

/// The connection task: connect, serve, back off, again, until every handle is gone.
async fn run(
    config: Arc<ClusterConfig>,
    metrics: ClusterMetrics,
    mut rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
) {
    let mut backoff = Backoff::new(config.reconnect_backoff, config.reconnect_backoff_max);
    let mut ever_connected = false;
    loop {
        match connect(&config).await {
            Ok(stream) => {
                if ever_connected {
                    metrics.reconnects.inc();
                    tracing::info!(redis = %config.redis, "cluster store: reconnected to Redis");
                } else {
                    tracing::info!(redis = %config.redis, "cluster store: connected to Redis");
                }
                ever_connected = true;
                backoff.reset();
                shared.connected.store(true, Ordering::Release);
                metrics.connected.set(1);
                shared.notify.notify_waiters();
                let end = serve(stream, &mut rx, &config).await;
                shared.connected.store(false, Ordering::Release);
                metrics.connected.set(0);
                match end {
                    End::Shutdown => return,
                    End::Lost(reason) => {
                        metrics.connection_errors.inc();
                        tracing::warn!(redis = %config.redis, %reason,
                            "cluster store: connection to Redis lost");
                    }
                }
            }
            Err(e) => {
                metrics.connection_errors.inc();
                tracing::warn!(redis = %config.redis, error = %e,
                    "cluster store: cannot connect to Redis");
            }
        }
        // Requests that slipped in while the connection went down get their answer now, not
        // after the backoff.
        let pause = tokio::time::sleep(backoff.next());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                request = rx.recv() => match request {
                    Some(r) => {
                        let _ = r.reply.send(Err(CallError::NotConnected));
                    }
                    None => return,
                },
            }
        }
    }
}

enum End {
    /// Every handle was dropped.
    Shutdown,
    Lost(String),
}

/// Serves requests on one connection until it fails or every handle is dropped.
async fn serve(
    mut stream: Stream,
    rx: &mut mpsc::Receiver<Request>,
    config: &ClusterConfig,
) -> End {
    // `None`: an internal PING whose reply nobody waits for.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let end = serve_inner(&mut stream, rx, config, &mut pending).await;
    let reason = match &end {
        End::Shutdown => "shutting down".to_owned(),
        End::Lost(r) => r.clone(),
    };
    for (_, waiter) in pending.drain(..) {
        if let Some(w) = waiter {
            let _ = w.send(Err(CallError::Lost(reason.clone())));
        }
    }
    end
}

async fn serve_inner(
    stream: &mut Stream,
    rx: &mut mpsc::Receiver<Request>,
    config: &ClusterConfig,
    pending: &mut VecDeque<Pending>,
) -> End {
    // A reply this late means the server or the path to it is gone: give up on the socket
    // rather than let every later call time out behind it.
    let dead_after = (config.timeout * 20).max(Duration::from_secs(1));
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(4 * 1024);
    let mut last_activity = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            read = stream.read_buf(&mut input) => {
                match read {
                    Ok(0) => return End::Lost("closed by Redis".into()),
                    Ok(_) => {}
                    Err(e) => return End::Lost(e.to_string()),
                }
                last_activity = Instant::now();
                loop {
                    match resp::parse(&mut input) {
                        Ok(Some(value)) => match pending.pop_front() {
                            Some((_, Some(waiter))) => {
                                let _ = waiter.send(Ok(value));
                            }
                            Some((_, None)) => {}
                            None => return End::Lost("a reply nothing asked for".into()),
                        },
                        Ok(None) => break,
                        Err(e) => return End::Lost(protocol(e)),
                    }
                }
            }
            request = rx.recv() => {
                let Some(first) = request else { return End::Shutdown };
                // Everything already queued goes out in the same write.
                let mut next = Some(first);
                while let Some(r) = next {
                    // A caller that timed out before its turn no longer wants the command run.
                    if !r.reply.is_closed() {
                        output.extend_from_slice(&r.frame);
                        pending.push_back((Instant::now(), Some(r.reply)));
                    }
                    next = if output.len() < 64 * 1024 { rx.try_recv().ok() } else { None };
                }
                if let Err(reason) = write(stream, &mut output, dead_after).await {
                    return End::Lost(reason);
                }
            }
            _ = tick.tick() => {
                if let Some((sent, _)) = pending.front() {
                    if sent.elapsed() > dead_after {
                        return End::Lost(format!("no reply for {dead_after:?}"));
                    }
                } else if last_activity.elapsed() > IDLE_PING {
                    resp::encode(&["PING"], &mut output);
                    pending.push_back((Instant::now(), None));
                    last_activity = Instant::now();
                    if let Err(reason) = write(stream, &mut output, dead_after).await {
                        return End::Lost(reason);
                    }
                }
            }
        }
    }
}

async fn write(stream: &mut Stream, output: &mut BytesMut, limit: Duration) -> Result<(), String> {
    if output.is_empty() {
        return Ok(());
    }
    let result = match tokio::time::timeout(limit, stream.write_all(output)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("write blocked for {limit:?}")),
    };
    output.clear();
    result
}

fn protocol(e: ProtocolError) -> String {
    format!("protocol error: {e}")
}

/// Opens a connection and authenticates it when a password is configured.
pub(crate) async fn connect(config: &ClusterConfig) -> Result<Stream, ConnectError> {
    let address = config.redis.clone();
    let attempt = async {
        let tcp = TcpStream::connect(&address)
            .await
            .map_err(|e| ConnectError::Connect {
                address: address.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Stream = match &config.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(tls_handshake(&tls.0, &address, tcp).await?),
        };
        if let Some(password) = read_password(config.password.as_ref())? {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &config.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            match handshake(&mut stream, &args).await? {
                Value::Status(_) => {}
                // The server's message names the failure (WRONGPASS, ...), never the password.
                Value::Error(e) => return Err(ConnectError::Auth(e)),
                other => return Err(ConnectError::Handshake(format!("AUTH answered {other:?}"))),
            }
        }
        match handshake(&mut stream, &["PING"]).await? {
            Value::Status(_) => Ok(stream),
            Value::Error(e) => Err(ConnectError::Handshake(e)),
            other => Err(ConnectError::Handshake(format!("PING answered {other:?}"))),
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            address,
            timeout: config.connect_timeout,
        }),
    }
}

/// TLS over `tcp`: Redis's certificate must chain to `[cluster.tls] ca` and carry
/// `server_name` (default: the host of `redis`), as for TLS backends; never unverified.
async fn tls_handshake(
    tls: &crate::config::UpstreamTls,
    address: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let failed = |reason: String| ConnectError::Connect {
        address: address.to_owned(),
        reason,
    };
    let host = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_of(address).to_owned(),
    };
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|e| failed(format!("no TLS server name for it: {e}")))?;
    let config = crate::proxy::tls::upstream_client_config(Some(tls), &[]);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| failed(format!("TLS handshake: {e}")))
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One command and its reply, before the connection is shared.
pub(crate) async fn handshake<A: AsRef<[u8]>>(
    stream: &mut Stream,
    args: &[A],
) -> Result<Value, ConnectError> {
    let mut frame = BytesMut::new();
    resp::encode(args, &mut frame);
    stream
        .write_all(&frame)
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    read_reply(stream, &mut BytesMut::new())
        .await
        .map_err(ConnectError::Handshake)
}

/// Reads until `input` holds one whole reply.
pub(crate) async fn read_reply(stream: &mut Stream, input: &mut BytesMut) -> Result<Value, String> {
    loop {
        match resp::parse(input) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(protocol(e)),
        }
        match stream.read_buf(input).await {
            Ok(0) => return Err("closed by Redis".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A password in memory; its `Debug` shows nothing of it.
pub(crate) struct Secret(String);

impl Secret {
    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Read at every connect, so a rotated password is picked up by the next reconnection. The
/// variable wins when it is set and not empty; otherwise the file. A trailing newline (as
/// `echo` writes) is not part of the password.
fn read_password(source: Option<&PasswordSource>) -> Result<Option<Secret>, ConnectError> {
    let Some(source) = source else {
        return Ok(None);
    };
    if let Some(var) = &source.env
        && let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty())
    {
        let value = value
            .into_string()
            .map_err(|_| ConnectError::Password(format!("the variable {var} is not UTF-8")))?;
        return Ok(Some(Secret(value)));
    }
    if let Some(path) = &source.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConnectError::Password(format!("reading {}: {e}", path.display())))?;
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        return Ok(Some(Secret(password.to_owned())));
    }
    match &source.env {
        Some(var) => Err(ConnectError::Password(format!(
            "the variable {var} is not set and no password file is configured"
        ))),
        None => Ok(None),
    }
}

/// Exponential backoff with jitter, so gateways that lost Redis together do not all come
/// back in the same millisecond.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next pause: the current step with up to a quarter taken off at random.
    pub(crate) fn next(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let mut byte = [0u8; 1];
        let jitter = if getrandom::fill(&mut byte).is_ok() {
            f64::from(byte[0]) / 255.0 / 4.0
        } else {
            0.0
        };
        step.mul_f64(1.0 - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_name_defaults_to_the_host_of_the_address() {
        assert_eq!(host_of("redis.internal:6380"), "redis.internal");
        assert_eq!(host_of("203.0.113.5:6379"), "203.0.113.5");
        assert_eq!(host_of("[2001:db8::5]:6379"), "2001:db8::5");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let steps: Vec<Duration> = (0..5).map(|_| b.next()).collect();
        let caps = [100, 200, 400, 500, 500];
        for (step, cap) in steps.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *step <= cap && *step >= cap.mul_f64(0.74),
                "{step:?} for {cap:?}"
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn the_password_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        let source = PasswordSource {
            env: None,
            file: Some(path),
        };
        let secret = read_password(Some(&source)).expect("read").expect("some");
        assert_eq!(secret.as_bytes(), b"s3cret");
    }
}
