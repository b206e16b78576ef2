use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::ingest::{self, ListenerCtx};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};
use crate::store::retention::{self, NoHold};
use crate::store::Store;

/// How long connections get to hand over their last batches at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub fn run(config: Option<PathBuf>) -> anyhow::Result<i32> {
    let cfg = match &config {
        Some(p) => Config::load(p).with_context(|| format!("config {}", p.display()))?,
        None => Config::default_embedded(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry")
        .build()?;
    rt.block_on(run_node(cfg, Arc::new(SystemClock)))?;
    Ok(0)
}

/// Run a node until SIGTERM/SIGINT; a second signal exits at once.
pub async fn run_node(cfg: Config, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    metrics.up_since.set(clock.now_ms() / 1000);
    info!(site = %cfg.node.site, node = %cfg.node.name, data_dir = %cfg.node.data_dir.display(), config = %cfg.source, "ferry starting");
    let store =
        Arc::new(Store::open(&cfg, clock.clone(), metrics.clone()).context("opening the store")?);

    // Bind everything before serving anything: a port in use fails the start.
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let b = ingest::bind(l)
            .await
            .with_context(|| format!("listener {}: cannot listen on {}", l.name, l.listen))?;
        info!(listener = %l.name, transport = ?l.transport, addr = %b.local_addr(), stream = %l.stream, "listening");
        bound.push((b, l.clone()));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let admin_stop = CancellationToken::new();
    let mut admin_task = None;
    if let Some(addr) = cfg.admin.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin: cannot listen on {addr}"))?;
        info!(addr = %l.local_addr()?, "admin listening (/metrics /healthz /readyz)");
        let st = AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
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
        let ctx =
            Arc::new(ListenerCtx::new(l, &store, metrics.clone()).map_err(anyhow::Error::msg)?);
        sd.spawn(ingest::serve(b, ctx, sd.clone()));
    }
    let retention_stop = CancellationToken::new();
    let retention_task = tokio::spawn(retention::run(
        store.clone(),
        Arc::new(NoHold),
        cfg.store.retention.check_interval,
        retention_stop.clone(),
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
    store.close().await;
    admin_stop.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    info!("ferry stopped");
    Ok(())
}
