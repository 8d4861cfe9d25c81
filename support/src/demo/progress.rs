//! The live progress bar of the quickstart (indicatif, on stdout): answered,
//! running, queued and error counts. Where stdout is not a terminal
//! indicatif draws nothing, and the bar prints a plain line at each quarter
//! of the run instead.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How many plain lines a run prints where stdout is not a terminal.
const PLAIN_LINES: usize = 4;

/// The counts the bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests answered so far.
    pub answered: usize,
    /// Requests running now.
    pub running: usize,
    /// Requests waiting for a worker now.
    pub queued: usize,
    /// Answers so far that were not a success.
    pub errors: usize,
}

/// The progress display of one run of `total` requests.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    total: usize,
    plain: bool,
    printed: usize,
    started: Instant,
}

impl Progress {
    /// A bar on stdout (plain lines where stdout is not a terminal).
    pub fn new(total: usize) -> Self {
        Self::with_target(total, ProgressDrawTarget::stdout())
    }

    /// No bar, only the plain lines (for a run whose output is not
    /// watched, such as a test's).
    pub fn plain(total: usize) -> Self {
        Self::with_target(total, ProgressDrawTarget::hidden())
    }

    /// A bar drawn to `target`; a hidden target (indicatif's choice for a
    /// stdout that is not a terminal) gives plain lines.
    pub fn with_target(total: usize, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        let style = ProgressStyle::with_template(
            "{pos:>5}/{len} answered  {msg}  {elapsed:>3} [{wide_bar}]",
        )
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(describe(Counts::default()));
        let plain = bar.is_hidden();
        Progress {
            bar,
            total,
            plain,
            printed: 0,
            started: Instant::now(),
        }
    }

    /// Shows `counts`; where the bar is hidden, prints a plain line when
    /// the run passes one more quarter.
    pub fn update(&mut self, counts: Counts) {
        self.bar.set_position(counts.answered as u64);
        self.bar.set_message(describe(counts));
        if let Some(line) = self.plain_line(counts) {
            println!("{line}");
        }
    }

    /// The plain line to print for `counts`, if the bar is hidden and the
    /// run just passed one more quarter.
    fn plain_line(&mut self, counts: Counts) -> Option<String> {
        let due = counts.answered * PLAIN_LINES >= (self.printed + 1) * self.total;
        if !self.plain || self.printed >= PLAIN_LINES || !due {
            return None;
        }
        self.printed = (counts.answered * PLAIN_LINES / self.total.max(1)).min(PLAIN_LINES);
        Some(format!(
            "{:>5}/{} answered  {}  {:.1} s",
            counts.answered,
            self.total,
            describe(counts),
            self.started.elapsed().as_secs_f64()
        ))
    }

    /// Leaves the bar drawn in its final state.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

fn describe(counts: Counts) -> String {
    format!(
        "running {:>3}  queued {:>3}  errors {:>4}",
        counts.running, counts.queued, counts.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_bar_prints_one_plain_line_per_quarter() {
        let mut progress = Progress::with_target(100, ProgressDrawTarget::hidden());
        let lines: Vec<String> = (1..=100)
            .filter_map(|answered| {
                progress.plain_line(Counts {
                    answered,
                    running: 3,
                    queued: 2,
                    errors: 1,
                })
            })
            .collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        for (line, answered) in lines.iter().zip([25, 50, 75, 100]) {
            assert!(
                line.starts_with(&format!(
                    "{answered:>5}/100 answered  running   3  queued   2  errors    1"
                )),
                "{line}"
            );
        }
    }

    #[test]
    fn a_run_that_jumps_past_several_quarters_prints_one_line_for_them() {
        let mut progress = Progress::with_target(10, ProgressDrawTarget::hidden());
        let counts = |answered| Counts {
            answered,
            ..Counts::default()
        };
        assert!(progress.plain_line(counts(1)).is_none());
        assert!(progress.plain_line(counts(8)).is_some());
        assert!(progress.plain_line(counts(9)).is_none());
        assert!(progress.plain_line(counts(10)).is_some());
        assert!(progress.plain_line(counts(10)).is_none());
    }
}
