//! Subcommands, one file each. `anyhow` lives here and in `main.rs` only.

mod audit;
mod cat;
mod certs;
mod check;
mod grep;
mod progress;
mod run;
mod send;
mod status;
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use run::run_node;

/// ferry: cross-datacenter log relay and archive.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (without -c: the embedded single-node default, data in ./data).
    Run {
        /// Config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file; every problem names the file, line and key.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Also say whether a node running on this (older) file can take the
        /// new one by reload: exit 0 if so, 3 if it needs a restart (each key
        /// named). A missing or invalid old file needs a restart.
        #[arg(long, value_name = "OLD")]
        reloadable_from: Option<PathBuf>,
    },
    /// Check every frame and checksum of an archive (a data_dir or its archive/, or s3://bucket/prefix).
    Verify {
        #[arg(value_name = "ARCHIVE")]
        location: String,
        /// For s3://: a node config whose [[bucket]] names the bucket (else the AWS_* environment).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one line per segment.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Print an archive's records by site, stream and receive time (frames outside the range are not read).
    Cat(cat::CatArgs),
    /// Per site/stream/node and hour: segments, records, sequence range, and every gap with its reason; exit 1 on a gap.
    Audit(audit::AuditArgs),
    /// Search an archive's records (the `cat` selection) for a pattern, on every core, in archive order.
    Grep(grep::GrepArgs),
    /// Send lines from a file or stdin to a syslog listener (also the load generator).
    Send(send::SendArgs),
    /// Make the deployment CA and node certificates (`certs ca`, `certs issue`).
    Certs(certs::CertsArgs),
    /// Lag per uplink and stream, rates, drops, disk: a running node at a glance.
    Status {
        /// The node's admin listener.
        #[arg(long, default_value = "127.0.0.1:9750")]
        admin: String,
    },
    /// Print the embedded default config.
    DefaultConfig,
}

/// Run the parsed command; the exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run { config } => run::run(config),
        Command::Check { config, reloadable_from } => check::check(&config, reloadable_from.as_deref()),
        Command::Verify { location, config, verbose } => verify::verify(&location, config.as_deref(), verbose),
        Command::Send(a) => send::send(a),
        Command::Cat(a) => cat::cat(a),
        Command::Grep(a) => grep::grep(a),
        Command::Audit(a) => audit::audit(a),
        Command::Certs(a) => certs::certs(a),
        Command::Status { admin } => status::status(&admin),
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(0)
        }
    }
}
