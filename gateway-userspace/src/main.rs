//! The `portcullis` command. Parsing and printing only: every command calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use portcullis::config::{self, KernelConfig, LogFormat};
use portcullis::kernel::{self, BanReason, Bans, Counters, PinLayout};
use portcullis::rules::{Prefix, table};

/// EX_CONFIG from sysexits.h: the configuration is invalid.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Kernel-assisted API protection gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the config, put its rules into the kernel and keep them current (SIGHUP reloads).
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config: every error at once with file, line and column; exit 78 if invalid.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Add, remove or list dynamic bans: in the pinned kernel map, or through a running
    /// gateway's admin endpoint (`--admin`).
    Ban {
        #[command(subcommand)]
        action: BanCommand,
    },
    /// Kernel counters per verdict and reason, the attached interfaces and their modes.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach the XDP filter from every interface and remove all pinned state (bans included).
    #[command(alias = "unpin")]
    Detach {
        #[command(flatten)]
        target: Target,
    },
    /// Print the JSON Schema of the config file (for editors; docs/portcullis.schema.json).
    Schema,
    /// Make and hash API keys for the `[api_keys]` key file.
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Rate limits and quotas of a running gateway, through its admin endpoint.
    Limits {
        #[command(subcommand)]
        action: LimitsCommand,
    },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Every limit and quota that applies to KEY (an API key id, or another key value such
    /// as a client prefix), with the budget left and when it resets.
    Show {
        key: String,
        /// Read `admin.listen` from this config.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin endpoint's address (default: the config's, else 127.0.0.1:9901).
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        admin: Option<std::net::SocketAddr>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the `sha256:` hash of a key, the form the key file stores.
    Hash {
        /// The key, or `-` to read it from standard input (one line), so that the key does
        /// not end up in the shell history or the process list.
        key: String,
    },
    /// Print a new random key (`key:`) and its hash (`hash:`); only the hash goes in the key
    /// file.
    Generate,
}

#[derive(Subcommand)]
enum BanCommand {
    /// Ban an address or prefix.
    Add {
        /// An address (a host ban) or a CIDR prefix.
        prefix: String,
        /// How long the ban lasts (for example 10m, 1h); without it, until removed.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, value_enum, default_value = "manual")]
        reason: Reason,
        #[command(flatten)]
        target: Target,
        /// Ban through the running daemon's admin endpoint (for example 127.0.0.1:9901)
        /// instead of writing the pinned map: in the kernel when its kernel layer is on, else
        /// in userspace, published to every gateway with `[cluster]`; allow-listed and trusted
        /// addresses are refused.
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["config", "pin_root"])]
        admin: Option<std::net::SocketAddr>,
    },
    /// Remove the ban of exactly this address or prefix.
    Rm {
        prefix: String,
        #[command(flatten)]
        target: Target,
        /// Lift it through the running daemon's admin endpoint: from the kernel map, the
        /// userspace bans and, with `[cluster]`, every gateway.
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["config", "pin_root"])]
        admin: Option<std::net::SocketAddr>,
    },
    /// List live bans.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
        /// Ask the running daemon's admin endpoint (for example 127.0.0.1:9901) instead of the
        /// pinned map: its list adds the userspace bans (abuse bans of addresses learned from
        /// proxy headers, and every ban when the kernel layer is off).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Reason {
    Manual,
    AuthFailure,
    RateLimit,
    Validation,
    Cluster,
}

impl From<Reason> for BanReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Manual => BanReason::Manual,
            Reason::AuthFailure => BanReason::AuthFailure,
            Reason::RateLimit => BanReason::RateLimit,
            Reason::Validation => BanReason::Validation,
            Reason::Cluster => BanReason::Cluster,
        }
    }
}

/// Which pinned state a command works on: `--pin-root`, else the config's, else the default.
#[derive(Args)]
struct Target {
    /// Read `kernel.pin_root` from this config.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The bpffs directory Portcullis pins under.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pin_root: Option<PathBuf>,
}

