//! The Kafka producer behind plugins' `kafka` capability.
//!
//! One librdkafka producer per broker, configured by `[plugins.kafka]`.
//! `produce` hands a record to librdkafka's queue and returns at once (the
//! plugin call never waits for the network); librdkafka batches
//! (`linger.ms`), retries and reports each delivery on its own polling
//! thread ([`ThreadedProducer`]), where the outcome is counted and a failure
//! logged with its topic. Shutdown flushes the queue, bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use midge_plugin::{BoxFuture, KafkaBackend, KafkaConfig, KafkaError};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tracing::{debug, error, info, warn};

/// A `[plugins.kafka]` setting librdkafka refused.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KafkaSetupError {
    /// The configuration key, e.g. `plugins.kafka.properties.acks`.
    pub field: String,
    /// librdkafka's reason.
    pub message: String,
}

/// Counters of the producer (read by `/metrics`).
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Records accepted into the producer's queue.
    pub produced: AtomicU64,
    /// Records acknowledged by Kafka.
    pub delivered: AtomicU64,
    /// Records that failed for good (after librdkafka's retries).
    pub failed: AtomicU64,
    /// Records refused at `produce` because the queue was full.
    pub queue_full: AtomicU64,
}

/// Delivery reports and librdkafka's logs, on the producer's own thread.
#[derive(Debug, Default)]
struct Context {
    stats: Arc<KafkaStats>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "midge::kafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => warn!(target: "midge::kafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "midge::kafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "midge::kafka", fac, "{message}"),
        }
    }

    fn error(&self, error: RdError, reason: &str) {
        warn!(target: "midge::kafka", %error, "kafka producer: {reason}");
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, message)) => {
                let n = self.stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
                // The first failures each, then one line per thousand: a
                // Kafka outage must not flood the log.
                if n <= 10 || n.is_multiple_of(1000) {
                    warn!(
                        target: "midge::kafka",
                        topic = message.topic(),
                        error = %e,
                        failed_total = n,
                        "kafka record not delivered"
                    );
                }
            }
        }
    }
}

/// Keys `[plugins.kafka]` sets from its own fields (not through `properties`).
const MANAGED: [(&str, &str); 3] = [
    ("bootstrap.servers", "brokers"),
    ("linger.ms", "linger_ms"),
    ("queue.buffering.max.messages", "queue_capacity"),
];

/// The producer; one per broker.
pub struct KafkaProducer {
    producer: ThreadedProducer<Context>,
    stats: Arc<KafkaStats>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("stats", &self.stats)
            .finish()
    }
}

impl KafkaProducer {
    /// Builds the producer from `[plugins.kafka]`. Connecting is
    /// asynchronous: an unreachable cluster is not an error here (records
    /// then fail after `message.timeout.ms`, counted and logged), a setting
    /// librdkafka refuses is, naming its key.
    pub fn new(config: &KafkaConfig) -> Result<KafkaProducer, KafkaSetupError> {
        let cc = client_config(config)?;
        let stats = Arc::new(KafkaStats::default());
        let context = Context {
            stats: stats.clone(),
        };
        let producer = cc
            .create_with_context::<_, ThreadedProducer<Context>>(context)
            .map_err(|e| setup_error(config, e))?;
        Ok(KafkaProducer { producer, stats })
    }

    /// Checks `[plugins.kafka]` as [`KafkaProducer::new`] would, without
    /// starting a producer (`midge check`).
    pub fn check(config: &KafkaConfig) -> Result<(), KafkaSetupError> {
        client_config(config)?
            .create_native_config()
            .map(drop)
            .map_err(|e| setup_error(config, e))
    }

    /// The counters.
    pub fn stats(&self) -> &KafkaStats {
        &self.stats
    }

    /// Records queued or in flight (not yet delivered or failed).
    pub fn queue_depth(&self) -> u64 {
        u64::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Waits (at most `timeout`) until every queued record is delivered or
    /// failed. Blocking: call it from a blocking thread.
    pub fn flush(&self, timeout: Duration) {
        let left = self.queue_depth();
        if left == 0 {
            return;
        }
        match self.producer.flush(timeout) {
            Ok(()) => info!(records = left, "kafka producer flushed"),
            Err(e) => warn!(
                error = %e,
                undelivered = self.queue_depth(),
                "kafka producer not flushed within {timeout:?}"
            ),
        }
    }

    /// Queues one record; never waits for the network.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in headers {
                h = h.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            record = record.headers(h);
        }
        match self.producer.send(record) {
            Ok(()) => {
                self.stats.produced.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((e, _)) => Err(produce_error(topic, e, &self.stats)),
        }
    }
}

/// The librdkafka configuration of `[plugins.kafka]` (not yet checked by
/// librdkafka).
fn client_config(config: &KafkaConfig) -> Result<ClientConfig, KafkaSetupError> {
    if config.queue_capacity == 0 {
        return Err(KafkaSetupError {
            field: "plugins.kafka.queue_capacity".into(),
            message: "must be at least 1".into(),
        });
    }
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("linger.ms", config.linger_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            config.queue_capacity.to_string(),
        );
    for (key, value) in &config.properties {
        if let Some((_, field)) = MANAGED.iter().find(|(k, _)| k == key) {
            return Err(KafkaSetupError {
                field: format!("plugins.kafka.properties.{key}"),
                message: format!("set by plugins.kafka.{field}; remove it from properties"),
            });
        }
        cc.set(key, value);
    }
    Ok(cc)
}

