//! What every broker client shares: the operations a sink awaits on a
//! broker, their errors, and the bound in time on each ([`bounded`]), so a
//! broker that stops answering is a [`BusError::Timeout`] naming the
//! operation, never a silent hold.

use std::future::Future;
use std::time::Duration;

use crate::config::SinkConfig;

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
