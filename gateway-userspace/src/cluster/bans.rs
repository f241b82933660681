//! Bans shared by every gateway. A ban is stored in a hash (prefix -> entry) with its expiry in
//! a sorted set, and announced on a channel, both in one script: a gateway that starts later
//! reads the stored bans, one that is running gets the message.
//!
//! A subscription delivers a [`BanEvent::Snapshot`] of the stored bans each time it
//! (re)subscribes, taken after the subscription is in place, so no ban published while a
//! gateway was disconnected is missed; then each ban and unban as it happens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::conn::{self, Backoff, CallError};
use super::resp::{self, Value};
use super::{Cluster, Feature, Unavailable};
use crate::kernel::BanReason;
use crate::rules::Prefix;

/// Longest evidence kept with a ban; the rest is cut (at a character boundary).
const MAX_EVIDENCE: usize = 1024;

/// A ban to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBan {
    pub prefix: Prefix,
    pub reason: BanReason,
    /// From now, by the Redis server's clock. At least a millisecond.
    pub ttl: Duration,
    /// Why, for operators (`"401 x 50 in 10s on /login"`); at most 1 KiB is kept.
    pub evidence: String,
}

/// A ban as the cluster stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterBan {
    pub prefix: Prefix,
    /// The publisher's reason; a name this version does not know reads as `Cluster`.
    pub reason: BanReason,
    pub evidence: String,
    /// The publishing gateway's [`Cluster::instance_id`].
    pub origin: String,
    /// By the Redis server's clock.
    pub created: SystemTime,
    pub expires: SystemTime,
    /// Time left when Redis answered, by its own clock: what to give the kernel ban, free of
    /// any difference between the gateway's clock and the server's.
    pub remaining: Duration,
}

