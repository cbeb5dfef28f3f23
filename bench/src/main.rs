//! `midge-bench`: an MQTT load generator that measures any broker, closed
//! loop (as fast as the broker delivers) or open loop (`--rate`: a fixed rate).
//!
//! ```text
//! cargo build --release -p midge-bench
//! ulimit -n 20000
//! target/release/midge-bench --host 127.0.0.1 --port 1883 --scenario fan-in \
//!     --qos 1 --payload 64 --duration 5 [--broker-pid PID] [--label mosquitto]
//! target/release/midge-bench --port 1883 --scenario pairs --qos 1 --rate 10000 --spin-us 1000
//! target/release/midge-bench --port 1883 --scenario idle --connections 10000 --broker-pid PID
//! target/release/midge-bench --port 1883 --sub-port 1884 --scenario pairs --qos 1   # two cluster nodes
//! bench/run.sh          # every scenario x QoS x payload against Midge, Mosquitto
//!                       # (and rumqttd if on PATH); writes docs/BENCHMARKS.md
//! ```
//!
//! Scenarios:
//! - `fan-in`: 8 publishers on `bench/<run>/in/<i>`, one subscriber on `bench/<run>/in/+`.
//! - `fan-out`: 1 publisher, 100 subscribers on the same topic.
//! - `pairs`: 50 publisher/subscriber pairs on distinct topics.
//! - `idle`: `--connections` (10,000) connections that only CONNECT (with
//!   `--idle-subscribe` also SUBSCRIBE to a topic each; `--keep-alive`,
//!   `--persistent`, `--source-addrs` for more than ~28,000); reports
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
//! limited to `--window` publishes without PUBACK.) Closed-loop latency is
//! therefore queueing at saturation, not latency at a given load.
//!
//! Open loop (`--rate N`, fan-in / fan-out / pairs, QoS 0 and 1): the
//! publishers share N messages per second evenly; publisher `i` of `P` sends
//! its message `k` at `i / N + k * P / N` s after the start (the publishers
//! interleave, so the broker sees one evenly spaced stream). A publisher that
//! falls behind sends everything due at once to catch up. The time in the
//! payload is the *due* time, not the time it went out, so a stalled broker
//! cannot hide latency by slowing the generator down (no coordinated
//! omission). The window no longer paces anything: `--window` (default
//! 100000 then) only bounds the messages a publisher may have undelivered,
//! and QoS 1 publishes without PUBACK are capped at `min(--window, 65535)`
//! (the packet ids); every wait for either bound counts in `window_stalls` /
//! `ack_stalls`, and any stall means the broker did not keep up with N.
//! tokio's timer has millisecond ticks and wakes a publisher up to ~1 ms
//! late; `send_lag_p50_us` / `send_lag_p99_us` report how late messages
//! actually went out (that lateness is part of the latency), and
//! `--spin-us 1000` waits the last millisecond before each due time by
//! yielding instead, which takes it out at the cost of a busy generator core.
//!
//! Each payload starts with the publisher id (u32 LE), a sequence number
//! (u64 LE) and the send time (open loop: the due time) in ns since the
//! run's start (u64 LE); subscribers derive end-to-end latency,
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
//! Output: one JSON object per run on stdout and a human-readable line on
//! stderr. For fan-in / fan-out / pairs: `msgs_per_s` (deliveries received
//! per measured second), `achieved_rate` (publishes sent per measured
//! second), `rate` (the `--rate` asked for; null in closed loop),
//! `p50_us` / `p99_us` / `p999_us` / `max_us` end-to-end latency, `loss`,
//! `duplicates`, `reordered`, and in open loop `window_stalls`, `ack_stalls`
//! and `send_lag_p50_us` / `send_lag_p99_us` (null in closed loop).

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

/// Closed-loop (or, with --rate, fixed-rate) MQTT load generator.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Subscribers (and `--watch`) connect to this port of `--host` instead
    /// of `--port`: publishers on one cluster node, subscribers on another
    /// (bench/cluster.sh). The run then waits `--sub-settle` seconds after
    /// subscribing, for the subscriptions to reach every node.
    #[arg(long, value_name = "PORT")]
    pub sub_port: Option<u16>,
    #[arg(long, default_value_t = 1.0)]
    pub sub_settle: f64,
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
    /// Messages per publisher published but not yet delivered everywhere
    /// (default 64). With `--rate` only a bound on memory (default 100000):
    /// every wait for it counts in `window_stalls`.
    #[arg(long)]
    pub window: Option<usize>,
    /// Open loop: publish this many messages per second in total, shared
    /// evenly by the publishers, each on a fixed schedule (fan-in, fan-out,
    /// pairs). Default: closed loop.
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,
    /// With `--rate`: wait for the last this many microseconds before each
    /// due time by yielding (busy) instead of on tokio's timer, which wakes
    /// up to ~1 ms late (`send_lag_*` in the output). 1000 takes the timer's
    /// lateness out of the latency, at the cost of a generator core kept busy.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub spin_us: u64,
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
    /// `idle`: each connection also subscribes to a topic of its own
    /// (`<prefix>/<run>/idle/<i>`, at `--qos`) before it goes idle.
    #[arg(long)]
    pub idle_subscribe: bool,
    /// `idle`: the keep-alive each connection asks for (seconds; 0: none).
    /// The run pings every connection once after the measurement, so keep
    /// it above the time the run takes.
    #[arg(long, default_value_t = 0)]
    pub keep_alive: u16,
    /// `idle`: persistent sessions (3.1.1 clean session 0; 5.0 clean start 0
    /// and a session expiry that never ends) instead of clean ones.
    #[arg(long)]
    pub persistent: bool,
    /// `idle`: spread the connections over this many source addresses
    /// 127.0.0.1, 127.0.0.2, ... (one address has about 28,000 ephemeral
    /// ports towards one broker port; 100,000 connections need 4).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addrs: u8,
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

