//! The e2e corpus: nginx access lines through syslog, with the repetition
//! of real traffic (a fixed pool of hosts and clients), fixed seed.

use std::fmt::Write as _;

/// SplitMix64: small, fast and good enough to make log lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    /// In `0..n`, skewed towards small values (popular clients, small ids).
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        self.below(a.min(b) + 1)
    }
    /// An index into weighted choices.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = self.below(u64::from(total)) as u32;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// Request paths and the query they take: none, `?id=N` or `?page=N&sort=...`.
const PATHS: &[(&str, u8)] = &[
    ("/", 0),
    ("/index.html", 0),
    ("/api/v1/items", 1),
    ("/api/v1/items/search", 2),
    ("/api/v1/users", 1),
    ("/api/v1/orders", 1),
    ("/api/v2/cart", 0),
    ("/api/v2/checkout", 0),
    ("/static/js/app.js", 0),
    ("/static/css/main.css", 0),
    ("/static/img/logo.png", 0),
    ("/products", 2),
    ("/products/view", 1),
    ("/category/shoes", 2),
    ("/category/books", 2),
    ("/login", 0),
    ("/logout", 0),
    ("/healthz", 0),
    ("/favicon.ico", 0),
    ("/blog/post", 1),
    ("/search", 2),
];
const SORTS: &[&str] = &["price", "name", "new", "rating"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD"];
const METHOD_WEIGHTS: &[u32] = &[86, 9, 2, 1, 2];
const STATUSES: &[u16] = &[200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 499, 500, 502, 503];
const STATUS_WEIGHTS: &[u32] = &[780, 20, 15, 15, 20, 60, 10, 8, 5, 45, 6, 8, 5, 3];
const REFERERS: &[&str] = &[
    "-",
    "-",
    "-",
    "https://www.example.com/",
    "https://www.example.com/products",
    "https://www.google.com/",
    "https://shop.example.com/cart",
    "https://m.example.com/search?q=shoes",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Version/18.1 Safari/605.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1) Mobile/15E148",
    "curl/8.5.0",
    "Go-http-client/1.1",
    "kube-probe/1.31",
    "python-requests/2.32.3",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
];
const AGENT_WEIGHTS: &[u32] = &[30, 15, 10, 12, 8, 8, 6, 6, 5];
const MONTH: &str = "Nov";

/// `records` nginx access-log lines as RFC 3164 syslog, LF-terminated. The
/// same count always gives the same bytes.
pub fn generate_corpus(records: u64) -> Vec<u8> {
    let mut rng = Rng(0x00F3_22B1_E4C4_2026);
    // A fixed pool of hosts (with their nginx pid) and of clients, so values
    // repeat the way real traffic does instead of being pure noise.
    let hosts: Vec<(u32, u32)> = (1..=24).map(|h| (h, 1000 + rng.below(60000) as u32)).collect();
    let clients: Vec<[u8; 3]> =
        (0..20_000).map(|_| [rng.below(256) as u8, rng.below(256) as u8, 1 + rng.below(254) as u8]).collect();
    let mut out = Vec::with_capacity(records as usize * 215);
    let mut line = String::with_capacity(512);
    let mut stamp = String::new();
    let start_s: u64 = 10 * 3600;
    for i in 0..records {
        // About 5,000 lines a second of log time.
        let t = start_s + i / 5000;
        let (hh, mm, ss) = (t / 3600 % 24, t / 60 % 60, t % 60);
        let (host, pid) = *rng.pick(&hosts);
        let ip = clients[rng.skewed(clients.len() as u64) as usize];
        let method = METHODS[rng.weighted(METHOD_WEIGHTS)];
        let (path, query) = *rng.pick(PATHS);
        let status = STATUSES[rng.weighted(STATUS_WEIGHTS)];
        let size = match status {
            204 | 304 => 0,
            301 | 302 => 162,
            s if s >= 400 => 150 + rng.below(400),
            _ => rng.skewed(250_000),
        };
        let pri = if status >= 500 { 131 } else { 134 };
        line.clear();
        stamp.clear();
        write!(stamp, "{hh:02}:{mm:02}:{ss:02}").unwrap();
        write!(line, "<{pri}>{MONTH} 23 {stamp} web-{host:02} nginx[{pid}]: ").unwrap();
        write!(line, "10.{}.{}.{} - - [23/{MONTH}/2026:{stamp} +0000] \"{method} {path}", ip[0], ip[1], ip[2]).unwrap();
        match query {
            1 => write!(line, "?id={}", rng.skewed(1_000_000)).unwrap(),
            2 => write!(line, "?page={}&sort={}", 1 + rng.skewed(40), rng.pick(SORTS)).unwrap(),
            _ => {}
        }
        write!(
            line,
            " HTTP/1.1\" {status} {size} \"{}\" \"{}\"",
            rng.pick(REFERERS),
            AGENTS[rng.weighted(AGENT_WEIGHTS)],
        )
        .unwrap();
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}
