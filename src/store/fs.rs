//! Every file operation of the store, the mirror and the state files that
//! changes the disk, in one small layer that tests can make fail on purpose.
//! (Reads go straight to `std::fs`: what fails here is writing.)
//!
//! ## Why
//! Archive disks fill up, virtual disks return `EIO`, `fsync` fails, a
//! filesystem is remounted read-only. What ferry does then is only known if
//! it is tested, and a real disk fails on its own schedule. [`Fs`] is the
//! raft-engine `FileSystem` idea in its smallest form: production code calls
//! it for every create, write, fsync, truncate, rename and remove; a node
//! built with [`Faults`] fails chosen calls (the N-th, N..N+k, or a seeded
//! random schedule) with `ENOSPC`, `EIO`, `EROFS` or a short write.
//!
//! ## Cost
//! Without faults each call is one branch on an `Option` before the system
//! call; `benches/README.md` has the e2e figures before and after.
//!
//! ## Fault spec
//! `FERRY_FAULTS` (read by `ferry run`, logged loudly; never set it in
//! production) or [`Faults::parse`] takes rules separated by `,`:
//! ```text
//! OP[~PATH]:KIND@N[xCOUNT|+]     fail the N-th matching call (1-based), COUNT calls or all from N on
//! seed=S:PERMILLE                fail write and fsync calls at random, PERMILLE in 1000, seeded
//! ```
//! `OP` is `write`, `fsync`, `create`, `rename`, `truncate`, `dirsync`,
//! `remove` or `any`; `PATH` a substring the path must contain (e.g.
//! `~archive/`); `KIND` is `enospc`, `eio`, `erofs`, `short` (half the
//! buffer is written, then `EIO`: a torn write) or `crash` (this call and
//! every later mutating call fail: the process image is gone, the files
//! stay as they were).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A file operation that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `write`: a positional write into a file.
    Write,
    /// `fsync`: `sync_data` or `sync_all` of a file.
    Fsync,
    /// `create`: a file created (or opened for writing).
    Create,
    /// `rename`: a file renamed over another (atomic replacement of state files).
    Rename,
    /// `truncate`: a file's length set (a torn or failed write cut back).
    Truncate,
    /// `dirsync`: an fsync of a directory, making creates and renames durable.
    DirSync,
    /// `remove`: a file deleted (retention, cleanup).
    Remove,
}

impl Op {
    fn parse(s: &str) -> Option<Option<Op>> {
        Some(Some(match s {
            "write" => Op::Write,
            "fsync" => Op::Fsync,
            "create" => Op::Create,
            "rename" => Op::Rename,
            "truncate" => Op::Truncate,
            "dirsync" => Op::DirSync,
            "remove" => Op::Remove,
            "any" => return Some(None),
            _ => return None,
        }))
    }
}

/// How an injected fault fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `enospc`: the disk is full.
    NoSpace,
    /// `eio`: an I/O error.
    Eio,
    /// `erofs`: the filesystem is read-only.
    ReadOnly,
    /// Writes: half the buffer lands on disk, then `EIO`. Other calls: `EIO`.
    Short,
    /// This and every later mutating call fail with `EIO`.
    Crash,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "enospc" => Kind::NoSpace,
            "eio" => Kind::Eio,
            "erofs" => Kind::ReadOnly,
            "short" => Kind::Short,
            "crash" => Kind::Crash,
            _ => return None,
        })
    }

    fn error(self, op: Op, path: &Path) -> io::Error {
        let errno = match self {
            Kind::NoSpace => libc::ENOSPC,
            Kind::ReadOnly => libc::EROFS,
            Kind::Eio | Kind::Short | Kind::Crash => libc::EIO,
        };
        let e = io::Error::from_raw_os_error(errno);
        io::Error::new(e.kind(), InjectedError { op, path: path.to_owned(), errno, source: e })
    }
}

