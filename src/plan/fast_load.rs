//! The fast path of [`super::file::load_plan`]: a plan in the exact shape `write_plan` emits is
//! read without building a YAML tree of its tenant lists (issue 23).
//!
//! serde_yaml 0.9 turns the whole document into a list of events before deserializing, so a plan
//! of 300,000 tenants (17 MB) took seconds and 270 MB to load, nearly all of it for the waves'
//! tenant lists. Here each wave's list is cut out of the text and read by a strict scanner that
//! knows only the lines our writer produces:
//!
//! ```text
//!   tenants:
//!   - id: p-1
//!     name: acme
//!     region: aws-us-east-2
//! ```
//!
//! What is left (settings, migrations, fleet, wave headers: a few kilobytes) goes through
//! serde_yaml as before, with an empty list where each was cut.
//!
//! **Invariant:** [`load_written`] returns `Some` only for text serde_yaml reads as the very same
//! plan; anything the scanner does not know exactly (another layout or indentation, comments or
//! blank lines inside a list, double-quoted or multi-line scalars, anchors, tags, keys in
//! another order, ...) gives `None`, and the caller parses the whole text with serde_yaml, so a
//! hand-edited plan loads, or fails with its precise `file:line` error, exactly as before. Debug
//! builds check every plan this path reads against serde_yaml's reading of it.

use super::model::{Plan, PlannedTenant};

/// The plan in `text`, when it has the writer's shape; `None` means "parse it with serde_yaml".
pub fn load_written(text: &str) -> Option<Plan> {
    let cut = cut_tenant_lists(text)?;
    let mut plan: Plan = serde_yaml::from_str(&cut.skeleton).ok()?;
    // Each wave item held exactly one list, in document order, and serde_yaml saw as many waves.
    if plan.waves.len() != cut.lists.len() || plan.waves.iter().any(|w| !w.tenants.is_empty()) {
        return None;
    }
    for (wave, tenants) in plan.waves.iter_mut().zip(cut.lists) {
        wave.tenants = tenants;
    }
    Some(plan)
}

/// The text with each wave's tenant list replaced by `[]`, and the lists.
struct Cut {
    skeleton: String,
    lists: Vec<Vec<PlannedTenant>>,
}

/// The key line of a wave's tenant list (wave fields sit at indent 2 under a `- ` item).
const LIST_KEY: &str = "  tenants:";
const EMPTY_LIST: &str = "  tenants: []";
/// A list item's first line, and the lines continuing it.
const ITEM_START: &str = "  - ";
const ITEM_FIELD: &str = "    ";

fn cut_tenant_lists(text: &str) -> Option<Cut> {
    let mut skeleton = String::with_capacity(16 * 1024);
    let mut lists = Vec::new();
    let mut lines = Lines { text, at: 0 };
    let mut seen_waves = false;
    let mut in_waves = false;
    // Whether the current wave item has had its list; true before the first item.
    let mut wave_has_list = true;
    while let Some(line) = lines.next() {
        if !line.starts_with(' ') {
            if in_waves {
                if !wave_has_list {
                    return None;
                }
                if line.starts_with("- ") {
                    wave_has_list = false;
                } else {
                    in_waves = false;
                }
            }
            if line == "waves:" {
                if seen_waves {
                    return None;
                }
                seen_waves = true;
                in_waves = true;
            }
        }
        if in_waves && (line == LIST_KEY || line == EMPTY_LIST) {
            if wave_has_list {
                return None;
            }
            wave_has_list = true;
            if line == EMPTY_LIST {
                lists.push(Vec::new());
            } else {
                lists.push(read_list(&mut lines)?);
            }
            skeleton.push_str(EMPTY_LIST);
            skeleton.push('\n');
            continue;
        }
        skeleton.push_str(line);
        skeleton.push('\n');
    }
    if in_waves && !wave_has_list {
        return None;
    }
    Some(Cut { skeleton, lists })
}

