//! The log subscriber, with a filter a reload can replace. `[log] level`,
//! when the config sets it, wins; else `FERRY_LOG` (the units set it), else
//! `info`.

use std::sync::OnceLock;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), reload::Error> + Send + Sync>;

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
    let _ = SET.set(Box::new(move |f| handle.reload(f)));
}

/// Put the config's `[log] level` (validated) in force; `None`: `FERRY_LOG`
/// or `info`. False when no subscriber was installed by [`init`] (tests).
pub fn set_level(level: Option<&str>) -> bool {
    let env = std::env::var("FERRY_LOG").ok();
    let level = level.or(env.as_deref()).unwrap_or("info");
    match (SET.get(), EnvFilter::try_new(level)) {
        (Some(set), Ok(f)) => set(f).is_ok(),
        _ => false,
    }
}
