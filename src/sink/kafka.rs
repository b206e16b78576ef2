//! Kafka through librdkafka: an idempotent producer (acks=all, ordered per
//! partition, no duplicates from its own retries), one key per origin so an
//! origin stays in one partition, delivery reports routed back to the sink
//! by an opaque token (frame, record index) with no allocation per record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use super::broker::{bounded, BusError, Limits, Op};
use super::records::Batch;
use super::{Ack, Outcome};
use crate::config::{KafkaConfig, SinkConfig};
use crate::metrics::Metrics;

/// A librdkafka idempotent producer for one sink; delivery reports come back as [`Ack`]s.
pub struct Kafka {
    producer: Arc<ThreadedProducer<Reports>>,
    topic: String,
    limits: Limits,
}

/// Where librdkafka's threads report deliveries and errors.
pub struct Reports {
    tx: UnboundedSender<Ack>,
    sink: String,
    metrics: Metrics,
    session: u32,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // A broker that comes back may not know this producer any more
            // (its idempotence state, its topics): librdkafka then waits
            // without end. A new producer, made once a broker answers
            // again, starts clean from the acknowledged positions.
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.metrics.sink.sink_connected.with_label_values(&[&self.sink]).set(0);
                let _ = self.tx.send(Ack::broken(
                    self.session,
                    "disconnected",
                    format!("no Kafka broker reachable ({reason}); records wait on disk"),
                ));
            }
            Some(RDKafkaErrorCode::Fatal) => {
                let _ = self.tx.send(Ack::broken(self.session, "fatal", format!("fatal producer error: {reason}")));
            }
            // One per failed dial: what the sink says about being
            // disconnected is the line an operator needs.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                debug!(sink = %self.sink, error = %error, %reason, "kafka broker connection failed")
            }
            _ => warn!(sink = %self.sink, error = %error, %reason, "kafka client error"),
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err((e, m)) => match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                    Outcome::UnknownTopic(rdkafka::Message::topic(m).to_owned())
                }
                _ => classify(e),
            },
        };
        let _ = self.tx.send(Ack { token: (opaque >> 32) as u32, idx: opaque as u32, outcome });
    }
}

/// Refusals that sending again cannot cure go to the dead-letter file;
/// everything else (timeouts, leaders moving, brokers down) is retried.
fn classify(e: &KafkaError) -> Outcome {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Outcome::Refused("too_large"),
        Some(C::InvalidMessage | C::InvalidRecord) => Outcome::Refused("invalid"),
        Some(C::InvalidTopic) => Outcome::Refused("invalid_topic"),
        Some(C::MessageTimedOut) => Outcome::Retry("timeout", e.to_string()),
        Some(_) => Outcome::Retry("delivery_failed", e.to_string()),
        None => Outcome::Retry("delivery_failed", e.to_string()),
    }
}

