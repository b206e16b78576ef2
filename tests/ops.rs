//! Operations, shown with the real tools: the Ansible roles linted and
//! applied for real (`connection: local`, to a scratch root), the systemd
//! unit checked by systemd-analyze, the rsyslog collector config by
//! `rsyslogd -N1`, the alert rules by promtool, and the Grafana dashboard
//! against live `/metrics` scrapes of an edge and a central node.
//!
//! Every tool is required (scripts/test.sh installs them): a missing one
//! fails the test, nothing skips. The role test creates a system user
//! (`ferry-ci`) and chowns files, so it needs root, as CI runs.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use util::link::*;
use util::*;

/// The system user the role test creates (the role's `ferry_user`).
const CI_USER: &str = "ferry-ci";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `cmd` (its own process group) to completion within `limit`:
/// (status, stdout and stderr interleaved). Killed, and the test failed, past the limit.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (ExitStatus, String) {
    let mut out = tempfile::tempfile().unwrap();
    cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out.try_clone().unwrap()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            let mut text = String::new();
            out.seek(SeekFrom::Start(0)).unwrap();
            out.read_to_string(&mut text).unwrap();
            panic!("{cmd:?} did not finish within {limit:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut bytes = Vec::new();
    out.seek(SeekFrom::Start(0)).unwrap();
    out.read_to_end(&mut bytes).unwrap();
    (status, strip_ansi(&String::from_utf8_lossy(&bytes)))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An Ansible command run from `ansible/` with everything it writes kept in
/// `work` and nothing reaching the network (no Galaxy, no SSH: `connection: local`).
fn ansible(tool: &str, work: &Path) -> Command {
    let mut c = Command::new(require_tool(tool));
    c.current_dir(repo().join("ansible"))
        .env("ANSIBLE_CONFIG", repo().join("ansible/ansible.cfg"))
        .env("ANSIBLE_ROLES_PATH", repo().join("ansible/roles"))
        .env("ANSIBLE_HOME", work.join("ansible-home"))
        .env("ANSIBLE_LOCAL_TEMP", work.join("ansible-local-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", work.join("ansible-remote-tmp"))
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .env("ANSIBLE_STDOUT_CALLBACK", "default")
        .env("ANSIBLE_CALLBACKS_ENABLED", "")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_GATHERING", "explicit")
        .env("XDG_CACHE_HOME", work.join("cache"))
        .env("NO_COLOR", "1")
        .env("PY_COLORS", "0")
        .env("LC_ALL", "C.UTF-8")
        .env("LANG", "C.UTF-8");
    c
}

/// `ansible-playbook -i inventory playbook [args]` from `ansible/`.
fn playbook(work: &Path, inventory: &Path, playbook: &Path, args: &[&str]) -> (ExitStatus, String) {
    run_bounded(
        ansible("ansible-playbook", work).arg("-i").arg(inventory).arg(playbook).args(args),
        Duration::from_secs(300),
    )
}

/// The PLAY RECAP counters of `host`: ok, changed, failed, ...
fn recap(out: &str, host: &str) -> BTreeMap<String, u64> {
    let tail = &out[out.rfind("PLAY RECAP").unwrap_or_else(|| panic!("no PLAY RECAP in:\n{out}"))..];
    let line = tail
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no recap line for {host} in:\n{out}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

/// The numeric id `id -u NAME` / `id -g NAME` prints.
fn id(flag: &str, name: &str) -> u32 {
    let out = Command::new(require_tool("id")).args([flag, name]).output().unwrap();
    assert!(out.status.success(), "id {flag} {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Every `ferry_[a-z_]+` word in `text`.
fn ferry_names(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(p) = text[i..].find("ferry_") {
        let start = i + p;
        let mut end = start + "ferry_".len();
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        let word_start = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if word_start && end > start + "ferry_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// A histogram's series name → its family name.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Names of the metric families that have samples in a Prometheus text scrape.
fn sampled(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| family(l.split(['{', ' ']).next().unwrap()).to_owned())
        .collect()
}

/// The lines of a unit or config that are settings (no comments, no blanks).
fn directives(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

#[test]
fn ansible_syntax_check_and_lint_with_the_production_profile() {
    let work = TestDir::new("ops-lint");
    let (st, out) = run_bounded(
        ansible("ansible-playbook", &work.path).args(["-i", "inventory/hosts.yml", "--syntax-check", "site.yml"]),
        Duration::from_secs(120),
    );
    assert!(st.success(), "ansible-playbook --syntax-check site.yml failed:\n{out}");

    let (st, out) = run_bounded(
        ansible("ansible-lint", &work.path).args(["--offline", "--profile", "production"]),
        Duration::from_secs(300),
    );
    assert!(st.success(), "ansible-lint --profile production failed:\n{out}");
    assert!(
        out.contains("Passed with production profile: 0 failure(s), 0 warning(s)"),
        "ansible-lint did not pass the production profile cleanly:\n{out}"
    );
    // It linted the whole tree: at least every YAML file and template under ansible/.
    let linted: usize = out
        .split(" on ")
        .last()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no file count in:\n{out}"));
    let mut ours = 0;
    let mut stack = vec![repo().join("ansible")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yml") {
                ours += 1;
            }
        }
    }
    assert!(linted >= ours, "ansible-lint linted {linted} files, but ansible/ holds {ours} YAML files:\n{out}");
}

/// The relay's `[[uplink]]` list as extra-vars JSON, with `max_rate`.
fn uplinks_json(link_port: u16, max_rate: &str) -> String {
    format!(
        r#"[{{"name": "central", "transport": "tcp", "addresses": ["127.0.0.1:{link_port}"], "max_rate": "{max_rate}", "keepalive": "1s", "dead_after": "5s", "backoff_max": "2s"}}]"#
    )
}

/// A ferry node started from the role's files, as the role's system user.
struct RunningNode {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- ferry log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
        }
    }
}

#[test]
fn ferry_role_applies_to_a_scratch_root_idempotently_and_never_installs_a_broken_config() {
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test creates the system user {CI_USER} and files owned by it: run it as root (CI does)"
    );
    require_tool("systemd-analyze");
    let rsyslogd = require_tool("rsyslogd");
    let w = TestDir::new("ops-role");
    // The role's user must reach its files under the scratch root.
    std::fs::set_permissions(&w.path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pki = Pki::new(&w, "pki");
    let root = w.join("root");
    let collector = w.join("collector");
    let (admin, tcp, udp, link) = (free_port(), free_port(), free_port(), free_port());
    let inventory = w.join("inventory.yml");
    std::fs::write(
        &inventory,
        format!(
            r#"---
all:
  vars:
    ansible_connection: local
    ansible_become: false
  children:
    ferry_relays:
      hosts:
        relay-ci:
          ferry_root: "{root}"
          ferry_user: {CI_USER}
          ferry_site: edge1
          ferry_node_name: relay-1
          ferry_relay_address: 127.0.0.1
          ferry_binary_src: "{ferry}"
          ferry_tls_src_dir: "{pki}/edge"
          ferry_manage_service: false
          ferry_admin_listen: "127.0.0.1:{admin}"
          ferry_store:
            commit_interval: 50ms
          ferry_retention:
            max_bytes: 1GiB
          ferry_listeners:
            - name: syslog-tcp
              kind: syslog
              transport: tcp
              listen: "127.0.0.1:{tcp}"
              stream: live
              max_record_bytes: 16KiB
              route:
                - facility: authpriv
                  stream: audit
            - name: syslog-udp
              kind: syslog
              transport: udp
              listen: "127.0.0.1:{udp}"
              stream: live
          ferry_uplinks: {uplinks}
          ferry_buckets:
            - name: archive
              bucket: ferry-archive
              endpoint: "http://127.0.0.1:9"
              keep_local: 7d
              credentials:
                aws_access_key_id: AKCI
                aws_secret_access_key: ci-secret
    site_collectors:
      hosts:
        collector-ci:
          site_collector_root: "{collector}"
          site_collector_site: edge1
          site_collector_install_packages: false
          site_collector_manage_service: false
          site_collector_tls: true
          site_collector_tls_src_dir: "{pki}/edge"
          site_collector_tls_peer: localhost
"#,
            root = root.display(),
            collector = collector.display(),
            ferry = FERRY,
            pki = pki.dir.display(),
            uplinks = uplinks_json(link, "10Mbit/s"),
        ),
    )
    .unwrap();
    let site = repo().join("ansible/site.yml");
    let config = root.join("etc/ferry/ferry.toml");
    let unit = root.join("etc/systemd/system/ferry.service");
    let handler = "RUNNING HANDLER [ferry : Restart ferry]";

    // 1. First run: everything is created, the restart handler is notified.
    let (st, out) = playbook(&w.path, &inventory, &site, &[]);
    assert!(st.success(), "first run failed:\n{out}");
    assert_eq!(recap(&out, "relay-ci")["failed"], 0, "{out}");
    assert!(recap(&out, "relay-ci")["changed"] > 0, "{out}");
    assert!(recap(&out, "collector-ci")["changed"] > 0, "{out}");
    assert!(out.contains(handler), "the first run notifies the restart handler:\n{out}");

    // Owners and modes.
    let (uid, gid) = (id("-u", CI_USER), id("-g", CI_USER));
    assert!(uid > 0 && uid < 1000, "{CI_USER} is a system user (uid {uid})");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let entry = passwd.lines().find(|l| l.starts_with(&format!("{CI_USER}:"))).unwrap();
    assert!(entry.ends_with(":/usr/sbin/nologin"), "{CI_USER} has no login shell: {entry}");
    let expect: &[(&str, u32, u32, u32)] = &[
        ("root/usr/local/bin/ferry", 0, 0, 0o755),
        ("root/etc/ferry", 0, gid, 0o750),
        ("root/etc/ferry/ferry.toml", 0, gid, 0o640),
        ("root/etc/ferry/ca.pem", 0, 0, 0o644),
        ("root/etc/ferry/node.pem", 0, 0, 0o644),
        ("root/etc/ferry/node.key", uid, gid, 0o600),
        ("root/etc/ferry/bucket-archive.credentials", uid, gid, 0o600),
        ("root/var/lib/ferry", uid, gid, 0o750),
        ("root/var/lib/ferry/archive", uid, gid, 0o750),
        ("root/var/lib/ferry/state", uid, gid, 0o750),
        ("root/var/lib", 0, 0, 0o755),
        ("root/etc/systemd/system/ferry.service", 0, 0, 0o644),
        ("root/etc/sysctl.d/60-ferry.conf", 0, 0, 0o644),
        ("collector/etc/rsyslog.d/60-ferry-relay.conf", 0, 0, 0o644),
        ("collector/var/spool/rsyslog", 0, 0, 0o700),
        ("collector/etc/rsyslog-ferry/node.key", 0, 0, 0o600),
        ("collector/etc/rsyslog-ferry/ca.pem", 0, 0, 0o644),
    ];
    for (rel, u, g, mode) in expect {
        let m = std::fs::metadata(w.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (*u, *g, *mode), "{rel}: (uid, gid, mode)");
    }
    for f in ["ca.pem", "node.pem", "node.key"] {
        assert_eq!(
            std::fs::read(root.join("etc/ferry").join(f)).unwrap(),
            std::fs::read(pki.dir.join("edge").join(f)).unwrap(),
            "{f} is the node's file made by ferry certs"
        );
    }
    assert_eq!(
        std::fs::metadata(root.join("usr/local/bin/ferry")).unwrap().len(),
        std::fs::metadata(FERRY).unwrap().len(),
        "the installed binary is the one given in ferry_binary_src"
    );

    assert!(
        std::fs::read_to_string(root.join("etc/sysctl.d/60-ferry.conf"))
            .unwrap()
            .contains("net.core.rmem_max = 8388608"),
        "UDP listeners get their 8 MiB receive buffer"
    );

    // The config: what the inventory says, and `ferry check` accepts it.
    let text = std::fs::read_to_string(&config).unwrap();
    for want in [
        format!("data_dir = \"{}/var/lib/ferry\"", root.display()),
        format!("listen = \"127.0.0.1:{tcp}\""),
        format!("addresses = [\"127.0.0.1:{link}\"]"),
        "max_rate = \"10Mbit/s\"".to_owned(),
        "max_bytes = \"1GiB\"".to_owned(),
        "commit_interval = \"50ms\"".to_owned(),
        "  [[listener.route]]".to_owned(),
        format!("key = \"{}/etc/ferry/node.key\"", root.display()),
        format!("credentials_file = \"{}/etc/ferry/bucket-archive.credentials\"", root.display()),
    ] {
        assert!(text.contains(&want), "rendered config lacks {want:?}:\n{text}");
    }
    let out = Command::new(FERRY).args(["check", "-c"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "ferry check refused the rendered config:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ok (site edge1, node relay-1, 2 stream(s), 2 listener(s), 1 bucket(s))"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The unit: systemd-analyze accepts it without a word, it is hardened,
    // and deploy/ferry.service is the same unit.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let (st, out) =
        run_bounded(Command::new(require_tool("systemd-analyze")).arg("verify").arg(&unit), Duration::from_secs(60));
    assert!(st.success(), "systemd-analyze verify failed:\n{out}\n{unit_text}");
    let complaints: Vec<&str> = out.lines().filter(|l| l.contains("ferry.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze verify complains about the unit:\n{out}");
    let (st, out) = run_bounded(
        Command::new(require_tool("systemd-analyze")).args(["security", "--offline=true", "--threshold=20"]).arg(&unit),
        Duration::from_secs(60),
    );
    assert!(st.success(), "systemd-analyze security rates the unit worse than 2.0:\n{out}");
    let bin = format!("{}/usr/local/bin/ferry", root.display());
    let cfg = config.display().to_string();
    for want in [
        format!("User={CI_USER}"),
        format!("ExecStartPre={bin} check -c {cfg}"),
        format!("ExecStart={bin} run -c {cfg}"),
        "ExecReload=/bin/kill -HUP $MAINPID".to_owned(),
        "Restart=on-failure".to_owned(),
        "LimitNOFILE=1048576".to_owned(),
        "NoNewPrivileges=yes".to_owned(),
        "ProtectSystem=strict".to_owned(),
        format!("ReadWritePaths={}/var/lib/ferry", root.display()),
        "PrivateTmp=yes".to_owned(),
        "ProtectHome=yes".to_owned(),
        "ProtectKernelTunables=yes".to_owned(),
        "ProtectKernelModules=yes".to_owned(),
        "ProtectKernelLogs=yes".to_owned(),
        "ProtectControlGroups=yes".to_owned(),
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX".to_owned(),
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE".to_owned(),
        "AmbientCapabilities=CAP_NET_BIND_SERVICE".to_owned(),
        "SystemCallFilter=@system-service".to_owned(),
    ] {
        assert!(directives(&unit_text).contains(&want), "the unit lacks {want:?}:\n{unit_text}");
    }
    let shipped = std::fs::read_to_string(repo().join("deploy/ferry.service")).unwrap();
    let production: Vec<String> = directives(&unit_text)
        .iter()
        .map(|l| l.replace(&root.display().to_string(), "").replace(CI_USER, "ferry"))
        .collect();
    assert_eq!(directives(&shipped), production, "deploy/ferry.service is the role's unit with production paths");

    // The collector: rsyslog accepts it, and it targets the site's relay.
    let rs = collector.join("etc/rsyslog.d/60-ferry-relay.conf");
    let rs_text = std::fs::read_to_string(&rs).unwrap();
    let tls_dir = collector.join("etc/rsyslog-ferry");
    let tls_ca = format!("tls.caCert=\"{}/ca.pem\"", tls_dir.display());
    for want in [
        "type=\"omrelp\"",
        "target=\"127.0.0.1\"",
        "port=\"2514\"",
        "queue.type=\"LinkedList\"",
        "tls=\"on\"",
        &tls_ca,
        "tls.permittedPeer=[\"localhost\"]",
    ] {
        assert!(rs_text.contains(want), "collector config lacks {want}:\n{rs_text}");
    }
    let (st, out) = run_bounded(Command::new(&rsyslogd).args(["-N1", "-f"]).arg(&rs), Duration::from_secs(60));
    assert!(st.success(), "rsyslogd -N1 refused the collector config:\n{out}\n{rs_text}");

    // The node runs from exactly these files, as the role's user: the modes
    // are tight but sufficient (key readable, data_dir writable).
    let log = w.join("node.log");
    let child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&config)
        .uid(uid)
        .gid(gid)
        .env("FERRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut node = RunningNode { child: Some(child), log: log.clone() };
    let ready = |node: &mut RunningNode| {
        let t = Instant::now();
        loop {
            if let Some(s) = node.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ferry exited ({s}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if let Ok((200, _)) = http_get(admin, "/readyz") {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "not ready:\n{}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ready(&mut node);
    ferry_send(&["--to", &format!("127.0.0.1:{tcp}")], b"<13>written by the role's user\n");
    let t = Instant::now();
    while metric_value(&http_get(admin, "/metrics").unwrap().1, "ferry_committed_records_total", &[]) < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "record not committed:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 2. Second run: nothing changes, nothing is restarted.
    let (st, out) = playbook(&w.path, &inventory, &site, &[]);
    assert!(st.success(), "second run failed:\n{out}");
    assert_eq!(recap(&out, "relay-ci")["changed"], 0, "second run changed something on the relay:\n{out}");
    assert_eq!(recap(&out, "collector-ci")["changed"], 0, "second run changed something on the collector:\n{out}");
    assert!(!out.contains("RUNNING HANDLER"), "no handler on an unchanged run:\n{out}");

    // 3. A valid change: the config is replaced and the restart handler runs.
    let vars = w.join("faster.json");
    std::fs::write(&vars, format!(r#"{{"ferry_uplinks": {}}}"#, uplinks_json(link, "20Mbit/s"))).unwrap();
    let (st, out) = playbook(&w.path, &inventory, &site, &["-e", &format!("@{}", vars.display())]);
    assert!(st.success(), "run with a valid change failed:\n{out}");
    assert_eq!(recap(&out, "relay-ci")["changed"], 1, "only the config changed:\n{out}");
    assert!(!out.contains(handler), "a reloadable change does not restart:\n{out}");
    assert!(
        out.contains("ferry config applied by reload")
            && out.contains("RUNNING HANDLER [ferry : Reload ferry for the config]"),
        "a max_rate change is applied by reload:\n{out}"
    );
    assert!(std::fs::read_to_string(&config).unwrap().contains("max_rate = \"20Mbit/s\""));
    assert!(
        !std::fs::read_dir(root.join("etc/ferry")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains('~')),
        "the backup kept for the decision is removed"
    );
    // What `systemctl reload ferry` does (ExecReload: SIGHUP to the main
    // pid): the same process takes the new rate.
    let pid = node.child.as_ref().unwrap().id();
    // What ExecReload does, then wait until the node counts a reload as `result`.
    let hup_until = |result: &str| {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        let t = Instant::now();
        while metric_value(&http_get(admin, "/metrics").unwrap().1, "ferry_config_reloads_total", &[("result", result)])
            < 1.0
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "reload not {result}:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    hup_until("applied");
    // The process the test started is still the one running (a restart
    // would have ended it), and it counted the reload itself.
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none(), "still running after the reload");
    assert_eq!(
        metric_value(&http_get(admin, "/metrics").unwrap().1, "ferry_uplink_max_rate_bytes", &[]),
        2_500_000.0,
        "the new cap is in force"
    );

    // 3b. A change a reload cannot take ([node] site): the role restarts, and
    // the node itself would refuse it by name.
    let vars = w.join("other-site.json");
    std::fs::write(&vars, format!(r#"{{"ferry_uplinks": {}, "ferry_site": "edge9"}}"#, uplinks_json(link, "20Mbit/s")))
        .unwrap();
    // The relay only: the collector of site edge1 would have no relay.
    let (st, out) = playbook(&w.path, &inventory, &site, &["-l", "relay-ci", "-e", &format!("@{}", vars.display())]);
    assert!(st.success(), "run with a site change failed:\n{out}");
    assert!(
        out.contains("ferry config applied by restart") && out.contains("node.site"),
        "a site change is applied by restart, naming the key:\n{out}"
    );
    assert!(out.contains("RUNNING HANDLER [ferry : Restart ferry for the config]"), "{out}");
    hup_until("refused");
    assert!(std::fs::read_to_string(&log).unwrap().contains("reload refused: node.site"));
    // Back to the inventory's site for what follows.
    let vars = w.join("faster.json");
    let (st, out) = playbook(&w.path, &inventory, &site, &["-l", "relay-ci", "-e", &format!("@{}", vars.display())]);
    assert!(st.success(), "run back to the inventory's site failed:\n{out}");

    // 4. Broken configs: the play fails at the template task, the installed
    // config is untouched, no handler runs (even one notified earlier in the
    // same run, by a new CA file), and the running node keeps running.
    let other_ca = w.join("other-ca");
    let out = Command::new(FERRY).args(["certs", "ca", "--out"]).arg(&other_ca).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let broken = [
        (
            "an invalid max_rate",
            format!(
                r#"{{"ferry_uplinks": {}, "ferry_ca_src": "{}/ca.pem"}}"#,
                uplinks_json(link, "as fast as possible"),
                other_ca.display()
            ),
            "max_rate",
        ),
        (
            "an unknown listener transport",
            format!(
                r#"{{"ferry_uplinks": {}, "ferry_listeners": [{{"name": "syslog-tcp", "kind": "syslog", "transport": "carrier-pigeon", "listen": "127.0.0.1:{tcp}"}}]}}"#,
                uplinks_json(link, "20Mbit/s")
            ),
            "carrier-pigeon",
        ),
    ];
    for (i, (what, json, needle)) in broken.iter().enumerate() {
        let before = std::fs::read(&config).unwrap();
        let mtime = std::fs::metadata(&config).unwrap().modified().unwrap();
        let vars = w.join(&format!("broken-{i}.json"));
        std::fs::write(&vars, json).unwrap();
        let (st, out) = playbook(&w.path, &inventory, &site, &["-e", &format!("@{}", vars.display())]);
        assert!(!st.success(), "a config with {what} must fail the play:\n{out}");
        assert_eq!(recap(&out, "relay-ci")["failed"], 1, "{what}:\n{out}");
        let task =
            out.find("TASK [ferry : Render the config]").unwrap_or_else(|| panic!("{what}: no template task:\n{out}"));
        let fatal = out.find("fatal: [relay-ci]").unwrap_or_else(|| panic!("{what}: no failure:\n{out}"));
        assert!(
            fatal > task && !out[task + 1..fatal].contains("TASK ["),
            "{what}: the play must fail at the template task:\n{out}"
        );
        assert!(out.contains("failed to validate") && out.contains(needle), "{what}: ferry check's message:\n{out}");
        assert!(!out.contains("RUNNING HANDLER"), "{what}: no handler may run:\n{out}");
        if i == 0 {
            assert!(out.contains("changed: [relay-ci] => (item=ca.pem)"), "the new CA notified the handler:\n{out}");
        }
        assert_eq!(std::fs::read(&config).unwrap(), before, "{what}: the installed config was replaced");
        assert_eq!(std::fs::metadata(&config).unwrap().modified().unwrap(), mtime, "{what}: the config was touched");
        ready(&mut node);
    }

    let mut child = node.child.take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "ferry did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "ferry exited with {status}:\n{}", std::fs::read_to_string(&log).unwrap());
    assert_verify_ok(&root.join("var/lib/ferry"));
}

#[test]
fn example_inventory_renders_a_valid_config_for_every_node_and_collector() {
    let rsyslogd = require_tool("rsyslogd");
    let w = TestDir::new("ops-example");
    let scratch = w.join("hosts");
    let play = w.join("render.yml");
    std::fs::write(
        &play,
        format!(
            r#"---
- name: Render every example ferry node's config with the role
  hosts: ferry_nodes
  connection: local
  gather_facts: false
  tasks:
    - name: Scratch directories
      ansible.builtin.file:
        path: "{{{{ ferry_root }}}}{{{{ item }}}}"
        state: directory
        mode: "0755"
      loop: [/usr/local/bin, /etc/ferry]
    - name: The binary the template task validates with
      ansible.builtin.file:
        src: "{ferry}"
        dest: "{{{{ ferry_root }}}}/usr/local/bin/ferry"
        state: link
    - name: Render
      ansible.builtin.include_role:
        name: ferry
        tasks_from: config

- name: Render every example collector's rsyslog config with the role
  hosts: site_collectors
  connection: local
  gather_facts: false
  roles:
    - role: site_collector
"#,
            ferry = FERRY
        ),
    )
    .unwrap();
    let vars = w.join("vars.json");
    std::fs::write(
        &vars,
        format!(
            r#"{{"ferry_root": "{s}/{{{{ inventory_hostname }}}}", "ferry_group": "root", "ferry_manage_service": false,
               "site_collector_root": "{s}/{{{{ inventory_hostname }}}}", "site_collector_install_packages": false,
               "site_collector_manage_service": false}}"#,
            s = scratch.display()
        ),
    )
    .unwrap();
    let (st, out) =
        playbook(&w.path, &repo().join("ansible/inventory/hosts.yml"), &play, &["-e", &format!("@{}", vars.display())]);
    assert!(st.success(), "rendering the example inventory failed:\n{out}");

    for (host, summary, rate) in [
        (
            "central-1.logs.example.net",
            "ok (site central, node central-1, 1 stream(s), 2 listener(s), 1 sink(s), 1 bucket(s))",
            None,
        ),
        ("relay-1.sg1.example.net", "ok (site sg1, node relay-1, 2 stream(s), 4 listener(s))", Some("20Mbit/s")),
        ("relay-1.fra1.example.net", "ok (site fra1, node relay-1, 2 stream(s), 4 listener(s))", Some("50Mbit/s")),
    ] {
        let config = scratch.join(host).join("etc/ferry/ferry.toml");
        let out = Command::new(FERRY).args(["check", "-c"]).arg(&config).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(summary),
            "{host}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if rate.is_none() {
            let text = std::fs::read_to_string(&config).unwrap();
            assert!(
                text.contains("[[sink]]") && text.contains("options = { \"linger.ms\" = \"20\" }"),
                "{host}: the sink and its librdkafka options as a TOML inline table:\n{text}"
            );
        }
        if let Some(rate) = rate {
            let text = std::fs::read_to_string(&config).unwrap();
            assert!(text.contains(&format!("max_rate = \"{rate}\"")), "{host}: its own rate:\n{text}");
            assert!(
                text.contains("addresses = [\"central-1.logs.example.net:7443\"]"),
                "{host}: the uplink dials the central node of the inventory:\n{text}"
            );
        }
    }
    for (host, relay) in [
        ("log-1.sg1.example.net", "relay-1.sg1.example.net"),
        ("log-2.sg1.example.net", "relay-1.sg1.example.net"),
        ("log-1.fra1.example.net", "relay-1.fra1.example.net"),
    ] {
        let conf = scratch.join(host).join("etc/rsyslog.d/60-ferry-relay.conf");
        let text = std::fs::read_to_string(&conf).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(text.contains(&format!("target=\"{relay}\"")), "{host} forwards to {relay}:\n{text}");
        let (st, out) = run_bounded(Command::new(&rsyslogd).args(["-N1", "-f"]).arg(&conf), Duration::from_secs(60));
        assert!(st.success(), "{host}: rsyslogd -N1 refused:\n{out}\n{text}");
    }
}

#[test]
fn deploy_unit_passes_systemd_analyze() {
    let w = TestDir::new("ops-unit");
    let shipped = std::fs::read_to_string(repo().join("deploy/ferry.service")).unwrap();
    assert!(shipped.contains("/usr/local/bin/ferry"));
    // verify needs the binary at the unit's path: point it at the built one.
    let unit = w.join("ferry.service");
    std::fs::write(&unit, shipped.replace("/usr/local/bin/ferry", FERRY)).unwrap();
    let sa = require_tool("systemd-analyze");
    let (st, out) = run_bounded(Command::new(&sa).arg("verify").arg(&unit), Duration::from_secs(60));
    assert!(st.success() && !out.contains("ferry.service"), "systemd-analyze verify:\n{out}");
    let (st, out) = run_bounded(
        Command::new(&sa).args(["security", "--offline=true", "--threshold=20"]).arg(&unit),
        Duration::from_secs(60),
    );
    assert!(st.success(), "systemd-analyze security rates deploy/ferry.service worse than 2.0:\n{out}");
}

#[test]
fn prometheus_rules_and_config_pass_promtool() {
    let promtool = require_tool("promtool");
    let dir = repo().join("configs/prometheus");
    let (st, out) = run_bounded(
        Command::new(&promtool).args(["check", "rules"]).arg(dir.join("ferry.rules.yml")),
        Duration::from_secs(60),
    );
    assert!(st.success() && out.contains("SUCCESS"), "promtool check rules:\n{out}");
    let (st, out) = run_bounded(
        Command::new(&promtool).args(["check", "config"]).arg(dir.join("prometheus.yml")),
        Duration::from_secs(60),
    );
    assert!(st.success(), "promtool check config:\n{out}");

    let rules = std::fs::read_to_string(dir.join("ferry.rules.yml")).unwrap();
    for want in [
        "up{job=\"ferry\"} == 0",
        "ferry_uplink_connected == 0",
        "ferry_uplink_lag_seconds",
        "deriv(ferry_uplink_lag_bytes[15m]) > 0",
        "increase(ferry_dropped_records_total[5m])) > 0",
        "node_filesystem_avail_bytes",
        "ferry_store_full == 1",
        "increase(ferry_link_checksum_mismatches_total[1h])) > 0",
        "increase(ferry_link_refused_total",
        "increase(ferry_recovery_truncated_frames_total",
    ] {
        assert!(rules.contains(want), "the rules lack {want:?}");
    }
    // Every alert says what it means and what to do, and the operator guide has it.
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    assert_eq!(rules.matches("\n          summary: ").count(), alerts.len(), "a summary per alert");
    assert_eq!(rules.matches("\n          description: ").count(), alerts.len(), "a description per alert");
    let guide = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    for a in &alerts {
        assert!(guide.contains(&format!("| `{a}` |")), "docs/operations.md does not explain {a}");
    }
    // ... and every ferry metric it uses is one ferry exports.
    let defined = ferry_names(&std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap());
    for name in ferry_names(&rules) {
        assert!(defined.contains(family(&name)), "the rules use {name}, which src/metrics.rs does not define");
    }
}

/// Write `text` to a file and run `promtool check metrics` on it.
fn promtool_check_metrics(promtool: &Path, dir: &TestDir, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let (st, out) = run_bounded(
        Command::new(promtool).args(["check", "metrics"]).stdin(std::fs::File::open(&path).unwrap()),
        Duration::from_secs(60),
    );
    assert!(st.success(), "promtool check metrics rejects the {name} scrape:\n{out}");
}

#[test]
fn live_scrapes_pass_promtool_and_hold_every_dashboard_metric() {
    let promtool = require_tool("promtool");
    let python = require_tool("python3");
    let dir = TestDir::new("ops-scrape");
    let pki = Pki::new(&dir, "pki");
    let link_port = free_port();
    let p = pair("ops-scrape", &pki, Via::Tls, link_port, link_port, "", "max_rate = \"10Mbit/s\"");
    // A sink whose broker is not there and a bucket whose store is not
    // there: their series exist all the same.
    let cred = dir.join("bucket.credentials");
    std::fs::write(&cred, "aws_access_key_id = k\naws_secret_access_key = s\n").unwrap();
    let central_cfg = format!(
        "{}\n[[sink]]\nname = \"bus\"\nkind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"\n\
         \n[[bucket]]\nname = \"s3\"\nbucket = \"archive\"\nendpoint = \"http://127.0.0.1:{}\"\ncredentials_file = \"{}\"\n",
        p.central_cfg,
        free_port(),
        free_port(),
        cred.display()
    );
    let central = Node::start(&p.central_dir, &central_cfg, p.central_ports.admin);
    let edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);

    // Traffic for every series the dashboard shows: records, one dropped
    // (a frame cut short by the sender), one link refused (not TLS at all).
    let lines: String = (0..2000).map(|i| format!("<13>ops line {i}\n")).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], lines.as_bytes());
    {
        let mut s = TcpStream::connect(("127.0.0.1", p.edge_ports.tcp)).unwrap();
        s.write_all(b"100 <13>cut short").unwrap();
    }
    {
        let mut s = TcpStream::connect(("127.0.0.1", link_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let _ = s.read_to_end(&mut Vec::new());
    }
    let limit = Duration::from_secs(30);
    edge.wait_metric("ferry_committed_records_total", &[], limit, |v| v >= 2000.0);
    edge.wait_metric("ferry_dropped_records_total", &[("reason", "incomplete_frame")], limit, |v| v >= 1.0);
    edge.wait_metric("ferry_uplink_connected", &[], limit, |v| v == 1.0);
    edge.wait_metric("ferry_uplink_acked_bytes_total", &[], limit, |v| v > 0.0);
    central.wait_metric("ferry_link_received_bytes_total", &[("site", "edge1")], limit, |v| v > 0.0);
    central.wait_metric("ferry_link_refused_total", &[], limit, |v| v >= 1.0);
    let t = Instant::now();
    while !(edge.metrics().contains("ferry_uplink_lag_bytes{") && edge.metrics().contains("ferry_uplink_lag_seconds{"))
    {
        assert!(t.elapsed() < limit, "no lag gauges:\n{}", edge.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    while !central.metrics().contains("ferry_sink_lag_seconds{")
        || !central.metrics().contains("ferry_bucket_lag_seconds{")
    {
        assert!(t.elapsed() < limit, "no sink lag gauges:\n{}", central.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (edge_text, central_text) = (edge.metrics(), central.metrics());

    promtool_check_metrics(&promtool, &dir, "edge", &edge_text);
    promtool_check_metrics(&promtool, &dir, "central", &central_text);
    assert!(edge_text.contains("# TYPE ferry_build_info gauge"), "ferry_build_info is a gauge");
    assert_eq!(metric_value(&edge_text, "ferry_build_info", &[]), 1.0);

    // The dashboard is JSON; pull out every query it runs.
    let dashboard = repo().join("configs/grafana/ferry.json");
    let script = r#"
import json, sys
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("expr", "query") and isinstance(v, str):
                print(json.dumps(v))
            else:
                walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(json.load(open(sys.argv[1])))
"#;
    let (st, exprs) = run_bounded(Command::new(&python).args(["-c", script]).arg(&dashboard), Duration::from_secs(60));
    assert!(st.success(), "configs/grafana/ferry.json is not valid JSON:\n{exprs}");
    for want in [
        "rate(ferry_received_records_total",
        "rate(ferry_dropped_records_total",
        "ferry_uplink_lag_bytes",
        "ferry_uplink_lag_seconds",
        "rate(ferry_uplink_wire_bytes_total{instance=~\\\"$instance\\\"}[1m]) * 8",
        "ferry_uplink_max_rate_bytes{instance=~\\\"$instance\\\"} * 8",
        "ferry_archive_bytes",
        "histogram_quantile(0.99, sum by (instance, le) (rate(ferry_commit_duration_seconds_bucket",
        "ferry_bucket_lag_seconds",
        "increase(ferry_bucket_errors_total",
    ] {
        assert!(exprs.contains(want), "the dashboard has no query with {want}:\n{exprs}");
    }
    let used = ferry_names(&exprs);
    assert!(used.len() >= 15, "{used:?}");
    let live: BTreeSet<String> = sampled(&edge_text).union(&sampled(&central_text)).cloned().collect();
    let missing: Vec<&String> = used.iter().filter(|n| !live.contains(family(n))).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics absent from the scrapes: {missing:?}\nscraped: {live:?}"
    );
}
