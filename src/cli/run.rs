use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::{Config, ListenerKind};
use crate::ingest::{self, ListenerCtx};
use crate::link::receiver::{self, ReceiverCtx};
use crate::link::transport::Timing;
use crate::link::uplink::scan::{Delivered, DeliveryHold};
use crate::link::uplink::Uplink;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::store::clock::{Clock, SystemClock};
use crate::store::fs::Fs;
use crate::store::retention::{self, NoHold};
use crate::store::Store;

/// How long connections get to hand over their last batches at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long uplinks get at shutdown to deliver what the store just sealed.
const UPLINK_GRACE: Duration = Duration::from_secs(5);

pub fn run(config: Option<PathBuf>) -> anyhow::Result<i32> {
    let cfg = match &config {
        Some(p) => Config::load(p).with_context(|| format!("config {}", p.display()))?,
        None => Config::default_embedded(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ferry").build()?;
    rt.block_on(run_node(cfg, Arc::new(SystemClock)))?;
    Ok(0)
}

/// Run a node until SIGTERM/SIGINT; a second signal exits at once.
pub async fn run_node(cfg: Config, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    metrics.up_since.set(clock.now_ms() / 1000);
    info!(site = %cfg.node.site, node = %cfg.node.name, data_dir = %cfg.node.data_dir.display(), config = %cfg.source, "ferry starting");
    let fs = Fs::from_env().map_err(|e| anyhow::anyhow!("FERRY_FAULTS: {e}"))?;
    if fs.faults().is_some() {
        warn!("FERRY_FAULTS is set: disk faults are being injected on purpose (a test); never run a production node like this");
    }
    let store =
        Arc::new(Store::open_with(&cfg, clock.clone(), metrics.clone(), fs.clone()).context("opening the store")?);

    // Bind everything before serving anything: a port in use fails the start.
    let mut receivers = Vec::new();
    for l in cfg.listeners.iter().filter(|l| l.kind == ListenerKind::Ferry) {
        let files = cfg.tls.as_ref().expect("validated: ferry listeners have [tls]");
        let timing = Timing {
            keepalive: Duration::from_secs(2),
            dead_after: l.idle_timeout.min(Duration::from_secs(60)),
            connect_timeout: Duration::from_secs(10),
        };
        let b = receiver::Bound::bind(l, files, &timing)
            .await
            .with_context(|| format!("listener {}: cannot listen on {}", l.name, l.listen))?;
        info!(listener = %l.name, transport = ?l.transport, addr = %b.local_addr(), "receiving links");
        receivers.push((b, l.clone(), timing));
    }
    let mut bound = Vec::new();
    for l in cfg.listeners.iter().filter(|l| l.kind != ListenerKind::Ferry) {
        let b = ingest::bind(l, cfg.tls.as_ref())
            .await
            .with_context(|| format!("listener {}: cannot listen on {}", l.name, l.listen))?;
        info!(listener = %l.name, transport = ?l.transport, addr = %b.local_addr(), stream = %l.stream, "listening");
        bound.push((b, l.clone()));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let admin_stop = CancellationToken::new();
    let mut admin_task = None;
    if let Some(addr) = cfg.admin.listen {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("admin: cannot listen on {addr}"))?;
        info!(addr = %l.local_addr()?, "admin listening (/metrics /healthz /readyz)");
        let st = AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            store: store.clone(),
            site: cfg.node.site.clone(),
            node: cfg.node.name.clone(),
        };
        let stop = admin_stop.clone();
        admin_task = Some(tokio::spawn(async move {
            if let Err(e) = admin::serve(l, st, stop).await {
                error!(error = %e, "admin listener failed");
            }
        }));
    }

    let sd = Shutdown::new();
    for (b, l) in bound {
        let ctx = Arc::new(ListenerCtx::new(l, &store, metrics.clone())?);
        sd.spawn(ingest::serve(b, ctx, store.clone(), sd.clone()));
    }
    if !receivers.is_empty() {
        let mirror = Arc::new(Mirror::new(
            cfg.archive_dir(),
            cfg.state_dir(),
            fs.clone(),
            clock.clone(),
            metrics.clone(),
            store.changes().clone(),
        ));
        let epoch = mirror.epoch().context("cannot read or create state/mirror.epoch")?;
        for (b, l, timing) in receivers {
            let ctx = Arc::new(ReceiverCtx::new(l, mirror.clone(), metrics.clone(), timing, epoch));
            sd.spawn(receiver::serve(b, ctx, sd.clone()));
        }
    }
    // Uplinks outlive ingest at shutdown: they stop after the store has sealed.
    let uplink_stop = CancellationToken::new();
    let uplink_drain = CancellationToken::new();
    let uplinks = TaskTracker::new();
    let mut delivered = Vec::new();
    for u in &cfg.uplinks {
        let d = Arc::new(
            Delivered::load(&fs, cfg.state_dir().join("uplinks").join(format!("{}.delivered", u.name)), &metrics)
                .with_context(|| format!("uplink {}: reading its state", u.name))?,
        );
        d.retain_existing(&cfg.archive_dir());
        delivered.push(d.clone());
        let up = Uplink {
            cfg: u.clone(),
            node: cfg.node.name.clone(),
            site: cfg.node.site.clone(),
            archive_dir: cfg.archive_dir(),
            state_dir: cfg.state_dir(),
            tls: cfg.tls.clone().expect("validated: uplinks have [tls]"),
            metrics: metrics.clone(),
            clock: clock.clone(),
            delivered: d,
            fs: fs.clone(),
            changes: store.changes().clone(),
        };
        uplinks.spawn(up.run(uplink_stop.clone(), uplink_drain.clone()));
    }
    uplinks.close();
    let sink_stop = CancellationToken::new();
    let sinks = TaskTracker::new();
    for k in &cfg.sinks {
        let d = Arc::new(
            Delivered::load(&fs, cfg.state_dir().join("sinks").join(format!("{}.delivered", k.name)), &metrics)
                .with_context(|| format!("sink {}: reading its state", k.name))?,
        );
        d.retain_existing(&cfg.archive_dir());
        delivered.push(d.clone());
        let sink = Sink {
            cfg: k.clone(),
            archive_dir: cfg.archive_dir(),
            state_dir: cfg.state_dir(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            delivered: d,
            fs: fs.clone(),
            changes: store.changes().clone(),
        };
        sinks.spawn(sink.run(sink_stop.clone()));
    }
    sinks.close();
    let hold: Arc<dyn retention::Hold> =
        if delivered.is_empty() { Arc::new(NoHold) } else { Arc::new(DeliveryHold(delivered)) };
    let retention_stop = CancellationToken::new();
    let retention_task =
        tokio::spawn(retention::run(store.clone(), hold, cfg.store.retention.check_interval, retention_stop.clone()));
    let watch_stop = CancellationToken::new();
    let watch_task = tokio::spawn(crate::query::watch::run(
        cfg.archive_dir(),
        cfg.state_dir(),
        metrics.clone(),
        store.changes().clone(),
        watch_stop.clone(),
    ));
    ready.store(true, Ordering::Relaxed);
    metrics.ready.set(1);
    info!("ferry ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => warn!("SIGHUP: reload is not supported yet; restart to apply config changes"),
        }
    }
    info!("signal received: stopping (a second signal exits at once)");
    ready.store(false, Ordering::Relaxed);
    metrics.ready.set(0);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("second signal: exiting now without committing");
        std::process::exit(130);
    });

    if !sd.stop(DRAIN_DEADLINE).await {
        warn!(deadline = ?DRAIN_DEADLINE, "some connections did not finish in time");
    }
    retention_stop.cancel();
    let _ = retention_task.await;
    watch_stop.cancel();
    let _ = watch_task.await;
    store.close().await;
    // Give uplinks a moment to deliver the segments the store just sealed.
    uplink_drain.cancel();
    if tokio::time::timeout(UPLINK_GRACE, uplinks.wait()).await.is_err() {
        info!(grace = ?UPLINK_GRACE, "uplinks still had data to deliver; it stays on disk for the next start");
    }
    uplink_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), uplinks.wait()).await;
    // Sinks last: they write their cursors on the way out.
    sink_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sinks.wait()).await;
    admin_stop.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    info!("ferry stopped");
    Ok(())
}