/// What a subscription delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanEvent {
    /// Every current ban, on each (re)subscription: replace the cluster's bans with these.
    Snapshot(Vec<ClusterBan>),
    Banned(ClusterBan),
    Unbanned {
        prefix: Prefix,
        origin: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Body {
    prefix: String,
    reason: String,
    evidence: String,
    origin: String,
}

#[derive(Deserialize)]
struct Entry {
    created_ms: u64,
    expires_ms: u64,
    ban: Body,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Message {
    Ban { entry: Entry },
    Unban { prefix: String, origin: String },
}

#[derive(Serialize)]
struct UnbanMessage<'a> {
    op: &'static str,
    prefix: &'a str,
    origin: &'a str,
}

impl Entry {
    /// `now_ms`: the server's time when it answered.
    fn into_ban(self, now_ms: u64) -> Option<ClusterBan> {
        Some(ClusterBan {
            prefix: Prefix::parse_strict(&self.ban.prefix).ok()?,
            reason: BanReason::from_name(&self.ban.reason).unwrap_or(BanReason::Cluster),
            evidence: self.ban.evidence,
            origin: self.ban.origin,
            created: UNIX_EPOCH + Duration::from_millis(self.created_ms),
            expires: UNIX_EPOCH + Duration::from_millis(self.expires_ms),
            remaining: Duration::from_millis(self.expires_ms.saturating_sub(now_ms)),
        })
    }
}

impl Cluster {
    fn ban_keys(&self) -> [String; 2] {
        let prefix = &self.inner.config.key_prefix;
        [format!("{prefix}bans"), format!("{prefix}bans:expiry")]
    }

    fn ban_channel(&self) -> String {
        format!("{}bans", self.inner.config.key_prefix)
    }

    /// Stores a ban and announces it to every gateway (this one included).
    pub async fn publish_ban(&self, ban: &NewBan) -> Result<ClusterBan, Unavailable> {
        let mut evidence = ban.evidence.clone();
        if evidence.len() > MAX_EVIDENCE {
            let mut cut = MAX_EVIDENCE;
            while !evidence.is_char_boundary(cut) {
                cut -= 1;
            }
            evidence.truncate(cut);
        }
        let prefix = ban.prefix.to_string();
        let body = Body {
            prefix: prefix.clone(),
            reason: ban.reason.name().to_owned(),
            evidence,
            origin: self.inner.instance.clone(),
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let ttl_ms = u64::try_from(ban.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let args = [self.ban_channel(), prefix, ttl_ms.to_string(), body];
        let reply = self
            .eval(
                "ban",
                Feature::Bans,
                &self.inner.ban,
                &self.ban_keys(),
                &args,
            )
            .await?;
        let parsed = (|| {
            let [now, entry] = reply.as_array()? else {
                return None;
            };
            let now = u64::try_from(now.as_int()?).ok()?;
            let entry: Entry = serde_json::from_slice(entry.as_bytes()?).ok()?;
            entry.into_ban(now)
        })();
        parsed.ok_or_else(|| self.failed("ban", Feature::Bans, super::bad_reply("ban", &reply)))
    }

    /// Removes a ban everywhere. Whether there was one.
    pub async fn unban(&self, prefix: &Prefix) -> Result<bool, Unavailable> {
        let prefix = prefix.to_string();
        let message = serde_json::to_string(&UnbanMessage {
            op: "unban",
            prefix: &prefix,
            origin: &self.inner.instance,
        })
        .unwrap_or_default();
        let args = [self.ban_channel(), prefix, message];
        let reply = self
            .eval(
                "unban",
                Feature::Bans,
                &self.inner.unban,
                &self.ban_keys(),
                &args,
            )
            .await?;
        match reply.as_int() {
            Some(n) => Ok(n > 0),
            None => Err(self.failed("unban", Feature::Bans, super::bad_reply("unban", &reply))),
        }
    }

    /// Every ban in force, expired ones removed. Entries that do not parse (written by a
    /// newer or broken publisher) are skipped and logged.
    pub async fn current_bans(&self) -> Result<Vec<ClusterBan>, Unavailable> {
        let no_args: [String; 0] = [];
        let reply = self
            .eval(
                "bans",
                Feature::Bans,
                &self.inner.list,
                &self.ban_keys(),
                &no_args,
            )
            .await?;
        let parsed = (|| {
            let [now, flat] = reply.as_array()? else {
                return None;
            };
            let now = u64::try_from(now.as_int()?).ok()?;
            let mut bans = Vec::new();
            for pair in flat.as_array()?.chunks(2) {
                let Some(bytes) = pair.get(1).and_then(Value::as_bytes) else {
                    continue;
                };
                match serde_json::from_slice::<Entry>(bytes)
                    .ok()
                    .and_then(|e| e.into_ban(now))
                {
                    Some(ban) if ban.remaining > Duration::ZERO => bans.push(ban),
                    Some(_) => {}
                    None => tracing::warn!(
                        prefix = %String::from_utf8_lossy(pair[0].as_bytes().unwrap_or_default()),
                        "cluster store: skipping a stored ban that does not parse"
                    ),
                }
            }
            Some(bans)
        })();
        parsed.ok_or_else(|| self.failed("bans", Feature::Bans, super::bad_reply("bans", &reply)))
    }

    /// Subscribes to ban announcements on a connection of its own, reconnecting as needed.
    /// The first event (and the first after each reconnection) is a snapshot.
    pub fn subscribe_bans(&self) -> BanSubscription {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(subscribe_loop(self.clone(), tx));
        BanSubscription { rx, task }
    }
}

/// A stream of [`BanEvent`]s; dropping it unsubscribes.
pub struct BanSubscription {
    rx: mpsc::Receiver<BanEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl BanSubscription {
    /// The next event; `None` only if the subscription task ended.
    pub async fn next(&mut self) -> Option<BanEvent> {
        self.rx.recv().await
    }
}

impl Drop for BanSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscribe_loop(cluster: Cluster, tx: mpsc::Sender<BanEvent>) {
    let config = cluster.inner.config.clone();
    let mut backoff = Backoff::new(config.reconnect_backoff, config.reconnect_backoff_max);
    loop {
        match session(&cluster, &tx, &mut backoff).await {
            Ok(()) => return,
            Err(reason) => {
                cluster
                    .inner
                    .metrics
                    .call("subscribe", "error", Duration::ZERO);
                tracing::warn!(redis = %config.redis, %reason,
                    "cluster store: ban subscription interrupted");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = tx.closed() => return,
        }
    }
}

/// One subscribed connection. `Ok` when the subscriber went away, `Err` when the connection
/// failed and must be made again.
async fn session(
    cluster: &Cluster,
    tx: &mpsc::Sender<BanEvent>,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let config = &cluster.inner.config;
    let channel = cluster.ban_channel();
    let mut stream = conn::connect(config).await.map_err(|e| e.to_string())?;
    let mut frame = BytesMut::new();
    resp::encode(&["SUBSCRIBE", channel.as_str()], &mut frame);
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut input = BytesMut::new();
    let confirm = tokio::time::timeout(
        config.connect_timeout,
        conn::read_reply(&mut stream, &mut input),
    )
    .await
    .map_err(|_| "no answer to SUBSCRIBE".to_owned())??;
    match confirm.as_array() {
        Some([kind, ..]) if kind.as_bytes() == Some(b"subscribe") => {}
        _ => return Err(format!("SUBSCRIBE answered {confirm:?}")),
    }
    // Subscribed first, listed second: a ban published in between is in both, never in
    // neither. The commands connection may still be coming up after an outage; give it time.
    let mut snapshot = None;
    for _ in 0..50 {
        match cluster.current_bans().await {
            Ok(bans) => {
                snapshot = Some(bans);
                break;
            }
            Err(Unavailable {
                cause: CallError::NotConnected | CallError::Timeout | CallError::Lost(_),
                ..
            }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
    let snapshot = snapshot.ok_or("cannot list the current bans")?;
    if tx.send(BanEvent::Snapshot(snapshot)).await.is_err() {
        return Ok(());
    }
    backoff.reset();
    let mut last_data = tokio::time::Instant::now();
    let mut pinged = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Replies already buffered first.
        loop {
            match resp::parse(&mut input) {
                Ok(Some(value)) => {
                    if let Some(event) = message_event(cluster, &value)
                        && tx.send(event).await.is_err()
                    {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(format!("protocol error: {e}")),
            }
        }
        tokio::select! {
            read = stream.read_buf(&mut input) => match read {
                Ok(0) => return Err("closed by Redis".into()),
                Ok(_) => {
                    last_data = tokio::time::Instant::now();
                    pinged = false;
                }
                Err(e) => return Err(e.to_string()),
            },
            _ = tick.tick() => {
                let idle = last_data.elapsed();
                if pinged && idle > conn::IDLE_PING * 2 {
                    return Err(format!("silent for {idle:?}"));
                }
                if !pinged && idle > conn::IDLE_PING {
                    frame.clear();
                    resp::encode(&["PING"], &mut frame);
                    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
                    pinged = true;
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// The event a pushed message carries, if it is a ban message that parses.
fn message_event(cluster: &Cluster, value: &Value) -> Option<BanEvent> {
    let [kind, _channel, payload] = value.as_array()? else {
        // `pong` replies to the keep-alive and anything else that is not a message.
        return None;
    };
    if kind.as_bytes() != Some(b"message") {
        return None;
    }
    let bytes = payload.as_bytes()?;
    let event = match serde_json::from_slice::<Message>(bytes) {
        Ok(Message::Ban { entry }) => {
            // Relative to its own creation, by the server's clock: the delivery delay is
            // small next to a ban's lifetime.
            let created = entry.created_ms;
            entry.into_ban(created).map(BanEvent::Banned)
        }
        Ok(Message::Unban { prefix, origin }) => Prefix::parse_strict(&prefix)
            .ok()
            .map(|prefix| BanEvent::Unbanned { prefix, origin }),
        Err(_) => None,
    };
    if event.is_none() {
        cluster
            .inner
            .metrics
            .call("subscribe", "bad_message", Duration::ZERO);
        tracing::warn!("cluster store: ignoring a ban message that does not parse");
    }
    event
}
