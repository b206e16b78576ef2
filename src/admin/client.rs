//! The one HTTP client ferry needs: a GET to a node's admin listener, used by
//! `ferry status`, the tests and the benchmarks to read a running node, and
//! the one reader of a single figure in its `/metrics` text.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GET `path` from the admin listener at `addr`; returns (status, body).
///
/// # Errors
/// Connection and I/O errors; a response that is not HTTP gives status 0.
pub fn get(addr: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.to_ascii_lowercase().contains("transfer-encoding: chunked") => dechunk(body),
        Some((_, body)) => body.to_owned(),
        None => String::new(),
    };
    Ok((status, body))
}

/// Sum of the samples of `name` in Prometheus text `text` whose labels
/// include all of `labels` (0 if none): how tests, benches and scripts read
/// one figure off `/metrics` without a Prometheus.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (lab, val) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if labels.iter().all(|(k, v)| lab.split(',').any(|kv| kv == format!("{k}=\"{v}\""))) {
            sum += val.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
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

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
