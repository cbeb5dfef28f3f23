//! `kafka-archive`: the throughput of archiving every message to Kafka
//! through a plugin (persist-kafka in Midge, `bench/kafka.sh` sets it up).
//!
//! `--publishers` QoS 1 publishers (closed loop, `--window` messages without
//! PUBACK each) publish `--messages` messages in total to
//! `bench/<prefix>/ka/<i>`; nobody subscribes. When every PUBACK is back the
//! generator polls the broker's Prometheus endpoint (`--metrics ADDR`, with
//! `--metrics-token`) until `midge_plugin_kafka_delivered_total` plus
//! `midge_plugin_kafka_failed_total` reach the acknowledged count, i.e. until
//! Kafka acknowledged (or refused) every record. The figure is
//! acknowledged messages / seconds from the first publish to that moment.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use midge_protocol::{ByteStr, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

use crate::client;
use crate::persist::{cpu_mark, cpu_since, queue_publisher, secs, QueuePub};
use crate::stats::Histogram;
use crate::Args;

/// Result of one `kafka-archive` run.
#[derive(Debug)]
pub struct ArchiveReport {
    pub publishers: usize,
    pub acked: u64,
    /// Seconds from the first publish to the last PUBACK.
    pub publish_s: f64,
    /// Seconds from the first publish until Kafka acknowledged every record.
    pub archived_s: f64,
    pub ack_p50_us: f64,
    pub ack_p99_us: f64,
    /// Records Kafka acknowledged / refused during the run (counter deltas).
    pub delivered: u64,
    pub failed: u64,
    pub broker_cpu_pct: Option<f64>,
}

/// The broker's Kafka counters: (produced, delivered, failed).
async fn kafka_counters(addr: SocketAddr, token: Option<&str>) -> Result<(u64, u64, u64)> {
    let mut s = timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("metrics: connect timed out")?
        .with_context(|| format!("metrics: connecting to {addr}"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut body))
        .await
        .context("metrics: read timed out")??;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("metrics: {}", text.lines().next().unwrap_or("empty answer"));
    }
    let get = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .with_context(|| format!("metrics: no {name} (is [plugins.kafka] configured?)"))?
            .trim()
            .parse::<f64>()
            .map(|v| v as u64)
            .with_context(|| format!("metrics: {name} is not a number"))
    };
    Ok((
        get("midge_plugin_kafka_produced_total")?,
        get("midge_plugin_kafka_delivered_total")?,
        get("midge_plugin_kafka_failed_total")?,
    ))
}

pub async fn kafka_archive(
    args: &Args,
    addr: SocketAddr,
    version: Version,
) -> Result<ArchiveReport> {
    let metrics = args
        .metrics
        .context("kafka-archive needs --metrics ADDR (the broker's admin listener)")?;
    let token = args.metrics_token.as_deref();
    if args.messages == 0 {
        bail!("kafka-archive needs --messages N");
    }
    let limit = Duration::from_secs_f64(args.timeout);
    let (_, delivered0, failed0) = kafka_counters(metrics, token).await?;

    let n = args.publishers.max(1);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{}-ka-p{i}", args.prefix);
        conns.push(client::connect(addr, &id, version, 60).await?);
    }
    let t0 = Instant::now();
    let cpu0 = cpu_mark(args.broker_pid);
    let claim = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for (i, (r, w)) in conns.into_iter().enumerate() {
        let cfg = QueuePub {
            id: i,
            topic: ByteStr::from(format!("bench/{}/ka/{i}", args.prefix).as_str()),
            window: args.window(),
            payload_len: args.payload,
            target: args.messages,
            deadline: t0 + limit,
            t0,
        };
        let claim = claim.clone();
        set.spawn(async move {
            queue_publisher(cfg, r, w, claim)
                .await
                .with_context(|| format!("publisher {i}"))
        });
    }
    let mut acked = 0;
    let mut hist = Histogram::default();
    while let Some(res) = set.join_next().await {
        let out = res.context("publisher task")??;
        acked += out.acked;
        hist.merge(&out.hist);
    }
    let publish_s = secs(t0.elapsed());

    // Until Kafka answered for every acknowledged message.
    let (delivered, failed) = loop {
        let (_, d, f) = kafka_counters(metrics, token).await?;
        let (d, f) = (d - delivered0.min(d), f - failed0.min(f));
        if d + f >= acked {
            break (d, f);
        }
        if t0.elapsed() > limit {
            bail!("after {limit:?}: Kafka acknowledged {d} and refused {f} of {acked} records");
        }
        sleep(Duration::from_millis(5)).await;
    };
    let archived_s = secs(t0.elapsed());
    Ok(ArchiveReport {
        publishers: n,
        acked,
        publish_s,
        archived_s,
        ack_p50_us: hist.quantile(0.50) as f64 / 1000.0,
        ack_p99_us: hist.quantile(0.99) as f64 / 1000.0,
        delivered,
        failed,
        broker_cpu_pct: cpu_since(args.broker_pid, cpu0),
    })
}
