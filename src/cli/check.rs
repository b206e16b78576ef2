use std::path::Path;

use crate::config::{Config, Error};

/// `ferry check -c FILE`: 0 when valid, 2 with every problem listed otherwise.
pub fn check(path: &Path) -> anyhow::Result<i32> {
    match Config::load(path) {
        Ok(c) => {
            let sinks = if c.sinks.is_empty() { String::new() } else { format!(", {} sink(s)", c.sinks.len()) };
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
