//! `ferry cat`: the records of an archive (edge or central mirror), selected
//! by site, stream and receive time, in order.
//!
//! Output forms:
//! - default, for a terminal: each record as it was received (unescaped); a
//!   record that held line breaks continues on lines that start with a tab
//!   (as `journalctl` shows multi-line messages), so one record never looks
//!   like several;
//! - `--raw`: the archive lines as stored (`\n`, `\r`, `\0`, `\\` escaped),
//!   exactly what `zstdcat` prints;
//! - `--json`: one object per record with its origin, sequence number and
//!   frame time range, and the record exactly (`record`, or `record_hex` when
//!   it is not UTF-8): for scripts.
//!
//! Records are printed per origin (site, stream, node) in sequence order, or,
//! with `--merge`, interleaved by receive time frame by frame. A closed pipe
//! (`| head`) ends the output quietly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::query::{self, time::parse_time, Archive, Origin, Segment, Selection, Stats};
use crate::store::clock::{Clock, SystemClock};
use crate::store::escape::unescape_into;
use crate::store::frame::{Frame, FrameHeader};

/// Which records: the archive, sites, streams, receive-time range (shared by `cat` and `grep`).
#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// A data_dir or its archive/, or a bucket the nodes upload to: s3://bucket/prefix [default: data].
    #[arg(value_name = "ARCHIVE")]
    location: Option<String>,
    /// For s3://: a node config whose [[bucket]] names the bucket gives endpoint, region, CA and
    /// credentials (without it: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ... from the environment).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only this site (repeat for several).
    #[arg(long)]
    site: Vec<String>,
    /// Only this stream (repeat for several).
    #[arg(long)]
    stream: Vec<String>,
    /// Records received at or after this time: RFC 3339, 2026-11-30T14:05 (UTC), 2026-11-30, -15m, -2h, -1d.
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// Records received before this time (same forms).
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Print what was read and what was skipped to stderr.
    #[arg(long)]
    stats: bool,
}

impl SelectArgs {
    pub fn location(&self) -> &str {
        self.location.as_deref().unwrap_or("data")
    }

    pub fn location_given(&self) -> bool {
        self.location.is_some()
    }

    pub fn set_location(&mut self, l: String) {
        self.location = Some(l);
    }

    /// The archive and the selection; times parsed against now.
    pub fn resolve(&self) -> anyhow::Result<(Archive, Selection)> {
        let now = SystemClock.now_ms();
        let time = |s: &Option<String>| s.as_deref().map(|t| parse_time(t, now)).transpose();
        let sel = Selection {
            sites: self.site.clone(),
            streams: self.stream.clone(),
            from_ms: time(&self.from)?,
            to_ms: time(&self.to)?,
        };
        let archive = Archive::open(self.location(), self.config.as_deref())?;
        Ok((archive, sel))
    }

    pub fn stats(&self) -> bool {
        self.stats
    }
}

/// How records are printed (shared by `cat` and `grep`).
#[derive(Debug, clap::Args)]
pub struct FormArgs {
    /// Print the archive lines as stored (escaped), as zstdcat does.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    /// One JSON object per record (origin, seq, frame times, the exact record).
    #[arg(long)]
    json: bool,
}

impl FormArgs {
    pub fn form(&self) -> Form {
        if self.raw {
            Form::Raw
        } else if self.json {
            Form::Json
        } else {
            Form::Readable
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    format: FormArgs,
    /// Interleave origins by receive time instead of one origin after another.
    #[arg(long)]
    merge: bool,
}

#[derive(Clone, Copy)]
pub enum Form {
    Readable,
    Raw,
    Json,
}

pub fn cat(a: CatArgs) -> anyhow::Result<i32> {
    let (archive, sel) = a.select.resolve()?;
    let form = a.format.form();
    let origins = query::origins(&archive, &sel)?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut stats = Stats::default();
    let result = if a.merge {
        merged(&origins, &sel, form, &mut out, &mut stats)
    } else {
        in_order(&origins, &sel, form, &mut out, &mut stats)
    };
    let result = result.and_then(|()| out.flush());
    if a.select.stats() {
        print_stats(&stats, &archive);
    }
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    Ok(if stats.damaged > 0 { 1 } else { 0 })
}

pub fn print_stats(stats: &Stats, archive: &Archive) {
    eprintln!(
        "segments {}, frames {} (decompressed {}, skipped {}), records {}, raw bytes {}, damaged frames {}",
        stats.segments,
        stats.frames,
        stats.frames_read,
        stats.frames - stats.frames_read,
        stats.records,
        stats.raw_bytes,
        stats.damaged
    );
    if let Archive::Bucket(b) = archive {
        let f = b.fetched();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "fetched {} bytes in {} requests ({:.3} s waiting for segment bytes)",
            get(&f.bytes),
            get(&f.requests),
            get(&f.waited_us) as f64 / 1e6
        );
    }
}

pub fn report(seg: &Segment, offset: u64, error: crate::store::frame::DecodeError) {
    eprintln!("{}: frame at offset {offset}: {error}; skipped", seg.name());
}

/// Every origin in turn, each in sequence order.
fn in_order(
    origins: &[Origin],
    sel: &Selection,
    form: Form,
    out: &mut impl Write,
    stats: &mut Stats,
) -> io::Result<()> {
    let mut pool = query::Pool::new()?;
    let mut buf = Vec::new();
    let mut failed: Option<io::Error> = None;
    for o in origins {
        for seg in &o.segments {
            let go_on = query::walk_segment(seg, sel, stats, &mut pool, &mut report, &mut |f| match print_frame(
                o, f.header, f.lines, form, &mut buf, out,
            ) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            })?;
            if !go_on {
                return Err(failed.take().unwrap_or_else(|| io::Error::other("stopped")));
            }
        }
    }
    Ok(())
}

