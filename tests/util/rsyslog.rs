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
    /// rsyslogd with the shipped omrelp collector config pointing at
    /// `relay_port`, fed by an imtcp input on `input_port`.
    pub fn shipped_relp(dir: &TestDir, relay_port: u16, input_port: u16) -> Rsyslog {
        assert!(
            std::path::Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/omrelp.so").exists(),
            "rsyslog-relp is not installed: run the README's test command"
        );
        let queue = dir.join("rsyslog-queue");
        std::fs::create_dir_all(&queue).unwrap();
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/collectors/rsyslog-omrelp.conf"),
        )
        .unwrap();
        let action = shipped
            .replace("@RELAY_HOST@", "127.0.0.1")
            .replace("@RELAY_PORT@", &relay_port.to_string())
            .replace("@QUEUE_DIR@", &queue.display().to_string());
        let conf = format!(
            "global(workDirectory=\"{}\")\nmodule(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"{input_port}\" address=\"127.0.0.1\")\n{action}",
            dir.join("rsyslog-work").display()
        );
        let rs = Rsyslog::start(dir, &conf);
        wait_port(input_port);
        rs
    }

    /// rsyslogd forwarding over RELP with TLS (`tls="on"`, librelp's
    /// GnuTLS) to `relay_port`, presenting the certificate in `who` (its
    /// node.pem and node.key) and trusting `ca`, fed by imtcp on `input_port`.
    pub fn omrelp_tls(
        dir: &TestDir,
        relay_port: u16,
        input_port: u16,
        ca: &std::path::Path,
        who: &std::path::Path,
    ) -> Rsyslog {
        let conf = format!(
            r#"global(workDirectory="{work}")
module(load="imtcp")
module(load="omrelp")
input(type="imtcp" port="{input_port}" address="127.0.0.1")
*.* action(type="omrelp" target="127.0.0.1" port="{relay_port}" template="RSYSLOG_SyslogProtocol23Format"
    tls="on" tls.caCert="{ca}" tls.myCert="{cert}" tls.myPrivKey="{key}"
    tls.authMode="name" tls.permittedPeer=["localhost"]
    queue.type="LinkedList" queue.size="100000" action.resumeRetryCount="-1" action.resumeInterval="1")
"#,
            work = dir.join("rsyslog-work").display(),
            ca = ca.display(),
            cert = who.join("node.pem").display(),
            key = who.join("node.key").display(),
        );
        let rs = Rsyslog::start(dir, &conf);
        wait_port(input_port);
        rs
    }

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
