//! Progress of long runs over big archives (`grep`, `audit`, `verify`) on
//! stderr: bytes done, rate and ETA, only when stderr is a terminal, so
//! pipes and scripts see nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar over `total` bytes of segment files, labelled `what`.
    pub fn bytes(total: u64, what: &'static str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {wide_bar}")
        {
            pb.set_style(style);
        }
        pb.set_message(what);
        Progress(Some(pb))
    }

    pub fn inc(&self, n: u64) {
        if let Some(p) = &self.0 {
            p.inc(n);
        }
    }

    /// Clear the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(p) = &self.0 {
            p.finish_and_clear();
        }
    }
}
