//! Text for humans (fits 80 columns) and JSON for pipelines.

use std::fmt::Write as _;

use super::group::FailureGroup;
use super::summary::Summary;

/// Width text output wraps at, so it reads in an 80-column terminal.
const WIDTH: usize = 78;

/// The per-wave table, then failures grouped by cause with their next steps.
pub fn summary_text(summary: &Summary, groups: &[FailureGroup]) -> String {
    summary_text_during(summary, groups, None)
}

/// [`summary_text`], said of a journal that the `apply` with process id `running_apply` is
/// still writing (its tenants in flight are in progress, not left behind).
pub fn summary_text_during(
    summary: &Summary,
    groups: &[FailureGroup],
    running_apply: Option<u32>,
) -> String {
    let mut out = String::new();
    let name_width = summary
        .waves
        .iter()
        .map(|wave| wave.name.len())
        .max()
        .unwrap_or(4)
        .clamp(5, 11);
    // The last two headers take two lines, so a rolled-back column fits in 78 columns.
    let _ = writeln!(
        out,
        "{:<name_width$} {:<11} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6}",
        "", "", "", "", "up to", "", "", "not", "rolled"
    );
    let _ = writeln!(
        out,
        "{:<name_width$} {:<11} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6}",
        "wave", "status", "tenants", "applied", "date", "failed", "diverged", "started", "back"
    );
    let line = |out: &mut String, name: &str, status: &str, counts: &super::Counts| {
        let _ = writeln!(
            out,
            "{:<name_width$} {:<11} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6}",
            truncate(name, name_width),
            status,
            counts.tenants,
            counts.applied,
            counts.up_to_date,
            counts.failed,
            counts.diverged,
            counts.not_started,
            counts.rolled_back
        );
    };
    for wave in &summary.waves {
        line(&mut out, &wave.name, wave.status, &wave.counts);
    }
    line(&mut out, "total", "", &summary.totals);
    let totals = &summary.totals;
    if totals.ahead > 0 {
        let (verb, pronoun) = if totals.ahead == 1 {
            ("is", "it")
        } else {
            ("are", "them")
        };
        wrap_into(
            &mut out,
            &format!(
                "of the tenants up to date, {} {verb} ahead: a later release reached {pronoun} (main has migrations newer than this plan's); `schemafleet drift` lists {pronoun}",
                totals.ahead
            ),
            "",
            "  ",
        );
    }
    if totals.skipped_recorded > 0 {
        let _ = writeln!(
            out,
            "{} skipped without connecting (`--skip-recorded`): a record says {} up to date, not checked; `schemafleet drift` or `status --live` checks {}",
            plural(totals.skipped_recorded, "tenant"),
            if totals.skipped_recorded == 1 {
                "it is"
            } else {
                "they are"
            },
            if totals.skipped_recorded == 1 {
                "it"
            } else {
                "them"
            },
        );
    }
    if totals.in_flight > 0 {
        let (noun, pronoun) = if totals.in_flight == 1 {
            ("tenant is", "it")
        } else {
            ("tenants are", "them")
        };
        let _ = match running_apply {
            Some(pid) => writeln!(
                out,
                "{} {noun} in flight in the running apply (pid {pid})",
                totals.in_flight
            ),
            None => writeln!(
                out,
                "{} {noun} unfinished: the run that started {pronoun} stopped; `apply` again resumes {pronoun}",
                totals.in_flight
            ),
        };
    }
    held_back_text(&mut out, summary);
    let wave_holds: Vec<(&str, &[super::lock_holds::TenantLockHold])> = summary
        .waves
        .iter()
        .map(|wave| (wave.name.as_str(), wave.lock_holds.as_slice()))
        .collect();
    out.push_str(&super::lock_holds::text(&wave_holds));
    if !groups.is_empty() {
        let _ = writeln!(out, "\n{}", failures_heading(groups));
        for group in groups {
            let sqlstate = group
                .sqlstate
                .as_ref()
                .map(|code| format!(" [{code}]"))
                .unwrap_or_default();
            let head = format!(
                "{} x {}{}: {}",
                group.count, group.phase, sqlstate, group.cause
            );
            wrap_into(&mut out, &head, "  ", "      ");
            let more = if group.count > group.tenants.len() {
                format!(" (+{} more)", group.count - group.tenants.len())
            } else {
                String::new()
            };
            wrap_into(
                &mut out,
                &format!("tenants: {}{more}", group.tenant_labels.join(", ")),
                "      ",
                "      ",
            );
            for partly in &group.partly_migrated {
                let at = partly
                    .main_version
                    .map_or_else(|| "?".to_string(), |version| format!("V{version}"));
                wrap_into(
                    &mut out,
                    &format!(
                        "main of {} is at {at}: {} committed before the failure",
                        partly.label(),
                        crate::drift::format_versions(&partly.applied_on_main)
                    ),
                    "      ",
                    "        ",
                );
            }
            wrap_into(
                &mut out,
                &format!("next: {}", group.next_step),
                "      ",
                "        ",
            );
        }
    }
    crate::terminal::escape_controls(&out)
}