/// The error an injected fault returns: it keeps the errno, so
/// [`raw_os_error_deep`] classifies it as the real one would be.
#[derive(Debug, thiserror::Error)]
#[error("{source} (injected into {op:?} of {path})")]
pub struct InjectedError {
    op: Op,
    path: PathBuf,
    errno: i32,
    #[source]
    source: io::Error,
}

/// The errno of an I/O error, looking through an injected fault's wrapper.
pub fn raw_os_error_deep(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| e.get_ref().and_then(|i| i.downcast_ref::<InjectedError>()).map(|i| i.errno))
}

/// What an I/O error means for the store: the disk is full, the filesystem
/// is read-only, or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// `ENOSPC` or `EDQUOT`: space may come back (retention, an operator).
    DiskFull,
    /// `EROFS`: the filesystem was remounted read-only.
    ReadOnly,
    /// Any other error: a failing disk.
    Io,
}

impl Trouble {
    /// The trouble an error means, looking through injected faults.
    pub fn of(e: &io::Error) -> Trouble {
        match raw_os_error_deep(e) {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Trouble::DiskFull,
            Some(libc::EROFS) => Trouble::ReadOnly,
            _ => Trouble::Io,
        }
    }

    /// Metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Trouble::DiskFull => "disk_full",
            Trouble::ReadOnly => "read_only",
            Trouble::Io => "io_error",
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    op: Option<Op>,
    path: Option<String>,
    kind: Kind,
    /// 1-based index of the first matching call that fails.
    from: u64,
    /// How many calls fail from there.
    count: u64,
    seen: u64,
}

/// A schedule of injected faults (tests only).
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    random: Mutex<Option<(u64, u32)>>,
    crashed: AtomicBool,
    injected: AtomicU64,
    /// What a power cut may take away, when tracked.
    unsynced: Mutex<Option<Unsynced>>,
}

/// What is not durable yet (module docs, "Power loss").
#[derive(Debug, Default)]
struct Unsynced {
    /// Files written since their last fsync, with the length that is durable.
    files: HashMap<PathBuf, u64>,
    /// Entry changes per directory since its last fsync, oldest first.
    dirs: HashMap<PathBuf, Vec<Entry>>,
}

#[derive(Debug)]
enum Entry {
    Created(PathBuf),
    Renamed { from: PathBuf, to: PathBuf, replaced: Option<Vec<u8>> },
    Removed { path: PathBuf, content: Vec<u8> },
}

/// What a power cut took away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut {
    /// Bytes written and never fsynced that are gone.
    pub bytes_lost: u64,
    /// Files cut back (some keep part of their unsynced tail).
    pub files_cut: u64,
    /// Directory entry changes undone (creates, renames, removes).
    pub entries_undone: u64,
    /// Pages left torn (zeros where data was written).
    pub torn_pages: u64,
}

/// A fault spec that does not parse: the rule and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule:?}: {why}")]
pub struct BadFaultRule {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub why: String,
}

