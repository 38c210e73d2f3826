//! What the executor tells a display. Only `progress.rs` turns this into terminal output.

use super::tenant::TenantOutcome;

pub trait Reporter: Send + Sync {
    /// A wave starts; `already_finished` tenants of it were finished by an earlier run.
    fn wave_started(&self, wave: &str, total: usize, already_finished: usize);
    fn tenant_started(&self, wave: &str, tenant: &str);
    fn tenant_finished(&self, wave: &str, tenant: &str, outcome: &TenantOutcome);
    fn wave_finished(&self, wave: &str, halted: bool);
    /// A line for the human (bake waits, stop requests); goes to stderr.
    fn note(&self, text: &str);
}

/// Reports nothing: tests and `--output json` without a terminal.
pub struct NoReporter;

impl Reporter for NoReporter {
    fn wave_started(&self, _wave: &str, _total: usize, _already_finished: usize) {}
    fn tenant_started(&self, _wave: &str, _tenant: &str) {}
    fn tenant_finished(&self, _wave: &str, _tenant: &str, _outcome: &TenantOutcome) {}
    fn wave_finished(&self, _wave: &str, _halted: bool) {}
    fn note(&self, _text: &str) {}
}