/// Frames of every origin interleaved by their first receive time (each
/// origin's own frames stay in sequence order). Each origin is read one
/// segment at a time, its headers and then its data through one reader:
/// memory is one segment's frame list per origin, and a bucket segment is
/// fetched once.
fn merged(origins: &[Origin], sel: &Selection, form: Form, out: &mut impl Write, stats: &mut Stats) -> io::Result<()> {
    struct Cursor<'a> {
        segments: std::slice::Iter<'a, Segment>,
        walk: Option<query::Walk<'a>>,
        frames: VecDeque<(u64, FrameHeader)>,
    }
    // Move an origin's cursor to its next frame, window by window and
    // segment by segment; false when the origin has no more.
    let advance = |c: &mut Cursor<'_>, stats: &mut Stats| -> io::Result<bool> {
        while c.frames.is_empty() {
            if let Some(w) = c.walk.as_mut() {
                match w.next_window(sel, stats, &mut report)? {
                    Some(list) => c.frames = list.into(),
                    None => c.walk = None, // a bucket segment's cache goes before the next one's
                }
                continue;
            }
            match c.segments.next() {
                Some(seg) => c.walk = Some(query::Walk::open(seg, stats)?),
                None => return Ok(false),
            }
        }
        Ok(true)
    };
    let mut cursors: Vec<Cursor<'_>> = Vec::with_capacity(origins.len());
    let mut heads: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    for (i, o) in origins.iter().enumerate() {
        let mut c = Cursor { segments: o.segments.iter(), walk: None, frames: VecDeque::new() };
        if advance(&mut c, stats)? {
            heads.push(Reverse((c.frames[0].1.first_ms, i)));
        }
        cursors.push(c);
    }
    let mut dec = crate::store::frame::DataDecoder::new()?;
    let (mut raw, mut buf) = (Vec::new(), Vec::new());
    while let Some(Reverse((_, i))) = heads.pop() {
        let c = &mut cursors[i];
        let (offset, header) = c.frames.pop_front().expect("a head has a frame");
        let w = c.walk.as_mut().expect("walking while it has frames");
        match query::decompress(w.reader(), offset, &header, &mut dec, &mut raw, stats)? {
            Ok(()) => print_frame(&origins[i], &header, &raw, form, &mut buf, out)?,
            Err(e) => report(w.segment(), offset, e),
        }
        if advance(c, stats)? {
            heads.push(Reverse((c.frames[0].1.first_ms, i)));
        }
    }
    Ok(())
}

pub fn print_frame(
    o: &Origin,
    h: &FrameHeader,
    lines: &[u8],
    form: Form,
    buf: &mut Vec<u8>,
    out: &mut impl Write,
) -> io::Result<()> {
    if let Form::Raw = form {
        return out.write_all(lines);
    }
    for (seq, line) in (Frame { header: h, records: lines }).records() {
        buf.clear();
        unescape_into(line, buf);
        match form {
            Form::Readable => {
                for (k, part) in buf.split(|b| *b == b'\n').enumerate() {
                    if k > 0 {
                        out.write_all(b"\n\t")?;
                    }
                    out.write_all(part)?;
                }
                out.write_all(b"\n")?;
            }
            Form::Json => {
                let mut v = serde_json::json!({
                    "site": o.site, "stream": o.stream, "node": o.node, "seq": seq,
                    "first_ms": h.first_ms, "last_ms": h.last_ms,
                });
                match std::str::from_utf8(buf) {
                    Ok(s) => v["record"] = serde_json::Value::from(s),
                    Err(_) => {
                        v["record_hex"] =
                            serde_json::Value::from(buf.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    }
                }
                serde_json::to_writer(&mut *out, &v)?;
                out.write_all(b"\n")?;
            }
            Form::Raw => unreachable!("handled above"),
        }
    }
    Ok(())
}