impl Kafka {
    /// Create the producer and check that a broker answers (metadata).
    pub async fn connect(
        sink: &SinkConfig,
        k: &KafkaConfig,
        tx: UnboundedSender<Ack>,
        metrics: &Metrics,
        limits: Limits,
        session: u32,
    ) -> Result<Kafka, BusError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", k.brokers.join(","))
            .set("client.id", format!("ferry-{}", sink.name))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.codec", &k.compression)
            // The archive's own level: the bus gets the same speed/size trade.
            .set("compression.level", "1")
            .set("linger.ms", "10")
            .set("batch.num.messages", "100000")
            .set("batch.size", "4000000")
            .set("message.timeout.ms", k.message_timeout.as_millis().to_string())
            // librdkafka reconnects by itself: as promptly as the sink would
            // (its own default backs off to 10 s).
            .set("reconnect.backoff.ms", sink.backoff_min.as_millis().max(1).to_string())
            .set("reconnect.backoff.max.ms", sink.backoff_max.as_millis().max(1).to_string())
            // The sink's own in-flight limit is the real bound; librdkafka's
            // queue only has to hold it.
            .set("queue.buffering.max.messages", (sink.max_in_flight * 2).max(100_000).to_string())
            .set("queue.buffering.max.kbytes", ((sink.max_in_flight_bytes / 1024) * 2).max(65_536).to_string());
        if let Some(m) = sink.max_message_bytes {
            c.set("message.max.bytes", m.to_string());
        }
        for (key, v) in &k.options {
            c.set(key, v);
        }
        let reports = Reports { tx, sink: sink.name.clone(), metrics: metrics.clone(), session };
        let producer: ThreadedProducer<Reports> =
            c.create_with_context(reports).map_err(|source| BusError::Kafka { op: Op::Connect, source })?;
        let producer = Arc::new(producer);
        let p = producer.clone();
        // librdkafka bounds its own wait; the outer bound covers the blocking pool.
        let wait = limits.connect;
        let meta = bounded(Op::Metadata, wait + Duration::from_secs(1), async move {
            tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, wait).map(|m| m.brokers().len()))
                .await
                .expect("metadata task")
                .map_err(|source| BusError::Kafka { op: Op::Metadata, source })
        })
        .await;
        let kafka = Kafka { producer, topic: k.topic.clone(), limits };
        match meta {
            Ok(n) => info!(sink = %sink.name, brokers = n, "connected to Kafka"),
            Err(e) => {
                kafka.close().await;
                return Err(e);
            }
        }
        Ok(kafka)
    }

    /// Hand every record of `batch` to librdkafka. Refusals at the door (a
    /// record too large for `message.max.bytes`) come back at once; the
    /// rest are answered by delivery reports carrying `token`.
    ///
    /// Bounded by `request_timeout`: a queue that stays full that long (the
    /// broker takes nothing) is a timeout, not a wait without end.
    pub async fn publish(&self, batch: Arc<Batch>, token: u32) -> Result<Vec<(u32, Outcome)>, BusError> {
        let producer = self.producer.clone();
        let topic = batch.origin.render(&self.topic);
        let limit = self.limits.request;
        bounded(Op::Produce, limit + Duration::from_secs(1), async move {
            tokio::task::spawn_blocking(move || produce(&producer, &topic, &batch, token, limit))
                .await
                .expect("produce task")
        })
        .await
    }

    /// Stop: queued records are purged (their reports are ignored: the
    /// sink starts again from its acknowledged positions). librdkafka's
    /// teardown is waited for at most `request_timeout`.
    pub async fn close(self) {
        let producer = self.producer;
        let _ = tokio::time::timeout(self.limits.request, tokio::task::spawn_blocking(move || drop(producer))).await;
    }
}

fn produce(
    producer: &ThreadedProducer<Reports>,
    topic: &str,
    batch: &Batch,
    token: u32,
    limit: Duration,
) -> Result<Vec<(u32, Outcome)>, BusError> {
    let deadline = Instant::now() + limit;
    let o = &batch.origin;
    let mut refused = Vec::new();
    let mut seq_buf = itoa_buf();
    let received = batch.last_ms.to_string();
    for i in 0..batch.len() {
        if batch.skipped(i) {
            continue;
        }
        let seq = batch.seq(i);
        let seq_s = fmt_u64(&mut seq_buf, seq);
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: "site", value: Some(o.site.as_str()) })
            .insert(Header { key: "node", value: Some(o.node.as_str()) })
            .insert(Header { key: "stream", value: Some(o.stream.as_str()) })
            .insert(Header { key: "seq", value: Some(seq_s) })
            .insert(Header { key: "received_ms", value: Some(received.as_str()) });
        let mut record = BaseRecord::with_opaque_to(topic, ((token as usize) << 32) | i)
            .key(o.key.as_str())
            .payload(batch.record(i))
            .timestamp(batch.last_ms)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Only when librdkafka's queue is fuller than the sink's
                    // own limit allows: let its thread drain it.
                    record = r;
                    if Instant::now() >= deadline {
                        return Err(BusError::Timeout { op: Op::Produce, limit });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => match classify(&e) {
                    Outcome::Refused(why) => {
                        refused.push((i as u32, Outcome::Refused(why)));
                        break;
                    }
                    _ => return Err(BusError::Kafka { op: Op::Produce, source: e }),
                },
            }
        }
    }
    Ok(refused)
}

fn itoa_buf() -> String {
    String::with_capacity(20)
}

fn fmt_u64(buf: &mut String, n: u64) -> &str {
    use std::fmt::Write;
    buf.clear();
    let _ = write!(buf, "{n}");
    buf.as_str()
}
