//! Neon-like identifiers and secrets: `adjective-noun-123456` projects, `br-…` branches,
//! `ep-…` endpoints, UUID operations, `npg_…` role passwords, and the physical names derived
//! from them.
//!
//! **Invariant:** every generated id matches the spec pattern `^[a-z0-9-]{1,60}$`, and every
//! physical name is a lowercase identifier of `[a-z0-9_]` that needs no quoting in SQL.
//! **Invariant:** passwords are alphanumeric after the `npg_` prefix, so they can be embedded in
//! SQL literals and URIs without escaping.

use rand::Rng;
use rand::distr::Alphanumeric;

const ADJECTIVES: &[&str] = &[
    "aged",
    "bold",
    "calm",
    "cool",
    "damp",
    "dark",
    "dry",
    "fancy",
    "floral",
    "gentle",
    "green",
    "icy",
    "late",
    "lively",
    "long",
    "lucky",
    "misty",
    "morning",
    "muddy",
    "noisy",
    "odd",
    "old",
    "orange",
    "patient",
    "plain",
    "polished",
    "proud",
    "quiet",
    "rapid",
    "raspy",
    "red",
    "round",
    "royal",
    "shiny",
    "shy",
    "silent",
    "small",
    "solitary",
    "steep",
    "still",
    "sweet",
    "tight",
    "tiny",
    "twilight",
    "wandering",
    "wild",
    "winter",
    "wispy",
    "withered",
    "young",
];

const NOUNS: &[&str] = &[
    "base",
    "bird",
    "boat",
    "bonus",
    "bread",
    "breeze",
    "brook",
    "bush",
    "butterfly",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "credit",
    "darkness",
    "dawn",
    "dew",
    "disk",
    "dream",
    "dust",
    "feather",
    "field",
    "fire",
    "firefly",
    "flower",
    "fog",
    "forest",
    "frog",
    "frost",
    "glade",
    "grass",
    "hall",
    "hat",
    "haze",
    "heart",
    "hill",
    "king",
    "lab",
    "lake",
    "leaf",
    "limit",
    "math",
    "meadow",
    "mode",
    "moon",
    "morning",
    "mountain",
    "mouse",
    "mud",
    "night",
    "paper",
    "pine",
    "poetry",
    "pond",
    "queen",
    "rain",
    "recipe",
    "resonance",
    "rice",
    "river",
    "salad",
    "scene",
    "sea",
    "shadow",
    "shape",
    "silence",
    "sky",
    "smoke",
    "snow",
    "snowflake",
    "sound",
    "star",
    "sun",
    "sunset",
    "surf",
    "term",
    "thunder",
    "tooth",
    "tree",
    "truth",
    "union",
    "unit",
    "violet",
    "voice",
    "water",
    "waterfall",
    "wave",
    "wildflower",
    "wind",
    "wood",
];

fn adjective_noun_digits() -> String {
    let mut rng = rand::rng();
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    let digits: u32 = rng.random_range(0..100_000_000);
    format!("{adjective}-{noun}-{digits:08}")
}

pub fn project_id() -> String {
    adjective_noun_digits()
}

pub fn branch_id() -> String {
    format!("br-{}", adjective_noun_digits())
}

pub fn endpoint_id() -> String {
    format!("ep-{}", adjective_noun_digits())
}

/// A random (version 4) UUID in its canonical text form.
pub fn operation_id() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn role_password() -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("npg_{suffix}")
}

/// The physical database behind a branch: the branch id in identifier form.
pub fn branch_database_name(branch_id: &str) -> String {
    branch_id.replace('-', "_")
}

/// The cluster-wide login role behind a project's reported `neondb_owner`.
pub fn project_role_name(project_id: &str) -> String {
    format!("owner_{}", project_id.replace('-', "_"))
}

/// A database of its own holding one branch's state at one instant.
pub fn snapshot_database_name() -> String {
    format!("snap_{}", operation_id().replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_spec_pattern_and_physical_names_need_no_quoting() {
        let id_pattern = regex::Regex::new("^[a-z0-9-]{1,60}$").unwrap();
        let identifier = regex::Regex::new("^[a-z_][a-z0-9_]{0,62}$").unwrap();
        for _ in 0..200 {
            for id in [project_id(), branch_id(), endpoint_id(), operation_id()] {
                assert!(id_pattern.is_match(&id), "{id}");
            }
            assert!(identifier.is_match(&branch_database_name(&branch_id())));
            assert!(identifier.is_match(&project_role_name(&project_id())));
            assert!(identifier.is_match(&snapshot_database_name()));
        }
    }

    #[test]
    fn operation_ids_are_version_4_uuids() {
        let uuid = regex::Regex::new(
            "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        )
        .unwrap();
        assert!(uuid.is_match(&operation_id()));
    }
}
