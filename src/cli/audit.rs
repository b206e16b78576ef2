//! `ferry audit`: is every hour of every origin complete here, and if not,
//! what is missing and why (`query::audit`). A table for people, `--json`
//! for scripts; exit status 1 when there is a gap.

use std::io::{self, Write};
use std::path::Path;

use super::cat::SelectArgs;
use super::progress::Progress;
use crate::query::bucket::BucketArchive;
use crate::query::{self, audit, Archive, Segment};
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
    let facts = match &archive {
        Archive::Dir(dir) => dir_facts(dir, archive.state_dir().as_deref(), &sel)?,
        Archive::Bucket(b) => bucket_facts(b, &sel)?,
    };
    let mut report = audit::audit(&facts);
    if let Some(state) = archive.state_dir() {
        report.mark_revoked(&crate::mirror::peers::revoked(&state));
    }
    let mut out = io::stdout().lock();
    let written = if a.json { json(&report, &mut out) } else { table(&report, &mut out) };
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e.into()),
    }
    Ok(if report.gaps.is_empty() { 0 } else { 1 })
}

fn dir_facts(archive: &Path, state: Option<&Path>, sel: &query::Selection) -> anyhow::Result<Vec<audit::Facts>> {
    let mut facts = Vec::new();
    let origins = query::origins(&Archive::Dir(archive.to_owned()), sel)?;
    let progress = Progress::bytes(origins.iter().flat_map(|o| &o.segments).map(Segment::len).sum(), "audit");
    for o in origins {
        for seg in &o.segments {
            progress.inc(seg.len());
            let Segment::File(path) = seg else { continue };
            let Some(name) = path.strip_prefix(archive).ok().and_then(SegmentName::parse_rel) else {
                continue;
            };
            facts.push(audit::Facts::read(path, name, state, archive)?);
        }
    }
    progress.finish();
    if let Some(st) = state {
        facts.extend(tombstones(st, archive, sel));
    }
    Ok(facts)
}

/// From the bucket alone: the listing, the seal records beside the
/// segments, the tombstones (small GETs, in parallel). A segment there
/// without its seal (an upload cut between the two) has its frame headers
/// walked, which reads it whole.
fn bucket_facts(b: &BucketArchive, sel: &query::Selection) -> anyhow::Result<Vec<audit::Facts>> {
    let listing = b.list()?;
    let mut wanted = Vec::new();
    for (rel, len) in &listing.segments {
        if let Some(n) = SegmentName::parse_rel(Path::new(rel)).filter(|n| sel.wants(n)) {
            wanted.push((rel.clone(), *len, n));
        }
    }
    let sealed: Vec<&str> =
        wanted.iter().filter(|(rel, ..)| listing.seals.contains(rel)).map(|(rel, ..)| rel.as_str()).collect();
    let mut seal_of = b.records(&sealed, "seal")?;
    let mut facts = Vec::new();
    for (rel, len, name) in wanted {
        let path = std::path::PathBuf::from(b.name(&rel));
        match seal_of.remove(&rel) {
            Some(Ok(seal)) => facts.push(audit::Facts::sealed(path, name, len, seal)),
            bad => {
                if let Some(Err(e)) = bad {
                    eprintln!("{e}; its segment is walked instead");
                }
                let seg = Segment::Object(b.segment(&rel, len, vec![(0, len)]));
                facts.push(audit::Facts::walk(seg.open()?, path, name, None)?);
            }
        }
    }
    let gone: Vec<&str> = listing
        .tombstones
        .iter()
        .filter(|rel| SegmentName::parse_rel(Path::new(rel)).is_some_and(|n| sel.wants(&n)))
        .map(String::as_str)
        .collect();
    for (rel, seal) in b.records(&gone, "gone")? {
        let Some(name) = SegmentName::parse_rel(Path::new(&rel)) else { continue };
        match seal {
            Ok(seal) => facts.push(audit::Facts::gone(name, b.name(&rel).into(), seal)),
            Err(e) => eprintln!("{e}; skipped"),
        }
    }
    Ok(facts)
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
    for v in &r.revoked {
        writeln!(
            out,
            "{}/{}: written by a node revoked at {} (certificate serial {}); its segments here predate the revocation and are kept",
            v.site, v.node, v.revoked_at, v.serial
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
