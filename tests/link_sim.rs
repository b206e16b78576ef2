//! Deterministic simulation of the link: the uplink's session state machine
//! (`link::uplink::session`) and the receiver's core (`link::receiver::Core`)
//! over a real `Mirror`, joined by a simulated transport, in virtual time.
//!
//! Each case draws, from its seed, a scenario: commits and seals at the
//! origin, cuts, delays, outages short and long, restarts of either side with
//! their on-disk state kept or lost, a crash of the receiver mid-append (a
//! torn tail), windows and live shares, undelivered segments deleted at the
//! origin (`drop_oldest`). After every acknowledged append and every restart
//! the mirror must be a byte-identical prefix of the origin; at the end, once
//! the link is left alone, identical and sealed (also when the receiver lost
//! its seal records after confirming them: its new state epoch makes the
//! uplink offer everything again), and every deleted segment either sealed
//! at the mirror or kept there as a tombstone.
//!
//! Files are real (segments of real frames, the real mirror code with its
//! fsyncs) on tmpfs, so thousands of cases run in seconds. A failing case
//! prints its seed: `FERRY_SIM_SEED=<seed> cargo test --test link_sim`
//! replays it alone; `FERRY_SIM_CASES` sets how many run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ferry::link::proto::Msg;
use ferry::link::receiver::{append_reply, gone_reply, have_reply, seal_reply, Core, Step};
use ferry::link::uplink::backoff::Backoff;
use ferry::link::uplink::scan::read_chunk;
use ferry::link::uplink::session::{Event, Params, Session};
use ferry::metrics::Metrics;
use ferry::mirror::Mirror;
use ferry::store::changes::{Changes, Subscriber};
use ferry::store::clock::SystemClock;
use ferry::store::frame::{FrameEncoder, FrameMeta};
use ferry::store::fs::Fs;
use ferry::store::segment::{gone_path, seal_path, sha256_file, OnDisk, SealRecord, SegmentName};

