//! Syslog facility names (RFC 5424 section 6.2.1, and the names rsyslog and
//! syslog-ng use): routes name them in the config, the syslog parser reads
//! their numbers. Here, below both, so that `config` needs nothing of `ingest`.

/// Facility names by number: `FACILITIES[16]` is `local0`.
pub const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Facility number by its conventional name.
pub fn facility_by_name(name: &str) -> Option<u8> {
    FACILITIES.iter().position(|f| *f == name).map(|i| i as u8)
}
