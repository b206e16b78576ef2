//! Lenient syslog header parsing: only what routing needs (facility,
//! hostname, app-name), never a reason to reject a message. The archive keeps
//! every message as received; this only looks.

/// What routing may use. Missing parts are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header<'a> {
    /// The facility, 0-23, from PRI.
    pub facility: Option<u8>,
    /// The severity, 0-7, from PRI.
    pub severity: Option<u8>,
    /// The HOSTNAME field.
    pub hostname: Option<&'a [u8]>,
    /// The APP-NAME (RFC 5424) or TAG (RFC 3164).
    pub app_name: Option<&'a [u8]>,
}

pub use crate::config::facility::facility_by_name;

/// Parse RFC 5424 or RFC 3164 (BSD) headers, as far as they go.
pub fn parse(msg: &[u8]) -> Header<'_> {
    let mut h = Header::default();
    let mut rest = msg;
    if let Some(r) = rest.strip_prefix(b"<") {
        if let Some(end) = r.iter().take(4).position(|b| *b == b'>') {
            if let Some(pri) =
                std::str::from_utf8(&r[..end]).ok().and_then(|s| s.parse::<u16>().ok()).filter(|p| *p <= 191)
            {
                h.facility = Some((pri >> 3) as u8);
                h.severity = Some((pri & 7) as u8);
                rest = &r[end + 1..];
            }
        }
    }
    if let Some(r) = rest.strip_prefix(b"1 ") {
        // RFC 5424: VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP ...
        let mut f = r.split(|b| *b == b' ');
        let _ts = f.next();
        h.hostname = f.next().filter(|x| *x != b"-" && !x.is_empty());
        h.app_name = f.next().filter(|x| *x != b"-" && !x.is_empty());
        return h;
    }
    // RFC 3164: TIMESTAMP SP HOSTNAME SP TAG[pid]: MSG. The timestamp is
    // "Mmm dd hh:mm:ss" or, from many modern senders, RFC 3339.
    let after_ts = if rest.len() >= 16 && rest[3] == b' ' && rest[6] == b' ' && rest[9] == b':' && rest[15] == b' ' {
        Some(&rest[16..])
    } else if rest.len() > 20 && rest[4] == b'-' && rest[7] == b'-' && rest[10] == b'T' {
        rest.iter().position(|b| *b == b' ').map(|i| &rest[i + 1..])
    } else {
        None
    };
    if let Some(r) = after_ts {
        let mut f = r.splitn(2, |b| *b == b' ');
        let first = f.next().unwrap_or_default();
        match f.next() {
            Some(tail) if !is_tag(first) => {
                h.hostname = Some(first).filter(|x| !x.is_empty());
                h.app_name = tag(tail);
            }
            _ => h.app_name = tag(r),
        }
    } else {
        h.app_name = tag(rest);
    }
    h
}

/// A token ending in ':' (or "name[pid]:") is a tag, not a hostname.
fn is_tag(tok: &[u8]) -> bool {
    tok.ends_with(b":")
}

/// The TAG of a BSD message: up to '[', ':' or ' ', at most 48 bytes.
fn tag(s: &[u8]) -> Option<&[u8]> {
    let end = s.iter().take(49).position(|b| matches!(b, b'[' | b':' | b' '))?;
    if end == 0 || !matches!(s[end], b'[' | b':') {
        return None;
    }
    Some(&s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc5424() {
        let h = parse(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 - msg");
        assert_eq!(h.facility, Some(20));
        assert_eq!(h.severity, Some(5));
        assert_eq!(h.hostname, Some(&b"mymachine.example.com"[..]));
        assert_eq!(h.app_name, Some(&b"evntslog"[..]));
    }

    #[test]
    fn rfc3164() {
        let h = parse(b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed");
        assert_eq!(h.facility, Some(4));
        assert_eq!(h.hostname, Some(&b"mymachine"[..]));
        assert_eq!(h.app_name, Some(&b"su"[..]));
        let h = parse(b"<13>2024-01-01T00:00:00+00:00 host nginx: GET /");
        assert_eq!((h.hostname, h.app_name), (Some(&b"host"[..]), Some(&b"nginx"[..])));
        let h = parse(b"<13>Oct 11 22:14:15 cron[1]: no host");
        assert_eq!((h.hostname, h.app_name), (None, Some(&b"cron"[..])));
    }

    #[test]
    fn garbage_is_fine() {
        assert_eq!(parse(b"hello world"), Header::default());
        assert_eq!(parse(b"<999>x").facility, None);
        assert_eq!(facility_by_name("local7"), Some(23));
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&b);
        }
    }
}
