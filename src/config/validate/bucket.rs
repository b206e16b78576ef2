//! `[[bucket]]`: checked key by key like the sinks. Credentials are never
//! read from the TOML: a file or the `AWS_*` environment.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::super::raw::RawBucket;
use super::super::units::{ByteSize, HumanDuration};
use super::super::{BucketConfig, KeepLocal};
use super::Ctx;

/// S3's own limits on a multipart upload's parts.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;

pub(super) fn validate_bucket(cx: &mut Ctx<'_>, i: usize, b: &RawBucket) -> Option<BucketConfig> {
    let key = |f: &str| format!("bucket[{i}].{f}");
    let before = cx.problems.len();
    let name = cx.name(&key("name"), &b.name);
    let bucket = bucket_name(cx, i, b);
    let endpoint = b.endpoint.as_ref().map(|e| {
        let s = e.get_ref().trim_end_matches('/').to_owned();
        if !(s.starts_with("http://") || s.starts_with("https://")) || s.len() <= "https://".len() {
            cx.at(&key("endpoint"), e, format!("{s:?} must be http://host:port or https://host:port"));
        }
        s
    });
    let region = b.region.as_ref().map(|r| r.get_ref().clone()).unwrap_or_else(|| "us-east-1".into());
    let prefix = prefix(cx, i, b);
    // A custom endpoint (MinIO, SeaweedFS, RGW, Garage) is path-style unless told.
    let path_style = b.path_style.as_ref().map(|v| *v.get_ref()).unwrap_or(endpoint.is_some());
    let ca = absolute_file(cx, i, &b.ca, "ca");
    let credentials_file = absolute_file(cx, i, &b.credentials_file, "credentials_file");
    let list = |v: &Option<Spanned<Vec<String>>>| v.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default();
    let (sites, streams) = (list(&b.sites), list(&b.streams));
    let (part_size, multipart_above) = part_sizes(cx, i, b);
    let (concurrency, segments_in_flight) = in_flight(cx, i, b);
    let max_rate = b.max_rate.as_ref().map(|r| {
        if r.get_ref().bytes_per_sec < 1024.0 {
            cx.at(&key("max_rate"), r, "must be at least 1KiB/s");
        }
        r.get_ref().bytes_per_sec
    });
    let ms = Duration::from_millis;
    let backoff_min = duration(cx, i, &b.backoff_min, "backoff_min", ms(10), ms(500));
    let backoff_max = duration(cx, i, &b.backoff_max, "backoff_max", ms(10), Duration::from_secs(30));
    if backoff_min > backoff_max {
        cx.err(&key("backoff_min"), b.backoff_min.as_ref().map(|v| v.span()), "must not exceed backoff_max");
    }
    let request_timeout = duration(cx, i, &b.request_timeout, "request_timeout", ms(100), Duration::from_secs(60));
    let keep_local = keep_local(cx, i, b);
    if cx.problems.len() > before {
        return None;
    }
    Some(BucketConfig {
        name,
        bucket,
        endpoint,
        region,
        prefix,
        path_style,
        ca,
        credentials_file,
        sites,
        streams,
        multipart_above,
        part_size,
        concurrency,
        segments_in_flight,
        max_rate,
        backoff_min,
        backoff_max,
        request_timeout,
        keep_local,
    })
}

/// S3 bucket names: 3-63 of a-z 0-9 . - (SeaweedFS, MinIO and RGW agree).
fn bucket_name(cx: &mut Ctx<'_>, i: usize, b: &RawBucket) -> String {
    let bucket = b.bucket.get_ref().clone();
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    if !bucket_ok {
        cx.at(
            &format!("bucket[{i}].bucket"),
            &b.bucket,
            format!("{bucket:?} is not a bucket name (3-63 of a-z 0-9 . -)"),
        );
    }
    bucket
}

