//! Reading an archive from a bucket (`s3://bucket/prefix`), for `cat`,
//! `grep`, `audit` and `verify`.
//!
//! The bucket holds what the uploader put there (`bucket`): each sealed
//! segment at `prefix/<rel>`, its seal record at `<rel>.seal`, its time
//! index at `<rel>.idx`, and tombstones at `<rel>.gone`. A listing says
//! which segments there are; seals and tombstones are small GETs; segment
//! bytes come by ranged GETs into a small cache that a segment's readers
//! share (grep's workers read neighbouring frames). With a time range, only
//! the blocks of the index that may hold it are fetched; without an index,
//! or without a range, the object is read front to back in large chunks.
//!
//! The connection is a `[[bucket]]` section of a node's config (`-c`), the
//! one naming this bucket, or else the `AWS_*` environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_CA_BUNDLE`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use crate::bucket::client::connect;
use crate::config::{BucketConfig, Config};
use crate::store::reader::ReadAt;
use crate::store::segment::{hex, is_segment_file, DamagedSeal, SealRecord};

/// Largest single GET when reading an object front to back.
const CHUNK: u64 = 8 << 20;
/// Chunks a segment's readers keep: a window of headers, the gaps its
/// data reads fill, the next window (grep's workers read near each other).
const CACHED: usize = 4;
/// Chunks fetched at once on a miss, ahead in the span being read: a walk
/// then waits for one round trip, not one per chunk.
const AHEAD: usize = 3;
/// Seals and tombstones fetched at once by `texts`.
const PARALLEL: usize = 16;

/// Bytes and requests that went over the wire (`--stats`, and how the tests
/// and the bench know a range read fetched little).
#[derive(Debug, Default)]
pub struct Fetched {
    /// Bytes fetched from the bucket.
    pub bytes: AtomicU64,
    /// Requests made.
    pub requests: AtomicU64,
    /// Time spent waiting for segment bytes (ranged GETs), in microseconds.
    pub waited_us: AtomicU64,
}

/// An archive in a bucket (`s3://bucket/prefix`), read by listings and ranged GETs on a runtime of its own.
pub struct BucketArchive {
    s3: Arc<AmazonS3>,
    rt: Arc<tokio::runtime::Runtime>,
    bucket: String,
    prefix: String,
    fetched: Arc<Fetched>,
}

/// What the listing shows under the prefix (relative paths, as under `archive/`).
#[derive(Debug, Default)]
pub struct Listing {
    /// Segments and their lengths.
    pub segments: Vec<(String, u64)>,
    /// Segments with a seal record beside them (`<rel>.seal`).
    pub seals: BTreeSet<String>,
    /// Segments with a time index beside them (`<rel>.idx`).
    pub indexes: BTreeSet<String>,
    /// Segments with a tombstone (`<rel>.gone`).
    pub tombstones: Vec<String>,
}

/// Whether `location` names a bucket rather than a directory.
pub fn is_url(location: &str) -> bool {
    location.starts_with("s3://")
}

impl BucketArchive {
    /// Connect to `s3://bucket[/prefix]`, with the `[[bucket]]` of `config`
    /// that names the bucket, or the `AWS_*` environment.
    pub fn open(url: &str, config: Option<&Path>) -> io::Result<BucketArchive> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad(format!("{url}: not an s3:// location")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_owned();
        if bucket.is_empty() {
            return Err(bad(format!("{url}: no bucket name")));
        }
        let mut cfg = match config {
            Some(path) => {
                let c = Config::load(path).map_err(|e| bad(e.to_string()))?;
                let mut found: Vec<BucketConfig> = c.buckets.into_iter().filter(|b| b.bucket == bucket).collect();
                found.sort_by_key(|b| b.prefix != prefix);
                found
                    .into_iter()
                    .next()
                    .ok_or_else(|| bad(format!("{}: no [[bucket]] names bucket {bucket:?}", path.display())))?
            }
            None => from_env(bucket),
        };
        cfg.prefix = prefix.clone();
        let s3 = connect(&cfg).map_err(|e| bad(format!("{url}: {e}")))?;
        let rt = Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?);
        Ok(BucketArchive { s3: Arc::new(s3), rt, bucket: bucket.to_owned(), prefix, fetched: Arc::default() })
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// `s3://bucket/prefix/rel`, for messages.
    pub fn name(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }

