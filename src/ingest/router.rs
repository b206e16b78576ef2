//! Record → stream. A listener writes to its own stream unless one of its
//! routes matches the record's syslog header. Untrusted listeners have no
//! routes (config validation refuses them), so their sources cannot choose.

use crate::config::ListenerConfig;
use crate::ingest::syslog::parse;

/// Routing for one listener; stream indexes point into the listener's
/// list of stream handles (index 0 is the default stream).
#[derive(Debug)]
pub struct Router {
    routes: Vec<(Rule, usize)>,
    /// Distinct stream names this listener writes, default first.
    pub streams: Vec<String>,
}

#[derive(Debug)]
struct Rule {
    app_name: Option<Vec<u8>>,
    facility: Option<u8>,
    hostname: Option<Vec<u8>>,
}

impl Router {
    /// The routes of a listener, its own stream first.
    pub fn new(l: &ListenerConfig) -> Router {
        let mut streams = vec![l.stream.clone()];
        let mut routes = Vec::new();
        for r in &l.routes {
            let idx = match streams.iter().position(|s| *s == r.stream) {
                Some(i) => i,
                None => {
                    streams.push(r.stream.clone());
                    streams.len() - 1
                }
            };
            let rule = Rule {
                app_name: r.app_name.as_ref().map(|s| s.as_bytes().to_vec()),
                facility: r.facility,
                hostname: r.hostname.as_ref().map(|s| s.as_bytes().to_vec()),
            };
            routes.push((rule, idx));
        }
        Router { routes, streams }
    }

    /// Index of the stream for `record`. Parses the header only when there are routes.
    #[inline]
    pub fn route(&self, record: &[u8]) -> usize {
        if self.routes.is_empty() {
            return 0;
        }
        let h = parse::parse(record);
        for (rule, idx) in &self.routes {
            let ok = rule.facility.is_none_or(|f| h.facility == Some(f))
                && rule.app_name.as_deref().is_none_or(|a| h.app_name == Some(a))
                && rule.hostname.as_deref().is_none_or(|n| h.hostname == Some(n));
            if ok {
                return *idx;
            }
        }
        0
    }
}