impl Target {
    fn pin_root(&self) -> Result<PathBuf, Failure> {
        if let Some(p) = &self.pin_root {
            return Ok(p.clone());
        }
        match &self.config {
            Some(path) => Ok(load_config(path)?.kernel.pin_root),
            None => Ok(KernelConfig::DEFAULT_PIN_ROOT.into()),
        }
    }
}

/// Why a command failed, mapped to an exit code in one place.
enum Failure {
    Config(config::ConfigErrors),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

fn load_config(path: &Path) -> Result<config::Config, Failure> {
    config::load(path).map_err(Failure::Config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(errors)) => {
            eprintln!("{errors}");
            let n = errors.len();
            eprintln!(
                "{n} error{} in the configuration",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config } => {
            let loaded = load_config(&config)?;
            init_logging(&loaded.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(portcullis::daemon::run(&config))?;
            Ok(())
        }
        Command::Check { config } => {
            let loaded = load_config(&config)?;
            let compiled = table::compile(&loaded.rules)?;
            let s = compiled.stats;
            println!("{}: configuration is valid", config.display());
            println!(
                "kernel rules: {} IPv4 and {} IPv6 prefixes -> {} table nodes ({} KiB), {} decisions",
                s.prefixes_v4,
                s.prefixes_v6,
                s.nodes_v4 + s.nodes_v6,
                s.table_bytes() / 1024,
                s.decisions
            );
            let p = &loaded.proxy;
            println!(
                "proxy: {} listeners, {} routes, {} pools; admin endpoint {}",
                p.listeners.len(),
                p.routes.len(),
                p.pools.len(),
                loaded
                    .admin
                    .listen
                    .map_or("off".to_string(), |a| a.to_string())
            );
            Ok(())
        }
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema())?);
            Ok(())
        }
        Command::Key { action } => key(action),
        Command::Limits { action } => limits(action),
        Command::Ban { action } => ban(action),
        Command::Stats { target, json } => stats(&target.pin_root()?, json),
        Command::Detach { target } => {
            let root = target.pin_root()?;
            let removed = kernel::teardown(&root)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", root.display());
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
    }
}

fn key(action: KeyCommand) -> Result<(), Failure> {
    use portcullis::identity::api_keys::{hash_key, try_generate_key};
    match action {
        KeyCommand::Hash { key } => {
            let key = if key == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the key from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                key
            };
            if key.is_empty() {
                return Err(anyhow::anyhow!("the key is empty").into());
            }
            println!("{}", hash_key(&key));
        }
        KeyCommand::Generate => {
            let key = try_generate_key().context("the random number generator failed")?;
            println!("key: {key}");
            println!("hash: {}", hash_key(&key));
        }
    }
    Ok(())
}

fn parse_prefix(s: &str) -> Result<Prefix, Failure> {
    Ok(s.parse::<Prefix>().with_context(|| format!("`{s}`"))?)
}

