//! A running node: what `ferry run` starts, changes on `SIGHUP`, and stops.
//!
//! Every listener runs under its own [`Shutdown`], every uplink and sink
//! under its own token, so a reload can stop, start or replace one of them
//! and leave every other connection alone. The stop order at exit stays the
//! one [`crate::shutdown`] describes: listeners drain, the store seals,
//! uplinks get a grace to deliver, sinks write their cursors.

pub mod memory;
pub mod reload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::{BucketConfig, Config, ListenAddr, ListenerConfig, ListenerKind, SinkConfig, UplinkConfig};
use crate::ingest::{self, ListenerCtx};
use crate::link::receiver::{self, ReceiverCtx};
use crate::link::transport::Timing;
use crate::link::uplink::{Tuning, Uplink};
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::pki::{Live, Material};
use crate::shutdown::{Shutdown, Stages, DRAIN_DEADLINE};
use crate::sink::Sink;
use crate::store::clock::Clock;
use crate::store::delivered::{Delivered, DeliveryHold};
use crate::store::fs::Fs;
use crate::store::retention;
use crate::store::Store;

/// A socket bound for a listener, not yet served.
enum Bound {
    Ingest(ingest::Bound),
    Receiver(receiver::Bound, Timing),
}

struct RunningUplink {
    stop: CancellationToken,
    task: JoinHandle<()>,
    tune: watch::Sender<Tuning>,
    delivered: Arc<Delivered>,
}

struct RunningSink {
    stop: CancellationToken,
    task: JoinHandle<()>,
    delivered: Arc<Delivered>,
}

/// The node and what runs in it.
pub struct Node {
    cfg: Config,
    /// The file to read again on reload; `None` for the embedded default.
    file: Option<PathBuf>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    fs: Fs,
    store: Arc<Store>,
    tls: Option<Arc<Live>>,
    /// Created with the first receiver, and its state epoch.
    mirror: Option<(Arc<Mirror>, u64)>,
    listeners: HashMap<String, Shutdown>,
    uplinks: HashMap<String, RunningUplink>,
    sinks: HashMap<String, RunningSink>,
    /// `[[bucket]]` uploaders: stopped with the sinks.
    buckets: HashMap<String, RunningSink>,
    hold: Arc<DeliveryHold>,
    /// Every task but the listeners', and the order they stop in.
    stages: Stages,
}

/// The first 16 hex digits of the SHA-256 of a config's text.
fn config_hash(text: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A relay holds a descriptor per collector connection and per tailed file:
/// the soft limit (often 1024) is raised to the hard one, as daemons do.
fn raise_open_files_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            let was = l.rlim_cur;
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
                tracing::debug!(from = was, to = l.rlim_max, "open files limit raised");
            }
        }
    }
}

