//! `midge-bench`: a closed-loop MQTT load generator that measures any broker.
//!
//! ```text
//! cargo build --release -p midge-bench
//! ulimit -n 20000
//! target/release/midge-bench --host 127.0.0.1 --port 1883 --scenario fan-in \
//!     --qos 1 --payload 64 --duration 5 [--broker-pid PID] [--label mosquitto]
//! target/release/midge-bench --port 1883 --scenario idle --connections 10000 --broker-pid PID
//! bench/run.sh          # every scenario x QoS x payload against Midge, Mosquitto
//!                       # (and rumqttd if on PATH); writes docs/BENCHMARKS.md
//! ```
//!
//! Scenarios:
//! - `fan-in`: 8 publishers on `bench/<run>/in/<i>`, one subscriber on `bench/<run>/in/+`.
//! - `fan-out`: 1 publisher, 100 subscribers on the same topic.
//! - `pairs`: 50 publisher/subscriber pairs on distinct topics.
//! - `idle`: `--connections` (10,000) connections that only CONNECT; reports
//!   connects/s and, with `--broker-pid`, the broker's VmRSS growth per connection.
//! - `offline-queue`: QoS 1 publishes (`--publishers`, 4) queued for an offline
//!   persistent subscriber until `--messages` or `--duration`, then the drain
//!   when it reconnects (see `persist.rs`; `bench/persist.sh` runs it).
//! - `kafka-archive`: QoS 1 publishes (`--publishers`, `--messages`) through a
//!   broker whose persist-kafka plugin archives each one, timed until the
//!   broker's `/metrics` (`--metrics ADDR`) shows Kafka acknowledged them all
//!   (see `archive.rs`; `bench/kafka.sh` runs it).
//! - `restart-sessions`: `--phase setup` creates `--sessions` persistent
//!   sessions; after the broker restarted, `--phase probe --t0-ns NS` times
//!   until they are back (see `persist.rs`; `bench/persist.sh` runs it).
//!
//! Closed loop: every publisher has a window of `--window` messages that have
//! been published but not yet received by *every* subscriber that should get
//! them; it only publishes when a slot frees up, so a broker that acks faster
//! than it delivers cannot look fast. (QoS 1 publishers are additionally
//! limited to `--window` publishes without PUBACK.) Each payload starts with
//! the publisher id (u32 LE), a sequence number (u64 LE) and the send time in
//! ns since the run's start (u64 LE); subscribers derive end-to-end latency,
//! loss, duplicates and per-publisher reordering from it. With `--json` the
//! payload is a JSON object instead, `{"p":1,"seq":42,"ts":123456,"pad":"xx.."}`
//! padded to `--payload` bytes, parsed back by the subscribers (for broker
//! rules that read the payload); `--watch FILTER` adds a connection that only
//! counts what it receives on FILTER (e.g. rule republishes).
//!
//! The run publishes for `--warmup` + `--duration` seconds; throughput and
//! latency count only deliveries received during `--duration`. Afterwards it
//! drains for at most `--drain` seconds, then every sequence number never
//! received by a subscriber that should have received it counts as lost.
//!
//! Output: one JSON object per run on stdout and a human-readable line on stderr.

mod archive;
mod client;
mod idle;
mod load;
mod persist;
mod procfs;
mod stats;

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use midge_protocol::Version;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    FanIn,
    FanOut,
    Pairs,
    Idle,
    OfflineQueue,
    RestartSessions,
    /// QoS 1 publishers and no subscriber (e.g. for an archiving plugin).
    Publish,
    /// QoS 1 publishers, until Kafka acknowledged every archived record.
    KafkaArchive,
}

/// The two halves of `restart-sessions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Create the persistent sessions.
    Setup,
    /// Poll a (re)started broker until they are back.
    Probe,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Pairs => "pairs",
            Scenario::Idle => "idle",
            Scenario::OfflineQueue => "offline-queue",
            Scenario::RestartSessions => "restart-sessions",
            Scenario::Publish => "publish",
            Scenario::KafkaArchive => "kafka-archive",
        }
    }
}

