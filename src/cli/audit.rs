//! `ferry audit`: is every hour of every origin complete here, and if not,
//! what is missing and why (`query::audit`). A table for people, `--json`
//! for scripts; exit status 1 when there is a gap.

use std::io::{self, Write};
use std::path::Path;

use super::cat::SelectArgs;
use super::progress::Progress;
use crate::query::{self, audit};
use crate::store::segment::{list_tombstones, SegmentName};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// One JSON document: {"hours": [...], "gaps": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn audit(a: AuditArgs) -> anyhow::Result<i32> {
    let (archive, sel) = a.select.resolve()?;
    let state = archive.parent().map(|p| p.join("state")).filter(|s| s.is_dir());
    let mut facts = Vec::new();
    let origins = query::origins(&archive, &sel)?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let progress = Progress::bytes(origins.iter().flat_map(|o| &o.segments).map(|p| size(p)).sum(), "audit");
    for o in origins {
        for seg in &o.segments {
            progress.inc(size(seg));
            let Some(name) = seg.strip_prefix(&archive).ok().and_then(SegmentName::parse_rel) else {
                continue;
            };
            facts.push(audit::Facts::read(seg, name, state.as_deref(), &archive)?);
        }
    }
    progress.finish();
    if let Some(st) = &state {
        facts.extend(tombstones(st, &archive, &sel));
    }
    let report = audit::audit(&facts);
    let mut out = io::stdout().lock();
    let written = if a.json { json(&report, &mut out) } else { table(&report, &mut out) };
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e.into()),
    }
    Ok(if report.gaps.is_empty() { 0 } else { 1 })
}

/// Undelivered segments deleted by `drop_oldest` (`state/gone/<rel>.gone`),
/// here or, on central, at the origin.
fn tombstones(state: &Path, archive: &Path, sel: &query::Selection) -> Vec<audit::Facts> {
    let mut out = Vec::new();
    for (rel, name, seal) in list_tombstones(state) {
        if !sel.wants(&name) {
            continue;
        }
        match seal {
            Ok(seal) => out.push(audit::Facts::gone(name, archive.join(rel), seal)),
            Err(e) => eprintln!("{e}; skipped"),
        }
    }
    out
}

fn json(r: &audit::Report, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, r)?;
    writeln!(out)
}

fn table(r: &audit::Report, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<32} {:<14} {:>5} {:>6} {:>5} {:>10}  {:<23} STATUS",
        "SITE/STREAM/NODE", "HOUR", "SEGS", "SEALED", "OPEN", "RECORDS", "SEQUENCE"
    )?;
    for h in &r.hours {
        let seq = match (h.first_seq, h.next_seq) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<32} {:<14} {:>5} {:>6} {:>5} {:>10}  {:<23} {}",
            format!("{}/{}/{}", h.site, h.stream, h.node),
            h.hour,
            h.segments,
            h.sealed,
            h.open,
            h.records,
            seq,
            h.status
        )?;
    }
    if r.gaps.is_empty() {
        writeln!(out, "no gaps")?;
    } else {
        writeln!(out, "gaps:")?;
        for g in &r.gaps {
            writeln!(out, "  {}/{}/{} {}: {}: {}", g.site, g.stream, g.node, g.hour, g.reason, g.detail)?;
        }
    }
    Ok(())
}