    /// What was fetched so far, by this archive and the segments listed from it.
    pub fn fetched(&self) -> &Fetched {
        &self.fetched
    }

    /// Every segment, seal, index and tombstone under the prefix (the
    /// staging area, `.ferry/`, of earlier uploaders left out).
    pub fn list(&self) -> io::Result<Listing> {
        let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut out = Listing::default();
        self.rt.block_on(async {
            let mut s = self.s3.list(prefix.as_ref());
            while let Some(meta) = s.next().await {
                let meta = meta.map_err(|e| io::Error::other(format!("listing {}: {e}", self.name(""))))?;
                let key = meta.location.as_ref();
                let Some(rel) = key.get(strip..) else { continue };
                if rel.starts_with(".ferry/") {
                    continue;
                }
                if is_segment_file(rel) {
                    out.segments.push((rel.to_owned(), meta.size));
                } else if let Some(r) = rel.strip_suffix(".seal") {
                    out.seals.insert(r.to_owned());
                } else if let Some(r) = rel.strip_suffix(".idx") {
                    out.indexes.insert(r.to_owned());
                } else if let Some(r) = rel.strip_suffix(".gone") {
                    out.tombstones.push(r.to_owned());
                }
            }
            Ok::<_, io::Error>(())
        })?;
        self.fetched.requests.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// A small text object (a seal, an index, a tombstone); `None` if absent.
    pub fn text(&self, rel: &str) -> io::Result<Option<String>> {
        self.texts(vec![rel.to_owned()]).pop().expect("one asked").1
    }

    /// Several small objects, [`PARALLEL`] at a time, in the order asked.
    pub fn texts(&self, rels: Vec<String>) -> Vec<(String, io::Result<Option<String>>)> {
        let this = self;
        self.rt.block_on(async {
            futures_util::stream::iter(rels)
                .map(|rel| async move {
                    let key = this.key(&rel);
                    this.fetched.requests.fetch_add(1, Ordering::Relaxed);
                    let got = match this.s3.get(&key).await {
                        Ok(r) => match r.bytes().await {
                            Ok(b) => {
                                this.fetched.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                                Ok(Some(String::from_utf8_lossy(&b).into_owned()))
                            }
                            Err(e) => Err(io::Error::other(format!("{}: {e}", this.name(&rel)))),
                        },
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(io::Error::other(format!("{}: {e}", this.name(&rel)))),
                    };
                    (rel, got)
                })
                .buffered(PARALLEL)
                .collect()
                .await
        })
    }

    /// The records beside segments `rels` at `<rel>.<kind>` (`seal`,
    /// `gone`), fetched in parallel, by segment; one that does not parse
    /// says why (naming the object), one that is absent is left out.
    pub fn records(&self, rels: &[&str], kind: &str) -> io::Result<BTreeMap<String, Result<SealRecord, DamagedSeal>>> {
        let mut out = BTreeMap::new();
        for (key, text) in self.texts(rels.iter().map(|r| format!("{r}.{kind}")).collect()) {
            if let Some(t) = text? {
                let rel = key[..key.len() - kind.len() - 1].to_owned();
                out.insert(rel, SealRecord::parse(&t).map_err(|why| DamagedSeal { place: self.name(&key), why }));
            }
        }
        Ok(out)
    }

    /// The segment at `rel`, `len` bytes long, to be read within `spans`
    /// (reads outside them fetch only what they ask for).
    pub fn segment(&self, rel: &str, len: u64, spans: Vec<(u64, u64)>) -> RemoteSegment {
        RemoteSegment(Arc::new(Spec {
            s3: self.s3.clone(),
            rt: self.rt.clone(),
            name: self.name(rel),
            key: self.key(rel),
            len,
            spans,
            fetched: self.fetched.clone(),
            live: Mutex::new(Weak::new()),
        }))
    }
}

/// A segment in a bucket, not yet read: what `open` needs.
#[derive(Clone)]
pub struct RemoteSegment(Arc<Spec>);

struct Spec {
    s3: Arc<AmazonS3>,
    /// Shared: a segment outlives the archive it was listed from.
    rt: Arc<tokio::runtime::Runtime>,
    name: String,
    key: Key,
    len: u64,
    spans: Vec<(u64, u64)>,
    fetched: Arc<Fetched>,
    /// The cache of the readers open now: readers opened together (grep's
    /// workers) share it; it is freed when the last one is dropped.
    live: Mutex<Weak<Inner>>,
}

impl RemoteSegment {
    /// Its `s3://bucket/key`, for messages.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its length as listed.
    pub fn len(&self) -> u64 {
        self.0.len
    }

