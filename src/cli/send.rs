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
    /// Lines per second (default: as fast as the listener takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Input file (default: stdin).
    file: Option<PathBuf>,
}

enum Out {
    Stream(Box<dyn Write>),
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
                    w.flush()?;
                }
                std::thread::sleep(due - elapsed);
            }
        }
        match &mut out {
            Out::Stream(w) => match a.framing {
                Framing::Lf => {
                    w.write_all(&line)?;
                    w.write_all(b"\n")?;
                }
                Framing::Octet => {
                    framed.clear();
                    write!(framed, "{} ", line.len())?;
                    w.write_all(&framed)?;
                    w.write_all(&line)?;
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
    if let Out::Stream(w) = &mut out {
        w.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("ferry send: {sent} lines in {secs:.3}s ({:.0} lines/s)", sent as f64 / secs.max(1e-9));
    Ok(0)
}
