//! RabbitMQ (AMQP 0.9.1) with publisher confirms: persistent messages,
//! `mandatory` so an unroutable message comes back instead of vanishing,
//! a stable `message_id` (`site/node/stream/seq`) and the origin in headers.
//! A record is acknowledged to the sink only when its confirm arrives.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::broker::{bounded, BusError, Limits, Op};
use super::records::Batch;
use super::{Ack, Outcome};
use crate::config::RabbitMqConfig;

/// A RabbitMQ connection with a confirm-mode channel; confirms come back as [`Ack`]s.
pub struct Rabbit {
    conn: Connection,
    channel: Channel,
    cfg: RabbitMqConfig,
    declared: HashSet<String>,
    tx: UnboundedSender<Ack>,
    /// Records still to publish one at a time, each awaiting its confirm:
    /// after the broker closed the channel over a message too large, this
    /// finds which one it was without guessing.
    pub careful: usize,
    /// Set when the channel is known to be gone after a publish returned.
    broken: Option<BusError>,
    limits: Limits,
    /// Ends the tasks awaiting this connection's confirms when it closes
    /// (a confirm of a dead connection may never resolve).
    closed: CancellationToken,
}

impl Rabbit {
    /// Connect, open a channel and put it in confirm mode, each step within
    /// `limits.connect` (a broker still booting accepts TCP and may not
    /// answer yet).
    pub async fn connect(
        sink: &str,
        cfg: &RabbitMqConfig,
        tx: UnboundedSender<Ack>,
        limits: Limits,
    ) -> Result<Rabbit, BusError> {
        let props = ConnectionProperties::default().with_connection_name(format!("ferry-{sink}").into());
        let rabbit = |op: Op| move |source| BusError::Rabbit { op, source };
        let t = limits.connect;
        let conn =
            bounded(Op::Connect, t, async { Connection::connect(&cfg.url, props).await.map_err(rabbit(Op::Connect)) })
                .await?;
        let opened = async {
            let channel =
                bounded(Op::OpenChannel, t, async { conn.create_channel().await.map_err(rabbit(Op::OpenChannel)) })
                    .await?;
            bounded(Op::ConfirmSelect, t, async {
                channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(rabbit(Op::ConfirmSelect))
            })
            .await?;
            Ok::<_, BusError>(channel)
        }
        .await;
        let channel = match opened {
            Ok(c) => c,
            Err(e) => {
                close_conn(&conn, limits.request).await;
                return Err(e);
            }
        };
        info!(sink, "connected to RabbitMQ");
        Ok(Rabbit {
            conn,
            channel,
            cfg: cfg.clone(),
            declared: HashSet::new(),
            tx,
            careful: 0,
            broken: None,
            limits,
            closed: CancellationToken::new(),
        })
    }

    /// Publish every record of `batch`; a task awaits the confirms in order
    /// and reports them with `token`.
    ///
    /// The whole call is bounded by `request_timeout`; a confirm awaited
    /// here in careful mode too.
    pub async fn publish(&mut self, batch: Arc<Batch>, token: u32) -> Result<Vec<(u32, Outcome)>, BusError> {
        let limit = self.limits.request;
        bounded(Op::Publish, limit, self.publish_unbounded(batch, token)).await
    }

