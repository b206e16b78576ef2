//! The S3 side of an upload: create-only writes, the comparison that tells
//! "already delivered" from a conflict, multipart uploads completed
//! create-only, and the aborting of this node's orphaned uploads.
//!
//! `object_store` (Apache Arrow) speaks S3 with SigV4 and checks a
//! SHA-256 of every PUT and part on the server (`x-amz-checksum-sha256`).
//! Its multipart API can neither put metadata on the upload nor complete it
//! create-only (`If-None-Match: *`), so those two requests go through
//! [`Raw`]: object_store's own HTTP client and SigV4 signer
//! (`AwsAuthorizer`), ferry's code only for the request line and body. The
//! parts go up straight to the segment's key: no staging object, no
//! server-side copy (which doubled the store's work: benches/README).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer, Checksum};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::uploads::Uploads;
use super::{BucketError, Op};
use crate::config::BucketConfig;
use crate::metrics::Metrics;
use crate::store::segment::{hex, SealRecord};

/// What became of one object.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// Written by this call and confirmed.
    Written,
    /// Already there with the same length and SHA-256 (another node, a retry).
    AlreadyThere,
    /// Already there with other bytes: never overwritten.
    Conflict(String),
}

/// One bucket's S3 client: create-only puts, multipart uploads, and every request counted in
/// `ferry_bucket_requests_total`.
pub struct Client {
    s3: Arc<AmazonS3>,
    raw: Raw,
    cfg: BucketConfig,
    metrics: Metrics,
    pacer: Pacer,
}

/// Credentials from `credentials_file` (AWS shared-credentials style:
/// `aws_access_key_id = …`, `aws_secret_access_key = …`, optionally
/// `aws_session_token = …`; the first profile, section lines ignored).
struct FileCredentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// Why a credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
enum CredentialsError {
    #[error("{path}: {source}", path = .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: not `key = value`", path = .path.display())]
    Line { path: std::path::PathBuf, line: usize },
    #[error("{path}: needs aws_access_key_id and aws_secret_access_key", path = .path.display())]
    Keys { path: std::path::PathBuf },
}

fn read_credentials(path: &Path) -> Result<FileCredentials, CredentialsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            if key_id.is_some() || secret.is_some() {
                break; // the next profile
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(CredentialsError::Line { path: path.to_owned(), line: n + 1 });
        };
        let v = v.trim().to_owned();
        match k.trim() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) => Ok(FileCredentials { key_id, secret, token }),
        _ => Err(CredentialsError::Keys { path: path.to_owned() }),
    }
}

/// The S3 client of a bucket section: endpoint, region, addressing, the
/// deployment CA, credentials from the file or the `AWS_*` environment.
/// The uploader and the readers (`query::bucket`) connect the same way.
pub fn connect(cfg: &BucketConfig) -> Result<AmazonS3, BucketError> {
    let (b, opts) = builder(cfg)?;
    b.with_client_options(opts).build().map_err(|e| BucketError::setup("the S3 client", e))
}

