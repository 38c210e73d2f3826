//! The worst lock holds per wave, from the holds each tenant's validation branch measured
//! (issue 15): what the big tenants of a wave will feel, told by the canary wave before the
//! wide ones start.

use serde::Serialize;

use crate::journal::TenantState;
use crate::pg::lock_footprint::LockHold;
use crate::plan::model::PlannedTenant;

/// Tenants listed per wave.
pub const WORST_PER_WAVE: usize = 5;

/// One tenant's longest hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantLockHold {
    pub tenant: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    #[serde(flatten)]
    pub hold: LockHold,
    /// The hold was over `max_lock_hold`: the tenant failed validation on it.
    pub over_budget: bool,
}

/// The longest hold a tenant's last validation measured, or the one that failed it.
fn worst_of(tenant: &TenantState) -> Option<(LockHold, bool)> {
    let failed_on = tenant
        .failure
        .as_ref()
        .filter(|_| tenant.status == crate::journal::TenantStatus::Failed)
        .and_then(|failure| failure.error.lock_hold.as_deref());
    if let Some(hold) = failed_on {
        return Some((hold.clone(), true));
    }
    tenant
        .lock_holds
        .iter()
        .max_by_key(|hold| hold.held_ms)
        .map(|hold| (hold.clone(), false))
}

/// The [`WORST_PER_WAVE`] tenants of a wave with the longest holds, longest first.
pub fn worst_in_wave<'t, S: std::borrow::Borrow<TenantState>>(
    tenants: impl Iterator<Item = (&'t PlannedTenant, Option<S>)>,
) -> Vec<TenantLockHold> {
    let mut holds: Vec<TenantLockHold> = tenants
        .filter_map(|(planned, state)| {
            let (hold, over_budget) = worst_of(state?.borrow())?;
            Some(TenantLockHold {
                tenant: planned.id.clone(),
                tenant_name: planned.name.clone(),
                hold,
                over_budget,
            })
        })
        .collect();
    holds.sort_by(|a, b| {
        b.hold
            .held_ms
            .cmp(&a.hold.held_ms)
            .then_with(|| a.tenant.cmp(&b.tenant))
    });
    holds.truncate(WORST_PER_WAVE);
    holds
}

/// The text block: a line per tenant under its wave; nothing when no wave measured a hold.
pub fn text(waves: &[(&str, &[TenantLockHold])]) -> String {
    let mut out = String::new();
    if waves.iter().all(|(_, holds)| holds.is_empty()) {
        return out;
    }
    out.push('\n');
    super::render::wrap_into(
        &mut out,
        "longest write-blocking locks on validation branches (main would block writes that long):",
        "",
        "  ",
    );
    for (wave, holds) in waves {
        for hold in *holds {
            let label = PlannedTenant {
                id: hold.tenant.clone(),
                name: hold.tenant_name.clone(),
                region: String::new(),
            }
            .label();
            let verdict = if hold.over_budget {
                " (over max_lock_hold: failed)"
            } else {
                ""
            };
            super::render::wrap_into(
                &mut out,
                &format!(
                    "{wave}: {label}: {}{verdict}",
                    crate::terminal::escape_controls(&hold.hold.describe())
                ),
                "  ",
                "      ",
            );
        }
    }
    out
}
