//! `ferry send`: lines from a file or stdin to a syslog listener, as fast as
//! allowed or at `--rate` lines per second. It is also the project's load
//! generator, so it writes in large buffers and does no per-line allocation.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SendTransport {
    Tcp,
    Udp,
    /// Unix datagram socket.
    Unix,
    UnixStream,
    /// TCP with TLS (syslog over TLS, RFC 5425), trusting `--ca`.
    Tls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Framing {
    /// LF-terminated lines (non-transparent framing).
    Lf,
    /// RFC 6587 octet counting.
    Octet,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// host:port, or a socket path for unix transports.
    #[arg(long)]
    to: String,
    #[arg(long, value_enum, default_value = "tcp")]
    transport: SendTransport,
    /// Framing on stream transports.
    #[arg(long, value_enum, default_value = "lf")]
    framing: Framing,
    /// `--transport tls`: the CA file to trust (the deployment CA).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// `--transport tls`: this client's certificate and key (omit both to send none).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// `--transport tls`: the name to check in the server's certificate
    /// (default: the host of `--to`).
    #[arg(long)]
    server_name: Option<String>,
    /// Lines per second (default: as fast as the listener takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Input file (default: stdin).
    file: Option<PathBuf>,
}

/// A stream transport's writer, and how to end it.
trait StreamOut: Write {
    /// Flush and end the stream. True when the listener is known to have
    /// read everything: it closed its side after ours (syslog over TCP has
    /// no acknowledgement; this is the nearest thing), or, for TLS, answered
    /// our close_notify.
    fn finish(&mut self) -> io::Result<bool>;
}

/// A socket that can stop sending and still read (TCP, unix stream).
trait HalfClose: Read + Write {
    fn half_close(&self) -> io::Result<()>;
}

