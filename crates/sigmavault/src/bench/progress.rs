//! Phase progress on stderr: a bar on a terminal, one line per phase otherwise (so logs
//! of scripted runs stay readable and `--json` stdout stays clean either way).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display. Only the bench's control task touches it, by polling shared
/// counters; client tasks never do, so the hot path stays free of it.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when stderr is a terminal.
    pub(crate) fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
            if let Ok(style) =
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {human_pos}/{human_len} {per_sec} {elapsed}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar }
    }

    /// Starts a phase of `len` steps.
    pub(crate) fn phase(&self, name: &'static str, len: u64) {
        match &self.bar {
            Some(bar) => {
                bar.reset();
                bar.set_length(len);
                bar.set_message(name);
            }
            None => eprintln!("bench: {name} ({len})"),
        }
    }

    /// Moves within the phase.
    pub(crate) fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    /// A one-off line that must not be torn by the bar.
    pub(crate) fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("bench: {line}")),
            None => eprintln!("bench: {line}"),
        }
    }

    /// Removes the bar before the report is printed.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