const SITE: &str = "edge1";
const STREAM: &str = "live";
const NODE: &str = "relay-1";
/// The documented reconnect ceiling (`backoff_max` default).
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A directory on tmpfs (fsync is real code but costs nothing), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let p = base.join(format!("ferry-sim-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The origin node's archive: segments of real frames, written to files.
struct Origin {
    archive: PathBuf,
    segs: Vec<OSeg>,
    next_segment: u64,
    next_record: u64,
    enc: FrameEncoder,
    changes: Arc<Changes>,
    /// Tombstones of segments deleted undelivered.
    gone: Vec<(PathBuf, SealRecord)>,
}

struct OSeg {
    rel: PathBuf,
    name: SegmentName,
    data: Vec<u8>,
    frames: u64,
    records: u64,
    first_seq: u64,
    seal: Option<SealRecord>,
    /// Deleted by `drop_oldest` before delivery.
    deleted: bool,
}

impl Origin {
    fn new(dir: &Path) -> Origin {
        let archive = dir.join("origin");
        std::fs::create_dir_all(&archive).unwrap();
        Origin {
            archive,
            segs: Vec::new(),
            next_segment: 1,
            next_record: 0,
            enc: FrameEncoder::new(1).unwrap(),
            changes: Changes::new(),
            gone: Vec::new(),
        }
    }

    /// One commit: a frame of `lines` records appended to the open segment
    /// (created first if there is none), then the store tells.
    fn commit(&mut self, lines: u32, vt: u64) {
        if self.segs.last().is_none_or(|s| s.seal.is_some()) {
            let ms = 1_800_000_000_000 + vt as i64;
            let name = SegmentName::new(SITE, STREAM, NODE, self.next_segment, ms);
            self.next_segment += 1;
            let rel = name.rel_path();
            let path = self.archive.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::File::create(&path).unwrap();
            self.segs.push(OSeg {
                rel,
                name,
                data: Vec::new(),
                frames: 0,
                records: 0,
                first_seq: self.next_record,
                seal: None,
                deleted: false,
            });
            self.changes.layout_changed(None);
        }
        let mut raw = Vec::new();
        for i in 0..lines {
            raw.extend_from_slice(format!("<13>record {} at {vt} #{i}\n", self.next_record + u64::from(i)).as_bytes());
        }
        let meta = FrameMeta {
            stream: STREAM,
            records: lines,
            truncated: 0,
            first_seq: self.next_record,
            first_ms: vt as i64,
            last_ms: vt as i64,
        };
        let mut frame = Vec::new();
        self.enc.encode(&meta, &raw, &mut frame).unwrap();
        self.next_record += u64::from(lines);
        let seg = self.segs.last_mut().unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(self.archive.join(&seg.rel)).unwrap().write_all(&frame).unwrap();
        seg.data.extend_from_slice(&frame);
        seg.frames += 1;
        seg.records += u64::from(lines);
        self.changes.grown(&seg.rel, seg.data.len() as u64);
    }

    /// Seal the open segment (the next commit starts a new one).
    fn seal(&mut self, vt: u64) {
        let Some(seg) = self.segs.last_mut().filter(|s| s.seal.is_none()) else { return };
        seg.seal = Some(SealRecord {
            len: seg.data.len() as u64,
            sha256: sha256_file(&self.archive.join(&seg.rel)).unwrap(),
            frames: seg.frames,
            records: seg.records,
            first_seq: seg.first_seq,
            next_seq: seg.first_seq + seg.records,
            sealed_ms: vt as i64,
        });
        self.changes.layout_changed(Some(&seg.rel));
    }

    /// Retention under `drop_oldest`: the oldest sealed segment not yet
    /// delivered is deleted and leaves a tombstone.
    fn drop_oldest(&mut self, delivered: &HashSet<PathBuf>) -> Option<PathBuf> {
        let s = self.segs.iter_mut().find(|s| s.seal.is_some() && !s.deleted && !delivered.contains(&s.rel))?;
        std::fs::remove_file(self.archive.join(&s.rel)).unwrap();
        s.deleted = true;
        self.gone.push((s.rel.clone(), s.seal.clone().unwrap()));
        self.changes.layout_changed(None);
        Some(s.rel.clone())
    }

    /// What the uplink's listing finds: every undelivered segment, oldest first.
    fn listing(&self, delivered: &HashSet<PathBuf>) -> Vec<OnDisk> {
        self.segs
            .iter()
            .filter(|s| !delivered.contains(&s.rel) && !s.deleted)
            .map(|s| OnDisk {
                rel: s.rel.clone(),
                name: s.name.clone(),
                len: s.data.len() as u64,
                seal: s.seal.clone(),
                damaged_seal: None,
            })
            .collect()
    }
}

/// One connection: the two ends and what is in flight between them (FIFO
/// per direction, as TCP and a QUIC stream deliver).
struct Conn {
    sess: Session,
    core: Core,
    to_recv: VecDeque<(u64, Bytes)>,
    to_up: VecDeque<(u64, Msg)>,
    rbuf: BytesMut,
    /// The receiver refused and closed: nothing more is read.
    closed: bool,
    /// A file read still running (a slow disk): done at that time, while
    /// messages keep arriving.
    reading: Option<(u64, ferry::link::uplink::session::Read)>,
}

#[derive(Debug, Clone)]
enum Action {
    Commit(u32),
    Seal,
    Cut,
    /// The receiver is unreachable for this long (its connections cut).
    Outage(u64),
    RestartReceiver {
        lose_state: bool,
        torn_tail: bool,
    },
    RestartUplink {
        lose_state: bool,
    },
    DropOldest,
    Latency(u64, u64),
}

struct Sim {
    seed: u64,
    rng: StdRng,
    vt: u64,
    base: Instant,
    dir: PathBuf,
    metrics: Metrics,
    origin: Origin,
    mirror: Mirror,
    receiver_down_until: u64,
    delivered: HashSet<PathBuf>,
    /// When each segment was delivered, and when the receiver last lost its state.
    delivered_at: HashMap<PathBuf, u64>,
    receiver_state_lost_at: Option<u64>,
    /// The receiver's epoch as the uplink stored it (`Delivered::check_epoch`).
    uplink_epoch: Option<u64>,
    sub: Subscriber,
    conn: Option<Conn>,
    backoff: Backoff,
    next_dial: u64,
    latency: (u64, u64),
    params: Params,
    trace: Vec<String>,
    /// Virtual times of sessions welcomed, APPENDs sent and acknowledged.
    welcomed_at: Vec<u64>,
    appends_sent_at: Vec<u64>,
    acks_at: Vec<u64>,
    rotations: usize,
    /// Records watched for: (segment, length that holds them, committed at,
    /// in the mirror at).
    watched: Vec<(PathBuf, u64, u64, Option<u64>)>,
}

fn new_mirror(dir: &Path, metrics: &Metrics) -> Mirror {
    Mirror::new(
        dir.join("mirror/archive"),
        dir.join("mirror/state"),
        Fs::real(),
        Arc::new(SystemClock),
        metrics.clone(),
        Changes::new(),
        Arc::new(ferry::store::retention::Fullness::new(metrics.store.store_full.clone())),
    )
}

impl Sim {
    fn new(seed: u64, dir: &Path, metrics: &Metrics) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let origin = Origin::new(dir);
        let sub = origin.changes.subscribe();
        let params = Params {
            name: "central".into(),
            node: NODE.into(),
            window: [16u64 << 10, 64 << 10, 1 << 20][rng.random_range(0..3)],
            live_share: [0.0, 0.5, 1.0][rng.random_range(0..3)],
            chunk_max: [16usize << 10, 4 << 20][rng.random_range(0..2)],
            keepalive: Duration::from_millis(300),
            dead_after: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            site: SITE.into(),
            rotate_after: [2u64 << 10, 16 << 10, 256 << 10][rng.random_range(0..3)],
            version: ferry::link::proto::VERSION,
        };
        Sim {
            seed,
            rng,
            vt: 0,
            base: Instant::now(),
            dir: dir.to_owned(),
            metrics: metrics.clone(),
            mirror: new_mirror(dir, metrics),
            origin,
            receiver_down_until: 0,
            delivered: HashSet::new(),
            delivered_at: HashMap::new(),
            receiver_state_lost_at: None,
            uplink_epoch: None,
            sub,
            conn: None,
            backoff: Backoff::new(Duration::from_millis(100), BACKOFF_MAX),
            next_dial: 0,
            latency: (1, 20),
            params,
            trace: Vec::new(),
            welcomed_at: Vec::new(),
            appends_sent_at: Vec::new(),
            acks_at: Vec::new(),
            rotations: 0,
            watched: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.vt)
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{:>8} ms  {s}", self.vt));
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(|s| s.as_str()).collect();
        panic!(
            "seed {}: {what}\nreplay with FERRY_SIM_SEED={}\nparams: {:?}\nlast events:\n{}",
            self.seed,
            self.seed,
            self.params,
            tail.join("\n")
        );
    }

    fn delay(&mut self) -> u64 {
        self.rng.random_range(self.latency.0..=self.latency.1)
    }

    fn receiver_up(&self) -> bool {
        self.vt >= self.receiver_down_until
    }

    fn cut(&mut self, why: &str) {
        if self.conn.take().is_some() {
            self.note(format!("connection cut: {why}"));
            let wait = self.backoff.next(&mut self.rng);
            self.next_dial = self.vt + wait.as_millis() as u64;
        }
    }

    fn apply(&mut self, a: Action) {
        self.note(format!("{a:?}"));
        match a {
            Action::Commit(n) => self.origin.commit(n, self.vt),
            Action::Seal => self.origin.seal(self.vt),
            Action::Cut => self.cut("cut"),
            Action::Outage(d) => {
                self.cut("receiver unreachable");
                self.receiver_down_until = self.vt + d;
            }
            Action::RestartReceiver { lose_state, torn_tail } => {
                self.cut("receiver restarts");
                if torn_tail {
                    self.tear_a_tail();
                }
                if lose_state {
                    let _ = std::fs::remove_dir_all(self.dir.join("mirror/state"));
                    self.receiver_state_lost_at = Some(self.vt);
                }
                self.mirror = new_mirror(&self.dir, &self.metrics);
                self.check_prefixes("after a receiver restart");
            }
            Action::RestartUplink { lose_state } => {
                self.cut("uplink restarts");
                if lose_state {
                    self.delivered.clear();
                    self.uplink_epoch = None;
                }
                self.sub = self.origin.changes.subscribe();
                self.backoff = Backoff::new(Duration::from_millis(100), BACKOFF_MAX);
                self.next_dial = self.vt;
            }
            Action::DropOldest => {
                if let Some(rel) = self.origin.drop_oldest(&self.delivered) {
                    self.note(format!("deleted {} undelivered", rel.display()));
                }
            }
            Action::Latency(a, b) => self.latency = (a, b),
        }
    }

    /// A receiver killed in the middle of an append: part of a frame lies
    /// after the mirror's last durable length (never acknowledged).
    fn tear_a_tail(&mut self) {
        let candidates: Vec<usize> = (0..self.origin.segs.len())
            .filter(|&i| {
                let path = self.dir.join("mirror/archive").join(&self.origin.segs[i].rel);
                std::fs::metadata(&path).is_ok_and(|m| m.len() < self.origin.segs[i].data.len() as u64)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let i = candidates[self.rng.random_range(0..candidates.len())];
        let seg = &self.origin.segs[i];
        let path = self.dir.join("mirror/archive").join(&seg.rel);
        let have = std::fs::metadata(&path).unwrap().len() as usize;
        let rest = seg.data.len() - have;
        let n = self.rng.random_range(1..=rest.min(200));
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&seg.data[have..have + n]).unwrap();
        let rel = seg.rel.display().to_string();
        self.note(format!("torn tail of {n} bytes on the mirror's {rel}"));
    }

    /// Every mirror file is a byte-identical prefix of its origin.
    fn check_prefixes(&self, when: &str) {
        for s in &self.origin.segs {
            self.check_prefix(&s.rel, when);
        }
    }

    fn check_prefix(&self, rel: &Path, when: &str) {
        let path = self.dir.join("mirror/archive").join(rel);
        let Ok(got) = std::fs::read(&path) else { return };
        let origin = &self.origin.segs.iter().find(|s| s.rel == rel).expect("mirror files come from the origin").data;
        if !origin.starts_with(&got) {
            let at = got.iter().zip(origin.iter()).position(|(a, b)| a != b);
            self.fail(&format!(
                "{when}: mirror {} is not a prefix of its origin ({} bytes vs {}, first difference at {at:?})",
                rel.display(),
                got.len(),
                origin.len()
            ));
        }
    }

    /// Let the uplink's session do everything it can now.
    fn pump(&mut self) {
        loop {
            let now = self.now();
            let vt = self.vt;
            let Some(c) = self.conn.as_mut() else { return };
            match c.sess.poll_event() {
                Some(Event::Delivered(l)) => {
                    self.delivered_at.insert(l.rel.clone(), vt);
                    self.delivered.insert(l.rel.clone());
                    self.note(format!("delivered {}", l.rel.display()));
                    continue;
                }
                Some(Event::Noted(rel)) => {
                    self.note(format!("tombstone of {} noted", rel.display()));
                    continue;
                }
                Some(Event::Rotate { stream }) => {
                    // The store rotates at its next commit: here, at once.
                    assert_eq!(stream, STREAM);
                    self.rotations += 1;
                    self.origin.seal(vt);
                    self.note("rotated the open segment for the uplink".into());
                    continue;
                }
                None => {}
            }
            if self.sub.has_changed() {
                let u = self.sub.take();
                if u.relist || c.sess.grown(&u.lens) {
                    let listing = self.origin.listing(&self.delivered);
                    let c = self.conn.as_mut().unwrap();
                    c.sess.archive(listing, &u.lens);
                    c.sess.tombstones(self.origin.gone.clone());
                }
                continue;
            }
            if let Some(bytes) = c.sess.poll_transmit(now) {
                let mut probe = BytesMut::from(&bytes[..]);
                while let Ok(Some(m)) = Msg::decode(&mut probe) {
                    if matches!(m, Msg::Append { .. }) {
                        self.appends_sent_at.push(vt);
                    }
                }
                let d = self.delay();
                let c = self.conn.as_mut().unwrap();
                let at = c.to_recv.back().map_or(0, |(t, _)| *t).max(vt + d);
                c.to_recv.push_back((at, bytes));
                c.sess.on_written(now);
                continue;
            }
            if c.reading.as_ref().is_some_and(|(t, _)| *t <= vt) {
                let (_, r) = c.reading.take().unwrap();
                let chunk = read_chunk(&self.origin.archive.join(&r.rel), r.from, r.max).map(|(b, _)| b);
                c.sess.read_done(&r.rel, r.from, chunk);
                continue;
            }
            if c.reading.is_none() {
                if let Some(r) = c.sess.next_read(now) {
                    let slow = self.rng.random_bool(0.2);
                    let at = if slow { vt + self.rng.random_range(1..30) } else { vt };
                    self.conn.as_mut().unwrap().reading = Some((at, r));
                    continue;
                }
            }
            return;
        }
    }

    /// Deliver one message due now, either way. Returns whether one was.
    fn deliver(&mut self) -> bool {
        let vt = self.vt;
        let now = self.now();
        let Some(c) = self.conn.as_mut() else { return false };
        if c.to_recv.front().is_some_and(|(t, _)| *t <= vt) {
            let (_, bytes) = c.to_recv.pop_front().unwrap();
            if c.closed {
                return true;
            }
            c.rbuf.extend_from_slice(&bytes);
            let mut replies = Vec::new();
            let mut checks = Vec::new();
            while let Some(msg) = Msg::decode(&mut c.rbuf).unwrap_or_else(|e| panic!("uplink sent garbage: {e}")) {
                let reply = match c.core.handle(msg) {
                    Step::Reply(r) => r,
                    Step::Refuse(code, reason) => {
                        c.closed = true;
                        Msg::Refuse { code, reason }
                    }
                    Step::Have { id, rel } => have_reply(id, self.mirror.have(&rel)),
                    Step::Append { id, rel, offset, frames } => {
                        let r = self.mirror.append(&rel, offset, &frames);
                        if let Ok(len) = r {
                            for w in self.watched.iter_mut().filter(|w| w.0 == rel && w.1 <= len && w.3.is_none()) {
                                w.3 = Some(vt);
                            }
                            checks.push(rel);
                        }
                        append_reply(id, &r)
                    }
                    Step::Seal { id, rel, len, sha256 } => seal_reply(id, &self.mirror.seal(&rel, len, &sha256)),
                    Step::Gone { id, rel, tombstone } => {
                        gone_reply(id, &self.mirror.note_gone(&rel, &tombstone.to_seal()))
                    }
                };
                replies.push(reply);
                if c.closed {
                    break;
                }
            }
            for rel in checks {
                self.check_prefix(&rel, "after an append");
            }
            for r in replies {
                let d = self.delay();
                let c = self.conn.as_mut().unwrap();
                let at = c.to_up.back().map_or(0, |(t, _)| *t).max(vt + d);
                c.to_up.push_back((at, r));
            }
            return true;
        }
        if c.to_up.front().is_some_and(|(t, _)| *t <= vt) {
            let (_, msg) = c.to_up.pop_front().unwrap();
            let what = format!("{:?}", Short(&msg));
            if matches!(msg, Msg::Welcome { .. }) {
                self.welcomed_at.push(vt);
            }
            if matches!(msg, Msg::Ack { .. }) {
                self.acks_at.push(vt);
            }
            if let Msg::Refuse { code, reason } = &msg {
                self.fail(&format!("receiver refused the link: {code:?} {reason}"));
            }
            let welcome = matches!(msg, Msg::Welcome { .. });
            let r = self.conn.as_mut().unwrap().sess.handle(msg, now);
            self.note(format!("uplink got {what}"));
            if let Err(e) = r {
                self.cut(&format!("session ended: {e:?}"));
            } else if welcome {
                // As the uplink task does: a new receiver epoch forgets every delivery.
                let epoch = self.conn.as_ref().unwrap().sess.epoch();
                if self.uplink_epoch.is_some_and(|e| e != epoch) {
                    self.delivered.clear();
                    self.sub.force_relist();
                    self.note("receiver epoch changed: offering everything again".into());
                }
                self.uplink_epoch = Some(epoch);
            }
            return true;
        }
        false
    }

    /// Run until virtual time `end`, applying `actions` (sorted by time).
    fn run(&mut self, actions: &mut VecDeque<(u64, Action)>, end: u64, mut done: impl FnMut(&Sim) -> bool) {
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > 5_000_000 {
                self.fail("the simulation does not settle");
            }
            while actions.front().is_some_and(|(t, _)| *t <= self.vt) {
                let (_, a) = actions.pop_front().unwrap();
                self.apply(a);
            }
            if self.conn.is_none() && self.vt >= self.next_dial {
                if self.receiver_up() {
                    self.note("dialled: connected".into());
                    let site = SITE;
                    self.conn = Some(Conn {
                        sess: Session::new(self.params.clone(), self.metrics.clone(), self.now()),
                        core: Core::new(site, NODE, &[], self.mirror.epoch().unwrap()),
                        to_recv: VecDeque::new(),
                        to_up: VecDeque::new(),
                        rbuf: BytesMut::new(),
                        closed: false,
                        reading: None,
                    });
                    self.sub.force_relist();
                } else {
                    let wait = self.backoff.next(&mut self.rng);
                    self.next_dial = self.vt + 1 + wait.as_millis() as u64;
                }
            }
            self.pump();
            if self.deliver() {
                continue;
            }
            if let Some(c) = self.conn.as_mut() {
                let now = self.base + Duration::from_millis(self.vt);
                if c.sess.poll_timeout(now) <= now {
                    if let Err(e) = c.sess.handle_timeout(now) {
                        self.cut(&format!("session ended: {e:?}"));
                        continue;
                    }
                    self.pump();
                }
            }
            if done(self) || self.vt >= end {
                return;
            }
            // Advance to the next thing that happens.
            let mut next = end;
            if let Some((t, _)) = actions.front() {
                next = next.min(*t);
            }
            match &self.conn {
                Some(c) => {
                    if let Some((t, _)) = c.to_recv.front() {
                        next = next.min(*t);
                    }
                    if let Some((t, _)) = c.to_up.front() {
                        next = next.min(*t);
                    }
                    if let Some((t, _)) = &c.reading {
                        next = next.min(*t);
                    }
                    let at = c.sess.poll_timeout(self.now());
                    let ms = at.saturating_duration_since(self.base).as_millis() as u64;
                    next = next.min(ms.max(self.vt + 1));
                }
                None => next = next.min(self.next_dial.max(self.receiver_down_until.min(self.next_dial))),
            }
            self.vt = next.max(self.vt + 1).min(end.max(self.vt));
        }
    }

    fn all_delivered(&self) -> bool {
        self.origin.segs.iter().all(|s| {
            if s.deleted {
                self.gone_known(s)
            } else {
                s.seal.is_some() && self.delivered.contains(&s.rel)
            }
        })
    }

    /// A segment deleted at the origin is sealed at the mirror (it arrived
    /// whole before) or kept there as a tombstone with its seal record.
    fn gone_known(&self, s: &OSeg) -> bool {
        self.mirror.have(&s.rel).is_ok_and(|(_, sealed)| sealed)
            || SealRecord::load(&gone_path(&self.dir.join("mirror/state"), &s.rel)).ok().flatten() == s.seal
    }

    /// The end state: every segment delivered, the mirror identical to the
    /// origin and sealed there (unless the receiver lost its seal records
    /// after the uplink had its confirmation).
    fn check_end(&self) {
        if !self.all_delivered() {
            let missing: Vec<String> = self
                .origin
                .segs
                .iter()
                .filter(|s| if s.deleted { !self.gone_known(s) } else { !self.delivered.contains(&s.rel) })
                .map(|s| format!("{}{}", s.rel.display(), if s.deleted { " (deleted: no tombstone)" } else { "" }))
                .collect();
            self.fail(&format!("not delivered in the end: {missing:?}"));
        }
        for s in self.origin.segs.iter().filter(|s| !s.deleted) {
            let got = std::fs::read(self.dir.join("mirror/archive").join(&s.rel)).unwrap_or_default();
            if got != s.data {
                self.fail(&format!("mirror of {} differs from its origin in the end", s.rel.display()));
            }
            let (len, sealed) = self.mirror.have(&s.rel).unwrap();
            if len != s.data.len() as u64 || !sealed {
                self.fail(&format!("mirror of {} is not sealed at its length ({len}, {sealed})", s.rel.display()));
            }
            // The mirror's seal record, kept from its appends (through receiver
            // restarts and torn tails), says what the origin's says.
            let rec = SealRecord::load(&seal_path(&self.dir.join("mirror/state"), &s.rel)).ok().flatten();
            let key = |r: &SealRecord| {
                (r.len, r.sha256.clone(), r.frames, r.records, (r.records > 0).then_some((r.first_seq, r.next_seq)))
            };
            if rec.as_ref().map(key) != s.seal.as_ref().map(key) {
                self.fail(&format!(
                    "the mirror's seal record of {} differs from the origin's: {rec:?}, origin {:?}",
                    s.rel.display(),
                    s.seal
                ));
            }
        }
    }
}

/// A message without its payload, for the trace.
struct Short<'a>(&'a Msg);

