//! The shipped Fluent Bit and Vector configs, which no test can run here
//! (neither is packaged in Debian 12, nor reachable from the build
//! machines): what each asks of ferry is checked by sending that request,
//! with curl, to a real node. rsyslog and syslog-ng configs are run for real
//! in tests/relp.rs and tests/syslog_tls.rs.

mod util;

use std::path::Path;
use std::process::Command;

use util::*;

fn shipped(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/collectors").join(name)).unwrap()
}

/// POST an NDJSON body gzip-compressed, as Fluent Bit's `format json_lines`
/// + `compress gzip` and Vector's json codec + newline framing + gzip send it.
fn post_ndjson_gzip(url: &str, ndjson: &str, dir: &TestDir) -> String {
    let plain = dir.join("batch.ndjson");
    std::fs::write(&plain, ndjson).unwrap();
    let gz = Command::new(require_tool("gzip")).arg("-c").arg(&plain).output().unwrap();
    assert!(gz.status.success());
    let body = dir.join("batch.ndjson.gz");
    std::fs::write(&body, gz.stdout).unwrap();
    let out = Command::new(require_tool("curl"))
        .args(["-sS", "--max-time", "20", "-X", "POST", "-H", "Content-Type: application/x-ndjson"])
        .args(["-H", "Content-Encoding: gzip", "-w", " %{http_code}", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_node(dir: &TestDir) -> (Node, u16) {
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let http = free_port();
    let extra = format!(
        "\n[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\n"
    );
    (Node::start(dir, &node_config(dir, &ports, "", "", &extra), ports.admin), http)
}

fn fill(text: &str, port: u16) -> String {
    text.replace("@RELAY_HOST@", "127.0.0.1").replace("@RELAY_PORT@", &port.to_string()).replace("@STREAM@", "live")
}

#[test]
fn fluent_bit_config_asks_for_what_ferry_serves() {
    let dir = TestDir::new("fluent-bit");
    let (mut node, port) = http_node(&dir);
    let conf = fill(&shipped("fluent-bit.conf"), port);
    let setting = |key: &str| -> String {
        conf.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with(' ')).map(|r| r.trim().to_owned()))
            .unwrap_or_else(|| panic!("fluent-bit.conf has no {key}"))
    };
    assert_eq!(setting("name"), "systemd", "first section is the example input");
    assert_eq!(setting("format"), "json_lines", "NDJSON, one record per event");
    assert_eq!(setting("compress"), "gzip");
    assert_eq!(setting("retry_limit"), "no_limits", "retries until ferry has it on disk");
    assert_eq!(setting("storage.type"), "filesystem", "chunks survive a Fluent Bit restart");
    let url = format!("http://{}:{}{}", setting("host"), setting("port"), setting("uri"));
    let batch = "{\"date\":\"2026-11-26T10:00:00.000Z\",\"MESSAGE\":\"fb-1 started\"}\n{\"date\":\"2026-11-26T10:00:01.000Z\",\"MESSAGE\":\"fb-2 ok\"}\n";
    let r = post_ndjson_gzip(&url, batch, &dir);
    assert!(r.ends_with(" 200") && r.contains("\"accepted\":2"), "{r}");
    node.stop();
    let lines = archive_lines(&node.data);
    assert_eq!(lines, batch.lines().map(str::to_owned).collect::<Vec<_>>());
}

#[test]
fn vector_config_asks_for_what_ferry_serves() {
    let dir = TestDir::new("vector");
    let (mut node, port) = http_node(&dir);
    let conf: toml::Value = toml::from_str(&fill(&shipped("vector.toml"), port)).expect("vector.toml is TOML");
    let sink = &conf["sinks"]["ferry"];
    assert_eq!(sink["type"].as_str(), Some("http"));
    assert_eq!(sink["method"].as_str(), Some("post"));
    assert_eq!(sink["compression"].as_str(), Some("gzip"));
    assert_eq!(sink["encoding"]["codec"].as_str(), Some("json"));
    assert_eq!(sink["framing"]["method"].as_str(), Some("newline_delimited"));
    assert_eq!(sink["acknowledgements"]["enabled"].as_bool(), Some(true), "end-to-end acks");
    assert_eq!(sink["buffer"]["type"].as_str(), Some("disk"));
    assert_eq!(sink["buffer"]["when_full"].as_str(), Some("block"), "never drops when the relay is away");
    let batch = "{\"message\":\"vec-1 started\",\"host\":\"web-01\"}\n{\"message\":\"vec-2 ok\",\"host\":\"web-01\"}\n";
    let r = post_ndjson_gzip(sink["uri"].as_str().unwrap(), batch, &dir);
    assert!(r.ends_with(" 200") && r.contains("\"accepted\":2"), "{r}");
    node.stop();
    let lines = archive_lines(&node.data);
    assert_eq!(lines, batch.lines().map(str::to_owned).collect::<Vec<_>>());
}
