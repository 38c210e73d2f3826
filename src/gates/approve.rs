//! Whether `schemafleet approve PLAN WAVE` may record an approval. Pure.

use super::spec::Approval;
use crate::journal::{JournalState, WaveStatus};
use crate::plan::model::Plan;

/// What `approve` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveDecision {
    /// Record the approval.
    Record,
    /// Already approved: say by whom, record nothing.
    AlreadyApproved { by: Option<String>, at: String },
}

/// Decide for `wave` of `plan` given its journal; an error says why nothing can be approved.
pub fn decide(plan: &Plan, state: &JournalState, wave: &str) -> Result<ApproveDecision, String> {
    let Some(planned) = plan.wave(wave) else {
        let names: Vec<&str> = plan.waves.iter().map(|wave| wave.name.as_str()).collect();
        return Err(format!(
            "plan {} has no wave `{wave}` (waves: {})",
            plan.plan_id,
            names.join(", ")
        ));
    };
    if plan
        .waves
        .iter()
        .all(|wave| state.wave_status(&wave.name) == WaveStatus::Done)
    {
        return Err(format!(
            "plan {} is finished: every wave ran, so there is nothing to approve",
            plan.plan_id
        ));
    }
    if planned.approval != Approval::Required {
        return Err(format!(
            "wave `{wave}` does not need approval (its policy entry has no `approval: required`); `schemafleet apply` starts it without one"
        ));
    }
    let wave_state = state.waves.get(wave);
    if let Some(approved) = wave_state.and_then(|wave_state| wave_state.approved.as_ref()) {
        return Ok(ApproveDecision::AlreadyApproved {
            by: approved.by.clone(),
            at: approved.at.clone(),
        });
    }
    let status = state.wave_status(wave);
    if status != WaveStatus::NotStarted {
        return Err(format!(
            "wave `{wave}` already started (it is {}); an approval is given before a wave starts",
            status.as_str()
        ));
    }
    Ok(ApproveDecision::Record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Event, Record, record::RECORD_VERSION};
    use crate::plan::model::{PlannedTenant, PlannedWave, test_plan};

    fn wave(name: &str, approval: Approval) -> PlannedWave {
        PlannedWave {
            name: name.into(),
            concurrency: 1,
            max_failures: None,
            max_failure_percent: None,
            bake_s: 0,
            checks: Vec::new(),
            approval,
            tenants: vec![PlannedTenant::from_id(format!("{name}-1"))],
        }
    }

    fn state(events: Vec<Event>) -> JournalState {
        let records: Vec<Record> = events
            .into_iter()
            .enumerate()
            .map(|(idx, event)| Record {
                v: RECORD_VERSION,
                seq: idx as u64 + 1,
                at: "2026-12-01T10:00:00Z".into(),
                event,
            })
            .collect();
        JournalState::replay(&records)
    }

    #[test]
    fn approvals_are_recorded_once_before_the_wave_and_refused_otherwise() {
        let plan = test_plan(vec![
            wave("canary", Approval::None),
            wave("rest", Approval::Required),
        ]);
        let fresh = state(Vec::new());
        assert_eq!(decide(&plan, &fresh, "rest"), Ok(ApproveDecision::Record));
        let unknown = decide(&plan, &fresh, "middle").unwrap_err();
        assert!(
            unknown.contains("no wave `middle` (waves: canary, rest)"),
            "{unknown}"
        );
        let needless = decide(&plan, &fresh, "canary").unwrap_err();
        assert!(needless.contains("does not need approval"), "{needless}");

        let approved = state(vec![Event::Approved {
            wave: "rest".into(),
            by: Some("ana".into()),
            note: None,
        }]);
        assert_eq!(
            decide(&plan, &approved, "rest"),
            Ok(ApproveDecision::AlreadyApproved {
                by: Some("ana".into()),
                at: "2026-12-01T10:00:00Z".into()
            })
        );

        let finished = |name: &str| Event::WaveFinished {
            wave: name.into(),
            halted: false,
            bake_until: None,
        };
        let done = state(vec![finished("canary"), finished("rest")]);
        let error = decide(&plan, &done, "rest").unwrap_err();
        assert!(error.contains("is finished"), "{error}");

        let started = state(vec![Event::WaveStarted {
            wave: "rest".into(),
        }]);
        let error = decide(&plan, &started, "rest").unwrap_err();
        assert!(error.contains("already started"), "{error}");
    }
}