/// The line above the failure groups. Failed, diverged and rollback-failed tenants are
/// different states with their own table columns and JSON counts, so the line names each
/// rather than calling them all "failed".
fn failures_heading(groups: &[FailureGroup]) -> String {
    let count_of = |phase: &str| -> usize {
        groups
            .iter()
            .filter(|group| group.phase == phase)
            .map(|group| group.count)
            .sum()
    };
    let n_total: usize = groups.iter().map(|group| group.count).sum();
    let n_diverged = count_of("diverged");
    let n_rollback_failed = count_of("rollback");
    let n_failed = n_total - n_diverged - n_rollback_failed;
    let causes = format!(
        "{} distinct cause{}",
        groups.len(),
        if groups.len() == 1 { "" } else { "s" }
    );
    match (n_failed, n_diverged, n_rollback_failed) {
        (_, 0, 0) => format!("{} failed, {causes}:", plural(n_failed, "tenant")),
        (0, _, 0) => format!("{} diverged, {causes}:", plural(n_diverged, "tenant")),
        _ => format!(
            "{} need attention ({}), {causes}:",
            plural(n_total, "tenant"),
            unfinished_parts(n_failed, n_diverged, n_rollback_failed)
        ),
    }
}

/// `1 failed, 1 diverged`: the non-zero ones of the three states a run does not finish in,
/// each by its own name (the table's and the JSON's).
pub fn unfinished_parts(n_failed: usize, n_diverged: usize, n_rollback_failed: usize) -> String {
    let parts: Vec<String> = [
        (n_failed, "failed"),
        (n_diverged, "diverged"),
        (n_rollback_failed, "rollback failed"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, name)| format!("{count} {name}"))
    .collect();
    if parts.is_empty() {
        "0 failed".to_string()
    } else {
        parts.join(", ")
    }
}

/// The gates that hold the rollout: waves halted by their checks (each failed check with its
/// output and tenants, and the next step) and waves waiting for approval.
pub fn gates_text(summary: &Summary, plan_path: &str) -> String {
    let mut out = String::new();
    for wave in &summary.waves {
        if !wave.check_failures.is_empty() {
            let _ = writeln!(out, "\nwave {} HALTED by its checks:", wave.name);
            for failure in &wave.check_failures {
                let mut lines = failure.output.lines();
                let head = lines.next().unwrap_or("");
                wrap_into(
                    &mut out,
                    &format!("check {} ({}): {head}", failure.check, failure.kind),
                    "  ",
                    "      ",
                );
                for line in lines.take(25) {
                    wrap_into(&mut out, line, "      ", "        ");
                }
            }
            wrap_into(
                &mut out,
                &format!(
                    "next: roll the wave back (`schemafleet rollback {plan_path} --wave {}`), or fix the cause and `schemafleet apply {plan_path} --retry-checks`",
                    wave.name
                ),
                "  ",
                "    ",
            );
        }
        if let Some(approval) = &wave.approval {
            match approval.status {
                "awaiting" => wrap_into(
                    &mut out,
                    &format!(
                        "wave {} waits for approval: `schemafleet approve {plan_path} {}`, then `schemafleet apply {plan_path}`",
                        wave.name, wave.name
                    ),
                    "\n",
                    "  ",
                ),
                "approved" => wrap_into(
                    &mut out,
                    &format!(
                        "wave {} approved by {} at {}{}",
                        wave.name,
                        approval.by.as_deref().unwrap_or("someone"),
                        approval.at.as_deref().unwrap_or("?"),
                        approval
                            .note
                            .as_deref()
                            .map(|note| format!(": {note}"))
                            .unwrap_or_default()
                    ),
                    "",
                    "  ",
                ),
                _ => {}
            }
        }
    }
    crate::terminal::escape_controls(&out)
}

