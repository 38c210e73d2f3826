//! Which version a tenant without history is at: the reference whose fingerprint equals its own.

use super::{Difference, Fingerprint, diff};

/// Where a tenant's schema stands among the references.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionMatch {
    /// Equal to the reference after `version` (the highest such, when migrations left the
    /// schema unchanged; 0 is the empty database).
    Exact { version: i32 },
    /// Equal to none; `version` is the reference with the fewest differences.
    Closest {
        version: i32,
        differences: Vec<Difference>,
    },
}

/// Match `found` against `references` (ascending by version, non-empty).
pub fn match_version(found: &Fingerprint, references: &[(i32, Fingerprint)]) -> VersionMatch {
    let mut closest: Option<(i32, Vec<Difference>)> = None;
    let mut exact = None;
    for (version, reference) in references {
        let differences = diff(reference, found);
        if differences.is_empty() {
            exact = Some(*version);
        } else if closest
            .as_ref()
            .is_none_or(|(_, best)| differences.len() <= best.len())
        {
            closest = Some((*version, differences));
        }
    }
    match (exact, closest) {
        (Some(version), _) => VersionMatch::Exact { version },
        (None, Some((version, differences))) => VersionMatch::Closest {
            version,
            differences,
        },
        (None, None) => VersionMatch::Closest {
            version: 0,
            differences: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::ObjectKind;
    use crate::fingerprint::fixtures::object;

    #[test]
    fn exact_picks_the_highest_equal_version_and_closest_the_fewest_differences() {
        let empty = Fingerprint::default();
        let v1 = Fingerprint::new(vec![object(ObjectKind::Table, "public.a", "table")]);
        let v2 = Fingerprint::new(vec![
            object(ObjectKind::Table, "public.a", "table"),
            object(ObjectKind::Column, "public.a.id", "integer"),
        ]);
        let references = vec![
            (0, empty),
            (1, v1.clone()),
            (2, v2.clone()),
            (3, v2.clone()),
        ];
        assert_eq!(
            match_version(&v1, &references),
            VersionMatch::Exact { version: 1 }
        );
        assert_eq!(
            match_version(&v2, &references),
            VersionMatch::Exact { version: 3 }
        );
        let extra = Fingerprint::new(vec![
            object(ObjectKind::Table, "public.a", "table"),
            object(ObjectKind::Column, "public.a.id", "integer"),
            object(ObjectKind::Column, "public.a.note", "text"),
        ]);
        match match_version(&extra, &references) {
            VersionMatch::Closest {
                version,
                differences,
            } => {
                assert_eq!(version, 3);
                assert_eq!(differences.len(), 1);
                assert_eq!(differences[0].name, "public.a.note");
            }
            other => panic!("{other:?}"),
        }
    }
}
