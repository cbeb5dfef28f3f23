//! The `idle` scenario: many connections that only CONNECT (and, with
//! `--idle-subscribe`, SUBSCRIBE to a topic of their own), to measure
//! connection setup rate and the broker's memory per idle connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::BytesMut;
use midge_protocol::{Packet, QoS, Version};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout_at, Instant};

use crate::client::{self, Reader, Writer};
use crate::{procfs, Args};

/// Bound on each connection's TCP connect, CONNACK and SUBACK.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// Result of one idle run.
#[derive(Debug)]
pub struct IdleReport {
    pub connections: usize,
    pub connect_secs: f64,
    pub connects_per_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_conn: Option<f64>,
    /// Connections that still answered a PINGREQ after the measurement.
    pub alive: usize,
}

pub async fn run(args: &Args, addr: SocketAddr, version: Version) -> Result<IdleReport> {
    let n = args.connections;
    let rss_before = match args.broker_pid {
        Some(pid) => Some(procfs::rss_kib(pid)?),
        None => None,
    };
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    let start = Instant::now();
    let run_id = std::process::id();
    let sources = args.source_addrs;
    let keep_alive = args.keep_alive;
    let clean_start = !args.persistent;
    let subscribe = args.idle_subscribe;
    let qos = if args.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let prefix = args.prefix.clone();
    for i in 0..n {
        let gate = gate.clone();
        let prefix = prefix.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.context("connect gate closed")?;
            let conn = async {
                let stream = if sources > 1 {
                    // 127.0.0.1, 127.0.0.2, ... in turn.
                    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources)) as u8);
                    client::tcp_connect_from(addr, source.into(), HANDSHAKE).await?
                } else {
                    client::tcp_connect(addr, HANDSHAKE).await?
                };
                let client_id = format!("{prefix}-{run_id}-idle{i}");
                let opts = client::ConnectOpts {
                    client_id: &client_id,
                    version,
                    // 0 by default: the broker must not expect pings from these.
                    keep_alive,
                    clean_start,
                    handshake_timeout: HANDSHAKE,
                };
                let (mut r, mut w, _) = client::handshake(stream, &opts).await?;
                if subscribe {
                    let filter = format!("{prefix}/{run_id}/idle/{i}");
                    client::subscribe(&mut r, &mut w, &filter, qos).await?;
                }
                r.shrink();
                w.buf = BytesMut::new();
                anyhow::Ok((r, w))
            };
            conn.await.with_context(|| format!("idle connection {i}"))
        });
    }
    let mut conns: Vec<(Reader, Writer)> = Vec::with_capacity(n);
    while let Some(res) = set.join_next().await {
        conns.push(res.context("connect task")??);
    }
    let connect_secs = start.elapsed().as_secs_f64();

    // Let the broker settle (allocator, lazily grown buffers) before reading RSS.
    sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_after = match args.broker_pid {
        Some(pid) => Some(procfs::rss_kib(pid)?),
        None => None,
    };

    // Check the connections are all still up: one PINGREQ each.
    for (_, w) in conns.iter_mut() {
        w.push(&Packet::PingReq);
        w.flush().await?;
    }
    let until = Instant::now() + Duration::from_secs(10);
    let mut alive = 0;
    for (r, _) in conns.iter_mut() {
        if let Ok(Ok(Packet::PingResp)) = timeout_at(until, r.next()).await {
            alive += 1;
        }
    }
    for (_, w) in conns {
        w.disconnect().await;
    }

    let kib_per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if n > 0 => Some((b as f64 - a as f64) / n as f64),
        _ => None,
    };
    Ok(IdleReport {
        connections: n,
        connect_secs,
        connects_per_s: n as f64 / connect_secs,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_conn,
        alive,
    })
}