/// Closed-loop MQTT load generator.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload size in bytes (at least 20: the id/sequence/timestamp header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Most seconds to wait after the run for outstanding messages.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Messages per publisher published but not yet delivered everywhere.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// A message undelivered for this long frees its window slot anyway
    /// (so lost QoS 0 messages do not stall a publisher); counted as `expired`.
    #[arg(long, default_value_t = 2000)]
    pub expire_ms: u64,
    /// Broker process id, for RSS (idle) and CPU/RSS readings from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Connections opened by the `idle` scenario.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connection attempts in flight at once in `idle`.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds to wait after the idle connections are up before reading RSS.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// MQTT protocol version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub mqtt: u8,
    /// Broker name copied into the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Runtime worker threads (default: CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// JSON payloads instead of the binary header: `{"p":ID,"seq":N,"ts":NS,"pad":"xx.."}`
    /// padded to `--payload` bytes (longer if the fields alone do not fit);
    /// subscribers parse them back. For broker rules that read the payload.
    #[arg(long)]
    pub json: bool,
    /// Also subscribe one extra connection (QoS 0) to this filter and count
    /// what it receives (`watched` in the output), e.g. rule republishes.
    /// Not part of throughput, latency or loss.
    #[arg(long, value_name = "FILTER")]
    pub watch: Option<String>,
    /// Client id and topic prefix of the persistence scenarios (the same in
    /// the setup and probe runs of `restart-sessions`).
    #[arg(long, default_value = "mb")]
    pub prefix: String,
    /// `offline-queue`: publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// `offline-queue`: stop publishing after this many messages in total
    /// (0: only `--duration` ends the publishing).
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
    /// `restart-sessions`: persistent sessions to create / expect.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// `restart-sessions`: create the sessions, or probe a restarted broker.
    #[arg(long, value_enum, default_value = "setup")]
    pub phase: Phase,
    /// `restart-sessions --phase probe`: when the broker process was started
    /// (wall clock, ns since the epoch: `date +%s%N`); default: now.
    #[arg(long)]
    pub t0_ns: Option<u64>,
    /// `restart-sessions --phase probe`: other sessions checked for session present.
    #[arg(long, default_value_t = 1000)]
    pub sample: usize,
    /// Persistence scenarios: bound in seconds on each phase (publishing,
    /// drain, setup, probe).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// `kafka-archive`: the broker's admin listener serving `/metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// `kafka-archive`: bearer token for `/metrics` (none when it is public).
    #[arg(long)]
    pub metrics_token: Option<String>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(&args) {
        eprintln!("midge-bench: error: {e:#}");
        println!(
            "{{\"broker\":{},\"scenario\":\"{}\",\"qos\":{},\"payload\":{},\"error\":{}}}",
            json_str(&args.label),
            args.scenario.name(),
            args.qos,
            args.payload,
            json_str(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

fn real_main(args: &Args) -> Result<()> {
    if args.payload < load::HEADER {
        bail!("--payload must be at least {} bytes", load::HEADER);
    }
    if args.window == 0 || args.window > 65_535 {
        bail!("--window must be in 1..=65535");
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0 && args.settle >= 0.0) {
        bail!("--duration must be positive and --warmup/--drain/--settle non-negative");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be positive");
    }
    let version = match args.mqtt {
        3 => Version::V311,
        5 => Version::V5,
        v => bail!("--mqtt must be 3 or 5, not {v}"),
    };
    let addr: SocketAddr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.host))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.host))?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("starting tokio runtime")?;

    let common = format!(
        "\"broker\":{},\"scenario\":\"{}\",\"mqtt\":{},\"host\":{},\"port\":{}",
        json_str(&args.label),
        args.scenario.name(),
        args.mqtt,
        json_str(&args.host),
        args.port
    );
    let who = if args.label.is_empty() {
        format!("{addr}")
    } else {
        args.label.clone()
    };
    if args.scenario == Scenario::Idle {
        let r = rt.block_on(idle::run(args, addr, version))?;
        println!(
            "{{{common},\"connections\":{},\"connect_s\":{:.3},\"connects_per_s\":{:.0},\
             \"rss_before_kib\":{},\"rss_after_kib\":{},\"kib_per_conn\":{},\"alive\":{}}}",
            r.connections,
            r.connect_secs,
            r.connects_per_s,
            json_opt(r.rss_before_kib),
            json_opt(r.rss_after_kib),
            json_opt(r.kib_per_conn.map(|v| format!("{v:.2}"))),
            r.alive
        );
        eprintln!(
            "{who} idle: {} connections in {:.2} s = {:.0} connects/s; broker RSS {} -> {} KiB = {} KiB/conn; {} alive",
            r.connections,
            r.connect_secs,
            r.connects_per_s,
            opt_str(r.rss_before_kib),
            opt_str(r.rss_after_kib),
            opt_str(r.kib_per_conn.map(|v| format!("{v:.2}"))),
            r.alive
        );
        if r.alive != r.connections {
            eprintln!(
                "midge-bench: only {} of {} idle connections answered PINGREQ",
                r.alive, r.connections
            );
            std::process::exit(2);
        }
        return Ok(());
    }

    match args.scenario {
        Scenario::Publish => {
            let r = rt.block_on(persist::publish_only(args, addr, version))?;
            println!(
                "{{{common},\"qos\":1,\"payload\":{},\"window\":{},\"publishers\":{},\
                 \"messages\":{},\"sent\":{},\"acked\":{},\"publish_s\":{:.3},\
                 \"pub_msgs_per_s\":{:.0},\"ack_p50_us\":{:.1},\"ack_p99_us\":{:.1}}}",
                args.payload,
                args.window,
                r.publishers,
                args.messages,
                r.sent,
                r.acked,
                r.publish_s,
                r.pub_msgs_per_s,
                r.ack_p50_us,
                r.ack_p99_us,
            );
            eprintln!(
                "{who} publish {}B: {} acked in {:.2} s = {:.0} msg/s (ack p50 {:.0} us, p99 {:.0} us)",
                args.payload, r.acked, r.publish_s, r.pub_msgs_per_s, r.ack_p50_us, r.ack_p99_us
            );
        }
        Scenario::KafkaArchive => {
            let r = rt.block_on(archive::kafka_archive(args, addr, version))?;
            let rate = r.acked as f64 / r.archived_s;
            println!(
                "{{{common},\"qos\":1,\"payload\":{},\"window\":{},\"publishers\":{},\
                 \"acked\":{},\"publish_s\":{:.3},\"archived_s\":{:.3},\"archived_msgs_per_s\":{:.0},\
                 \"ack_p50_us\":{:.1},\"ack_p99_us\":{:.1},\"delivered\":{},\"failed\":{},\
                 \"broker_cpu_pct\":{}}}",
                args.payload,
                args.window,
                r.publishers,
                r.acked,
                r.publish_s,
                r.archived_s,
                rate,
                r.ack_p50_us,
                r.ack_p99_us,
                r.delivered,
                r.failed,
                json_opt(r.broker_cpu_pct.map(|v| format!("{v:.1}"))),
            );
            eprintln!(
                "{who} kafka-archive {}B: {} acked in {:.2} s, all in Kafka after {:.2} s = {:.0} msg/s \
                 (ack p50 {:.0} us, p99 {:.0} us, broker CPU {}%); delivered {}, failed {}",
                args.payload,
                r.acked,
                r.publish_s,
                r.archived_s,
                rate,
                r.ack_p50_us,
                r.ack_p99_us,
                opt_str(r.broker_cpu_pct.map(|v| format!("{v:.0}"))),
                r.delivered,
                r.failed
            );
            if r.failed > 0 {
                eprintln!("midge-bench: Kafka refused {} records", r.failed);
                std::process::exit(2);
            }
            return Ok(());
        }
        Scenario::OfflineQueue => {
            let r = rt.block_on(persist::offline_queue(args, addr, version))?;
            return report_offline(args, &common, &who, &r);
        }
        Scenario::RestartSessions => {
            return match args.phase {
                Phase::Setup => {
                    let r = rt.block_on(persist::setup_sessions(args, addr, version))?;
                    println!(
                        "{{{common},\"phase\":\"setup\",\"sessions\":{},\"setup_s\":{:.3},\
                         \"sessions_per_s\":{:.0},\"already_present\":{}}}",
                        r.sessions, r.setup_s, r.sessions_per_s, r.already_present
                    );
                    eprintln!(
                        "{who} restart-sessions setup: {} persistent sessions in {:.2} s = {:.0}/s",
                        r.sessions, r.setup_s, r.sessions_per_s
                    );
                    Ok(())
                }
                Phase::Probe => {
                    let r = rt.block_on(persist::probe_sessions(args, addr, version))?;
                    println!(
                        "{{{common},\"phase\":\"probe\",\"sessions\":{},\"listen_s\":{:.3},\
                         \"ready_s\":{:.3},\"attempts\":{},\"subscription_ok\":{},\"sample\":{},\
                         \"sample_present\":{},\"broker_rss_kib\":{}}}",
                        r.sessions,
                        r.listen_s,
                        r.ready_s,
                        r.attempts,
                        r.subscription_ok,
                        r.sample,
                        r.sample_present,
                        json_opt(r.rss_kib)
                    );
                    eprintln!(
                        "{who} restart-sessions probe: accepting after {:.3} s, session back after {:.3} s \
                         ({} attempts); subscription {}; {}/{} sampled sessions present; broker RSS {} KiB",
                        r.listen_s,
                        r.ready_s,
                        r.attempts,
                        if r.subscription_ok { "ok" } else { "LOST" },
                        r.sample_present,
                        r.sample,
                        opt_str(r.rss_kib)
                    );
                    if !r.subscription_ok || r.sample_present != r.sample as u64 {
                        eprintln!("midge-bench: persistent sessions were lost in the restart");
                        std::process::exit(2);
                    }
                    Ok(())
                }
            };
        }
        _ => {}
    }

    let r = rt.block_on(load::run(args, addr, version))?;
    println!(
        "{{{common},\"qos\":{},\"payload\":{},\"duration_s\":{},\"window\":{},\
         \"publishers\":{},\"subscribers\":{},\"sent\":{},\"acked\":{},\"delivered\":{},\
         \"measured\":{},\"msgs_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\
         \"p999_us\":{:.1},\"max_us\":{:.1},\"loss\":{},\"duplicates\":{},\"reordered\":{},\
         \"unexpected\":{},\"expired\":{},\"drained\":{},\"broker_cpu_pct\":{},\
         \"broker_rss_kib\":{},\"json\":{},\"watched\":{}}}",
        args.qos,
        args.payload,
        args.duration,
        args.window,
        r.publishers,
        r.subscribers,
        r.sent,
        r.acked,
        r.delivered,
        r.measured,
        r.msgs_per_s,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.loss,
        r.duplicates,
        r.reordered,
        r.unexpected,
        r.expired,
        r.drained,
        json_opt(r.broker_cpu_pct.map(|v| format!("{v:.1}"))),
        json_opt(r.broker_rss_kib),
        args.json,
        json_opt(r.watched),
    );
    eprintln!(
        "{who} {} qos{} {}B{}: {:.0} msg/s delivered, p50 {:.0} us, p99 {:.0} us, \
         loss {}, dup {}, reordered {} (sent {}, delivered {}, broker CPU {}%){}",
        args.scenario.name(),
        args.qos,
        args.payload,
        if args.json { " json" } else { "" },
        r.msgs_per_s,
        r.p50_us,
        r.p99_us,
        r.loss,
        r.duplicates,
        r.reordered,
        r.sent,
        r.delivered,
        opt_str(r.broker_cpu_pct.map(|v| format!("{v:.0}"))),
        r.watched
            .map(|n| format!(", watched {n}"))
            .unwrap_or_default(),
    );
    if args.qos == 1 && r.loss > 0 {
        eprintln!("midge-bench: {} QoS 1 messages were lost", r.loss);
        std::process::exit(2);
    }
    Ok(())
}