/// librdkafka's answer to `produce` as the plugin's `kafka-error`.
fn produce_error(topic: &str, e: RdError, stats: &KafkaStats) -> KafkaError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => {
            stats.queue_full.fetch_add(1, Ordering::Relaxed);
            KafkaError::QueueFull
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => KafkaError::TooLarge,
        _ => KafkaError::Unavailable(format!("kafka topic {topic}: {e}")),
    }
}

/// Names the `[plugins.kafka]` key behind a librdkafka configuration error.
fn setup_error(config: &KafkaConfig, e: RdError) -> KafkaSetupError {
    match e {
        RdError::ClientConfig(_, desc, key, _) => {
            let field = match MANAGED.iter().find(|(k, _)| *k == key) {
                Some((_, field)) => format!("plugins.kafka.{field}"),
                None if config.properties.contains_key(&key) => {
                    format!("plugins.kafka.properties.{key}")
                }
                None => format!("plugins.kafka ({key})"),
            };
            KafkaSetupError {
                field,
                message: desc,
            }
        }
        other => KafkaSetupError {
            field: "plugins.kafka".into(),
            message: other.to_string(),
        },
    }
}

impl KafkaBackend for KafkaProducer {
    fn produce<'a>(
        &'a self,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        let result = self.send(&topic, key.as_deref(), &payload, &headers);
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use std::collections::BTreeMap;
    use std::time::Instant;

    fn config(brokers: &str, properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            linger_ms: 5,
            queue_capacity: 100_000,
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Polls (bounded) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn records_are_delivered_and_counted() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("archive", 1, 1).unwrap();
        let p = KafkaProducer::new(&config(&cluster.bootstrap_servers(), &[])).unwrap();
        for i in 0..100u32 {
            let headers = vec![("h".to_string(), b"v".to_vec())];
            p.send("archive", Some(b"k"), &i.to_be_bytes(), &headers)
                .unwrap();
        }
        assert_eq!(p.stats().produced.load(Ordering::Relaxed), 100);
        p.flush(Duration::from_secs(30));
        eventually("100 deliveries", || {
            p.stats().delivered.load(Ordering::Relaxed) == 100
        });
        assert_eq!(p.stats().failed.load(Ordering::Relaxed), 0);
        assert_eq!(p.queue_depth(), 0);
    }

    #[test]
    fn a_full_queue_answers_queue_full() {
        // A 10 s linger keeps the first record queued; the second does not fit.
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("archive", 1, 1).unwrap();
        let mut c = config(&cluster.bootstrap_servers(), &[]);
        c.queue_capacity = 1;
        c.linger_ms = 10_000;
        let p = KafkaProducer::new(&c).unwrap();
        p.send("archive", None, b"one", &[]).unwrap();
        let r = p.send("archive", None, b"two", &[]);
        assert!(matches!(r, Err(KafkaError::QueueFull)), "{r:?}");
        assert_eq!(p.stats().queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(p.stats().produced.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_oversized_record_answers_too_large() {
        let cluster = MockCluster::new(1).unwrap();
        let p = KafkaProducer::new(&config(
            &cluster.bootstrap_servers(),
            &[("message.max.bytes", "1000")],
        ))
        .unwrap();
        let r = p.send("archive", None, &[0u8; 5000], &[]);
        assert!(matches!(r, Err(KafkaError::TooLarge)), "{r:?}");
    }

    #[test]
    fn undeliverable_records_are_counted_as_failed() {
        // A port nothing listens on; records expire after 200 ms.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = KafkaProducer::new(&config(
            &format!("127.0.0.1:{port}"),
            &[("message.timeout.ms", "200")],
        ))
        .unwrap();
        for _ in 0..3 {
            p.send("archive", None, b"lost", &[]).unwrap();
        }
        eventually("3 failures", || {
            p.stats().failed.load(Ordering::Relaxed) == 3
        });
        assert_eq!(p.stats().delivered.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_bad_property_names_its_key() {
        let e =
            KafkaProducer::new(&config("127.0.0.1:9", &[("no.such.property", "1")])).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.properties.no.such.property");
        let e = KafkaProducer::new(&config("127.0.0.1:9", &[("acks", "sometimes")])).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.properties.acks");
        assert!(e.to_string().starts_with("plugins.kafka.properties.acks: "));
        let e = KafkaProducer::new(&config("127.0.0.1:9", &[("linger.ms", "1")])).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.properties.linger.ms");
        let mut c = config("127.0.0.1:9", &[]);
        c.queue_capacity = 0;
        let e = KafkaProducer::new(&c).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.queue_capacity");
        // Beyond librdkafka's range (at most 900000 ms).
        let mut c = config("127.0.0.1:9", &[]);
        c.linger_ms = 10_000_000;
        let e = KafkaProducer::new(&c).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.linger_ms");
        // `midge check` finds the same without starting a producer.
        let e = KafkaProducer::check(&c).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.linger_ms");
        let e = KafkaProducer::check(&config("127.0.0.1:9", &[("acks", "sometimes")])).unwrap_err();
        assert_eq!(e.field, "plugins.kafka.properties.acks");
        KafkaProducer::check(&config("127.0.0.1:9", &[("acks", "all")])).unwrap();
    }
}