/// Names the tenants this plan rolled back, which `apply` leaves alone until asked.
fn held_back_text(out: &mut String, summary: &Summary) {
    if summary.held_back_tenants.is_empty() {
        return;
    }
    const SHOWN: usize = 20;
    let n_held = summary.held_back_tenants.len();
    let mut names = summary
        .held_back_tenants
        .iter()
        .take(SHOWN)
        .map(super::summary::HeldBack::label)
        .collect::<Vec<_>>()
        .join(", ");
    if n_held > SHOWN {
        names.push_str(&format!(
            " (+{} more; --output json lists them all)",
            n_held - SHOWN
        ));
    }
    let pronoun = if n_held == 1 { "it" } else { "them" };
    let failed = summary.totals.rollback_failed;
    let failed_note = if failed > 0 {
        format!(" ({failed} of them whose rollback failed)")
    } else {
        String::new()
    };
    wrap_into(
        out,
        &format!(
            "held back, rolled back by this plan{failed_note}: {names}; `apply` leaves {pronoun} alone until `--include-rolled-back` (all, or =ID,ID)"
        ),
        "",
        "  ",
    );
}

/// `1 tenant`, `2 tenants`, `2 branches`.
pub fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("{count} {word}")
    } else if ["s", "x", "ch", "sh"].iter().any(|end| word.ends_with(end)) {
        format!("{count} {word}es")
    } else {
        format!("{count} {word}s")
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let kept: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}~")
    }
}

/// Word-wrap `text` at [`WIDTH`], first line indented by `first`, the rest by `rest`.
pub fn wrap_into(out: &mut String, text: &str, first: &str, rest: &str) {
    let mut line = String::from(first);
    let mut line_has_word = false;
    for word in text.split_whitespace() {
        if line_has_word && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from(rest);
            line_has_word = false;
        }
        if line_has_word {
            line.push(' ');
        }
        line.push_str(word);
        line_has_word = true;
    }
    if line_has_word {
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(phase: &str, count: usize) -> FailureGroup {
        FailureGroup {
            phase: phase.to_string(),
            sqlstate: None,
            cause: format!("{phase} cause"),
            count,
            tenants: Vec::new(),
            tenant_labels: Vec::new(),
            next_step: String::new(),
            partly_migrated: Vec::new(),
        }
    }

    #[test]
    fn the_failures_heading_names_failed_and_diverged_apart() {
        assert_eq!(
            failures_heading(&[group("apply", 2)]),
            "2 tenants failed, 1 distinct cause:"
        );
        assert_eq!(
            failures_heading(&[group("diverged", 1)]),
            "1 tenant diverged, 1 distinct cause:"
        );
        // The table beside it reads failed 1, diverged 1: the line must not say 2 failed.
        assert_eq!(
            failures_heading(&[group("apply", 1), group("diverged", 1)]),
            "2 tenants need attention (1 failed, 1 diverged), 2 distinct causes:"
        );
        assert_eq!(
            failures_heading(&[
                group("validate", 2),
                group("apply", 1),
                group("rollback", 1)
            ]),
            "4 tenants need attention (3 failed, 1 rollback failed), 3 distinct causes:"
        );
        assert_eq!(unfinished_parts(0, 0, 0), "0 failed");
    }

    #[test]
    fn wrapping_keeps_lines_within_width() {
        let mut out = String::new();
        let text = "word ".repeat(60);
        wrap_into(&mut out, &text, "  ", "    ");
        assert!(out.lines().count() > 3);
        assert!(
            out.lines().all(|line| line.chars().count() <= WIDTH),
            "{out}"
        );
    }
}