fn report_offline(args: &Args, common: &str, who: &str, r: &persist::OfflineReport) -> Result<()> {
    println!(
        "{{{common},\"qos\":1,\"payload\":{},\"window\":{},\"publishers\":{},\
         \"messages\":{},\"duration_s\":{},\"sent\":{},\"acked\":{},\"publish_s\":{:.3},\
         \"pub_msgs_per_s\":{:.0},\"ack_p50_us\":{:.1},\"ack_p99_us\":{:.1},\"ack_max_us\":{:.1},\
         \"pub_broker_cpu_pct\":{},\"rss_queued_kib\":{},\"session_present\":{},\
         \"drain_first_ms\":{},\"drain_s\":{:.3},\"drain_msgs_per_s\":{:.0},\"delivered\":{},\
         \"duplicates\":{},\"reordered\":{},\"unexpected\":{},\"loss\":{},\"drained\":{},\
         \"drain_broker_cpu_pct\":{},\"rss_drained_kib\":{}}}",
        args.payload,
        args.window,
        r.publishers,
        r.target,
        args.duration,
        r.sent,
        r.acked,
        r.publish_s,
        r.pub_msgs_per_s,
        r.ack_p50_us,
        r.ack_p99_us,
        r.ack_max_us,
        json_opt(r.pub_cpu_pct.map(|v| format!("{v:.1}"))),
        json_opt(r.rss_queued_kib),
        r.session_present,
        json_opt(r.first_ms.map(|v| format!("{v:.1}"))),
        r.drain_s,
        r.drain_msgs_per_s,
        r.delivered,
        r.duplicates,
        r.reordered,
        r.unexpected,
        r.loss,
        r.drained,
        json_opt(r.drain_cpu_pct.map(|v| format!("{v:.1}"))),
        json_opt(r.rss_drained_kib),
    );
    eprintln!(
        "{who} offline-queue {}B: {} acked in {:.2} s = {:.0} msg/s (ack p50 {:.0} us, p99 {:.0} us, \
         broker CPU {}%, RSS {} KiB); drain {} of {} in {:.2} s = {:.0} msg/s (first after {} ms, \
         session present {}), loss {}, dup {}, reordered {}",
        args.payload,
        r.acked,
        r.publish_s,
        r.pub_msgs_per_s,
        r.ack_p50_us,
        r.ack_p99_us,
        opt_str(r.pub_cpu_pct.map(|v| format!("{v:.0}"))),
        opt_str(r.rss_queued_kib),
        r.delivered,
        r.acked,
        r.drain_s,
        r.drain_msgs_per_s,
        opt_str(r.first_ms.map(|v| format!("{v:.0}"))),
        r.session_present,
        r.loss,
        r.duplicates,
        r.reordered,
    );
    if r.loss > 0 || !r.session_present {
        eprintln!(
            "midge-bench: {} acknowledged QoS 1 messages were lost (session present {})",
            r.loss, r.session_present
        );
        std::process::exit(2);
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn opt_str<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}