    /// Zero bytes as listed.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The byte spans to walk.
    pub fn spans(&self) -> &[(u64, u64)] {
        &self.0.spans
    }

    /// A reader of its bytes; readers open at once share one cache.
    pub fn open(&self) -> Object {
        let s = &self.0;
        let mut live = s.live.lock().expect("not poisoned");
        if let Some(inner) = live.upgrade() {
            return Object { inner };
        }
        let inner = Arc::new(Inner {
            s3: s.s3.clone(),
            rt: s.rt.clone(),
            key: s.key.clone(),
            len: s.len,
            spans: s.spans.clone(),
            cache: Mutex::new(Cache { chunks: VecDeque::new(), hasher: Some(Sha256::new()), hashed: 0 }),
            fetched: s.fetched.clone(),
        });
        *live = Arc::downgrade(&inner);
        Object { inner }
    }
}

/// A bucket section for a reader with no config: the `AWS_*` environment,
/// path-style addressing when an endpoint is given (MinIO, Ceph RGW,
/// SeaweedFS, Garage), virtual-hosted for AWS.
fn from_env(bucket: &str) -> BucketConfig {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
    BucketConfig {
        name: bucket.to_owned(),
        bucket: bucket.to_owned(),
        path_style: endpoint.is_some(),
        endpoint,
        region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()),
        prefix: String::new(),
        ca: var("AWS_CA_BUNDLE").map(Into::into),
        credentials_file: None,
        sites: Vec::new(),
        streams: Vec::new(),
        multipart_above: u64::MAX,
        part_size: 8 << 20,
        concurrency: 1,
        segments_in_flight: 1,
        max_rate: None,
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        keep_local: None,
    }
}

/// One segment in a bucket, read by ranged GETs; clones share the cache.
#[derive(Clone)]
pub struct Object {
    inner: Arc<Inner>,
}

struct Inner {
    s3: Arc<AmazonS3>,
    /// Shared: a segment outlives the archive it was listed from.
    rt: Arc<tokio::runtime::Runtime>,
    key: Key,
    len: u64,
    spans: Vec<(u64, u64)>,
    cache: Mutex<Cache>,
    fetched: Arc<Fetched>,
}

struct Cache {
    chunks: VecDeque<(u64, Bytes)>,
    /// SHA-256 of the bytes fetched so far from the start, while they come
    /// in order (`verify` reads front to back and needs no second pass).
    hasher: Option<Sha256>,
    hashed: u64,
}