impl HalfClose for TcpStream {
    fn half_close(&self) -> io::Result<()> {
        self.set_read_timeout(Some(CLOSE_WAIT))?;
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl HalfClose for UnixStream {
    fn half_close(&self) -> io::Result<()> {
        self.set_read_timeout(Some(CLOSE_WAIT))?;
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl<S: HalfClose> StreamOut for io::BufWriter<S> {
    fn finish(&mut self) -> io::Result<bool> {
        self.flush()?;
        self.get_mut().half_close()?;
        drain(self.get_mut())
    }
}

impl StreamOut for io::BufWriter<TlsOut> {
    fn finish(&mut self) -> io::Result<bool> {
        self.flush()?;
        self.get_mut().finish()?;
        Ok(true)
    }
}

/// How long `ferry send` waits for the listener to close after it.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Read until the peer closes (true) or `CLOSE_WAIT` passes (false).
fn drain(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(false),
            // A reset once our side is closed: the listener is gone too.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

struct TlsOut(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Write for TlsOut {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl TlsOut {
    /// Send close_notify, then read until the server closes. In TLS 1.3 a
    /// server refuses a client certificate only after the client has
    /// finished its handshake, so this read is where such a refusal shows:
    /// without it `ferry send` would report lines the server threw away.
    fn finish(&mut self) -> io::Result<()> {
        self.0.conn.send_close_notify();
        self.0.flush()?;
        self.0.sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 4096];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(io::Error::new(e.kind(), format!("the server ended the TLS session: {e}"))),
            }
        }
    }
}

/// A failed write to the listener. Made a plain message on purpose: `main`
/// treats a broken pipe as a closed stdout and exits 0, but here it means
/// the relay dropped the connection and lines may not have arrived.
fn lost(a: &SendArgs, e: io::Error) -> anyhow::Error {
    let over = if a.transport == SendTransport::Tls { " over TLS" } else { "" };
    anyhow::anyhow!("sending{over} to {}: {e}; lines may not have arrived", a.to)
}

fn tls_stream(a: &SendArgs) -> anyhow::Result<TlsOut> {
    let ca = a.ca.as_deref().context("--transport tls needs --ca (the deployment CA file)")?;
    let own = a.cert.as_deref().zip(a.key.as_deref());
    let config = crate::pki::collector_client_config(ca, own)?;
    let host = match &a.server_name {
        Some(n) => n.clone(),
        None => a.to.rsplit_once(':').map_or(a.to.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned(),
    };
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("{host:?} is not a DNS name or IP address for the server's certificate"))?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let tcp = TcpStream::connect(&a.to).with_context(|| format!("cannot connect to {}", a.to))?;
    tcp.set_nodelay(true)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Handshake now, so that a refusal is reported as such and not as a failed write.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).with_context(|| format!("TLS handshake with {} failed", a.to))?;
    }
    Ok(TlsOut(s))
}

enum Out {
    Stream(Box<dyn StreamOut>),
    Udp(UdpSocket),
    Unix(UnixDatagram, String),
}

pub fn send(a: SendArgs) -> anyhow::Result<i32> {
    let input: Box<dyn Read> = match &a.file {
        Some(p) => Box::new(File::open(p).with_context(|| format!("cannot open {}", p.display()))?),
        None => Box::new(io::stdin().lock()),
    };
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut out = match a.transport {
        SendTransport::Tcp => {
            let s = TcpStream::connect(&a.to).with_context(|| format!("cannot connect to {}", a.to))?;
            s.set_nodelay(true)?;
            Out::Stream(Box::new(io::BufWriter::with_capacity(256 << 10, s)))
        }
        SendTransport::Tls => Out::Stream(Box::new(io::BufWriter::with_capacity(256 << 10, tls_stream(&a)?))),
        SendTransport::UnixStream => {
            let s = UnixStream::connect(&a.to).with_context(|| format!("cannot connect to {}", a.to))?;
            Out::Stream(Box::new(io::BufWriter::with_capacity(256 << 10, s)))
        }
        SendTransport::Udp => {
            let s = UdpSocket::bind(if a.to.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" })?;
            s.connect(&a.to).with_context(|| format!("cannot reach {}", a.to))?;
            Out::Udp(s)
        }
        SendTransport::Unix => Out::Unix(UnixDatagram::unbound()?, a.to.clone()),
    };
    let started = Instant::now();
    let mut line = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4096);
    let mut sent: u64 = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if let Some(rate) = a.rate {
            // Pace in steps of ~1 ms so high rates do not sleep per line.
            let due = Duration::from_secs_f64(sent as f64 / rate);
            let elapsed = started.elapsed();
            if due > elapsed + Duration::from_millis(1) {
                if let Out::Stream(w) = &mut out {
                    w.flush().map_err(|e| lost(&a, e))?;
                }
                std::thread::sleep(due - elapsed);
            }
        }
        match &mut out {
            Out::Stream(w) => match a.framing {
                Framing::Lf => {
                    w.write_all(&line).map_err(|e| lost(&a, e))?;
                    w.write_all(b"\n").map_err(|e| lost(&a, e))?;
                }
                Framing::Octet => {
                    framed.clear();
                    write!(framed, "{} ", line.len())?;
                    w.write_all(&framed).map_err(|e| lost(&a, e))?;
                    w.write_all(&line).map_err(|e| lost(&a, e))?;
                }
            },
            Out::Udp(s) => {
                s.send(&line).with_context(|| format!("send to {}", a.to))?;
            }
            Out::Unix(s, path) => {
                s.send_to(&line, &*path).with_context(|| format!("send to {path}"))?;
            }
        }
        sent += 1;
    }
    let read_all = match &mut out {
        Out::Stream(w) => Some(w.finish().map_err(|e| lost(&a, e))?),
        _ => None,
    };
    let secs = started.elapsed().as_secs_f64();
    let rate = sent as f64 / secs.max(1e-9);
    match read_all {
        Some(true) => eprintln!("ferry send: {sent} lines in {secs:.3}s ({rate:.0} lines/s), read to the end by the listener"),
        Some(false) => eprintln!(
            "ferry send: {sent} lines written in {secs:.3}s; the listener did not close within {}s, so how many it read is not known",
            CLOSE_WAIT.as_secs()
        ),
        None => eprintln!("ferry send: {sent} datagrams sent in {secs:.3}s ({rate:.0}/s; datagrams are not acknowledged)"),
    }
    Ok(0)
}