/// Lines of a text, without their `\n`.
struct Lines<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Lines<'a> {
    fn peek(&self) -> Option<&'a str> {
        let rest = &self.text[self.at..];
        if rest.is_empty() {
            return None;
        }
        Some(memchr::memchr(b'\n', rest.as_bytes()).map_or(rest, |end| &rest[..end]))
    }

    fn next(&mut self) -> Option<&'a str> {
        let line = self.peek()?;
        self.at = (self.at + line.len() + 1).min(self.text.len());
        Some(line)
    }
}

/// The items after a `  tenants:` line, up to the first line at indent 2 or less that is not
/// an item. `None` for anything but the writer's shape, and for an empty list (`tenants:` with
/// no items is null to serde_yaml, an error, not an empty list).
fn read_list(lines: &mut Lines<'_>) -> Option<Vec<PlannedTenant>> {
    let mut tenants: Vec<PlannedTenant> = Vec::new();
    // The fields the current item has had: 1 = id, 2 = name, 3 = region.
    let mut fields = 0;
    while let Some(line) = lines.peek() {
        if let Some(rest) = line.strip_prefix(ITEM_START) {
            let id = scalar(rest.strip_prefix("id: ")?)?;
            tenants.push(PlannedTenant::from_id(id));
            fields = 1;
        } else if let Some(rest) = line.strip_prefix(ITEM_FIELD) {
            let tenant = tenants.last_mut()?;
            if let Some(name) = rest.strip_prefix("name: ")
                && fields < 2
            {
                tenant.name = scalar(name)?;
                fields = 2;
            } else if let Some(region) = rest.strip_prefix("region: ")
                && fields < 3
            {
                tenant.region = scalar(region)?;
                fields = 3;
            } else {
                return None;
            }
        } else if line.starts_with("   ") || line.is_empty() {
            // Indent 3, or a blank line: YAML may still be inside the list; we are not.
            return None;
        } else {
            break;
        }
        lines.next();
    }
    (!tenants.is_empty()).then_some(tenants)
}

/// A scalar value as serde_yaml reads it into a `String`, for the two styles our writer uses on
/// one line: plain (`p-1`) and single-quoted (`'123'`, `''`, `'it''s'`). `None` for anything else.
fn scalar(text: &str) -> Option<String> {
    if let Some(quoted) = text.strip_prefix('\'') {
        let inner = quoted.strip_suffix('\'')?;
        if !inner.chars().all(printable) {
            return None;
        }
        // Inside, a quote is written twice; a lone one would end the scalar early.
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(char) = chars.next() {
            if char == '\'' && chars.next() != Some('\'') {
                return None;
            }
            value.push(char);
        }
        return Some(value);
    }
    let first = text.chars().next()?;
    let plain = !"-?:,[]{}#&*!|>'\"%@` ".contains(first)
        && text.chars().all(|char| char != '#' && printable(char))
        && !text.contains(": ")
        && !text.ends_with([':', ' ']);
    plain.then(|| text.to_string())
}

/// A character libyaml reads inside a one-line scalar as itself: printable, not a tab, not one
/// of the line breaks YAML 1.1 knows besides `\n` (NEL, LS, PS), not a byte-order mark.
fn printable(char: char) -> bool {
    matches!(char, ' '..='~'
        | '\u{A0}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..)
        && !matches!(char, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_read_as_serde_yaml_reads_them() {
        for (text, value) in [
            ("p-1", "p-1"),
            ("acme corp (eu)", "acme corp (eu)"),
            ("a:b", "a:b"),
            ("café", "café"),
            ("'123'", "123"),
            ("''", ""),
            ("'it''s'", "it's"),
            ("'- x'", "- x"),
        ] {
            assert_eq!(scalar(text).as_deref(), Some(value), "{text}");
            let yaml: String = serde_yaml::from_str(text).unwrap();
            assert_eq!(yaml, value, "{text}");
        }
        for text in [
            "",
            "a: b",
            "a:",
            "a #b",
            "a ",
            "\"x\"",
            "'x",
            "'a'b'",
            "&anchor x",
            "*alias",
            "!tag x",
            "|",
            "a\tb",
            "a\u{2028}b",
        ] {
            assert_eq!(scalar(text), None, "{text:?}");
        }
    }
}
