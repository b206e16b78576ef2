//! What every broker client shares: the operations a sink awaits on a
//! broker, their errors, and the bound in time on each ([`bounded`]), so a
//! broker that stops answering is a [`BusError::Timeout`] naming the
//! operation, never a silent hold.

use std::future::Future;
use std::time::Duration;

use crate::config::SinkConfig;

/// A broker operation: what a [`BusError`] names, and which time limit it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// RabbitMQ: the AMQP connection. Kafka: the producer's creation.
    Connect,
    /// RabbitMQ: the channel on the connection.
    OpenChannel,
    /// RabbitMQ: switching the channel to publisher confirms.
    ConfirmSelect,
    /// RabbitMQ: declaring the (durable) exchange.
    Declare,
    /// RabbitMQ: one `basic.publish`.
    Publish,
    /// Kafka: handing a record to the producer.
    Produce,
    /// Kafka: the first metadata answer, which proves the brokers reachable.
    Metadata,
    /// Closing the connection at a stop (a label no call of this build reports yet).
    Close,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Connect => "connect",
            Op::OpenChannel => "channel open",
            Op::ConfirmSelect => "confirm select",
            Op::Declare => "exchange declare",
            Op::Publish => "publish",
            Op::Produce => "produce",
            Op::Metadata => "metadata",
            Op::Close => "close",
        })
    }
}

/// Why a broker call failed; the sink starts again from its acknowledged
/// positions after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker did not answer within the operation's limit.
    #[error("{op}: no answer from the broker within {limit:?}")]
    Timeout {
        /// What was being done.
        op: Op,
        /// The limit it exceeded.
        limit: Duration,
    },
    /// The RabbitMQ client failed.
    #[error("{op}: {source}")]
    Rabbit {
        /// What was being done.
        op: Op,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// librdkafka failed.
    #[cfg(feature = "kafka")]
    #[error("{op}: {source}")]
    Kafka {
        /// What was being done.
        op: Op,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The connection is unusable for a reason the broker gave in words.
    #[error("{0}")]
    Broken(String),
    /// A Kafka sink in a ferry built without the `kafka` feature.
    #[error("{}", super::NO_KAFKA)]
    NoKafka,
}

impl crate::metrics::Reason for BusError {
    /// The `reason` label of `ferry_sink_errors_total`.
    fn reason(&self) -> &'static str {
        match self {
            BusError::Timeout { .. } => "timeout",
            BusError::Rabbit { op: Op::Connect | Op::OpenChannel | Op::ConfirmSelect, .. } => "connect",
            #[cfg(feature = "kafka")]
            BusError::Kafka { op: Op::Connect | Op::Metadata, .. } => "connect",
            BusError::NoKafka => "connect",
            BusError::Rabbit { op: Op::Declare, .. } => "declare",
            _ => "publish",
        }
    }
}

/// Time limits of the broker calls (`connect_timeout`, `request_timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connection, channel and confirm mode, or a first metadata answer.
    pub connect: Duration,
    /// Every other call: declare, publish, produce, close.
    pub request: Duration,
}

impl Limits {
    /// The sink's `connect_timeout` and `request_timeout`.
    pub fn of(cfg: &SinkConfig) -> Limits {
        Limits { connect: cfg.connect_timeout, request: cfg.request_timeout }
    }
}

/// Await `fut` for at most `limit`; on expiry the future is dropped and
/// the operation reported as timed out.
pub async fn bounded<T>(
    op: Op,
    limit: Duration,
    fut: impl Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(BusError::Timeout { op, limit }),
    }
}