impl Faults {
    /// Parse a spec (module docs). Errors name the rule.
    pub fn parse(spec: &str) -> Result<Faults, BadFaultRule> {
        let f = Faults::default();
        for rule in spec.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let err = |why: String| BadFaultRule { rule: rule.to_owned(), why };
            if let Some(rest) = rule.strip_prefix("seed=") {
                let (seed, pm) = rest.split_once(':').ok_or_else(|| err("expected seed=S:PERMILLE".into()))?;
                let seed = seed.parse().map_err(|_| err("seed is not a number".into()))?;
                let pm: u32 = pm.parse().map_err(|_| err("per-mille is not a number".into()))?;
                f.set_random(seed, pm.min(1000));
                continue;
            }
            let bad = || err("expected OP[~PATH]:KIND@N[xCOUNT|+]".into());
            let (target, rest) = rule.split_once(':').ok_or_else(bad)?;
            let (kind, when) = rest.split_once('@').ok_or_else(bad)?;
            let (op, path) = match target.split_once('~') {
                Some((o, p)) => (o, Some(p.to_owned())),
                None => (target, None),
            };
            let op = Op::parse(op).ok_or_else(|| err(format!("unknown operation {op:?}")))?;
            let kind = Kind::parse(kind).ok_or_else(|| err(format!("unknown fault {kind:?}")))?;
            let (from, count) = if let Some(n) = when.strip_suffix('+') {
                (n, u64::MAX)
            } else if let Some((n, c)) = when.split_once('x') {
                (n, c.parse().map_err(|_| bad())?)
            } else {
                (when, 1)
            };
            let from: u64 = from.parse().map_err(|_| bad())?;
            f.add(op, path, kind, from.max(1), count);
        }
        Ok(f)
    }

    /// Fail `count` calls of `op` (any op if `None`) on paths containing
    /// `path`, from the `from`-th such call on (1-based, counted from now).
    pub fn add(&self, op: Option<Op>, path: Option<String>, kind: Kind, from: u64, count: u64) {
        self.rules.lock().expect("not poisoned").push(Rule { op, path, kind, from, count, seen: 0 });
    }

    /// Fail write and fsync calls at random, `per_mille` in 1000, from `seed`.
    pub fn set_random(&self, seed: u64, per_mille: u32) {
        *self.random.lock().expect("not poisoned") = Some((seed | 1, per_mille));
    }

    /// Forget every rule and the crash: the disk is healthy again.
    pub fn clear(&self) {
        self.rules.lock().expect("not poisoned").clear();
        *self.random.lock().expect("not poisoned") = None;
        self.crashed.store(false, Ordering::SeqCst);
    }

    /// Remember what is not durable yet, so that [`power_cut`](Self::power_cut)
    /// can take it away.
    pub fn track_power(&self) {
        *self.unsynced.lock().expect("not poisoned") = Some(Unsynced::default());
    }

    fn track(&self, f: impl FnOnce(&mut Unsynced)) {
        if let Some(u) = self.unsynced.lock().expect("not poisoned").as_mut() {
            f(u);
        }
    }

    /// The disk as it is after the power comes back (module docs): call it
    /// once nothing writes any more (after a `crash`, the store closed).
    /// `seed` chooses what of the unsynced state reached the disk.
    pub fn power_cut(&self, seed: u64) -> io::Result<PowerCut> {
        const PAGE: u64 = 4096;
        let Some(u) = self.unsynced.lock().expect("not poisoned").replace(Unsynced::default()) else {
            return Ok(PowerCut::default());
        };
        let mut x = seed | 1;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if n == 0 {
                0
            } else {
                x % n
            }
        };
        let mut cut = PowerCut::default();
        let mut files = u.files;
        // Directories first: an entry change undone moves or removes files.
        let mut dirs: Vec<(PathBuf, Vec<Entry>)> = u.dirs.into_iter().collect();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, entries) in dirs {
            if rand(2) == 0 {
                continue;
            }
            for e in entries.into_iter().rev() {
                cut.entries_undone += 1;
                match e {
                    Entry::Created(p) => {
                        if p.is_dir() {
                            let _ = fs::remove_dir_all(&p);
                        } else {
                            let _ = fs::remove_file(&p);
                        }
                        files.remove(&p);
                    }
                    Entry::Renamed { from, to, replaced } => {
                        if to.exists() {
                            fs::rename(&to, &from)?;
                        }
                        if let Some(d) = files.remove(&to) {
                            files.insert(from.clone(), d);
                        }
                        if let Some(old) = replaced {
                            fs::write(&to, old)?;
                        }
                    }
                    Entry::Removed { path, content } => {
                        fs::write(&path, content)?;
                        files.remove(&path);
                    }
                }
            }
        }
        let mut files: Vec<(PathBuf, u64)> = files.into_iter().collect();
        files.sort();
        for (path, durable) in files {
            let Ok(len) =
                fs::metadata(&path)
                    .and_then(|m| if m.is_file() { Ok(m.len()) } else { Err(io::ErrorKind::Other.into()) })
            else {
                continue;
            };
            if len <= durable {
                continue;
            }
            let pages = (len - durable).div_ceil(PAGE);
            let keep = (durable + rand(pages + 1) * PAGE).min(len);
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(keep)?;
            cut.files_cut += 1;
            cut.bytes_lost += len - keep;
            if keep > durable && rand(3) == 0 {
                let from = (keep - 1) / PAGE * PAGE;
                let from = from.max(durable);
                f.write_all_at(&vec![0; (keep - from) as usize], from)?;
                cut.torn_pages += 1;
            }
        }
        Ok(cut)
    }

    /// True once a `crash` fault fired.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The fault for this call, if any.
    fn check(&self, op: Op, path: &Path) -> Option<Kind> {
        if self.crashed() {
            return Some(Kind::Crash);
        }
        let mut hit = None;
        for r in self.rules.lock().expect("not poisoned").iter_mut() {
            if r.op.is_some_and(|o| o != op) {
                continue;
            }
            if r.path.as_ref().is_some_and(|p| !path.to_string_lossy().contains(p.as_str())) {
                continue;
            }
            r.seen += 1;
            if hit.is_none() && r.seen >= r.from && r.seen - r.from < r.count {
                hit = Some(r.kind);
            }
        }
        if hit.is_none() && matches!(op, Op::Write | Op::Fsync) {
            if let Some((x, pm)) = self.random.lock().expect("not poisoned").as_mut() {
                // xorshift64: small, seeded, replayable.
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                if (*x % 1000) < u64::from(*pm) {
                    hit = Some(if op == Op::Write && *x % 3 == 0 { Kind::Short } else { Kind::Eio });
                }
            }
        }
        if let Some(k) = hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
            if k == Kind::Crash {
                self.crashed.store(true, Ordering::SeqCst);
            }
        }
        hit
    }
}

