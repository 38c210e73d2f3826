//! Progress bars for humans: the only module that knows indicatif.
//!
//! **Invariant:** bars are drawn only on a terminal (stderr), never when `--output json` or
//! `--no-progress` is given; everything else the executor says goes through [`Reporter::note`].

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::executor::{Reporter, TenantOutcome};

/// Per-wave counters shown in a bar's message.
#[derive(Default, Clone, Copy)]
struct WaveCounts {
    applied: u64,
    up_to_date: u64,
    /// `--skip-recorded`: not connected to, so not "up to date".
    skipped_recorded: u64,
    failed: u64,
    /// Counted apart from `failed`, as the report's table and JSON count them.
    diverged: u64,
    in_flight: u64,
}

/// Draws one bar per wave on stderr.
pub struct ProgressReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, (ProgressBar, WaveCounts)>>,
}

impl ProgressReporter {
    /// Bars on stderr when it is a terminal and `enabled`; hidden otherwise.
    pub fn new(enabled: bool) -> ProgressReporter {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        ProgressReporter {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn update(&self, wave: &str, change: impl FnOnce(&mut WaveCounts), increment: u64) {
        let mut bars = self
            .bars
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((bar, counts)) = bars.get_mut(wave) {
            change(counts);
            bar.inc(increment);
            bar.set_message(message(counts));
        }
    }
}

fn message(counts: &WaveCounts) -> String {
    let skipped = if counts.skipped_recorded > 0 {
        format!(", skipped (recorded) {}", counts.skipped_recorded)
    } else {
        String::new()
    };
    let diverged = if counts.diverged > 0 {
        format!(", diverged {}", counts.diverged)
    } else {
        String::new()
    };
    format!(
        "applied {}, up to date {}{skipped}, failed {}{diverged}, in flight {}",
        counts.applied, counts.up_to_date, counts.failed, counts.in_flight
    )
}

impl Reporter for ProgressReporter {
    fn wave_started(&self, wave: &str, total: usize, already_finished: usize) {
        let bar = self.multi.add(ProgressBar::new(total as u64));
        let style = ProgressStyle::with_template(
            "{prefix:<10.bold} [{bar:16}] {pos}/{len} {msg} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(wave.chars().take(10).collect::<String>());
        bar.set_position(already_finished as u64);
        bar.enable_steady_tick(Duration::from_millis(250));
        let counts = WaveCounts::default();
        bar.set_message(message(&counts));
        self.bars
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(wave.to_string(), (bar, counts));
    }

    fn tenant_started(&self, wave: &str, _tenant: &str) {
        self.update(wave, |counts| counts.in_flight += 1, 0);
    }

    fn tenant_finished(&self, wave: &str, _tenant: &str, outcome: &TenantOutcome) {
        self.update(
            wave,
            |counts| {
                counts.in_flight = counts.in_flight.saturating_sub(1);
                match outcome {
                    TenantOutcome::Applied { .. } => counts.applied += 1,
                    TenantOutcome::UpToDate => counts.up_to_date += 1,
                    TenantOutcome::SkippedRecorded => counts.skipped_recorded += 1,
                    TenantOutcome::Diverged { .. } => counts.diverged += 1,
                    TenantOutcome::Failed { .. } => counts.failed += 1,
                }
            },
            1,
        );
    }

    fn wave_finished(&self, wave: &str, halted: bool) {
        let bars = self
            .bars
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((bar, counts)) = bars.get(wave) {
            let suffix = if halted { " HALTED" } else { "" };
            bar.finish_with_message(format!("{}{suffix}", message(counts)));
        }
    }

    fn note(&self, text: &str) {
        let text = &crate::terminal::escape_controls(text);
        // Printed above the bars so they are not torn; plain stderr when hidden.
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }
}
