//! What a reload changes: the difference between the config in force and
//! a new, valid one, or the keys that cannot change while the node runs.
//!
//! Reloadable in place: listeners (added, removed, changed: a changed one is
//! replaced), uplinks (added, removed; `max_rate`, `burst`, `live_share`
//! tuned without ending the session; any other change restarts the uplink),
//! sinks (added, removed, changed: restarted), retention ages, sizes and
//! interval, the log filter, and the TLS files (re-read on every reload).
//! Everything else is fixed at start: the node's identity and data
//! directory, the admin address, the store's write path, the stream set,
//! `store.retention.on_full` (the writers act on it).

use crate::config::{BucketConfig, Config, ListenerConfig, SinkConfig, UplinkConfig};
use crate::link::uplink::Tuning;

/// A key that cannot change in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixed {
    /// The key, as `validate` names it (`node.site`, `store.fsync`, ...).
    pub key: String,
    /// Why it cannot change in place: restart the node to change it.
    pub message: String,
}

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Named parts added, removed, replaced.
#[derive(Debug)]
pub struct Diff<T> {
    /// In force, not in the new config.
    pub removed: Vec<T>,
    /// In the new config, not in force.
    pub added: Vec<T>,
    /// (old, new)
    pub changed: Vec<(T, T)>,
}

impl<T> Default for Diff<T> {
    fn default() -> Self {
        Diff { removed: Vec::new(), added: Vec::new(), changed: Vec::new() }
    }
}

impl<T> Diff<T> {
    /// Nothing added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.changed.is_empty()
    }
}

/// Everything a reload does, in words a log line can carry.
#[derive(Debug, Default)]
pub struct Plan {
    /// Listeners to stop, start, or replace.
    pub listeners: Diff<ListenerConfig>,
    /// Uplinks to stop, start, or restart.
    pub uplinks: Diff<UplinkConfig>,
    /// Uplinks whose only change is their rate settings.
    pub tuned: Vec<(String, Tuning)>,
    /// Sinks to stop, start, or restart.
    pub sinks: Diff<SinkConfig>,
    /// Bucket uploaders to stop, start, or restart.
    pub buckets: Diff<BucketConfig>,
    /// Retention's ages, sizes or interval changed.
    pub retention: bool,
    /// The log filter changed.
    pub log_level: bool,
    /// The `[tls]` paths changed (the files are re-read on every reload anyway).
    pub tls_paths: bool,
}

impl Plan {
    /// Nothing to do: the new config is the one in force (or differs only in what needs no action).
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.uplinks.is_empty()
            && self.tuned.is_empty()
            && self.sinks.is_empty()
            && self.buckets.is_empty()
            && !self.retention
            && !self.log_level
            && !self.tls_paths
    }

    /// One line per change, for the log.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        lines(&mut out, "listener", &self.listeners, |l| &l.name);
        lines(&mut out, "uplink", &self.uplinks, |u| &u.name);
        lines(&mut out, "sink", &self.sinks, |k| &k.name);
        lines(&mut out, "bucket", &self.buckets, |b| &b.name);
        for (n, t) in &self.tuned {
            out.push(format!(
                "uplink {n}: max_rate {:?}, burst {}, live_share {} (in place)",
                t.max_rate, t.burst, t.live_share
            ));
        }
        if self.retention {
            out.push("store.retention: changed".into());
        }
        if self.log_level {
            out.push("log.level: changed".into());
        }
        if self.tls_paths {
            out.push("tls: other files".into());
        }
        out
    }
}

