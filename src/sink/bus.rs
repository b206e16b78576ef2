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

use std::sync::Arc;

use tokio::sync::mpsc;

#[cfg(feature = "kafka")]
use super::kafka;
use super::rabbitmq;
use super::records::Batch;
use super::{Ack, Outcome};
use crate::config::{BusConfig, SinkConfig};
use crate::metrics::Metrics;

pub use super::broker::{BusError, Limits};

/// A connected broker.
pub enum Bus {
    /// A Kafka producer.
    #[cfg(feature = "kafka")]
    Kafka(kafka::Kafka),
    /// A RabbitMQ connection and its confirm-mode channel.
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

    /// Why the connection cannot be used any more, if it cannot (RabbitMQ; Kafka reports through its acks).
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