fn builder(cfg: &BucketConfig) -> Result<(AmazonS3Builder, ClientOptions), BucketError> {
    // The `AWS_*` environment first; a credentials file wins over it.
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_virtual_hosted_style_request(!cfg.path_style)
        .with_checksum_algorithm(Checksum::SHA256)
        // The body is covered by its SHA-256 checksum header, which is
        // signed; signing the payload too made the store hash every byte a
        // second time (SeaweedFS: 26 -> 22 CPU s per GiB, benches/README).
        .with_unsigned_payload(true)
        // Retried here, with the backoff and counting of the uploader:
        // object_store's own retries only for a lost connection.
        .with_retry(RetryConfig { max_retries: 1, retry_timeout: cfg.request_timeout, ..RetryConfig::default() });
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(f) = &cfg.credentials_file {
        let c = read_credentials(f).map_err(|e| BucketError::setup("credentials_file", e))?;
        b = b.with_access_key_id(c.key_id).with_secret_access_key(c.secret);
        if let Some(t) = c.token {
            b = b.with_token(t);
        }
    }
    let mut opts = ClientOptions::new()
        .with_timeout(cfg.request_timeout)
        .with_connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
        .with_allow_http(cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")));
    if let Some(ca) = &cfg.ca {
        let pem = std::fs::read(ca).map_err(|e| BucketError::setup(format!("ca {}", ca.display()), e))?;
        let certs = object_store::Certificate::from_pem_bundle(&pem)
            .map_err(|e| BucketError::setup(format!("ca {}", ca.display()), e))?;
        for c in certs {
            opts = opts.with_root_certificate(c);
        }
    }
    Ok((b, opts))
}

impl Client {
    /// A client for `cfg`'s bucket, endpoint and credentials.
    pub fn new(cfg: &BucketConfig, metrics: &Metrics) -> Result<Client, BucketError> {
        let (b, opts) = builder(cfg)?;
        let raw = Raw::new(&b, &opts)?;
        let s3 = b.with_client_options(opts).build().map_err(|e| BucketError::setup("the S3 client", e))?;
        Ok(Client {
            s3: Arc::new(s3),
            raw,
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            pacer: Pacer::new(cfg.max_rate),
        })
    }

    /// The key of a path relative to `archive/` (or of a file beside it).
    pub fn key(&self, rel: &str) -> Key {
        if self.cfg.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.cfg.prefix))
        }
    }

    fn count(&self, op: Op) {
        self.metrics.bucket.requests.with_label_values(&[&self.cfg.name, op.as_str()]).inc();
    }

    /// Upload a sealed segment and confirm it, or find it there already.
    pub async fn put_segment(
        &self,
        path: &Path,
        rel: &str,
        seal: &SealRecord,
        uploads: &Uploads,
    ) -> Result<Put, BucketError> {
        let key = self.key(rel);
        let put = if seal.len <= self.cfg.multipart_above {
            let data = read_range(path, 0, seal.len).await?;
            self.pacer.take(seal.len).await;
            let opts =
                PutOptions { mode: PutMode::Create, attributes: seal_attributes(rel, seal), ..Default::default() };
            self.count(Op::Put);
            match self.s3.put_opts(&key, PutPayload::from(data), opts).await {
                Ok(_) => Put::Written,
                Err(object_store::Error::AlreadyExists { .. }) => return self.compare(&key, seal).await,
                Err(e) => return Err(BucketError::from_store(Op::Put, e)),
            }
        } else {
            // A key already there needs no upload at all.
            match self.head(&key).await? {
                Some(_) => return self.compare(&key, seal).await,
                None => self.put_multipart(path, &key, seal, uploads).await?,
            }
        };
        if put == Put::Written {
            self.confirm(&key, seal).await?;
        }
        Ok(put)
    }

    /// Parts straight to the key, completed create-only: a key another
    /// node completed first answers 412, and this upload is aborted.
    async fn put_multipart(
        &self,
        path: &Path,
        key: &Key,
        seal: &SealRecord,
        uploads: &Uploads,
    ) -> Result<Put, BucketError> {
        self.count(Op::CreateMultipart);
        let credential = self.credential(Op::CreateMultipart).await?;
        let id = self.raw.create(&credential, key, seal).await?;
        // Written down before any part: a crash from here on leaves an
        // upload that the next start aborts.
        uploads.add(key.as_ref(), &id).map_err(BucketError::state)?;
        let parts = match self.put_parts(path, key, &id, seal.len).await {
            Ok(p) => p,
            Err(e) => {
                self.abort(key, &id, uploads).await;
                return Err(e);
            }
        };
        self.count(Op::CompleteMultipart);
        let credential = self.credential(Op::CompleteMultipart).await?;
        let completed = match self.raw.complete(&credential, key, &id, &parts).await {
            Ok(c) => c,
            Err(e) => {
                // A completion whose answer was lost is found at the retry:
                // the key then holds these bytes and compares equal.
                self.abort(key, &id, uploads).await;
                return Err(e);
            }
        };
        if !completed {
            self.abort(key, &id, uploads).await;
            return self.compare(key, seal).await;
        }
        uploads.remove(key.as_ref(), &id).map_err(BucketError::state)?;
        Ok(Put::Written)
    }

    async fn credential(&self, op: Op) -> Result<Arc<object_store::aws::AwsCredential>, BucketError> {
        self.s3.credentials().get_credential().await.map_err(|e| BucketError::from_store(op, e))
    }

    /// Parts of `part_size`, `concurrency` at a time, each read from the
    /// file when it goes (memory: `concurrency` parts).
    async fn put_parts(&self, path: &Path, key: &Key, id: &str, len: u64) -> Result<Vec<PartId>, BucketError> {
        let size = self.cfg.part_size;
        let n = len.div_ceil(size) as usize;
        let mut parts: Vec<Option<PartId>> = vec![None; n];
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0usize;
        let id: Arc<String> = Arc::new(id.to_owned());
        while next < n || !set.is_empty() {
            while next < n && set.len() < self.cfg.concurrency {
                let (idx, from) = (next, next as u64 * size);
                let take = size.min(len - from);
                let data = read_range(path, from, take).await?;
                self.pacer.take(take).await;
                self.count(Op::PutPart);
                let (s3, key, id) = (self.s3.clone(), key.clone(), id.clone());
                set.spawn(async move { (idx, s3.put_part(&key, &id, idx, PutPayload::from(data)).await) });
                next += 1;
            }
            match set.join_next().await {
                Some(Ok((idx, Ok(p)))) => parts[idx] = Some(p),
                Some(Ok((_, Err(e)))) => return Err(BucketError::from_store(Op::PutPart, e)),
                Some(Err(e)) => return Err(BucketError::state(e)),
                None => {}
            }
        }
        Ok(parts.into_iter().map(|p| p.expect("every part joined")).collect())
    }

    /// Abort an upload of ours; it stays listed (aborted at the next start) if that fails.
    pub async fn abort(&self, key: &Key, id: &str, uploads: &Uploads) {
        self.count(Op::Abort);
        match self.s3.abort_multipart(key, &id.to_owned()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.metrics.bucket.aborted_uploads.with_label_values(&[&self.cfg.name]).inc();
                let _ = uploads.remove(key.as_ref(), id);
            }
            Err(e) => {
                tracing::warn!(bucket = %self.cfg.name, key = %key, error = %e, "cannot abort a multipart upload; tried again at the next start");
            }
        }
    }

    /// Abort every upload a previous run left open.
    pub async fn abort_orphans(&self, uploads: &Uploads) -> Result<usize, BucketError> {
        let mut n = 0;
        for (name, id) in uploads.list() {
            let key = Key::from(name.as_str());
            self.count(Op::Abort);
            match self.s3.abort_multipart(&key, &id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(BucketError::from_store(Op::Abort, e)),
            }
            self.metrics.bucket.aborted_uploads.with_label_values(&[&self.cfg.name]).inc();
            uploads.remove(&name, &id).map_err(BucketError::state)?;
            n += 1;
        }
        Ok(n)
    }

    /// A small text object beside the segment (its seal, its index, a
    /// tombstone), create-only; a seal or tombstone already there must say
    /// the same.
    pub async fn put_text(&self, rel: &str, text: &str, op: Op) -> Result<Put, BucketError> {
        let key = self.key(rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: Attributes::from_iter([(Attribute::ContentType, AttributeValue::from("text/plain"))]),
            ..Default::default()
        };
        self.count(op);
        match self.s3.put_opts(&key, PutPayload::from(text.to_owned()), opts).await {
            Ok(_) => Ok(Put::Written),
            // An index is derived from the segment already compared: one
            // there is the same (a reader checks it before trusting it).
            Err(object_store::Error::AlreadyExists { .. }) if op == Op::PutIndex => Ok(Put::AlreadyThere),
            Err(object_store::Error::AlreadyExists { .. }) => {
                self.count(Op::Get);
                let got = self.s3.get(&key).await.map_err(|e| BucketError::from_store(Op::Get, e))?;
                let bytes = got.bytes().await.map_err(|e| BucketError::from_store(Op::Get, e))?;
                let there = SealRecord::parse(&String::from_utf8_lossy(&bytes));
                let here = SealRecord::parse(text);
                match (there, here) {
                    (Ok(a), Ok(b)) if a.len == b.len && a.sha256 == b.sha256 => Ok(Put::AlreadyThere),
                    (a, _) => Ok(Put::Conflict(format!("{key} holds another record: {a:?}"))),
                }
            }
            Err(e) => Err(BucketError::from_store(op, e)),
        }
    }

    /// Length and checksum of the object at `key`, if there is one.
    async fn head(&self, key: &Key) -> Result<Option<(u64, Option<String>)>, BucketError> {
        self.count(Op::Head);
        match self.s3.get_opts(key, GetOptions { head: true, ..Default::default() }).await {
            Ok(r) => {
                let sha = r.attributes.get(&Attribute::Metadata("ferry-sha256".into())).map(|v| v.to_string());
                Ok(Some((r.meta.size, sha)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BucketError::from_store(Op::Head, e)),
        }
    }

    /// After a write: the object is there with the sealed length.
    async fn confirm(&self, key: &Key, seal: &SealRecord) -> Result<(), BucketError> {
        match self.head(key).await? {
            Some((len, _)) if len == seal.len => Ok(()),
            Some((len, _)) => {
                Err(BucketError::Mismatch(format!("{key}: {len} bytes after upload, sealed at {}", seal.len)))
            }
            None => Err(BucketError::Mismatch(format!("{key}: not there after upload"))),
        }
    }

    /// A key that exists: the same length and SHA-256 as the seal means
    /// delivered; anything else is a conflict. Objects without our
    /// checksum in their metadata (another tool) are
    /// read and hashed.
    async fn compare(&self, key: &Key, seal: &SealRecord) -> Result<Put, BucketError> {
        let Some((len, sha)) = self.head(key).await? else {
            return Err(BucketError::Mismatch(format!("{key}: said to exist, then not found")));
        };
        if len != seal.len {
            return Ok(Put::Conflict(format!("{key} holds {len} bytes, the sealed segment {}", seal.len)));
        }
        let sha = match sha {
            Some(s) => s,
            None => {
                self.count(Op::Get);
                let mut h = Sha256::new();
                let got = self.s3.get(key).await.map_err(|e| BucketError::from_store(Op::Get, e))?;
                let mut stream = got.into_stream();
                use futures_util::StreamExt;
                while let Some(chunk) = stream.next().await {
                    h.update(chunk.map_err(|e| BucketError::from_store(Op::Get, e))?);
                }
                hex(&h.finalize())
            }
        };
        if sha == seal.sha256 {
            Ok(Put::AlreadyThere)
        } else {
            Ok(Put::Conflict(format!("{key} has SHA-256 {sha}, the sealed segment {}", seal.sha256)))
        }
    }
}

/// The seal travels with the segment as metadata (`x-amz-meta-<name>`),
/// so a HEAD compares.
fn seal_metadata(seal: &SealRecord) -> [(&'static str, String); 5] {
    [
        ("ferry-sha256", seal.sha256.clone()),
        ("ferry-len", seal.len.to_string()),
        ("ferry-records", seal.records.to_string()),
        ("ferry-first-seq", seal.first_seq.to_string()),
        ("ferry-next-seq", seal.next_seq.to_string()),
    ]
}

fn seal_attributes(rel: &str, seal: &SealRecord) -> Attributes {
    let meta = seal_metadata(seal).into_iter().map(|(k, v)| (Attribute::Metadata(k.into()), AttributeValue::from(v)));
    Attributes::from_iter(
        std::iter::once((Attribute::ContentType, AttributeValue::from(segment_type(rel)))).chain(meta),
    )
}

/// The media type of a segment, by its codec (its suffix).
fn segment_type(key: &str) -> &'static str {
    if key.ends_with(crate::store::segment::GZIP_SEGMENT_SUFFIX) {
        "application/gzip"
    } else {
        "application/zstd"
    }
}

/// The two multipart requests object_store cannot make as ferry needs
/// them, made with its HTTP client (same TLS roots, timeouts) and signed by
/// its SigV4 signer, addressed as it addresses objects.
struct Raw {
    http: HttpClient,
    /// `https://host/bucket` (path style) or `https://bucket.host`.
    base: String,
    region: String,
}

impl Raw {
    fn new(b: &AmazonS3Builder, opts: &ClientOptions) -> Result<Raw, BucketError> {
        let get = |k| b.get_config_value(&k).filter(|v| !v.is_empty());
        let bucket = get(AmazonS3ConfigKey::Bucket).unwrap_or_default();
        let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let hosted = get(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        // As object_store's builder derives its bucket endpoint.
        let base = match (get(AmazonS3ConfigKey::Endpoint), hosted) {
            (Some(e), true) => e,
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let http = ReqwestConnector::default().connect(opts).map_err(|e| BucketError::setup("the HTTP client", e))?;
        Ok(Raw { http, base: base.trim_end_matches('/').to_owned(), region })
    }

    fn url(&self, key: &Key, query: &str) -> String {
        format!("{}/{}?{query}", self.base, encode_key(key.as_ref()))
    }

    /// Sign and send; the status and body of any answer but 2xx (and the
    /// statuses in `expected`) become an error whose words
    /// [`super::classify`] reads, like object_store's.
    async fn send(
        &self,
        op: Op,
        credential: &object_store::aws::AwsCredential,
        mut req: HttpRequest,
        expected: &[u16],
    ) -> Result<(u16, Bytes), BucketError> {
        AwsAuthorizer::new(credential, "s3", &self.region).with_sign_payload(false).authorize(&mut req, None);
        let resp = self.http.execute(req).await.map_err(|e| BucketError::Http(op, format!("{e}: {e:?}")))?;
        let status = resp.status();
        let body = resp.into_body().bytes().await.map_err(|e| BucketError::Http(op, format!("{e}: {e:?}")))?;
        if status.is_success() || expected.contains(&status.as_u16()) {
            return Ok((status.as_u16(), body));
        }
        Err(BucketError::Http(op, format!("status code: {status}: {}", String::from_utf8_lossy(&body))))
    }

    /// `POST key?uploads` with the seal as metadata; the upload id.
    async fn create(
        &self,
        credential: &object_store::aws::AwsCredential,
        key: &Key,
        seal: &SealRecord,
    ) -> Result<String, BucketError> {
        let mut req = request("POST", &self.url(key, "uploads"), HttpRequestBody::empty())?;
        let h = req.headers_mut();
        h.insert("content-type", http::HeaderValue::from_static(segment_type(key.as_ref())));
        h.insert("x-amz-checksum-algorithm", http::HeaderValue::from_static("SHA256"));
        for (name, value) in seal_metadata(seal) {
            let name = http::HeaderName::try_from(format!("x-amz-meta-{name}")).expect("a valid header name");
            let value = http::HeaderValue::try_from(value).map_err(BucketError::state)?;
            h.insert(name, value);
        }
        let (_, body) = self.send(Op::CreateMultipart, credential, req, &[]).await?;
        let text = String::from_utf8_lossy(&body);
        xml_field(&text, "UploadId").map(str::to_owned).ok_or_else(|| {
            BucketError::Http(Op::CreateMultipart, format!("UploadId missing from response: {text:.200}"))
        })
    }

    /// `POST key?uploadId=…` with `If-None-Match: *`: true when completed,
    /// false when the key exists (412), whoever put it there.
    async fn complete(
        &self,
        credential: &object_store::aws::AwsCredential,
        key: &Key,
        id: &str,
        parts: &[PartId],
    ) -> Result<bool, BucketError> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, p) in parts.iter().enumerate() {
            // object_store keeps a part's ETag and checksum in its content
            // id as `<PartMetadata><e_tag>…</e_tag><checksum_sha256>…`
            // (the bare ETag when it sends no checksum).
            let etag = xml_field(&p.content_id, "e_tag").unwrap_or(&p.content_id);
            body.push_str(&format!("<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag>", i + 1));
            if let Some(sum) = xml_field(&p.content_id, "checksum_sha256") {
                body.push_str(&format!("<ChecksumSHA256>{sum}</ChecksumSHA256>"));
            }
            body.push_str("</Part>");
        }
        body.push_str("</CompleteMultipartUpload>");
        let url = self.url(key, &format!("uploadId={}", encode_key(id)));
        let mut req = request("POST", &url, HttpRequestBody::from(body))?;
        req.headers_mut().insert("if-none-match", http::HeaderValue::from_static("*"));
        let (status, body) = self.send(Op::CompleteMultipart, credential, req, &[412]).await?;
        if status == 412 {
            return Ok(false);
        }
        // S3 may answer 200 and put the error in the body.
        let text = String::from_utf8_lossy(&body);
        if text.contains("<Error>") {
            return Err(BucketError::Http(Op::CompleteMultipart, format!("error in a 200 answer: {text:.300}")));
        }
        Ok(true)
    }
}

fn request(method: &str, url: &str, body: HttpRequestBody) -> Result<HttpRequest, BucketError> {
    http::Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .map_err(|e| BucketError::setup(format!("request {url}"), e))
}

/// The text of `<name>…</name>` in a small XML answer.
fn xml_field<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let from = xml.find(&open)? + open.len();
    let len = xml[from..].find(&format!("</{name}>"))?;
    Some(&xml[from..from + len])
}

