//! One tailed file as lines: the line it is in the middle of, the multi-line
//! record it is joining, its quota, and `done`, the offset up to which every
//! byte has become a record (or was skipped): what may be checkpointed once
//! the records are committed.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use memchr::memchr;
use regex::bytes::Regex;

use super::identity::{Fingerprint, Key};
use crate::config::units::Quota;
use crate::ingest::batcher::Batcher;

/// How a listener's files become records: fixed for its life.
pub struct Rules {
    pub max_record: usize,
    pub multiline: Option<Regex>,
    pub quota: Option<Quota>,
}

/// What the lines of one read go into.
pub struct Emit<'a> {
    pub batcher: &'a mut Batcher,
    pub scratch: &'a mut Vec<u8>,
    /// `<PRI>1 TIMESTAMP` of this read.
    pub stamp: &'a [u8],
    pub now_ms: i64,
    pub now: Instant,
    pub max_record: usize,
    pub multiline: Option<&'a Regex>,
    pub quota: Option<Quota>,
    /// Lines skipped over the quota (and their bytes), counted by the caller.
    pub quota_records: u64,
    pub quota_bytes: u64,
    /// Files that went over their quota in this read: logged by the caller.
    pub over_quota: Vec<PathBuf>,
}

impl<'a> Emit<'a> {
    pub fn new(
        batcher: &'a mut Batcher,
        scratch: &'a mut Vec<u8>,
        rules: &'a Rules,
        stamp: &'a [u8],
        now: Instant,
        now_ms: i64,
    ) -> Emit<'a> {
        Emit {
            batcher,
            scratch,
            stamp,
            now_ms,
            now,
            max_record: rules.max_record,
            multiline: rules.multiline.as_ref(),
            quota: rules.quota,
            quota_records: 0,
            quota_bytes: 0,
            over_quota: Vec::new(),
        }
    }
}

pub struct Tail {
    pub key: Key,
    /// Where it was found first: the name its records carry.
    pub path: PathBuf,
    pub file: Option<File>,
    pub fp: Fingerprint,
    /// The next byte to read.
    pub read_at: u64,
    /// Every byte before it is a record handed on (or skipped).
    pub done: u64,
    /// Committed and checkpointed up to here.
    pub committed: u64,
    /// Bumped when the file is truncated: older positions are of other bytes.
    pub gen: u32,
    /// No longer at a watched path (renamed or deleted): read to its end, then closed.
    pub gone_since: Option<Instant>,
    pub last_growth: Instant,
    pub last_used: Instant,
    /// Bytes not yet read when last looked at.
    pub lag: u64,
    /// Its records' header after the timestamp: ` HOST APP - - [file@32473 path="…"] `.
    head: Vec<u8>,
    partial: Vec<u8>,
    /// The unfinished line went past max_record: what is kept is cut.
    partial_over: bool,
    partial_since: Option<Instant>,
    multi: Vec<u8>,
    multi_over: bool,
    multi_end: u64,
    multi_since: Option<Instant>,
    quota_period: u64,
    quota_used: u64,
    quota_skipping: bool,
}

impl Tail {
    pub fn new(key: Key, path: PathBuf, file: File, fp: Fingerprint, at: u64, host: &str, now: Instant) -> Tail {
        let head = head(host, &path);
        Tail {
            key,
            path,
            file: Some(file),
            fp,
            read_at: at,
            done: at,
            committed: at,
            gen: 0,
            gone_since: None,
            last_growth: now,
            last_used: now,
            lag: 0,
            head,
            partial: Vec::new(),
            partial_over: false,
            partial_since: None,
            multi: Vec::new(),
            multi_over: false,
            multi_end: at,
            multi_since: None,
            quota_period: 0,
            quota_used: 0,
            quota_skipping: false,
        }
    }

    /// Whether a line or a multi-line record is held.
    pub fn holds(&self) -> bool {
        !self.partial.is_empty() || self.partial_over || !self.multi.is_empty()
    }

    /// Start again at `at` (a rewind after a failed commit, a truncation).
    pub fn restart_at(&mut self, at: u64) {
        self.read_at = at;
        self.done = at;
        self.multi_end = at;
        self.partial.clear();
        self.partial_over = false;
        self.partial_since = None;
        self.multi.clear();
        self.multi_over = false;
        self.multi_since = None;
        self.gen = self.gen.wrapping_add(1);
    }

