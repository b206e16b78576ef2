//! `ferry grep PATTERN`: the records of a `ferry cat` selection that match,
//! searched on every core, printed in archive order.
//!
//! A pattern matches the archive line as stored, which is what `zstdgrep`
//! sees (a line break inside a record is `\n` there), so results are those of
//! `zstdcat … | grep -E`. Frames outside the time range are skipped from
//! their headers; the others are decompressed and searched in parallel, a
//! batch at a time, and their matches written in order. A frame is searched
//! as one buffer (the regex finds candidates across it and only their lines
//! are checked), not line by line.

use std::io::{self, BufWriter, Write};

use memchr::{memchr, memrchr};
use regex::bytes::{Regex, RegexBuilder};

use super::cat::{print_frame, print_stats, report, Form, FormArgs, SelectArgs};
use super::progress::Progress;
use crate::query::{self, Origin, Segment, Stats};
use crate::store::frame::FrameHeader;

#[derive(Debug, clap::Args)]
pub struct GrepArgs {
    /// A regular expression (Rust `regex` syntax, like `grep -E`), or a fixed string with -F.
    /// Absent when patterns are given with -e.
    #[arg(required_unless_present = "regexp")]
    pattern: Option<String>,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    format: FormArgs,
    /// A pattern (repeat for several: a record matching any of them matches).
    #[arg(short = 'e', long = "regexp", value_name = "PATTERN", allow_hyphen_values = true)]
    regexp: Vec<String>,
    /// Patterns are extended regular expressions: always so here (accepted for grep's habit).
    #[arg(short = 'E', long)]
    extended_regexp: bool,
    /// The pattern is a fixed string.
    #[arg(short = 'F', long, conflicts_with = "extended_regexp")]
    fixed_strings: bool,
    /// Match whole words only.
    #[arg(short = 'w', long)]
    word_regexp: bool,
    /// Ignore case.
    #[arg(short, long)]
    ignore_case: bool,
    /// Records that do not match.
    #[arg(short = 'v', long)]
    invert_match: bool,
    /// Print only the number of matching records.
    #[arg(short, long)]
    count: bool,
    /// Print only the segment files that hold a match.
    #[arg(short = 'l', long)]
    files_with_matches: bool,
}

/// Frames decompressed and searched at once (bounds memory: a batch's
/// frames and their matches).
const BATCH: usize = 64;

/// What a search found in one frame.
#[derive(Default)]
struct Found {
    /// Matching lines, LF-terminated, as stored.
    lines: Vec<u8>,
    /// Their sequence numbers.
    seqs: Vec<u64>,
    count: u64,
    raw_bytes: u64,
}

impl GrepArgs {
    /// The patterns, and the archive when the positional word meant it:
    /// with -e the first word after the options is the archive, as in
    /// `grep -e PATTERN FILE`.
    fn patterns(&self) -> anyhow::Result<(Vec<String>, Option<String>)> {
        match (&self.pattern, self.regexp.is_empty()) {
            (Some(p), true) => Ok((vec![p.clone()], None)),
            (None, false) => Ok((self.regexp.clone(), None)),
            (Some(p), false) if self.select.location_given() => {
                anyhow::bail!("with -e, name the archive once ({p:?} and {:?} given)", self.select.location())
            }
            (Some(p), false) => Ok((self.regexp.clone(), Some(p.clone()))),
            (None, true) => anyhow::bail!("no pattern: give one, or -e PATTERN"),
        }
    }
}

/// One regular expression for every pattern: alternatives, each escaped
/// with -F and held to word boundaries with -w.
fn pattern_of(patterns: &[String], fixed: bool, word: bool) -> String {
    let one = |p: &String| {
        let p = if fixed { regex::escape(p) } else { p.clone() };
        if word {
            format!(r"\b(?:{p})\b")
        } else {
            format!("(?:{p})")
        }
    };
    patterns.iter().map(one).collect::<Vec<_>>().join("|")
}