/// Free space and writability of a filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to this (unprivileged) process.
    pub free_bytes: u64,
    /// The filesystem is mounted read-only.
    pub read_only: bool,
}

/// The file layer. Cheap to clone; `Fs::default()` is the real disk.
#[derive(Clone, Debug, Default)]
pub struct Fs {
    faults: Option<Arc<Faults>>,
}

impl Fs {
    /// The real disk, no faults.
    pub fn real() -> Fs {
        Fs { faults: None }
    }

    /// The real disk with `faults` injected.
    pub fn with_faults(faults: Arc<Faults>) -> Fs {
        Fs { faults: Some(faults) }
    }

    /// From `FERRY_FAULTS`, if set (tests drive real processes this way).
    pub fn from_env() -> Result<Fs, BadFaultRule> {
        match std::env::var("FERRY_FAULTS") {
            Ok(spec) if !spec.trim().is_empty() => Ok(Fs::with_faults(Arc::new(Faults::parse(&spec)?))),
            _ => Ok(Fs::real()),
        }
    }

    /// The fault schedule, when there is one.
    pub fn faults(&self) -> Option<&Arc<Faults>> {
        self.faults.as_ref()
    }

    /// Note a change that is not durable yet (power-loss tracking).
    fn track(&self, f: impl FnOnce(&mut Unsynced)) {
        if let Some(faults) = &self.faults {
            faults.track(f);
        }
    }