    async fn publish_unbounded(&mut self, batch: Arc<Batch>, token: u32) -> Result<Vec<(u32, Outcome)>, BusError> {
        let o = batch.origin.clone();
        let exchange = o.render(&self.cfg.exchange);
        if !self.declared.contains(&exchange) {
            let kind = match self.cfg.exchange_kind.as_str() {
                "direct" => ExchangeKind::Direct,
                "fanout" => ExchangeKind::Fanout,
                "headers" => ExchangeKind::Headers,
                _ => ExchangeKind::Topic,
            };
            let opts = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
            self.channel
                .exchange_declare(exchange.clone().into(), kind, opts, FieldTable::default())
                .await
                .map_err(|source| BusError::Rabbit { op: Op::Declare, source })?;
            self.declared.insert(exchange.clone());
        }
        let routing_key: ShortString = o.render(&self.cfg.routing_key).into();
        let exchange: ShortString = exchange.into();
        let secs = (batch.last_ms / 1000).max(0) as u64;
        let mut confirms: Vec<(u32, PublisherConfirm)> = Vec::with_capacity(batch.len());
        // Careful mode answers here, in order, not through the report channel.
        let mut answered: Vec<(u32, Outcome)> = Vec::new();
        for i in 0..batch.len() {
            if batch.skipped(i) {
                continue;
            }
            let seq = batch.seq(i);
            let mut headers = FieldTable::default();
            headers.insert("site".into(), AMQPValue::LongString(LongString::from(o.site.as_str())));
            headers.insert("node".into(), AMQPValue::LongString(LongString::from(o.node.as_str())));
            headers.insert("stream".into(), AMQPValue::LongString(LongString::from(o.stream.as_str())));
            headers.insert("seq".into(), AMQPValue::LongLongInt(seq as i64));
            headers.insert("received_ms".into(), AMQPValue::LongLongInt(batch.last_ms));
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(o.message_id(seq).into())
                .with_timestamp(secs)
                .with_headers(headers);
            let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            match self.channel.basic_publish(exchange.clone(), routing_key.clone(), opts, batch.record(i), props).await
            {
                Ok(c) if self.careful > 0 => {
                    self.careful -= 1;
                    let outcome = confirmed(c.await, true);
                    match outcome {
                        Outcome::Ok | Outcome::Refused(_) => {
                            let refused = matches!(outcome, Outcome::Refused(_));
                            answered.push((i as u32, outcome));
                            if refused {
                                // Found. The channel is closed now: reconnect.
                                self.careful = 0;
                                self.broken = Some(BusError::Broken(
                                    "the broker refused a message and closed the channel".into(),
                                ));
                                return Ok(answered);
                            }
                        }
                        Outcome::Retry(_, d) | Outcome::RetryCarefully(d) | Outcome::UnknownTopic(d) => {
                            self.broken = Some(BusError::Broken(d));
                            return Ok(answered);
                        }
                    }
                }
                Ok(c) => confirms.push((i as u32, c)),
                Err(e) => {
                    // What was published before still gets its confirms.
                    self.await_confirms(confirms, token);
                    return Err(BusError::Rabbit { op: Op::Publish, source: e });
                }
            }
        }
        self.await_confirms(confirms, token);
        Ok(answered)
    }

    /// Why the connection cannot be used any more, if it cannot.
    pub fn take_broken(&mut self) -> Option<BusError> {
        self.broken.take()
    }

    /// A task awaits the confirms in order and reports them; it ends when
    /// they are all in or the connection is closed, whichever comes first.
    fn await_confirms(&self, confirms: Vec<(u32, PublisherConfirm)>, token: u32) {
        let tx = self.tx.clone();
        let closed = self.closed.clone();
        tokio::spawn(async move {
            for (idx, c) in confirms {
                let outcome = tokio::select! {
                    c = c => confirmed(c, false),
                    _ = closed.cancelled() => return,
                };
                if tx.send(Ack { token, idx, outcome }).is_err() {
                    return;
                }
            }
        });
    }

    /// Close the channel and connection, answered or not within `request_timeout`.
    pub async fn close(self) {
        self.closed.cancel();
        close_conn(&self.conn, self.limits.request).await;
    }
}

/// Close the connection, waiting at most `limit` for the broker's answer:
/// a broker gone or hung is let go (the socket closes with the value).
async fn close_conn(conn: &Connection, limit: Duration) {
    let _ = tokio::time::timeout(limit, conn.close(200, "ferry sink closing".into())).await;
}

fn confirmed(c: lapin::Result<Confirmation>, alone: bool) -> Outcome {
    match c {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Outcome::Ok,
        Ok(Confirmation::Ack(Some(r))) => Outcome::Retry("unroutable", format!("no queue takes it: {}", r.reply_text)),
        Ok(Confirmation::Nack(_)) => Outcome::Retry("nack", "the broker could not take a message".into()),
        Err(e) => classify(&e, alone),
    }
}

/// The broker closes the channel with 406 PRECONDITION_FAILED when a
/// message exceeds its `max_message_size`. With many messages in flight,
/// every unconfirmed one fails with that error, so none is blamed: the sink
/// starts again carefully. A message published `alone` that fails so is the
/// one: it can never be delivered (dead letter). The code alone is
/// ambiguous, so the broker's text tells size from other preconditions.
fn classify(e: &lapin::Error, alone: bool) -> Outcome {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            let text = amqp.get_message().as_str();
            return match (alone, text.contains("size")) {
                (true, true) => Outcome::Refused("too_large"),
                (true, false) => Outcome::Refused("precondition_failed"),
                (false, _) => Outcome::RetryCarefully(format!("channel closed: {text}")),
            };
        }
    }
    Outcome::Retry("confirm_failed", e.to_string())
}