impl Object {
    /// SHA-256 of the whole object, if it was read front to back; else
    /// fetched and hashed whole now.
    pub fn sha256(&self) -> io::Result<String> {
        let i = &self.inner;
        {
            let mut c = i.cache.lock().expect("not poisoned");
            if c.hashed == i.len {
                if let Some(h) = c.hasher.take() {
                    return Ok(hex(&h.finalize()));
                }
            }
        }
        i.rt.block_on(async {
            let got = i.s3.get(&i.key).await.map_err(|e| io::Error::other(format!("{}: {e}", i.key)))?;
            let mut stream = got.into_stream();
            let mut h = Sha256::new();
            i.fetched.requests.fetch_add(1, Ordering::Relaxed);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| io::Error::other(format!("{}: {e}", i.key)))?;
                i.fetched.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                h.update(&chunk);
            }
            Ok(hex(&h.finalize()))
        })
    }

    /// Ranges by GETs in parallel, each checked for its length.
    fn fetch_all(&self, ranges: &[(u64, u64)]) -> io::Result<Vec<Bytes>> {
        let i = &self.inner;
        let t = std::time::Instant::now();
        let got = i.rt.block_on(futures_util::future::join_all(
            ranges.iter().map(|(from, to)| i.s3.get_range(&i.key, *from..*to)),
        ));
        i.fetched.waited_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        ranges
            .iter()
            .zip(got)
            .map(|((from, to), b)| {
                let b = b.map_err(|e| io::Error::other(format!("{} bytes {from}..{to}: {e}", i.key)))?;
                i.fetched.requests.fetch_add(1, Ordering::Relaxed);
                i.fetched.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                if b.len() as u64 != to - from {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} bytes {from}..{to}: {} bytes came", i.key, b.len()),
                    ));
                }
                Ok(b)
            })
            .collect()
    }
}

impl ReadAt for Object {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let i = self.inner.clone();
        if offset + buf.len() as u64 > i.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{}: read past its end", i.key)));
        }
        let mut c = i.cache.lock().expect("not poisoned");
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let hit = c.chunks.iter().find(|(s, b)| *s <= pos && pos < *s + b.len() as u64).cloned();
            let (start, bytes) = match hit {
                Some(h) => h,
                None => {
                    // As far as the span being read allows, at most CHUNK,
                    // at least what was asked.
                    let span_end = i.spans.iter().find(|(a, b)| *a <= pos && pos < *b).map_or(pos, |s| s.1);
                    let want = offset + buf.len() as u64;
                    let mut to = want.max(span_end.min(pos + CHUNK)).min(i.len);
                    // Only up to bytes already here: a header walk that
                    // stepped over a frame's data leaves a gap that its
                    // data read fills, without fetching the rest again.
                    if let Some(next) = c.chunks.iter().map(|(s, _)| *s).filter(|s| *s > pos).min() {
                        to = to.min(next);
                    }
                    // And the chunks after it in the span, together, up to
                    // the next bytes already here.
                    let mut ranges = vec![(pos, to)];
                    let limit = c.chunks.iter().map(|(s, _)| *s).filter(|s| *s >= to).min().unwrap_or(u64::MAX);
                    while ranges.len() < AHEAD {
                        let from = ranges[ranges.len() - 1].1;
                        let end = span_end.min(from + CHUNK).min(limit).min(i.len);
                        if end <= from {
                            break;
                        }
                        ranges.push((from, end));
                    }
                    let got = self.fetch_all(&ranges)?;
                    for ((from, to), bytes) in ranges.iter().zip(&got) {
                        if *from <= c.hashed && c.hashed < *to {
                            let skip = (c.hashed - from) as usize;
                            if let Some(h) = c.hasher.as_mut() {
                                h.update(&bytes[skip..]);
                            }
                            c.hashed = *to;
                        }
                        if c.chunks.len() == CACHED {
                            c.chunks.pop_front();
                        }
                        c.chunks.push_back((*from, bytes.clone()));
                    }
                    (pos, got[0].clone())
                }
            };
            let at = (pos - start) as usize;
            let n = (bytes.len() - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[at..at + n]);
            done += n;
        }
        Ok(())
    }
}