impl std::fmt::Debug for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Msg::Append { id, offset, frames } => write!(f, "APPEND id={id} offset={offset} len={}", frames.len()),
            m => write!(f, "{m:?}"),
        }
    }
}

/// A random scenario over about `span` ms of virtual time.
fn scenario(rng: &mut StdRng, span: u64) -> VecDeque<(u64, Action)> {
    let mut out = Vec::new();
    let n = rng.random_range(10..80);
    for _ in 0..n {
        let t = rng.random_range(0..span);
        let a = match rng.random_range(0..100) {
            0..=54 => Action::Commit(rng.random_range(1..400)),
            55..=66 => Action::Seal,
            67..=76 => Action::Cut,
            77..=83 => Action::Outage(if rng.random_bool(0.1) {
                rng.random_range(30_000..600_000)
            } else {
                rng.random_range(50..5_000)
            }),
            84..=89 => Action::RestartReceiver { lose_state: rng.random_bool(0.3), torn_tail: rng.random_bool(0.5) },
            90..=94 => Action::RestartUplink { lose_state: rng.random_bool(0.4) },
            95..=96 => Action::DropOldest,
            _ => {
                let a = rng.random_range(0..50);
                Action::Latency(a, a + rng.random_range(0..200))
            }
        };
        out.push((t, a));
    }
    // A backlog at the start, sometimes: live-first with segments waiting.
    if rng.random_bool(0.3) {
        for i in 0..rng.random_range(2..6) {
            out.push((i, Action::Commit(300)));
            out.push((i, Action::Seal));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out.into()
}

#[derive(Default, Debug)]
struct Totals {
    segments: usize,
    sessions: usize,
    appends: usize,
    acks: usize,
    rotations: usize,
    tombstones: usize,
}

fn one_case(seed: u64, metrics: &Metrics, totals: &mut Totals) {
    let dir = Scratch::new(&format!("case-{seed}"));
    let mut sim = Sim::new(seed, &dir.0, metrics);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let span = rng.random_range(2_000..30_000);
    let mut actions = scenario(&mut rng, span);
    let last = actions.back().map_or(0, |(t, _)| *t);
    sim.run(&mut actions, last + 1, |_| false);
    // Leave the link alone: seal what is open, restore the network, and it must converge.
    sim.origin.seal(sim.vt);
    sim.latency = (1, 20);
    let limit = sim.vt.max(sim.receiver_down_until) + 120_000;
    sim.run(&mut VecDeque::new(), limit, |s| s.all_delivered() && s.conn.as_ref().is_some_and(|c| c.sess.welcomed()));
    sim.check_end();
    totals.segments += sim.origin.segs.len();
    totals.sessions += sim.welcomed_at.len();
    totals.appends += sim.appends_sent_at.len();
    totals.acks += sim.acks_at.len();
    totals.rotations += sim.rotations;
    totals.tombstones += sim.origin.gone.len();
}

#[test]
fn seeded_random_sessions_keep_the_mirror_a_prefix_and_converge() {
    let metrics = Metrics::new();
    if let Some(seed) = std::env::var("FERRY_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        eprintln!("replaying seed {seed}");
        let mut totals = Totals::default();
        one_case(seed, &metrics, &mut totals);
        // Its own checks ran in the case; it must have run a session at all.
        assert!(totals.sessions > 0 && totals.segments > 0, "seed {seed} ran nothing: {totals:?}");
        return;
    }
    let cases: u64 = std::env::var("FERRY_SIM_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    assert!(cases > 0, "FERRY_SIM_CASES=0 runs nothing");
    let base: u64 = rand::random::<u32>() as u64 * 100_000;
    eprintln!("link simulation: {cases} cases, seeds {base}..{} (replay one with FERRY_SIM_SEED=<seed>)", base + cases);
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in base..base + cases {
        one_case(seed, &metrics, &mut totals);
    }
    eprintln!("link simulation: {cases} cases in {:.1} s: {totals:?}", started.elapsed().as_secs_f64());
    assert!(totals.sessions > cases as usize * 2, "the scenarios cut and restart links");
    assert!(totals.tombstones > cases as usize / 10, "the scenarios delete undelivered segments");
}

#[test]
fn a_commit_on_an_idle_link_is_sent_at_once_without_a_timer() {
    let metrics = Metrics::new();
    let dir = Scratch::new("idle");
    let mut sim = Sim::new(1, &dir.0, &metrics);
    sim.params.window = 1 << 20;
    sim.latency = (5, 5);
    let mut actions: VecDeque<(u64, Action)> = vec![(0, Action::Commit(10))].into();
    // Connected, delivered what there was, idle (keepalives only) for a while.
    sim.run(&mut actions, 5_000, |_| false);
    assert!(!sim.acks_at.is_empty(), "the first commit was acknowledged");
    for t in [5_037u64, 7_211, 9_999] {
        sim.run(&mut VecDeque::new(), t, |_| false);
        assert_eq!(sim.vt, t);
        let before = sim.appends_sent_at.len();
        sim.origin.commit(3, sim.vt);
        // No time passes: the store's notification alone puts the APPEND on the wire.
        sim.pump();
        assert_eq!(sim.appends_sent_at.len(), before + 1, "an APPEND at {t} ms, the commit's own instant");
        assert_eq!(*sim.appends_sent_at.last().unwrap(), t);
        let acks = sim.acks_at.len();
        sim.run(&mut VecDeque::new(), t + 20, |s| s.acks_at.len() > acks);
        assert!(sim.acks_at.len() > acks && sim.vt <= t + 10, "acknowledged one round trip later");
    }
}

#[test]
fn the_link_returns_within_a_second_after_outages_of_any_length() {
    let metrics = Metrics::new();
    for (i, outage_ms) in [1_000u64, 10_000, 600_000].into_iter().enumerate() {
        for seed in 0..20u64 {
            let dir = Scratch::new(&format!("outage-{i}-{seed}"));
            let mut sim = Sim::new(seed, &dir.0, &metrics);
            sim.latency = (1, 10);
            let mut actions: VecDeque<(u64, Action)> = VecDeque::new();
            // Commits every 100 ms throughout; the receiver goes away at 2 s.
            let end = 2_000 + outage_ms + 3_000;
            let mut t = 0;
            while t < end {
                actions.push_back((t, Action::Commit(5)));
                if t == 2_000 {
                    actions.push_back((t, Action::Outage(outage_ms)));
                }
                t += 100;
            }
            sim.run(&mut actions, end, |_| false);
            let back = 2_000 + outage_ms;
            let first_ack = sim.acks_at.iter().find(|t| **t >= back).copied();
            let Some(first_ack) = first_ack else { sim.fail("no acknowledgement after the outage") };
            let took = first_ack - back;
            // Within backoff_max (the jittered wait is at most the ceiling), plus
            // the dial, HELLO/WELCOME, OPEN/HAVE and APPEND/ACK round trips.
            assert!(
                took <= BACKOFF_MAX.as_millis() as u64 + 80,
                "seed {seed}: after an outage of {outage_ms} ms the first acknowledgement came {took} ms after the receiver's return"
            );
        }
    }
}

#[test]
fn fresh_records_do_not_wait_behind_the_backlog_of_their_segment() {
    let metrics = Metrics::new();
    let dir = Scratch::new("fresh");
    let mut sim = Sim::new(3, &dir.0, &metrics);
    // A slow link: 16 KiB in flight over a 50 ms round trip, about 330 kB/s.
    sim.params.window = 16 << 10;
    sim.params.chunk_max = 16 << 10;
    sim.params.live_share = 0.5;
    sim.params.rotate_after = 256 << 10;
    sim.latency = (25, 25);
    // The receiver is away for 5 s while the stream's one open segment grows a backlog.
    let mut actions: VecDeque<(u64, Action)> = vec![(0, Action::Outage(5_000))].into();
    for t in (0..5_000).step_by(20) {
        actions.push_back((t, Action::Commit(4_000)));
    }
    sim.run(&mut actions, 5_000, |_| false);
    let backlog = sim.origin.segs.last().unwrap().data.len();
    assert!(backlog > 1 << 20, "a backlog of {backlog} bytes in the open segment");
    let backlog_rel = sim.origin.segs.last().unwrap().rel.clone();
    let mirrored_before = sim.mirror.have(&backlog_rel).map(|(len, _)| len).unwrap_or(0);
    // Then one fresh record a second while it drains.
    for k in 0..15u64 {
        // From the drain's first second (the link is back within 1 s of the receiver).
        let t = 7_000 + k * 1_000;
        sim.run(&mut VecDeque::new(), t, |_| false);
        sim.origin.commit(1, t);
        let seg = sim.origin.segs.last().unwrap();
        sim.watched.push((seg.rel.clone(), seg.data.len() as u64, t, None));
    }
    sim.run(&mut VecDeque::new(), 30_000, |_| false);
    assert!(sim.rotations >= 1, "the uplink asked for a new segment");
    for (rel, _, at, got) in &sim.watched {
        let delay = got.map(|g| g - at);
        assert!(
            delay.is_some_and(|d| d <= 300),
            "a fresh record committed at {at} ms in {} reached the mirror after {delay:?} ms",
            rel.display()
        );
    }
    // Fresh records went first, and the backlog moved on too (more than
    // the live share alone would leave it).
    let mirrored_after = sim.mirror.have(&backlog_rel).map(|(len, _)| len).unwrap_or(0);
    assert!(
        mirrored_after >= mirrored_before + (backlog as u64 - mirrored_before) / 4,
        "the backlog went on draining: {mirrored_before} -> {mirrored_after} of {backlog} bytes"
    );
}