/// The key prefix, without its outer slashes; no component may climb or vanish.
fn prefix(cx: &mut Ctx<'_>, i: usize, b: &RawBucket) -> String {
    match &b.prefix {
        Some(p) => {
            let s = p.get_ref().trim_matches('/').to_owned();
            if s.split('/').any(|c| c.is_empty() || c == "." || c == "..") && !s.is_empty() {
                cx.at(
                    &format!("bucket[{i}].prefix"),
                    p,
                    format!("{s:?}: empty, `.` or `..` path components are not allowed"),
                );
            }
            s
        }
        None => String::new(),
    }
}

fn absolute_file(cx: &mut Ctx<'_>, i: usize, v: &Option<Spanned<String>>, f: &str) -> Option<PathBuf> {
    v.as_ref().map(|p| {
        let path = PathBuf::from(p.get_ref());
        if !path.is_absolute() {
            cx.at(&format!("bucket[{i}].{f}"), p, format!("{:?} must be an absolute path", p.get_ref()));
        }
        path
    })
}

/// `part_size` and `multipart_above`, both within S3's limits on a part.
fn part_sizes(cx: &mut Ctx<'_>, i: usize, b: &RawBucket) -> (u64, u64) {
    let part_size = match &b.part_size {
        Some(v) => {
            if !(MIN_PART..=MAX_PART).contains(&v.get_ref().0) {
                cx.at(&format!("bucket[{i}].part_size"), v, "must be between 5MiB and 5GiB (S3's limits on a part)");
            }
            v.get_ref().0
        }
        None => 16 << 20,
    };
    let multipart_above = match &b.multipart_above {
        Some(v) => {
            if !(MIN_PART..=MAX_PART).contains(&v.get_ref().0) {
                cx.at(
                    &format!("bucket[{i}].multipart_above"),
                    v,
                    "must be between 5MiB and 5GiB (S3's limit on one PUT)",
                );
            }
            v.get_ref().0
        }
        None => 64 << 20,
    };
    (part_size, multipart_above)
}

/// `concurrency` (parts of one upload) and `segments_in_flight` (uploads).
fn in_flight(cx: &mut Ctx<'_>, i: usize, b: &RawBucket) -> (usize, usize) {
    let concurrency = match &b.concurrency {
        Some(v) => {
            if !(1..=64).contains(v.get_ref()) {
                cx.at(&format!("bucket[{i}].concurrency"), v, "must be between 1 and 64 parts in flight");
            }
            *v.get_ref() as usize
        }
        None => 4,
    };
    let segments_in_flight = match &b.segments_in_flight {
        Some(v) => {
            if !(1..=16).contains(v.get_ref()) {
                cx.at(
                    &format!("bucket[{i}].segments_in_flight"),
                    v,
                    "must be between 1 and 16 segments uploaded at once",
                );
            }
            *v.get_ref() as usize
        }
        None => 2,
    };
    (concurrency, segments_in_flight)
}

fn duration(
    cx: &mut Ctx<'_>,
    i: usize,
    v: &Option<Spanned<HumanDuration>>,
    f: &str,
    min: Duration,
    default: Duration,
) -> Duration {
    match v {
        Some(d) => {
            if d.get_ref().0 < min {
                cx.at(&format!("bucket[{i}].{f}"), d, format!("must be at least {min:?}"));
            }
            d.get_ref().0
        }
        None => default,
    }
}

/// An age ("7d") or a size ("200GiB"), told apart by which one parses.
fn keep_local(cx: &mut Ctx<'_>, i: usize, b: &RawBucket) -> Option<KeepLocal> {
    b.keep_local.as_ref().and_then(|v| {
        let t = v.get_ref();
        if let Ok(d) = t.parse::<HumanDuration>() {
            return Some(KeepLocal::Age(d.0));
        }
        if let Ok(n) = t.parse::<ByteSize>() {
            return Some(KeepLocal::Bytes(n.0));
        }
        cx.at(
            &format!("bucket[{i}].keep_local"),
            v,
            format!("{t:?} is neither a duration (\"7d\") nor a size (\"200GiB\")"),
        );
        None
    })
}