    #[inline]
    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        match &self.faults {
            None => Ok(()),
            Some(f) => match f.check(op, path) {
                None => Ok(()),
                Some(k) => Err(k.error(op, path)),
            },
        }
    }

    /// Create a new file for writing; fails if it exists.
    pub fn create_new(&self, path: &Path) -> io::Result<FsFile> {
        self.check(Op::Create, path)?;
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        self.track(|u| u.created(path));
        Ok(FsFile { file, path: path.to_owned(), fs: self.clone() })
    }

    /// Open an existing file (or create it) for positional writes.
    pub fn open_write(&self, path: &Path) -> io::Result<FsFile> {
        let new = !path.exists();
        if new {
            self.check(Op::Create, path)?;
        }
        let file = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
        if new {
            self.track(|u| u.created(path));
        }
        Ok(FsFile { file, path: path.to_owned(), fs: self.clone() })
    }

    /// `mkdir -p`, then fsync the parent of each directory made, so a new
    /// date directory survives power loss.
    pub fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dir_all(parent)?;
        }
        self.check(Op::Create, dir)?;
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        self.track(|u| u.dirs.entry(parent(dir)).or_default().push(Entry::Created(dir.to_owned())));
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => self.sync_dir(p).inspect_err(|_| {
                // Not durable as a name: take it back, or the next call would
                // find it there and never sync its parent (a power cut could
                // then take the directory with every segment written in it).
                let _ = fs::remove_dir(dir);
            }),
            _ => Ok(()),
        }
    }

    /// fsync a directory so a file created, renamed or removed in it is durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::DirSync, dir)?;
        File::open(dir)?.sync_all()?;
        self.track(|u| {
            u.dirs.remove(dir);
        });
        Ok(())
    }

    /// Rename `from` over `to` (replacing it): how state files are replaced atomically. Not durable until the directory
    /// is synced.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        let mut replaced = None;
        self.track(|_| replaced = Some(fs::read(to).ok()));
        fs::rename(from, to)?;
        self.track(|u| {
            if let Some(d) = u.files.remove(from) {
                u.files.insert(to.to_owned(), d);
            }
            let entry = Entry::Renamed { from: from.to_owned(), to: to.to_owned(), replaced: replaced.flatten() };
            u.dirs.entry(parent(to)).or_default().push(entry);
        });
        Ok(())
    }

    /// Remove a file; a missing file is not an error.
    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        let mut content = None;
        self.track(|_| content = fs::read(path).ok());
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(()) => {
                self.track(|u| {
                    u.files.remove(path);
                    if let Some(content) = content {
                        u.dirs.entry(parent(path)).or_default().push(Entry::Removed { path: path.to_owned(), content });
                    }
                });
                Ok(())
            }
        }
    }

    /// Remove an empty directory; anything else (not empty, missing) is ignored.
    pub fn remove_dir_if_empty(&self, dir: &Path) {
        if self.check(Op::Remove, dir).is_ok() {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Replace `path` with `bytes` atomically: a crash leaves the old file or
    /// the new one, never a mix (temp file, fsync, rename, fsync of the directory).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let dir = path.parent().expect("state paths have a parent");
        self.create_dir_all(dir)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut f = self.create_new(&tmp)?;
            f.write_all_at(bytes, 0)?;
            f.sync_all()
        })();
        if let Err(e) = written.and_then(|()| self.rename(&tmp, path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir(dir)
    }

    /// Append one line to a text file (creating it), and fsync it.
    pub fn append_line(&self, path: &Path, line: &str) -> io::Result<()> {
        if let Some(d) = path.parent() {
            self.create_dir_all(d)?;
        }
        let mut f = self.open_write(path)?;
        let len = f.size()?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(e) = f.write_all_at(&buf, len) {
            let _ = f.file.set_len(len);
            return Err(e);
        }
        f.sync_data()
    }

    /// Free bytes for unprivileged writers, and whether the filesystem is
    /// mounted read-only (`statvfs`).
    pub fn space(&self, dir: &Path) -> io::Result<Space> {
        let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Space {
            free_bytes: (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
            read_only: st.f_flag & libc::ST_RDONLY != 0,
        })
    }
}

impl Unsynced {
    fn created(&mut self, path: &Path) {
        self.files.insert(path.to_owned(), 0);
        self.dirs.entry(parent(path)).or_default().push(Entry::Created(path.to_owned()));
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_owned).unwrap_or_default()
}

