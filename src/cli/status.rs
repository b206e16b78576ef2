//! `ferry status`: fetch `/status` from a running node's admin listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context;

pub fn status(admin: &str) -> anyhow::Result<i32> {
    let mut s = TcpStream::connect(admin).with_context(|| {
        format!("cannot reach the admin listener at {admin} (is ferry running? see [admin] listen)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{admin}/status answered: {}", head.lines().next().unwrap_or(""));
    }
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    print!("{body}");
    Ok(0)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
