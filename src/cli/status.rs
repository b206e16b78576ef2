//! `ferry status`: fetch `/status` from a running node's admin listener.

use std::time::Duration;

use anyhow::Context;

use crate::admin::client;

pub fn status(admin: &str) -> anyhow::Result<i32> {
    let (code, body) = client::get(admin, "/status", Duration::from_secs(10)).with_context(|| {
        format!("cannot reach the admin listener at {admin} (is ferry running? see [admin] listen)")
    })?;
    if code != 200 {
        anyhow::bail!("{admin}/status answered HTTP {code}: {}", body.trim());
    }
    print!("{body}");
    Ok(0)
}
