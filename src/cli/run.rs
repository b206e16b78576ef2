use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, DEFAULT_CONFIG};
use crate::store::clock::{Clock, SystemClock};

pub fn run(config: Option<PathBuf>) -> anyhow::Result<i32> {
    let (cfg, text) = match &config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            let cfg = crate::config::validate(&text, &p.display().to_string())
                .with_context(|| format!("config {}", p.display()))?;
            (cfg, text)
        }
        None => (Config::default_embedded(), DEFAULT_CONFIG.to_owned()),
    };
    crate::node::memory::one_arena();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ferry").build()?;
    rt.block_on(crate::node::run(config, cfg, &text, Arc::new(SystemClock)))?;
    Ok(0)
}

/// Run a node on `cfg` (no file: SIGHUP reloads nothing) until SIGTERM/SIGINT.
pub async fn run_node(cfg: Config, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    Ok(crate::node::run(None, cfg, "", clock).await?)
}
