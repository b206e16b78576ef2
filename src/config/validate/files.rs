//! `kind = "file"` listeners: the keys only they take.

use std::time::Duration;

use super::super::raw::RawListener;
use super::super::units::Quota;
use super::super::{FileConfig, StartAt};
use super::Ctx;

pub(super) fn validate_files(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> Option<FileConfig> {
    let k = |f: &str| format!("listener[{i}].{f}");
    let before = cx.problems.len();
    let paths = paths(cx, i, l);
    let exclude = match &l.exclude {
        Some(p) => {
            for pat in p.get_ref() {
                if let Err(e) = glob::Pattern::new(pat) {
                    cx.at(&k("exclude"), p, format!("{pat:?} is not a glob pattern: {e}"));
                }
            }
            p.get_ref().clone()
        }
        None => Vec::new(),
    };
    let start_at = match &l.start_at {
        Some(s) => cx
            .one_of(&k("start_at"), s, &[("beginning", StartAt::Beginning), ("end", StartAt::End)])
            .unwrap_or(StartAt::Beginning),
        None => StartAt::Beginning,
    };
    let quota = l.quota.as_ref().and_then(|q| match q.get_ref().parse::<Quota>() {
        Ok(v) => Some(v),
        Err(e) => {
            cx.at(&k("quota"), q, e.to_string());
            None
        }
    });
    let multiline_start = l.multiline_start.as_ref().map(|m| {
        if let Err(e) = regex::bytes::Regex::new(m.get_ref()) {
            cx.at(&k("multiline_start"), m, format!("not a regular expression: {e}"));
        }
        m.get_ref().clone()
    });
    let (ms, s) = (Duration::from_millis, Duration::from_secs);
    let partial_timeout = duration(cx, i, "partial_timeout", &l.partial_timeout, ms(10), s(3600), s(5));
    let poll_interval = duration(cx, i, "poll_interval", &l.poll_interval, ms(100), s(3600), s(5));
    let rotate_wait = duration(cx, i, "rotate_wait", &l.rotate_wait, ms(100), s(86_400), s(10));
    let max_open_files = match &l.max_open_files {
        Some(v) if !(2..=1_000_000).contains(v.get_ref()) => {
            cx.at(&k("max_open_files"), v, "must be between 2 and 1000000");
            1024
        }
        Some(v) => *v.get_ref() as usize,
        None => 1024,
    };
    let host = host(cx, i, l);
    if cx.problems.len() > before {
        return None;
    }
    Some(FileConfig {
        paths,
        exclude,
        start_at,
        quota,
        multiline_start,
        partial_timeout,
        max_open_files,
        poll_interval,
        rotate_wait,
        host,
    })
}

/// The globs to read: absolute, so that they do not depend on where ferry
/// was started.
fn paths(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> Vec<String> {
    let k = |f: &str| format!("listener[{i}].{f}");
    match &l.paths {
        Some(p) if !p.get_ref().is_empty() => {
            for pat in p.get_ref() {
                if !pat.starts_with('/') {
                    cx.at(
                        &k("paths"),
                        p,
                        format!("{pat:?} must be an absolute path (a glob such as \"/var/log/app/*.log\")"),
                    );
                } else if let Err(e) = glob::Pattern::new(pat) {
                    cx.at(&k("paths"), p, format!("{pat:?} is not a glob pattern: {e}"));
                }
            }
            p.get_ref().clone()
        }
        Some(p) => {
            cx.at(&k("paths"), p, "needs at least one glob pattern");
            Vec::new()
        }
        None => {
            cx.at(&k("kind"), &l.kind, "a file listener needs paths = [\"/var/log/app/*.log\", ...]");
            Vec::new()
        }
    }
}

/// A duration key within `min..=max`; out of it, the default is kept.
fn duration(
    cx: &mut Ctx<'_>,
    i: usize,
    key: &str,
    v: &Option<toml::Spanned<super::HumanDuration>>,
    min: Duration,
    max: Duration,
    default: Duration,
) -> Duration {
    match v {
        Some(d) if !(min..=max).contains(&d.get_ref().0) => {
            cx.at(&format!("listener[{i}].{key}"), d, format!("must be between {min:?} and {max:?}"));
            default
        }
        Some(d) => d.get_ref().0,
        None => default,
    }
}

/// The HOSTNAME of the records read: this machine's unless the file says.
fn host(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> String {
    match &l.host {
        Some(h) => {
            let s = h.get_ref();
            if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                cx.at(
                    &format!("listener[{i}].host"),
                    h,
                    "must be 1-255 printable ASCII characters without spaces (RFC 5424 HOSTNAME)",
                );
            }
            s.clone()
        }
        None => this_host(),
    }
}

/// The file keys on a socket listener are a mistake worth naming.
pub(super) fn refuse_file_keys(cx: &mut Ctx<'_>, i: usize, l: &RawListener) {
    let given = [
        ("paths", l.paths.as_ref().map(|v| v.span())),
        ("exclude", l.exclude.as_ref().map(|v| v.span())),
        ("start_at", l.start_at.as_ref().map(|v| v.span())),
        ("quota", l.quota.as_ref().map(|v| v.span())),
        ("multiline_start", l.multiline_start.as_ref().map(|v| v.span())),
        ("partial_timeout", l.partial_timeout.as_ref().map(|v| v.span())),
        ("max_open_files", l.max_open_files.as_ref().map(|v| v.span())),
        ("poll_interval", l.poll_interval.as_ref().map(|v| v.span())),
        ("rotate_wait", l.rotate_wait.as_ref().map(|v| v.span())),
        ("host", l.host.as_ref().map(|v| v.span())),
    ];
    for (key, span) in given {
        if let Some(span) = span {
            cx.err(&format!("listener[{i}].{key}"), Some(span), "only file listeners (kind = \"file\") take this key");
        }
    }
}

/// This machine's host name, for records of files read here.
pub fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if r == 0 && !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()) => h.to_owned(),
        _ => "localhost".to_owned(),
    }
}