    /// Lines of `chunk`, read at `read_at`.
    pub fn feed(&mut self, chunk: &[u8], e: &mut Emit<'_>) {
        let base = self.read_at;
        let mut pos = 0;
        while let Some(nl) = memchr(b'\n', &chunk[pos..]) {
            let end = pos + nl;
            let end_offset = base + end as u64 + 1;
            if self.partial.is_empty() && !self.partial_over {
                let line = &chunk[pos..end];
                let cut = line.len() > e.max_record;
                self.line(&line[..line.len().min(e.max_record)], cut, line.len(), end_offset, e);
            } else {
                self.hold(&chunk[pos..end], e.max_record);
                let mut p = std::mem::take(&mut self.partial);
                let cut = self.partial_over;
                let len = p.len();
                self.line(&p, cut, len, end_offset, e);
                p.clear();
                self.partial = p;
                self.partial_over = false;
                self.partial_since = None;
            }
            pos = end + 1;
        }
        if pos < chunk.len() {
            if !self.holds() || self.partial_since.is_none() {
                self.partial_since = Some(e.now);
            }
            self.hold(&chunk[pos..], e.max_record);
        }
        self.read_at = base + chunk.len() as u64;
        self.last_growth = e.now;
    }

    fn hold(&mut self, bytes: &[u8], max: usize) {
        let room = max.saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.partial_over = true;
        }
        self.partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// One line ending at `end` (just past its newline). `len` is its length
    /// in the file (what the quota counts), `cut` says the kept part was cut.
    fn line(&mut self, line: &[u8], cut: bool, len: usize, end: u64, e: &mut Emit<'_>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(q) = e.quota {
            let period = (e.now_ms.max(0) as u64 / 1000) / q.period.as_secs().max(1);
            if period != self.quota_period {
                self.quota_period = period;
                self.quota_used = 0;
                self.quota_skipping = false;
            }
            let size = len as u64 + 1;
            if self.quota_skipping || self.quota_used + size > q.bytes {
                if !self.quota_skipping {
                    self.quota_skipping = true;
                    e.over_quota.push(self.path.clone());
                    // What was being joined is complete as far as this period goes.
                    self.flush_multi(e);
                }
                e.quota_records += 1;
                e.quota_bytes += size;
                self.done = end;
                return;
            }
            self.quota_used += size;
        }
        match e.multiline {
            Some(re) => {
                if self.multi.is_empty() || re.is_match(line) {
                    self.flush_multi(e);
                    self.multi_over = cut;
                    self.multi.extend_from_slice(line);
                } else {
                    let room = e.max_record.saturating_sub(self.multi.len());
                    let add = 1 + line.len();
                    if add > room || cut {
                        self.multi_over = true;
                    }
                    if room > 0 {
                        self.multi.push(b'\n');
                        self.multi.extend_from_slice(&line[..line.len().min(room - 1)]);
                    }
                }
                self.multi_end = end;
                self.multi_since = Some(e.now);
            }
            None => {
                self.emit(line, cut, e);
                self.done = end;
            }
        }
    }

    fn flush_multi(&mut self, e: &mut Emit<'_>) {
        if self.multi.is_empty() {
            return;
        }
        let m = std::mem::take(&mut self.multi);
        self.emit(&m, self.multi_over, e);
        self.multi = m;
        self.multi.clear();
        self.multi_over = false;
        self.multi_since = None;
        self.done = self.multi_end;
    }

    fn emit(&self, line: &[u8], cut: bool, e: &mut Emit<'_>) {
        e.scratch.clear();
        e.scratch.extend_from_slice(e.stamp);
        e.scratch.extend_from_slice(&self.head);
        e.scratch.extend_from_slice(line);
        e.batcher.push(e.scratch, cut, e.now_ms);
    }

    /// Take what is held as it is: after `timeout` without more, or (`all`)
    /// because the file is finished. A line taken without its newline ends a
    /// record; the rest of it, if it comes, is a record of its own.
    pub fn flush_held(&mut self, timeout: std::time::Duration, all: bool, e: &mut Emit<'_>) {
        let now = e.now;
        let stale = |since: Option<Instant>| all || since.is_some_and(|s| now.duration_since(s) >= timeout);
        if (!self.partial.is_empty() || self.partial_over) && stale(self.partial_since) {
            let mut p = std::mem::take(&mut self.partial);
            let cut = self.partial_over;
            let len = p.len();
            self.line(&p, cut, len, self.read_at, e);
            p.clear();
            self.partial = p;
            self.partial_over = false;
            self.partial_since = None;
        }
        if !self.multi.is_empty() && (self.partial.is_empty() && stale(self.multi_since)) {
            self.flush_multi(e);
        }
    }
}

/// ` HOST APP - - [file@32473 path="…"] `: RFC 5424 after PRI, VERSION and
/// TIMESTAMP, so routing, sinks and people read the file's records like any
/// other syslog record. APP-NAME is the file's name (at most 48 characters);
/// the whole path is a structured-data parameter (`"`, `\` and `]` escaped as
/// RFC 5424 says). 32473 is the private enterprise number RFC 5612 sets aside
/// for examples: ferry has none of its own.
fn head(host: &str, path: &std::path::Path) -> Vec<u8> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "-".into());
    let app: String = name.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(48).collect::<String>();
    let mut h = format!(" {host} {app} - - [file@32473 path=\"");
    for c in path.to_string_lossy().chars() {
        if matches!(c, '"' | '\\' | ']') {
            h.push('\\');
        }
        h.push(c);
    }
    h.push_str("\"] ");
    h.into_bytes()
}
