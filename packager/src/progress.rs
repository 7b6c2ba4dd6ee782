//! Progress bars on stderr, shown only when stderr is a terminal: scripts and logs get none.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count progress bar, or a hidden one when stderr is not a terminal.
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