/// Why a node, or a part of it a reload starts, cannot start: each with
/// what it was doing and the error that stopped it (its `source`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `FERRY_FAULTS` is set and does not parse.
    #[error("FERRY_FAULTS")]
    Faults(#[source] crate::store::fs::BadFaultRule),
    /// The `[tls]` files cannot be loaded or do not verify.
    #[error("[tls]")]
    Tls(#[source] crate::pki::Error),
    /// The store cannot be opened (directories, recovery).
    #[error("opening the store")]
    Store(#[source] crate::store::Error),
    /// The admin listener cannot bind.
    #[error("admin: cannot listen on {addr}")]
    Admin {
        /// The address it was to listen on.
        addr: std::net::SocketAddr,
        /// Why it cannot.
        #[source]
        source: std::io::Error,
    },
    /// A listener cannot bind its address.
    #[error("listener {name}: cannot listen on {addr}")]
    Listen {
        /// The listener.
        name: String,
        /// The address or path it was to listen on.
        addr: String,
        /// Why it cannot.
        #[source]
        source: std::io::Error,
    },
    /// A listener cannot start otherwise (a file listener's state, a socket's setup).
    #[error("listener {name}")]
    Listener {
        /// The listener.
        name: String,
        /// Why it cannot.
        #[source]
        source: ingest::Error,
    },
    /// A receiver's `state/mirror.epoch` cannot be read or created.
    #[error("cannot read or create state/mirror.epoch")]
    Epoch(#[source] std::io::Error),
    /// An uplink, sink or bucket cannot read its state files.
    #[error("{name}: reading its state")]
    State {
        /// Its name.
        name: String,
        /// Why it cannot.
        #[source]
        source: std::io::Error,
    },
    /// Configuration validation makes sure this does not happen.
    #[error("{0} needs a [tls] section")]
    NoTls(&'static str),
    /// The signal handlers cannot be installed.
    #[error("signals")]
    Signals(#[source] std::io::Error),
}

/// Run a node until SIGTERM/SIGINT (a second signal exits at once);
/// SIGHUP reloads `file`.
pub async fn run(file: Option<PathBuf>, cfg: Config, text: &str, clock: Arc<dyn Clock>) -> Result<(), Error> {
    let metrics = Metrics::new();
    metrics.node.up_since.set(clock.now_ms() / 1000);
    info!(site = %cfg.node.site, node = %cfg.node.name, data_dir = %cfg.node.data_dir.display(), config = %cfg.source, "ferry starting");
    crate::logging::set_level(cfg.log_level.as_deref());
    raise_open_files_limit();
    let fs = Fs::from_env().map_err(Error::Faults)?;
    if fs.faults().is_some() {
        warn!("FERRY_FAULTS is set: disk faults are being injected on purpose (a test); never run a production node like this");
    }
    let tls = cfg.tls.as_ref().map(load_tls).transpose()?;
    let store = Arc::new(Store::open_with(&cfg, clock.clone(), metrics.clone(), fs.clone()).map_err(Error::Store)?);
    let mut node = Node {
        file,
        metrics: metrics.clone(),
        clock,
        fs,
        store: store.clone(),
        tls,
        mirror: None,
        listeners: HashMap::new(),
        uplinks: HashMap::new(),
        sinks: HashMap::new(),
        buckets: HashMap::new(),
        hold: Arc::new(DeliveryHold::default()),
        stages: Stages::default(),
        cfg: cfg.clone(),
    };
    node.config_in_force(text);
    metrics.node.config_last_reload_ok.set(1);

    // Bind everything before serving anything: a port in use fails the start.
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let b = node.bind(l).await?;
        bound.push((l.clone(), b));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let last = &node.stages.last;
    last.spawn(memory::give_back_memory(Duration::from_secs(2), last.token.clone()));
    if let Some(addr) = cfg.admin.listen {
        node.start_admin(addr, ready.clone()).await?;
    }
    for (l, b) in bound {
        node.serve(&l, b)?;
    }
    note_revoked(&cfg);
    for u in &cfg.uplinks {
        node.start_uplink(u, None)?;
    }
    for k in &cfg.sinks {
        node.start_sink(k, None)?;
    }
    for b in &cfg.buckets {
        node.start_bucket(b, None)?;
    }
    let archive = &node.stages.archive;
    archive.spawn(retention::run(store.clone(), node.hold.clone(), archive.token.clone()));
    archive.spawn(crate::query::watch::run(
        cfg.archive_dir(),
        cfg.state_dir(),
        metrics.clone(),
        store.changes().clone(),
        archive.token.clone(),
    ));
    ready.store(true, Ordering::Relaxed);
    metrics.node.ready.set(1);
    info!("ferry ready");

    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => node.reload().await,
        }
    }
    info!("signal received: stopping (a second signal exits at once)");
    ready.store(false, Ordering::Relaxed);
    metrics.node.ready.set(0);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("second signal: exiting now without committing");
        std::process::exit(130);
    });

    let all: Vec<Shutdown> = node.listeners.drain().map(|(_, sd)| sd).collect();
    node.stages.stop(&all, store.close()).await;
    info!("ferry stopped");
    Ok(())
}

/// The node's TLS material, checked; a certificate that fails its own
/// checks or that a CRL of the bundle revokes is said, not refused (peers
/// refuse it: the log says why).
fn load_tls(files: &crate::pki::TlsFiles) -> Result<Arc<Live>, Error> {
    let m = Material::load(files).map_err(Error::Tls)?;
    if let Err(e) = m.check() {
        warn!(error = %e, "this node's certificate does not pass its own checks: peers will refuse it");
    }
    if m.own_revoked() {
        error!(cert = %files.cert.display(), "this node's certificate is revoked by a CRL in [tls] crl: peers refuse it (certificate_revoked); it needs a new certificate");
    }
    Ok(Live::new(m))
}

impl Node {
    /// The admin listener (/metrics /healthz /readyz /status), among the
    /// last to stop.
    async fn start_admin(&self, addr: std::net::SocketAddr, ready: Arc<AtomicBool>) -> Result<(), Error> {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Admin { addr, source })?;
        let local = l.local_addr().map_err(|source| Error::Admin { addr, source })?;
        info!(addr = %local, "admin listening (/metrics /healthz /readyz)");
        let st = AdminState {
            metrics: self.metrics.clone(),
            ready,
            store: self.store.clone(),
            site: self.cfg.node.site.clone(),
            node: self.cfg.node.name.clone(),
            rates: Default::default(),
        };
        let last = &self.stages.last;
        let stop = last.token.clone();
        last.spawn(async move {
            if let Err(e) = admin::serve(l, st, stop).await {
                error!(error = %e, "admin listener failed");
            }
        });
        Ok(())
    }

    /// Metrics and log of the config (and certificates) in force.
    fn config_in_force(&self, text: &str) {
        let m = &self.metrics;
        m.node.config_info.reset();
        m.node.config_info.with_label_values(&[&config_hash(text), &self.cfg.source]).set(1);
        m.node.config_loaded.set(self.clock.now_ms() / 1000);
        m.node.certificate_expiry.reset();
        if let Some(live) = &self.tls {
            let now = self.clock.now_ms() / 1000;
            for e in live.current().expiries() {
                m.node.certificate_expiry.with_label_values(&[e.role, &e.subject]).set(e.not_after);
                let days = (e.not_after - now) / 86_400;
                if days < 30 {
                    warn!(role = e.role, subject = %e.subject, days, "certificate expires soon: see certs/README.md, rotation");
                }
            }
        }
    }

    /// Bind a listener's socket (TLS from the material in force).
    async fn bind(&self, l: &ListenerConfig) -> Result<Bound, Error> {
        let what = |source| Error::Listen { name: l.name.clone(), addr: l.listen.to_string(), source };
        if l.kind == ListenerKind::Ferry {
            let tls = self.tls.as_ref().ok_or(Error::NoTls("a ferry listener"))?;
            let timing = Timing {
                keepalive: Duration::from_secs(2),
                dead_after: l.idle_timeout.min(Duration::from_secs(60)),
                connect_timeout: Duration::from_secs(10),
            };
            let b = receiver::Bound::bind(l, tls, &timing).await.map_err(what)?;
            Ok(Bound::Receiver(b, timing))
        } else {
            Ok(Bound::Ingest(ingest::bind(l, self.tls.as_ref(), &self.cfg.state_dir()).await.map_err(what)?))
        }
    }

    /// Serve a bound listener under its own shutdown.
    fn serve(&mut self, l: &ListenerConfig, b: Bound) -> Result<(), Error> {
        let sd = Shutdown::new();
        match b {
            Bound::Ingest(b) => {
                info!(listener = %l.name, transport = ?l.transport, addr = %b.local_addr(), stream = %l.stream, "listening");
                let ctx = Arc::new(
                    ListenerCtx::new(l.clone(), &self.store, self.metrics.clone())
                        .map_err(|source| Error::Listener { name: l.name.clone(), source })?,
                );
                sd.spawn(ingest::serve(b, ctx, self.store.clone(), sd.clone()));
            }
            Bound::Receiver(b, timing) => {
                info!(listener = %l.name, transport = ?l.transport, addr = %b.local_addr(), "receiving links");
                let (mirror, epoch) = self.mirror()?;
                let tls = self.tls.clone().ok_or(Error::NoTls("a ferry receiver"))?;
                let ctx = Arc::new(ReceiverCtx::new(l.clone(), mirror, self.metrics.clone(), timing, epoch, tls));
                sd.spawn(receiver::serve(b, ctx, sd.clone()));
            }
        }
        self.listeners.insert(l.name.clone(), sd);
        Ok(())
    }

    fn mirror(&mut self) -> Result<(Arc<Mirror>, u64), Error> {
        if self.mirror.is_none() {
            let mirror = Arc::new(Mirror::new(
                self.cfg.archive_dir(),
                self.cfg.state_dir(),
                self.fs.clone(),
                self.clock.clone(),
                self.metrics.clone(),
                self.store.changes().clone(),
                self.store.fullness(),
            ));
            let epoch = mirror.epoch().map_err(Error::Epoch)?;
            self.mirror = Some((mirror, epoch));
        }
        Ok(self.mirror.clone().expect("just set"))
    }

    fn delivered(&self, dir: &str, name: &str) -> Result<Arc<Delivered>, Error> {
        let d = Arc::new(
            Delivered::load(&self.fs, self.cfg.state_dir().join(dir).join(format!("{name}.delivered")), &self.metrics)
                .map_err(|source| Error::State { name: name.to_owned(), source })?,
        );
        d.retain_existing(&self.cfg.archive_dir());
        Ok(d)
    }

    /// Start an uplink; `delivered` is kept across a restart by reload.
    fn start_uplink(&mut self, u: &UplinkConfig, delivered: Option<Arc<Delivered>>) -> Result<(), Error> {
        let delivered = match delivered {
            Some(d) => d,
            None => {
                let d = self.delivered("uplinks", &u.name)?;
                self.hold.add(d.clone());
                d
            }
        };
        let (tune, tune_rx) = watch::channel(Tuning::of(u));
        let stop = self.stages.uplinks.token.child_token();
        let up = Uplink {
            cfg: u.clone(),
            node: self.cfg.node.name.clone(),
            site: self.cfg.node.site.clone(),
            archive_dir: self.cfg.archive_dir(),
            state_dir: self.cfg.state_dir(),
            tls: self.tls.clone().ok_or(Error::NoTls("an uplink"))?,
            tune: tune_rx,
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            delivered: delivered.clone(),
            fs: self.fs.clone(),
            changes: self.store.changes().clone(),
        };
        let task = self.stages.uplinks.tracker.spawn(up.run(stop.clone(), self.stages.uplink_drain.clone()));
        self.uplinks.insert(u.name.clone(), RunningUplink { stop, task, tune, delivered });
        Ok(())
    }

    /// Stop an uplink (its session ends; what it acknowledged is recorded).
    async fn stop_uplink(&mut self, name: &str) -> Option<Arc<Delivered>> {
        let r = self.uplinks.remove(name)?;
        r.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        Some(r.delivered)
    }

    fn start_sink(&mut self, k: &SinkConfig, delivered: Option<Arc<Delivered>>) -> Result<(), Error> {
        let delivered = match delivered {
            Some(d) => d,
            None => {
                let d = self.delivered("sinks", &k.name)?;
                self.hold.add(d.clone());
                d
            }
        };
        let stop = self.stages.sinks.token.child_token();
        let sink = Sink {
            cfg: k.clone(),
            archive_dir: self.cfg.archive_dir(),
            state_dir: self.cfg.state_dir(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            delivered: delivered.clone(),
            fs: self.fs.clone(),
            changes: self.store.changes().clone(),
        };
        let task = self.stages.sinks.tracker.spawn(sink.run(stop.clone()));
        self.sinks.insert(k.name.clone(), RunningSink { stop, task, delivered });
        Ok(())
    }

    fn start_bucket(&mut self, b: &BucketConfig, delivered: Option<Arc<Delivered>>) -> Result<(), Error> {
        let delivered = match delivered {
            // Restarted by a reload: its keep_local may have changed.
            Some(d) => {
                self.hold.remove(&d);
                self.hold.add_bucket(d.clone(), b.keep_local);
                d
            }
            None => {
                let d = self.delivered("buckets", &b.name)?;
                self.hold.add_bucket(d.clone(), b.keep_local);
                d
            }
        };
        let stop = self.stages.sinks.token.child_token();
        let up = crate::bucket::Uploader {
            cfg: b.clone(),
            node: self.cfg.node.name.clone(),
            archive_dir: self.cfg.archive_dir(),
            state_dir: self.cfg.state_dir(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            delivered: delivered.clone(),
            fs: self.fs.clone(),
            changes: self.store.changes().clone(),
        };
        let task = self.stages.sinks.tracker.spawn(up.run(stop.clone()));
        self.buckets.insert(b.name.clone(), RunningSink { stop, task, delivered });
        Ok(())
    }

    async fn stop_bucket(&mut self, name: &str) -> Option<Arc<Delivered>> {
        let r = self.buckets.remove(name)?;
        r.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        Some(r.delivered)
    }

    async fn stop_sink(&mut self, name: &str) -> Option<Arc<Delivered>> {
        let r = self.sinks.remove(name)?;
        r.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        Some(r.delivered)
    }

    /// `SIGHUP`: read the file again and apply what changed, or change
    /// nothing and say why.
    pub async fn reload(&mut self) {
        let Some(file) = self.file.clone() else {
            warn!("SIGHUP: running on the embedded default config: nothing to reload (start with -c FILE)");
            self.metrics.node.config_reloads.with_label_values(&["unchanged"]).inc();
            return;
        };
        info!(config = %file.display(), "SIGHUP: reloading the config");
        match self.try_reload(&file).await {
            Ok(Some(complete)) => {
                self.metrics.node.config_reloads.with_label_values(&["applied"]).inc();
                // A listener that could not start again leaves the reload incomplete.
                self.metrics.node.config_last_reload_ok.set(i64::from(complete));
            }
            Ok(None) => {
                info!("reload: nothing changed");
                self.metrics.node.config_reloads.with_label_values(&["unchanged"]).inc();
                self.metrics.node.config_last_reload_ok.set(1);
            }
            Err(Refusal::Invalid(problems)) => {
                for p in &problems {
                    error!("reload refused: {p}");
                }
                error!(problems = problems.len(), "reload refused: the config has problems; the config in force stays");
                self.metrics.node.config_reloads.with_label_values(&["invalid"]).inc();
                self.metrics.node.config_last_reload_ok.set(0);
            }
            Err(Refusal::Refused(why)) => {
                for w in &why {
                    error!("reload refused: {w}");
                }
                error!("reload refused; the config in force stays");
                self.metrics.node.config_reloads.with_label_values(&["refused"]).inc();
                self.metrics.node.config_last_reload_ok.set(0);
            }
        }
    }

    /// `None` if nothing changed, else whether everything was applied.
    async fn try_reload(&mut self, file: &Path) -> Result<Option<bool>, Refusal> {
        let (text, new) = read_config(file)?;
        let plan = reload::plan(&self.cfg, &new)
            .map_err(|fixed| Refusal::Refused(fixed.iter().map(|f| f.to_string()).collect()))?;
        // TLS: read and checked before anything changes.
        let material = match &new.tls {
            Some(files) => Some(Material::load_checked(files).map_err(|e| {
                Refusal::Refused(vec![format!("tls: {}; the certificates in force stay", with_causes(&e))])
            })?),
            None => None,
        };
        let tls_changed = match (&material, &self.tls) {
            (Some(m), Some(live)) => !live.current().same_as(m),
            (None, None) => false,
            _ => true,
        };
        if plan.is_empty() && !tls_changed {
            self.cfg = new;
            self.config_in_force(&text);
            return Ok(None);
        }
        let complete = self.reload_listeners(&plan, &new, material, tls_changed).await?;
        self.reload_uplinks(&plan).await;
        self.reload_sinks(&plan).await;
        self.reload_buckets(&plan).await;
        if plan.retention {
            self.store.set_retention(new.store.retention.clone());
        }
        if plan.log_level {
            crate::logging::set_level(new.log_level.as_deref());
        }
        self.cfg = new;
        self.config_in_force(&text);
        info!(hash = %config_hash(&text), "reload applied");
        Ok(Some(complete))
    }

    /// New TLS material, then the listeners: those that bind a socket no
    /// listener in force holds are bound first (if one cannot, nothing has
    /// changed yet); the leaving ones stop together; then the ones that
    /// reuse their sockets bind. Whether every listener started.
    async fn reload_listeners(
        &mut self,
        plan: &reload::Plan,
        new: &Config,
        material: Option<Material>,
        tls_changed: bool,
    ) -> Result<bool, Refusal> {
        let leaving: Vec<&ListenerConfig> =
            plan.listeners.removed.iter().chain(plan.listeners.changed.iter().map(|(o, _)| o)).collect();
        let coming: Vec<&ListenerConfig> =
            plan.listeners.added.iter().chain(plan.listeners.changed.iter().map(|(_, n)| n)).collect();
        let frees = |l: &ListenerConfig| leaving.iter().any(|o| same_socket(&o.listen, &l.listen));
        // New TLS material first, so new sockets and handshakes use it.
        if let Some(m) = material {
            match &self.tls {
                Some(live) if tls_changed => live.replace(m),
                Some(_) => {}
                None => self.tls = Some(Live::new(m)),
            }
        }
        let mut early = Vec::new();
        for l in coming.iter().filter(|l| !frees(l)) {
            match self.bind(l).await {
                Ok(b) => early.push(((*l).clone(), b)),
                Err(e) => return Err(Refusal::Refused(vec![with_causes(&e)])),
            }
        }
        for line in plan.describe() {
            info!("reload: {line}");
        }
        if tls_changed {
            info!("reload: TLS material re-read: new handshakes use it; established sessions keep theirs, but for peers a CRL now revokes (their sessions end)");
            if self.tls.as_ref().is_some_and(|l| l.current().own_revoked()) {
                error!("reload: this node's own certificate is revoked by a CRL in [tls] crl: peers refuse it (certificate_revoked)");
            }
            note_revoked(new);
        }
        // Listeners leave together, then the ones that reuse their sockets bind.
        let stopping: Vec<Shutdown> = leaving.iter().filter_map(|l| self.listeners.remove(&l.name)).collect();
        if !crate::shutdown::stop_all(&stopping, DRAIN_DEADLINE).await {
            warn!(deadline = ?DRAIN_DEADLINE, "reload: some connections of removed or changed listeners did not finish in time");
        }
        for (l, b) in early {
            if let Err(e) = self.serve(&l, b) {
                error!(listener = %l.name, error = %with_causes(&e), "reload: cannot start listener");
            }
        }
        let mut complete = true;
        for l in coming.iter().filter(|l| frees(l)) {
            complete &= self.replace_listener(plan, l).await;
        }
        Ok(complete)
    }

    /// Start `l` on the socket a leaving listener gave up; if it cannot,
    /// the one it replaces starts again. Whether `l` started.
    async fn replace_listener(&mut self, plan: &reload::Plan, l: &ListenerConfig) -> bool {
        let started = match self.bind(l).await {
            Ok(b) => self.serve(l, b),
            Err(e) => Err(e),
        };
        let Err(e) = started else { return true };
        error!(listener = %l.name, error = %with_causes(&e), "reload: cannot start the listener; starting the one it replaces again");
        if let Some(old) = plan.listeners.changed.iter().find(|(_, n)| n.name == l.name).map(|(o, _)| o) {
            match self.bind(old).await {
                Ok(b) => {
                    let _ = self.serve(old, b);
                }
                Err(e) => {
                    error!(listener = %old.name, error = %with_causes(&e), "reload: cannot start the old listener either")
                }
            }
        }
        false
    }

    /// Uplinks removed, restarted with their state, added, and retuned in place.
    async fn reload_uplinks(&mut self, plan: &reload::Plan) {
        for u in &plan.uplinks.removed {
            if let Some(d) = self.stop_uplink(&u.name).await {
                self.hold.remove(&d);
            }
        }
        for (_, u) in &plan.uplinks.changed {
            let d = self.stop_uplink(&u.name).await;
            if let Err(e) = self.start_uplink(u, d) {
                error!(uplink = %u.name, error = %with_causes(&e), "reload: cannot start uplink");
            }
        }
        for u in &plan.uplinks.added {
            if let Err(e) = self.start_uplink(u, None) {
                error!(uplink = %u.name, error = %with_causes(&e), "reload: cannot start uplink");
            }
        }
        for (name, t) in &plan.tuned {
            if let Some(r) = self.uplinks.get(name) {
                // The session (if any) takes it at once; the next one starts with it.
                let _ = r.tune.send(*t);
                self.metrics.link.uplink_max_rate.with_label_values(&[name]).set(t.max_rate.unwrap_or(0.0) as i64);
            }
        }
    }

    /// Sinks removed, restarted with their state, added.
    async fn reload_sinks(&mut self, plan: &reload::Plan) {
        for k in &plan.sinks.removed {
            if let Some(d) = self.stop_sink(&k.name).await {
                self.hold.remove(&d);
            }
        }
        for (_, k) in &plan.sinks.changed {
            let d = self.stop_sink(&k.name).await;
            if let Err(e) = self.start_sink(k, d) {
                error!(sink = %k.name, error = %with_causes(&e), "reload: cannot start sink");
            }
        }
        for k in &plan.sinks.added {
            if let Err(e) = self.start_sink(k, None) {
                error!(sink = %k.name, error = %with_causes(&e), "reload: cannot start sink");
            }
        }
    }

    /// Buckets removed, restarted with their state, added.
    async fn reload_buckets(&mut self, plan: &reload::Plan) {
        for b in &plan.buckets.removed {
            if let Some(d) = self.stop_bucket(&b.name).await {
                self.hold.remove(&d);
            }
        }
        for (_, b) in &plan.buckets.changed {
            let d = self.stop_bucket(&b.name).await;
            if let Err(e) = self.start_bucket(b, d) {
                error!(bucket = %b.name, error = %with_causes(&e), "reload: cannot start bucket");
            }
        }
        for b in &plan.buckets.added {
            if let Err(e) = self.start_bucket(b, None) {
                error!(bucket = %b.name, error = %with_causes(&e), "reload: cannot start bucket");
            }
        }
    }
}

/// The config file's text, validated: what a reload would put in force.
fn read_config(file: &Path) -> Result<(String, Config), Refusal> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Refusal::Invalid(vec![format!("{}: cannot read: {e}", file.display())]))?;
    let new = crate::config::validate(&text, &file.display().to_string()).map_err(|e| match e {
        crate::config::Error::Invalid(ps) => Refusal::Invalid(ps.iter().map(|p| p.to_string()).collect()),
        other => Refusal::Invalid(vec![other.to_string()]),
    })?;
    Ok((text, new))
}

