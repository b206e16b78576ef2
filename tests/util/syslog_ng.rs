//! A real syslog-ng for tests, run from the private prefix that
//! `scripts/private-syslog-ng.sh` unpacks (Debian's syslog-ng-core conflicts
//! with rsyslog, so it is not installed): its own module path, libraries,
//! persist file and control socket; killed on drop, stderr shown on failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::TestDir;

pub struct SyslogNg {
    child: Child,
    log: PathBuf,
}

/// The private prefix: `$FERRY_SYSLOG_NG_ROOT`, else `target/syslog-ng`.
pub fn root() -> PathBuf {
    let root = std::env::var_os("FERRY_SYSLOG_NG_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/syslog-ng"));
    assert!(
        root.join("usr/sbin/syslog-ng").is_file(),
        "syslog-ng is not unpacked in {}: run the README's test command (scripts/private-syslog-ng.sh)",
        root.display()
    );
    root
}

impl SyslogNg {
    /// Check `conf` with `--syntax-only` (a bad config fails loudly), then
    /// start syslog-ng in the foreground.
    pub fn start(dir: &TestDir, conf: &str) -> SyslogNg {
        let root = root();
        let path = dir.join("syslog-ng.conf");
        std::fs::write(&path, conf).unwrap();
        let cmd = |extra: &[&str]| {
            let mut c = Command::new(root.join("usr/sbin/syslog-ng"));
            let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib/syslog-ng"]
                .map(|l| root.join(l).display().to_string())
                .join(":");
            c.env("LD_LIBRARY_PATH", libs)
                .arg("-f")
                .arg(&path)
                .arg("--module-path")
                .arg(root.join("usr/lib/syslog-ng/3.38"))
                .arg("--persist-file")
                .arg(dir.join("syslog-ng.persist"))
                .arg("--pidfile")
                .arg(dir.join("syslog-ng.pid"))
                .arg("--control")
                .arg(dir.join("syslog-ng.ctl"))
                .arg("--no-caps")
                .args(extra);
            c
        };
        let check = cmd(&["--syntax-only"]).output().unwrap();
        assert!(check.status.success(), "syslog-ng --syntax-only: {}", String::from_utf8_lossy(&check.stderr));
        let log = dir.join("syslog-ng.out");
        let child =
            cmd(&["-F", "-e"]).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        SyslogNg { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SyslogNg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- syslog-ng stderr ---\n{}", self.log_text());
        }
    }
}
