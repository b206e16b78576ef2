use std::path::Path;

use crate::config::{Config, Error};

/// Exit code of `--reloadable-from` when the change needs a restart.
pub const NEEDS_RESTART: i32 = 3;

/// `ferry check -c FILE`: 0 when valid, 2 with every problem listed otherwise;
/// with `--reloadable-from OLD`, 3 when a valid FILE needs a restart.
pub fn check(path: &Path, old: Option<&Path>) -> anyhow::Result<i32> {
    match Config::load(path) {
        Ok(c) => {
            if let Some(old) = old {
                return Ok(reloadable(&c, old));
            }
            let mut sinks = if c.sinks.is_empty() { String::new() } else { format!(", {} sink(s)", c.sinks.len()) };
            if !c.buckets.is_empty() {
                sinks.push_str(&format!(", {} bucket(s)", c.buckets.len()));
            }
            println!(
                "{}: ok (site {}, node {}, {} stream(s), {} listener(s){sinks})",
                path.display(),
                c.node.site,
                c.node.name,
                c.streams.len(),
                c.listeners.len()
            );
            Ok(0)
        }
        Err(Error::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            Ok(2)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a node running on `old` can take `new` by reload (SIGHUP).
fn reloadable(new: &Config, old: &Path) -> i32 {
    let old = match Config::load(old) {
        Ok(o) => o,
        Err(e) => {
            println!("{}: restart: the config in force ({}) cannot be read as valid: {e}", new.source, old.display());
            return NEEDS_RESTART;
        }
    };
    match crate::node::reload::plan(&old, new) {
        Ok(plan) => {
            let changes = plan.describe();
            if changes.is_empty() {
                println!("{}: reload: nothing but possibly the TLS files changed", new.source);
            } else {
                println!("{}: reload: {}", new.source, changes.join("; "));
            }
            0
        }
        Err(fixed) => {
            for f in &fixed {
                println!("{}: restart: {f}", new.source);
            }
            NEEDS_RESTART
        }
    }
}