/// `--window` without `--rate`.
pub const CLOSED_WINDOW: usize = 64;
/// `--window` with `--rate`: a bound on memory when the broker falls behind,
/// not a pace (at 10,000 msgs/s, more than 10 s of messages even for fan-in).
pub const OPEN_WINDOW: usize = 100_000;
/// Largest `--window` with `--rate`.
const OPEN_WINDOW_MAX: usize = 10_000_000;

impl Args {
    /// `--window` or its default for the mode.
    pub fn window(&self) -> usize {
        self.window.unwrap_or(if self.rate.is_some() {
            OPEN_WINDOW
        } else {
            CLOSED_WINDOW
        })
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(&args) {
        eprintln!("midge-bench: error: {e:#}");
        println!(
            "{{\"broker\":{},\"scenario\":\"{}\",\"qos\":{},\"payload\":{},\"rate\":{},\"error\":{}}}",
            json_str(&args.label),
            args.scenario.name(),
            args.qos,
            args.payload,
            json_opt(args.rate),
            json_str(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

fn real_main(args: &Args) -> Result<()> {
    if args.payload < load::HEADER {
        bail!("--payload must be at least {} bytes", load::HEADER);
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be positive");
        }
        if !matches!(
            args.scenario,
            Scenario::FanIn | Scenario::FanOut | Scenario::Pairs
        ) {
            bail!("--rate applies to fan-in, fan-out and pairs only");
        }
        if args.window() == 0 || args.window() > OPEN_WINDOW_MAX {
            bail!("--window must be in 1..={OPEN_WINDOW_MAX} with --rate");
        }
    } else if args.window() == 0 || args.window() > 65_535 {
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
            "{{{common},\"connections\":{},\"subscribed\":{},\"keep_alive\":{},\"persistent\":{},\
             \"connect_s\":{:.3},\"connects_per_s\":{:.0},\
             \"rss_before_kib\":{},\"rss_after_kib\":{},\"kib_per_conn\":{},\"alive\":{}}}",
            r.connections,
            args.idle_subscribe,
            args.keep_alive,
            args.persistent,
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
                args.window(),
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
            return Ok(());
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
                args.window(),
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
    println!("{}", load_json(args, &common, &r));
    eprintln!("{}", load_line(args, &who, &r));
    if r.window_stalls.unwrap_or(0) + r.ack_stalls.unwrap_or(0) > 0 {
        eprintln!(
            "midge-bench: the broker did not keep up with {} msg/s: publishers waited {} times \
             for the window bound ({} per publisher) and {} times for PUBACKs",
            args.rate.unwrap_or_default(),
            r.window_stalls.unwrap_or(0),
            args.window(),
            r.ack_stalls.unwrap_or(0)
        );
    }
    if args.qos == 1 && r.loss > 0 {
        eprintln!("midge-bench: {} QoS 1 messages were lost", r.loss);
        std::process::exit(2);
    }
    Ok(())
}

/// The JSON object of a fan-in / fan-out / pairs run.
fn load_json(args: &Args, common: &str, r: &load::LoadReport) -> String {
    let us = |v: Option<f64>| json_opt(v.map(|v| format!("{v:.1}")));
    format!(
        "{{{common},\"qos\":{},\"payload\":{},\"duration_s\":{},\"window\":{},\
         \"rate\":{},\"achieved_rate\":{:.0},\"window_stalls\":{},\"ack_stalls\":{},\
         \"send_lag_p50_us\":{},\"send_lag_p99_us\":{},\
         \"publishers\":{},\"subscribers\":{},\"sent\":{},\"acked\":{},\"delivered\":{},\
         \"measured\":{},\"msgs_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\
         \"p999_us\":{:.1},\"max_us\":{:.1},\"loss\":{},\"duplicates\":{},\"reordered\":{},\
         \"unexpected\":{},\"expired\":{},\"drained\":{},\"broker_cpu_pct\":{},\
         \"broker_rss_kib\":{},\"json\":{},\"watched\":{}}}",
        args.qos,
        args.payload,
        args.duration,
        args.window(),
        json_opt(args.rate),
        r.achieved_rate,
        json_opt(r.window_stalls),
        json_opt(r.ack_stalls),
        us(r.send_lag_p50_us),
        us(r.send_lag_p99_us),
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
        us(r.broker_cpu_pct),
        json_opt(r.broker_rss_kib),
        args.json,
        json_opt(r.watched),
    )
}

/// The human-readable line of a fan-in / fan-out / pairs run.
fn load_line(args: &Args, who: &str, r: &load::LoadReport) -> String {
    let rate = match args.rate {
        Some(rate) => format!(
            " at {rate} msg/s: {:.0} msg/s published (send lag p99 {} us, stalls {}),",
            r.achieved_rate,
            opt_str(r.send_lag_p99_us.map(|v| format!("{v:.0}"))),
            r.window_stalls.unwrap_or(0) + r.ack_stalls.unwrap_or(0),
        ),
        None => ":".to_string(),
    };
    format!(
        "{who} {} qos{} {}B{}{rate} {:.0} msg/s delivered, p50 {:.0} us, p99 {:.0} us, \
         p999 {:.0} us, loss {}, dup {}, reordered {} (sent {}, delivered {}, broker CPU {}%){}",
        args.scenario.name(),
        args.qos,
        args.payload,
        if args.json { " json" } else { "" },
        r.msgs_per_s,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.loss,
        r.duplicates,
        r.reordered,
        r.sent,
        r.delivered,
        opt_str(r.broker_cpu_pct.map(|v| format!("{v:.0}"))),
        r.watched
            .map(|n| format!(", watched {n}"))
            .unwrap_or_default(),
    )
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
        args.window(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["midge-bench", "--scenario", "fan-in"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    fn report(open_loop: bool) -> load::LoadReport {
        load::LoadReport {
            publishers: 8,
            subscribers: 1,
            sent: 60_000,
            acked: 60_000,
            delivered: 60_000,
            measured: 49_990,
            msgs_per_s: 9_998.0,
            p50_us: 61.44,
            p99_us: 120.5,
            p999_us: 310.0,
            max_us: 2_000.0,
            achieved_rate: 9_999.6,
            window_stalls: open_loop.then_some(0),
            ack_stalls: open_loop.then_some(2),
            send_lag_p50_us: open_loop.then_some(3.25),
            send_lag_p99_us: open_loop.then_some(40.0),
            loss: 0,
            duplicates: 0,
            reordered: 0,
            unexpected: 0,
            expired: 0,
            drained: true,
            broker_cpu_pct: Some(12.34),
            broker_rss_kib: None,
            watched: None,
        }
    }

    #[test]
    fn window_defaults_depend_on_the_mode() {
        assert_eq!(args(&[]).window(), CLOSED_WINDOW);
        assert_eq!(args(&["--rate", "10000"]).window(), OPEN_WINDOW);
        assert_eq!(args(&["--rate", "10000", "--window", "8"]).window(), 8);
        assert_eq!(args(&["--window", "8"]).window(), 8);
        assert_eq!(args(&["--rate", "2500.5"]).rate, Some(2500.5));
    }

    #[test]
    fn open_loop_output_has_rate_achieved_rate_and_stalls() {
        let a = args(&["--rate", "10000", "--qos", "1", "--label", "midge"]);
        let json = load_json(&a, "\"broker\":\"midge\"", &report(true));
        let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
        assert_eq!(v["rate"], 10000.0);
        assert_eq!(v["achieved_rate"], 10000.0);
        assert_eq!(v["window"], 100_000);
        assert_eq!(v["window_stalls"], 0);
        assert_eq!(v["ack_stalls"], 2);
        assert_eq!(v["send_lag_p50_us"], 3.2);
        assert_eq!(v["send_lag_p99_us"], 40.0);
        assert_eq!(v["p50_us"], 61.4);
        assert_eq!(v["p99_us"], 120.5);
        assert_eq!(v["p999_us"], 310.0);
        assert_eq!(v["max_us"], 2000.0);
        assert_eq!(v["loss"], 0);
        assert_eq!(v["duplicates"], 0);
        assert_eq!(v["msgs_per_s"], 9998);
        assert_eq!(v["broker_cpu_pct"], 12.3);
        assert!(v["broker_rss_kib"].is_null());
        let line = load_line(&a, "midge", &report(true));
        assert!(
            line.starts_with("midge fan-in qos1 64B at 10000 msg/s: 10000 msg/s published"),
            "{line}"
        );
        assert!(line.contains("p999 310 us"), "{line}");
        assert!(line.contains("stalls 2"), "{line}");
    }

    #[test]
    fn closed_loop_output_has_null_rate() {
        let a = args(&[]);
        let json = load_json(&a, "\"broker\":\"\"", &report(false));
        let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
        assert!(v["rate"].is_null());
        assert!(v["window_stalls"].is_null());
        assert!(v["send_lag_p99_us"].is_null());
        assert_eq!(v["achieved_rate"], 10000.0);
        assert_eq!(v["window"], 64);
        let line = load_line(&a, "x", &report(false));
        assert!(
            line.starts_with("x fan-in qos0 64B: 9998 msg/s delivered"),
            "{line}"
        );
    }
}
