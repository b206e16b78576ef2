//! The broker behind a sink, with every call bounded in time.
//!
//! A broker that restarts, boots slowly or stops answering must never hold
//! a sink silently: each await on the broker (connect, channel open,
//! confirm mode, declare, publish, produce, metadata, close) goes through
//! [`bounded`], and an expiry is a [`BusError::Timeout`] naming the
//! operation, which the sink handles like any broker failure (logged,
//! counted as `timeout`, backoff, reconnect). What no single call can
//! bound — acknowledgements that never come — is the watchdog's
//! ([`super::watchdog`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

#[cfg(feature = "kafka")]
use super::kafka;
use super::rabbitmq;
use super::records::Batch;
use super::{Ack, Outcome};
use crate::config::{BusConfig, SinkConfig};
use crate::metrics::Metrics;

/// A broker operation, as logs and errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Connect,
    OpenChannel,
    ConfirmSelect,
    Declare,
    Publish,
    Produce,
    Metadata,
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
    #[error("{op}: no answer from the broker within {limit:?}")]
    Timeout { op: Op, limit: Duration },
    #[error("{op}: {source}")]
    Rabbit {
        op: Op,
        #[source]
        source: lapin::Error,
    },
    #[cfg(feature = "kafka")]
    #[error("{op}: {source}")]
    Kafka {
        op: Op,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The connection is unusable for a reason the broker gave in words.
    #[error("{0}")]
    Broken(String),
    #[error("{}", super::NO_KAFKA)]
    NoKafka,
}

impl BusError {
    /// The `reason` label of `ferry_sink_errors_total`.
    pub fn reason(&self) -> &'static str {
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

/// A connected broker.
pub enum Bus {
    #[cfg(feature = "kafka")]
    Kafka(kafka::Kafka),
    Rabbit(Box<rabbitmq::Rabbit>),
}

impl Bus {
    /// Connect; `session` stamps this connection's reports of breakage.
    pub async fn connect(
        cfg: &SinkConfig,
        tx: mpsc::UnboundedSender<Ack>,
        metrics: &Metrics,
        careful: usize,
        session: u32,
    ) -> Result<Bus, BusError> {
        let limits = Limits::of(cfg);
        match &cfg.bus {
            #[cfg(feature = "kafka")]
            BusConfig::Kafka(k) => kafka::Kafka::connect(cfg, k, tx, metrics, limits, session).await.map(Bus::Kafka),
            #[cfg(not(feature = "kafka"))]
            BusConfig::Kafka(_) => {
                let _ = (tx, metrics, session);
                Err(BusError::NoKafka)
            }
            BusConfig::RabbitMq(r) => {
                let _ = metrics;
                let mut b = rabbitmq::Rabbit::connect(&cfg.name, r, tx, limits).await?;
                b.careful = careful;
                Ok(Bus::Rabbit(Box::new(b)))
            }
        }
    }

    /// Publish a batch; refusals known at once come back here, the rest
    /// as [`Ack`]s carrying `token`.
    pub async fn publish(&mut self, batch: Arc<Batch>, token: u32) -> Result<Vec<(u32, Outcome)>, BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Bus::Kafka(k) => k.publish(batch, token).await,
            Bus::Rabbit(r) => r.publish(batch, token).await,
        }
    }

    pub fn take_broken(&mut self) -> Option<BusError> {
        match self {
            #[cfg(feature = "kafka")]
            Bus::Kafka(_) => None,
            Bus::Rabbit(r) => r.take_broken(),
        }
    }

    /// Close, waiting at most `request_timeout` for the broker's answer;
    /// a broker that does not answer is simply let go.
    pub async fn close(self) {
        match self {
            #[cfg(feature = "kafka")]
            Bus::Kafka(k) => k.close().await,
            Bus::Rabbit(r) => r.close().await,
        }
    }
}
