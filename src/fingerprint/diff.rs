//! The difference between an expected fingerprint (the reference) and a found one (a tenant).

use std::cmp::Ordering;

use serde::Serialize;

use super::{Fingerprint, ObjectKind, SchemaObject};

/// One object that is missing, extra or defined differently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Difference {
    pub kind: ObjectKind,
    pub name: String,
    /// The reference's definition; `None` when the tenant has an object the reference lacks.
    pub expected: Option<String>,
    /// The tenant's definition; `None` when the tenant lacks it.
    pub found: Option<String>,
}

impl Difference {
    /// `missing index public.orders_account`, `extra column public.accounts.note (text)`, ….
    pub fn describe(&self) -> String {
        match (&self.expected, &self.found) {
            (Some(_), None) => format!("missing {} {}", self.kind, self.name),
            (None, Some(found)) => format!("extra {} {} ({found})", self.kind, self.name),
            (Some(expected), Some(found)) => format!(
                "changed {} {}: expected {expected}, found {found}",
                self.kind, self.name
            ),
            (None, None) => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Every difference between `expected` and `found`, in (kind, name) order; empty when equal.
pub fn diff(expected: &Fingerprint, found: &Fingerprint) -> Vec<Difference> {
    let key = |object: &SchemaObject| (object.kind, object.name.clone());
    let mut differences = Vec::new();
    let mut expected_objects = expected.objects().iter().peekable();
    let mut found_objects = found.objects().iter().peekable();
    // Both lists are sorted by (kind, name) and unique per key: a merge walk.
    loop {
        let order = match (expected_objects.peek(), found_objects.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(left), Some(right)) => key(left).cmp(&key(right)),
        };
        match order {
            Ordering::Less => {
                let object = expected_objects.next().expect("peeked");
                differences.push(Difference {
                    kind: object.kind,
                    name: object.name.clone(),
                    expected: Some(object.definition.clone()),
                    found: None,
                });
            }
            Ordering::Greater => {
                let object = found_objects.next().expect("peeked");
                differences.push(Difference {
                    kind: object.kind,
                    name: object.name.clone(),
                    expected: None,
                    found: Some(object.definition.clone()),
                });
            }
            Ordering::Equal => {
                let left = expected_objects.next().expect("peeked");
                let right = found_objects.next().expect("peeked");
                if left.definition != right.definition {
                    differences.push(Difference {
                        kind: left.kind,
                        name: left.name.clone(),
                        expected: Some(left.definition.clone()),
                        found: Some(right.definition.clone()),
                    });
                }
            }
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::fixtures::object;

    #[test]
    fn missing_extra_and_changed_objects_are_named() {
        let expected = Fingerprint::new(vec![
            object(ObjectKind::Table, "public.a", "table"),
            object(ObjectKind::Column, "public.a.id", "integer not null"),
            object(ObjectKind::Index, "public.a_idx", "CREATE INDEX a_idx ..."),
        ]);
        let found = Fingerprint::new(vec![
            object(ObjectKind::Table, "public.a", "table"),
            object(ObjectKind::Column, "public.a.id", "bigint not null"),
            object(ObjectKind::Column, "public.a.note", "text"),
        ]);
        let differences = diff(&expected, &found);
        let described: Vec<String> = differences.iter().map(Difference::describe).collect();
        assert_eq!(
            described,
            vec![
                "changed column public.a.id: expected integer not null, found bigint not null",
                "extra column public.a.note (text)",
                "missing index public.a_idx",
            ]
        );
        assert!(diff(&expected, &expected).is_empty());
    }
}