/// Why a reload changed nothing.
enum Refusal {
    /// The file does not validate: each problem with file:line: key.
    Invalid(Vec<String>),
    /// A key that needs a restart, TLS files that do not verify, a socket
    /// that cannot be bound.
    Refused(Vec<String>),
}

fn same_socket(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Socket(x), ListenAddr::Socket(y)) => x.port() == y.port(),
        (ListenAddr::Path(x), ListenAddr::Path(y)) => x == y,
        // A file listener's checkpoints are written by one thread at a time:
        // the new one starts after the old one saved them.
        (ListenAddr::Files(_), ListenAddr::Files(_)) => true,
        _ => false,
    }
}

/// Tell `state/revoked` which peers that wrote into this node's mirror the
/// CRLs in force revoke (`ferry audit` marks their data), and log them.
fn note_revoked(cfg: &Config) {
    let crl = cfg.tls.as_ref().map(|t| t.crl.clone()).unwrap_or_default();
    let serials = match crate::pki::revoked_serials(&crl) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the CRLs to mark revoked peers' data");
            return;
        }
    };
    let ms =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let serials: Vec<(String, i64)> = serials.into_iter().map(|(s, t)| (s, ms(t))).collect();
    match crate::mirror::peers::note_revoked(&cfg.state_dir(), &serials) {
        Ok(peers) => {
            for p in peers {
                warn!(site = %p.site, node = %p.node, serial = %p.serial,
                    revoked_at = %crate::store::clock::rfc3339_secs(p.at_ms),
                    "a node whose segments this mirror holds is revoked: its data is kept, marked in ferry audit");
            }
        }
        Err(e) => warn!(error = %e, "cannot write state/revoked"),
    }
}

/// An error and its causes on one line, as `{:#}` of anyhow shows them.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}