/// A file opened for writing through [`Fs`]. Writes are positional: the
/// caller says where every byte goes, so a failed write can never shift
/// the next one behind a hole.
#[derive(Debug)]
pub struct FsFile {
    file: File,
    path: PathBuf,
    fs: Fs,
}

impl FsFile {
    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length now.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Write all of `buf` at `offset`. On error some prefix may have landed
    /// (a short write); the caller cuts it with [`set_len`](Self::set_len).
    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(f) = &self.fs.faults {
            self.dirty();
            if let Some(k) = f.check(Op::Write, &self.path) {
                if k == Kind::Short {
                    let _ = self.file.write_all_at(&buf[..buf.len() / 2], offset);
                }
                return Err(k.error(Op::Write, &self.path));
            }
        }
        self.file.write_all_at(buf, offset)
    }

    /// About to change: what is on disk now is what its last fsync made
    /// durable, unless it changed since (power-loss tracking).
    fn dirty(&self) {
        self.fs.track(|u| {
            if !u.files.contains_key(&self.path) {
                let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                u.files.insert(self.path.clone(), len);
            }
        });
    }

    /// Cut (or extend) the file to `len`; the caller fsyncs after.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check(Op::Truncate, &self.path)?;
        self.dirty();
        self.file.set_len(len)?;
        // A cut-back is followed by an fsync in every caller; until then
        // the durable part is at most what is left.
        self.fs.track(|u| {
            if let Some(d) = u.files.get_mut(&self.path) {
                *d = (*d).min(len);
            }
        });
        Ok(())
    }

    /// fsync of the data (`fdatasync`): what a commit waits for.
    pub fn sync_data(&self) -> io::Result<()> {
        self.fs.check(Op::Fsync, &self.path)?;
        self.file.sync_data()?;
        self.synced();
        Ok(())
    }

    /// fsync of data and metadata.
    pub fn sync_all(&self) -> io::Result<()> {
        self.fs.check(Op::Fsync, &self.path)?;
        self.file.sync_all()?;
        self.synced();
        Ok(())
    }

    fn synced(&self) {
        self.fs.track(|u| {
            u.files.remove(&self.path);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_what_was_fsynced_and_may_undo_what_the_directory_did_not_sync() {
        /// A segment fsynced at 10 000 bytes then 20 000 more never
        /// fsynced; a state file replaced by a rename whose directory was
        /// not fsynced. `sync` fsyncs both at the end.
        fn scene(d: &Path, sync: bool) -> Arc<Faults> {
            let faults = Arc::new(Faults::default());
            faults.track_power();
            let fs = Fs::with_faults(faults.clone());
            std::fs::write(d.join("state"), b"old").unwrap();
            let mut f = fs.create_new(&d.join("seg")).unwrap();
            f.write_all_at(&[1; 10_000], 0).unwrap();
            f.sync_all().unwrap();
            fs.sync_dir(d).unwrap();
            f.write_all_at(&[2; 20_000], 10_000).unwrap();
            let mut t = fs.create_new(&d.join("state.tmp")).unwrap();
            t.write_all_at(b"new", 0).unwrap();
            t.sync_all().unwrap();
            fs.rename(&d.join("state.tmp"), &d.join("state")).unwrap();
            if sync {
                f.sync_all().unwrap();
                fs.sync_dir(d).unwrap();
            }
            faults
        }
        let (mut lost_some, mut undone_some) = (false, false);
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let cut = scene(dir.path(), false).power_cut(seed).unwrap();
            let bytes = std::fs::read(dir.path().join("seg")).unwrap();
            assert!(bytes.len() >= 10_000 && bytes[..10_000].iter().all(|b| *b == 1), "the fsynced part stays");
            assert!(bytes.len() == 30_000 || (bytes.len() - 10_000) % 4096 == 0, "whole pages: {}", bytes.len());
            let state = std::fs::read(dir.path().join("state")).unwrap();
            assert!(state == b"old" || state == b"new", "old or new, never a mix: {state:?}");
            assert!(!dir.path().join("state.tmp").exists(), "the temporary file is gone either way");
            lost_some |= cut.bytes_lost > 0;
            undone_some |= state == b"old";
        }
        assert!(lost_some && undone_some, "some seeds take unsynced bytes and undo the rename");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(scene(dir.path(), true).power_cut(7).unwrap(), PowerCut::default(), "all durable: nothing to take");
        assert_eq!(std::fs::read(dir.path().join("seg")).unwrap().len(), 30_000);
        assert_eq!(std::fs::read(dir.path().join("state")).unwrap(), b"new");
    }

    #[test]
    fn a_directory_whose_parent_sync_failed_is_made_again_and_synced() {
        // Found by the power-loss model: the directory stayed, the next call
        // found it and returned, and a power cut could take it with its segments.
        let root = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        faults.track_power();
        let fs = Fs::with_faults(faults.clone());
        let dir = root.path().join("archive/s1");
        faults.add(Some(Op::DirSync), None, Kind::ReadOnly, 2, 1);
        assert!(fs.create_dir_all(&dir).is_err(), "the sync of archive/ after making s1 fails");
        assert!(!dir.exists(), "a directory whose name is not durable is taken back");
        fs.create_dir_all(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(faults.power_cut(3).unwrap().entries_undone, 0, "made again and synced: nothing to undo");
        assert!(dir.is_dir());
    }

    #[test]
    fn spec_parses_and_fires_on_the_nth_call() {
        let f = Faults::parse("write~archive/:enospc@2x2, fsync:eio@1, rename:erofs@3+").unwrap();
        let p = Path::new("/d/archive/x");
        assert_eq!(f.check(Op::Write, p), None);
        assert_eq!(f.check(Op::Write, Path::new("/d/state/x")), None, "path filter");
        assert_eq!(f.check(Op::Write, p), Some(Kind::NoSpace));
        assert_eq!(f.check(Op::Write, p), Some(Kind::NoSpace));
        assert_eq!(f.check(Op::Write, p), None);
        assert_eq!(f.check(Op::Fsync, p), Some(Kind::Eio));
        assert_eq!(f.check(Op::Fsync, p), None);
        assert_eq!((f.check(Op::Rename, p), f.check(Op::Rename, p)), (None, None));
        for _ in 0..5 {
            assert_eq!(f.check(Op::Rename, p), Some(Kind::ReadOnly));
        }
        assert!(Faults::parse("write:boom@1").unwrap_err().to_string().contains("unknown fault"));
        assert!(Faults::parse("write:eio").is_err());
    }

    #[test]
    fn injected_errors_classify_like_real_ones() {
        let e = Kind::NoSpace.error(Op::Write, Path::new("x"));
        assert_eq!(Trouble::of(&e), Trouble::DiskFull);
        assert_eq!(Trouble::of(&Kind::ReadOnly.error(Op::Create, Path::new("x"))), Trouble::ReadOnly);
        assert_eq!(Trouble::of(&io::Error::from_raw_os_error(libc::ENOSPC)), Trouble::DiskFull);
        assert_eq!(Trouble::of(&io::Error::from_raw_os_error(libc::EIO)), Trouble::Io);
    }

    #[test]
    fn short_write_leaves_half_and_crash_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(Faults::parse("write:short@1,fsync:crash@2").unwrap());
        let fs = Fs::with_faults(f.clone());
        let mut file = fs.create_new(&dir.path().join("a")).unwrap();
        assert!(file.write_all_at(b"abcdef", 0).is_err());
        assert_eq!(file.size().unwrap(), 3);
        file.sync_data().unwrap();
        assert!(file.sync_data().is_err());
        assert!(f.crashed());
        assert!(fs.create_new(&dir.path().join("b")).is_err(), "everything fails after a crash");
        f.clear();
        fs.create_new(&dir.path().join("b")).unwrap();
    }
}
