//! Criterion bench of one warm `on-publish` call through the plugin host:
//! the shipped `transform` plugin reshaping a JSON payload (parse, add the
//! client id, serialize) and `test-misbehave` reversing the payload bytes
//! (the call and the copies in and out, little work in the guest), each
//! with a 64 B and a 4 KiB payload. Instances are warm (pooled), as in
//! the broker.
//!
//! Run: `cargo bench --workspace --bench on_publish` (add `-- --quick`).
//! Needs the wasm32-wasip2 target (the plugins are built on first use).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use midge_plugin::types::{ClientInfo, Message, ProtocolVersion};
use midge_plugin::{BatchItem, PluginConfig, PluginHost, PluginsConfig, Services};

fn json_payload(size: usize) -> Vec<u8> {
    let head = r#"{"temp":21.5,"hum":40,"pad":""#;
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

fn client() -> ClientInfo {
    ClientInfo {
        client_id: "bench-client".into(),
        username: None,
        peer_address: "127.0.0.1:50000".into(),
        protocol_version: ProtocolVersion::V5,
        superuser: false,
        attributes: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let Some(dir) = midge_plugin::testing::wasm_dir() else {
        eprintln!("wasm32-wasip2 target missing: nothing to measure");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut transform = PluginConfig::new("tx", dir.join("transform.wasm"));
    transform.config = serde_json::json!({
        "rules": [{ "filter": "bench/#", "add_client_id": "client" }]
    });
    let misbehave = PluginConfig::new("rev", dir.join("test_misbehave.wasm"));
    let who = client();
    let mut group = c.benchmark_group("on_publish");
    for (name, plugin) in [("transform", transform), ("reverse", misbehave)] {
        let config = PluginsConfig {
            plugins: vec![plugin],
            ..PluginsConfig::default()
        };
        let host = rt
            .block_on(PluginHost::load(&config, Services::default()))
            .unwrap();
        // One on-publish-batch call for 32 messages of one publisher (what
        // the broker does with PUBLISHes read together); criterion's
        // throughput line gives the cost per message.
        let batch: Vec<Message> = (0..32)
            .map(|_| Message::new("bench/topic", json_payload(64)))
            .collect();
        let items: Vec<BatchItem> = batch.iter().map(BatchItem::from).collect();
        group.throughput(criterion::Throughput::Elements(32));
        group.bench_function(format!("{name}/batch-32x64B"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::hint::black_box(host.on_publish_batch(&items, Some(&who)).await);
                    }
                    start.elapsed()
                })
            })
        });
        group.throughput(criterion::Throughput::Elements(1));
        for size in [64usize, 4096] {
            let m = Message::new("bench/topic", json_payload(size));
            group.bench_function(format!("{name}/{size}B"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            std::hint::black_box(host.on_publish(&m, Some(&who)).await);
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
