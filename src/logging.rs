//! The log subscriber, with a filter a reload can replace (`[log] level`).
//! `FERRY_LOG`, when set, wins over the config: an operator debugging a
//! node keeps the filter they asked for across reloads.

use std::sync::OnceLock;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET: OnceLock<SetFilter> = OnceLock::new();

/// Install the subscriber: stderr, no targets, colours on a terminal.
pub fn init() {
    let env = std::env::var("FERRY_LOG").ok();
    let filter = env.as_deref().and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    if env.is_none() {
        let _ = SET.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
    }
}

/// Put `level` (validated by the config) in force, unless `FERRY_LOG` is
/// set or no subscriber was installed by [`init`] (tests). True if applied.
pub fn set_level(level: &str) -> bool {
    match (SET.get(), EnvFilter::try_new(level)) {
        (Some(set), Ok(f)) => set(f).is_ok(),
        _ => false,
    }
}