fn ban(action: BanCommand) -> Result<(), Failure> {
    match action {
        BanCommand::Add {
            prefix,
            ttl,
            reason,
            admin: Some(addr),
            ..
        } => {
            let prefix = parse_prefix(&prefix)?;
            // The endpoint counts whole seconds; a sub-second ban would be refused as zero.
            let ttl_secs = ttl.map(|t| t.as_secs().max(1));
            let body = serde_json::json!({
                "prefix": prefix.to_string(),
                "ttl_secs": ttl_secs,
                "reason": BanReason::from(reason).name(),
            });
            let (_, answer) = admin_call(addr, "POST", "/bans", Some(&body.to_string()))?;
            let answer: serde_json::Value =
                serde_json::from_str(&answer).context("reading the admin endpoint's answer")?;
            let enforced = answer["enforced"].as_str().unwrap_or("?");
            match ttl {
                Some(t) => println!(
                    "banned {prefix} for {} ({enforced})",
                    humantime::format_duration(t)
                ),
                None => println!("banned {prefix} until removed ({enforced})"),
            }
            report_cluster(&answer, "ban");
        }
        BanCommand::Add {
            prefix,
            ttl,
            reason,
            target,
            admin: None,
        } => {
            let prefix = parse_prefix(&prefix)?;
            let mut bans = Bans::open(&PinLayout::new(&target.pin_root()?))?;
            bans.ban(prefix, ttl, reason.into())?;
            match ttl {
                Some(t) => println!("banned {prefix} for {}", humantime::format_duration(t)),
                None => println!("banned {prefix} until removed"),
            }
        }
        BanCommand::Rm {
            prefix,
            admin: Some(addr),
            ..
        } => {
            let prefix = parse_prefix(&prefix)?;
            let query = percent_encode(&prefix.to_string());
            let (status, answer) =
                admin_call_any(addr, "DELETE", &format!("/bans?prefix={query}"), None)?;
            if status == 404 {
                return Err(anyhow::anyhow!("{prefix} was not banned").into());
            }
            if status != 200 {
                return Err(anyhow::anyhow!(
                    "the admin endpoint answered {status}: {}",
                    answer.trim()
                )
                .into());
            }
            let answer: serde_json::Value =
                serde_json::from_str(&answer).context("reading the admin endpoint's answer")?;
            let mut from = Vec::new();
            if answer["kernel"] == true {
                from.push("kernel");
            }
            if answer["userspace"] == true {
                from.push("userspace");
            }
            if answer["cluster"] == "removed" {
                from.push("cluster");
            }
            println!("unbanned {prefix} ({})", from.join(", "));
            report_cluster(&answer, "unban");
        }
        BanCommand::Rm {
            prefix,
            target,
            admin: None,
        } => {
            let prefix = parse_prefix(&prefix)?;
            let mut bans = Bans::open(&PinLayout::new(&target.pin_root()?))?;
            if bans.unban(prefix)? {
                println!("unbanned {prefix}");
            } else {
                return Err(anyhow::anyhow!("{prefix} was not banned").into());
            }
        }
        BanCommand::List {
            json,
            admin: Some(addr),
            ..
        } => admin_bans(addr, json)?,
        BanCommand::List {
            target,
            json,
            admin: None,
        } => {
            let bans = Bans::open(&PinLayout::new(&target.pin_root()?))?.list()?;
            if json {
                let items: Vec<_> = bans.iter().map(|b| b.to_json()).collect();
                println!("{}", serde_json::Value::Array(items));
            } else if bans.is_empty() {
                println!("no bans");
            } else {
                println!("{:<44} {:<13} EXPIRES IN", "PREFIX", "REASON");
                for b in bans {
                    let left = b.remaining.map_or("never".to_string(), |d| {
                        humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
                            .to_string()
                    });
                    println!(
                        "{:<44} {:<13} {left}",
                        b.prefix.to_string(),
                        b.reason.name()
                    );
                }
            }
        }
    }
    Ok(())
}

fn limits(action: LimitsCommand) -> Result<(), Failure> {
    let LimitsCommand::Show {
        key,
        config,
        admin,
        json,
    } = action;
    let addr = match (admin, config) {
        (Some(a), _) => a,
        (None, Some(path)) => load_config(&path)?
            .admin
            .listen
            .context("the config turns the admin endpoint off")?,
        (None, None) => "127.0.0.1:9901".parse().context("default admin address")?,
    };
    let query = percent_encode(&key);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let body = runtime.block_on(async {
        use http_body_util::BodyExt as _;
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let uri: http::Uri = format!("http://{addr}/limits?key={query}").parse()?;
        let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
            .await
            .context("the admin endpoint did not answer")??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "the admin endpoint answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
        anyhow::Ok(body)
    });
    let body = body.with_context(|| format!("asking the admin endpoint at {addr}"))?;
    let items: serde_json::Value = serde_json::from_slice(&body).context("reading the answer")?;
    if json {
        println!("{items}");
        return Ok(());
    }
    let rows = items.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no limit or quota applies to {key}");
        return Ok(());
    }
    println!(
        "{:<6} {:<24} {:<32} {:>14} {:>14} {:>9}",
        "KIND", "LIMIT", "KEY", "REMAINING", "OF", "RESET(s)"
    );
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for r in rows {
        let key = show(&r["key"]);
        let (remaining, of) = if r["kind"] == "rate" {
            (show(&r["remaining"]), show(&r["quota"]))
        } else if r["calls"].is_null() {
            (
                show(&r["bytes_remaining"]),
                format!("{} B", show(&r["bytes"])),
            )
        } else {
            (
                show(&r["calls_remaining"]),
                format!("{} calls", show(&r["calls"])),
            )
        };
        println!(
            "{:<6} {:<24} {:<32} {:>14} {:>14} {:>9}",
            show(&r["kind"]),
            show(&r["limit"]),
            key.replace('|', ", "),
            remaining,
            of,
            show(&r["reset_seconds"]),
        );
    }
    Ok(())
}