pub fn grep(mut a: GrepArgs) -> anyhow::Result<i32> {
    let (patterns, location) = a.patterns()?;
    if let Some(l) = location {
        a.select.set_location(l);
    }
    let (archive, sel) = a.select.resolve()?;
    let pattern = pattern_of(&patterns, a.fixed_strings, a.word_regexp);
    let re = RegexBuilder::new(&pattern)
        .case_insensitive(a.ignore_case)
        .multi_line(true)
        .build()
        .map_err(|e| anyhow::anyhow!("pattern {:?}: {e}", patterns.join(" | ")))?;
    let origins = query::origins(&archive, &sel)?;
    let mut stats = Stats::default();
    let paths: Vec<Segment> = origins.iter().flat_map(|o| o.segments.iter().cloned()).collect();
    let mut pool = query::Pool::new()?;
    let progress = Progress::bytes(paths.iter().map(Segment::walk_len).sum(), "grep");
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut matched = 0u64;
    let form = a.format.form();
    let mut buf = Vec::new();
    let matches = |h: &FrameHeader, raw: &mut Vec<u8>| search(h, raw, &re, a.invert_match);
    // Segment by segment, window by window (a file is one window): the
    // frame headers first (no data read), then the frames chosen, searched
    // on every core in batches, printed in archive order. The pool's
    // readers share a bucket segment's fetched bytes.
    let result: io::Result<()> = (|| {
        for o in &origins {
            for seg in &o.segments {
                let mut walk = query::Walk::open(seg, &mut stats)?;
                let mut listed = false;
                while let Some(list) = walk.next_window(&sel, &mut stats, &mut report)? {
                    for batch in list.chunks(BATCH) {
                        let found = pool.run(seg, batch, &matches);
                        progress.inc(batch.iter().map(|(_, h)| h.frame_len()).sum());
                        for ((offset, header), f) in batch.iter().zip(found) {
                            let f = match f? {
                                Ok(f) => f,
                                Err(e) => {
                                    stats.damaged += 1;
                                    report(seg, *offset, e);
                                    continue;
                                }
                            };
                            stats.raw_bytes += f.raw_bytes;
                            stats.frames_read += 1;
                            stats.records += u64::from(header.records);
                            matched += f.count;
                            if f.count == 0 || a.count {
                                continue;
                            }
                            if a.files_with_matches {
                                if !listed {
                                    listed = true;
                                    writeln!(out, "{}", seg.name())?;
                                }
                                continue;
                            }
                            write_matches(o, header, &f, form, &mut buf, &mut out)?;
                        }
                    }
                }
                pool.done();
            }
        }
        if a.count {
            writeln!(out, "{matched}")?;
        }
        out.flush()
    })();
    progress.finish();
    if a.select.stats() {
        print_stats(&stats, &archive);
    }
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    Ok(if stats.damaged > 0 {
        2
    } else if matched > 0 {
        0
    } else {
        1
    })
}

/// Matches are whole records, printed like `cat` prints them, each with its
/// own sequence number.
fn write_matches(
    o: &Origin,
    h: &FrameHeader,
    f: &Found,
    form: Form,
    buf: &mut Vec<u8>,
    out: &mut impl Write,
) -> io::Result<()> {
    if let Form::Raw = form {
        return out.write_all(&f.lines);
    }
    let mut one = h.clone();
    one.records = 1;
    for (line, seq) in f.lines.split_inclusive(|b| *b == b'\n').zip(&f.seqs) {
        one.first_seq = *seq;
        print_frame(o, &one, line, form, buf, out)?;
    }
    Ok(())
}

/// The matching records of one frame's lines.
fn search(h: &FrameHeader, raw: &[u8], re: &Regex, invert: bool) -> Found {
    let mut found = Found { raw_bytes: raw.len() as u64, ..Found::default() };
    if invert {
        for (seq, line) in (h.first_seq..).zip(raw.split_inclusive(|b| *b == b'\n')) {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if !re.is_match(body) {
                found.lines.extend_from_slice(line);
                found.seqs.push(seq);
                found.count += 1;
            }
        }
        return found;
    }
    // Candidates across the whole buffer; each confirmed on its own line
    // (a match may not run from one record into the next).
    let mut at = 0;
    // Line number of `counted`: newlines are counted only up to each match.
    let (mut counted, mut line_no) = (0usize, 0u64);
    while at < raw.len() {
        let Some(m) = re.find_at(raw, at) else { break };
        let start = memrchr(b'\n', &raw[..m.start()]).map_or(0, |i| i + 1);
        let end = memchr(b'\n', &raw[m.start()..]).map_or(raw.len(), |i| m.start() + i);
        let line = &raw[start..end];
        if m.end() <= end || re.is_match(line) {
            line_no += memchr::memchr_iter(b'\n', &raw[counted..start]).count() as u64;
            counted = start;
            found.lines.extend_from_slice(line);
            found.lines.push(b'\n');
            found.seqs.push(h.first_seq + line_no);
            found.count += 1;
        }
        at = end + 1;
    }
    found
}
