//! A real rsyslogd for tests: private config, work dir and pid file, in the
//! foreground, killed on drop (its stderr printed if the test failed).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{require_tool, TestDir};

pub struct Rsyslog {
    child: Child,
    log: PathBuf,
}

impl Rsyslog {
    /// Validate `conf` with `rsyslogd -N1` (a bad config fails loudly), then
    /// start it. `<dir>/rsyslog-work` exists for its `workDirectory`.
    pub fn start(dir: &TestDir, conf: &str) -> Rsyslog {
        let bin = require_tool("rsyslogd");
        std::fs::create_dir_all(dir.join("rsyslog-work")).unwrap();
        let path = dir.join("rsyslog.conf");
        std::fs::write(&path, conf).unwrap();
        let check = Command::new(&bin).arg("-N1").arg("-f").arg(&path).output().unwrap();
        assert!(check.status.success(), "rsyslogd -N1: {}", String::from_utf8_lossy(&check.stderr));
        let log = dir.join("rsyslog.out");
        let child = Command::new(bin)
            .args(["-n", "-f"])
            .arg(&path)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Rsyslog { child, log }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- rsyslogd stderr ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Wait until something listens on a loopback TCP port.
pub fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}