/// Says on stderr when the admin endpoint could not share a ban or unban with the cluster.
fn report_cluster(answer: &serde_json::Value, what: &str) {
    if let Some(why) = answer["cluster"]
        .as_str()
        .and_then(|c| c.strip_prefix("not shared: "))
    {
        eprintln!(
            "warning: the {what} applies to this gateway only; the cluster store answered: {why}"
        );
    }
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request to the admin endpoint at `addr`: its status and body, whatever the status.
fn admin_call_any(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), Failure> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the admin endpoint at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("reading the admin endpoint's answer")?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("the admin endpoint at {addr} did not answer HTTP"))?;
    Ok((status, body.to_owned()))
}

/// [`admin_call_any`], with any status but 200 an error carrying the endpoint's message.
fn admin_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), Failure> {
    let (status, answer) = admin_call_any(addr, method, path, body)?;
    if status != 200 {
        return Err(
            anyhow::anyhow!("the admin endpoint answered {status}: {}", answer.trim()).into(),
        );
    }
    Ok((status, answer))
}

/// `GET /bans` of the admin endpoint at `addr`: the kernel's bans and the userspace ones.
fn admin_bans(addr: std::net::SocketAddr, json: bool) -> Result<(), Failure> {
    let (_, body) = admin_call(addr, "GET", "/bans", None)?;
    let body = body.as_str();
    let items: Vec<serde_json::Value> =
        serde_json::from_str(body).context("the admin endpoint's ban list")?;
    if json {
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    if items.is_empty() {
        println!("no bans");
        return Ok(());
    }
    println!(
        "{:<44} {:<13} {:<10} EXPIRES IN",
        "PREFIX", "REASON", "ENFORCED"
    );
    for b in &items {
        let left = b["remaining_secs"]
            .as_f64()
            .map_or("never".to_string(), |s| {
                humantime::format_duration(Duration::from_secs((s as u64).max(1))).to_string()
            });
        println!(
            "{:<44} {:<13} {:<10} {left}",
            b["prefix"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("?"),
            b["enforced"].as_str().unwrap_or("kernel"),
        );
    }
    Ok(())
}

fn stats(pin_root: &Path, json: bool) -> Result<(), Failure> {
    let layout = PinLayout::new(pin_root);
    let counters = Counters::open(&layout)?.read()?;
    let attached = kernel::attachments(&layout)?;
    let generation = kernel::read_meta(&layout, gateway_common::meta::GENERATION)?.unwrap_or(0);
    if json {
        let out = serde_json::json!({
            "generation": generation,
            "interfaces": attached.iter().map(|a| serde_json::json!({"interface": a.interface, "mode": a.mode.as_str()})).collect::<Vec<_>>(),
            "counters": counters.iter().map(|c| serde_json::json!({"verdict": c.verdict(), "reason": c.reason(), "packets": c.packets, "bytes": c.bytes})).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(());
    }
    println!("rule generation {generation}");
    for a in &attached {
        println!("attached to {} ({} mode)", a.interface, a.mode.as_str());
    }
    if attached.is_empty() {
        println!("not attached to any interface");
    }
    println!(
        "{:<8} {:<28} {:>14} {:>16}",
        "VERDICT", "REASON", "PACKETS", "BYTES"
    );
    for c in &counters {
        println!(
            "{:<8} {:<28} {:>14} {:>16}",
            c.verdict(),
            c.reason(),
            c.packets,
            c.bytes
        );
    }
    Ok(())
}

fn init_logging(log: &config::LogConfig) {
    let level: tracing::Level = log.level.into();
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