/// The plan from `old` to `new`, or every key that cannot change in place.
pub fn plan(old: &Config, new: &Config) -> Result<Plan, Vec<Fixed>> {
    let mut fixed = Vec::new();
    let mut must = |key: &str, same: bool, message: &str| {
        if !same {
            fixed.push(Fixed { key: key.to_owned(), message: message.to_owned() });
        }
    };
    let restart = "cannot change while ferry runs; restart to apply it";
    must("node.site", old.node.site == new.node.site, restart);
    must("node.name", old.node.name == new.node.name, restart);
    must("node.data_dir", old.node.data_dir == new.node.data_dir, restart);
    must("admin.listen", old.admin.listen == new.admin.listen, restart);
    must("admin.allow_remote", old.admin.allow_remote == new.admin.allow_remote, restart);
    let (o, n) = (&old.store, &new.store);
    must("store.commit_interval", o.commit_interval == n.commit_interval, restart);
    must("store.commit_bytes", o.commit_bytes == n.commit_bytes, restart);
    must("store.fsync", o.fsync == n.fsync, restart);
    must("store.segment_max_bytes", o.segment_max_bytes == n.segment_max_bytes, restart);
    must("store.compression", o.compression == n.compression, restart);
    must("store.zstd_level", o.zstd_level == n.zstd_level, restart);
    must("store.gzip_level", o.gzip_level == n.gzip_level, restart);
    must("store.compress_threads", o.compress_threads == n.compress_threads, restart);
    must("store.retention.on_full", o.retention.on_full == n.retention.on_full, restart);
    for s in old.streams.iter().filter(|s| !new.streams.contains(s)) {
        must(&format!("stream {s}"), false, "removing a stream needs a restart (its writer holds an open segment)");
    }
    for s in new.streams.iter().filter(|s| !old.streams.contains(s)) {
        must(&format!("stream {s}"), false, "adding a stream needs a restart (writers start with the store)");
    }
    if !fixed.is_empty() {
        return Err(fixed);
    }

    let mut p = Plan {
        listeners: diff(&old.listeners, &new.listeners, |l| &l.name),
        sinks: diff(&old.sinks, &new.sinks, |s| &s.name),
        buckets: diff(&old.buckets, &new.buckets, |b| &b.name),
        retention: o.retention != n.retention,
        log_level: old.log_level != new.log_level,
        tls_paths: old.tls != new.tls,
        ..Plan::default()
    };
    // A listener that changed name but not socket is a removal and an
    // addition; the removal goes first, so the socket is free again.
    let uplinks = diff(&old.uplinks, &new.uplinks, |u| &u.name);
    p.uplinks.removed = uplinks.removed;
    p.uplinks.added = uplinks.added;
    for (o, n) in uplinks.changed {
        let retuned = UplinkConfig { max_rate: n.max_rate, burst: n.burst, live_share: n.live_share, ..o.clone() };
        if retuned == n {
            p.tuned.push((n.name.clone(), Tuning::of(&n)));
        } else {
            p.uplinks.changed.push((o, n));
        }
    }
    Ok(p)
}

fn lines<T>(out: &mut Vec<String>, what: &str, d: &Diff<T>, name: fn(&T) -> &String) {
    out.extend(d.removed.iter().map(|x| format!("{what} {}: removed", name(x))));
    out.extend(d.added.iter().map(|x| format!("{what} {}: added", name(x))));
    out.extend(d.changed.iter().map(|(_, x)| format!("{what} {}: changed (replaced)", name(x))));
}

fn diff<T: Clone + PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> &String) -> Diff<T> {
    let mut d = Diff::default();
    for o in old {
        match new.iter().find(|n| name(n) == name(o)) {
            None => d.removed.push(o.clone()),
            Some(n) if n != o => d.changed.push((o.clone(), n.clone())),
            Some(_) => {}
        }
    }
    for n in new {
        if !old.iter().any(|o| name(o) == name(n)) {
            d.added.push(n.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate;

    const BASE: &str = r#"
[node]
site = "dc1"
name = "edge1"
data_dir = "/tmp/x"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
[[stream]]
name = "main"
[[listener]]
name = "a"
kind = "syslog"
transport = "udp"
listen = "127.0.0.1:5514"
stream = "main"
[[listener]]
name = "b"
kind = "syslog"
transport = "tcp"
listen = "127.0.0.1:5514"
stream = "main"
[[uplink]]
name = "central"
transport = "tls"
addresses = ["127.0.0.1:7000"]
max_rate = "1MB/s"
"#;

    fn cfg(text: &str) -> Config {
        validate(text, "test.toml").expect("valid")
    }

    #[test]
    fn identical_configs_plan_nothing() {
        assert!(plan(&cfg(BASE), &cfg(BASE)).expect("plan").is_empty());
    }

    #[test]
    fn a_rate_change_tunes_in_place_and_an_address_change_restarts() {
        let p = plan(&cfg(BASE), &cfg(&BASE.replace("\"1MB/s\"", "\"200KB/s\""))).expect("plan");
        assert!(p.uplinks.is_empty(), "{p:?}");
        assert_eq!(p.tuned.len(), 1);
        assert_eq!(p.tuned[0].1.max_rate, Some(200_000.0));
        let p = plan(&cfg(BASE), &cfg(&BASE.replace("7000", "7001"))).expect("plan");
        assert_eq!(p.uplinks.changed.len(), 1, "{p:?}");
        assert!(p.tuned.is_empty());
    }

    #[test]
    fn listeners_are_diffed_by_name() {
        let new = BASE
            .replace("name = \"a\"", "name = \"c\"")
            .replace("transport = \"tcp\"", "transport = \"tcp\"\nmax_connections = 7");
        let p = plan(&cfg(BASE), &cfg(&new)).expect("plan");
        assert_eq!(p.listeners.removed.iter().map(|l| &l.name).collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.listeners.added.iter().map(|l| &l.name).collect::<Vec<_>>(), ["c"]);
        assert_eq!(p.listeners.changed.iter().map(|(_, l)| &l.name).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn fixed_keys_are_refused_by_name() {
        let new = BASE
            .replace("site = \"dc1\"", "site = \"dc2\"")
            .replace("name = \"main\"", "name = \"other\"")
            .replace("stream = \"main\"", "stream = \"other\"");
        let keys: Vec<String> = plan(&cfg(BASE), &cfg(&new)).expect_err("refused").into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["node.site", "stream main", "stream other"]);
    }
}