/// A key in a URL path: unreserved characters and `/` as they are, every
/// other byte percent-encoded (what object_store sends, so the signature
/// and the store agree).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn read_range(path: &Path, from: u64, len: u64) -> Result<Bytes, BucketError> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let f = File::open(&p)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, from)?;
        Ok::<_, std::io::Error>(Bytes::from(buf))
    })
    .await
    .map_err(BucketError::state)?
    .map_err(|source| BucketError::Read { path: path.to_owned(), source })
}

/// The bandwidth cap: bytes are paid for before they are handed over, so
/// the average over a second stays under `max_rate` (a part is a burst).
struct Pacer {
    rate: Option<f64>,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer { rate, next: Mutex::new(Instant::now()) }
    }

    async fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / rate);
            start.saturating_duration_since(now)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_takes_the_first_profile() {
        let d = std::env::temp_dir().join(format!("ferry-cred-{}", std::process::id()));
        std::fs::write(
            &d,
            "[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n[other]\naws_access_key_id = AK2\n",
        )
        .unwrap();
        let c = read_credentials(&d).unwrap();
        assert_eq!((c.key_id.as_str(), c.secret.as_str(), c.token), ("AK1", "s1", None));
        std::fs::write(&d, "aws_access_key_id = AK1\n").unwrap();
        assert!(read_credentials(&d).err().unwrap().to_string().contains("aws_secret_access_key"));
        std::fs::write(&d, "garbage\n").unwrap();
        assert!(read_credentials(&d).err().unwrap().to_string().contains("line 1"));
        let _ = std::fs::remove_file(&d);
    }
}
