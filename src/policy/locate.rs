//! Finds where in a YAML file an error belongs, so messages can say `file:line:column`.
//!
//! serde_yaml gives positions for errors raised while deserializing; checks that span several
//! values (percents not increasing, a duplicate wave name, a named tenant not in the fleet) run
//! after deserializing, so their position is found again by a light scan of the text. The scan
//! understands the block style the example policy uses; for other layouts it finds nothing and
//! the message goes without a position rather than with a wrong one.
//!
//! **Invariant:** a position is 1-based, and is only returned when the text at it is what the
//! message talks about.

use std::fmt;
use std::path::Path;

/// A 1-based line and column in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition {
    pub line: usize,
    pub column: usize,
}

/// `path:line:column`, or just `path` when the position is unknown.
pub(crate) struct FilePosition<'a> {
    pub path: &'a Path,
    pub position: Option<SourcePosition>,
}

impl fmt::Display for FilePosition<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(position) = self.position {
            write!(f, ":{}:{}", position.line, position.column)?;
        }
        Ok(())
    }
}

/// The position of a serde_yaml error and its message without serde_yaml's own
/// `at line L column C` suffix (the position goes in front instead).
pub(crate) fn split_yaml_error(error: &serde_yaml::Error) -> (Option<SourcePosition>, String) {
    let message = error.to_string();
    let Some(location) = error.location() else {
        return (None, message);
    };
    let position = SourcePosition {
        line: location.line(),
        column: location.column(),
    };
    let suffix = format!(" at line {} column {}", location.line(), location.column());
    let message = message
        .strip_suffix(&suffix)
        .map(str::to_string)
        .unwrap_or(message);
    (Some(position), message)
}

/// The position of the top-level `key:` line.
pub(crate) fn find_top_level_key(source: &str, key: &str) -> Option<SourcePosition> {
    source.lines().enumerate().find_map(|(line_idx, line)| {
        let rest = line.strip_prefix(key)?;
        rest.starts_with(':').then_some(SourcePosition {
            line: line_idx + 1,
            column: 1,
        })
    })
}

/// The position of `needle` (as a whole word) inside the top-level section `section` (e.g.
/// `fleet`), or of the section itself when the needle is not found in it.
pub(crate) fn find_in_section(source: &str, section: &str, needle: &str) -> Option<SourcePosition> {
    let section_position = find_top_level_key(source, section)?;
    let lines: Vec<&str> = source.lines().collect();
    let section_end = top_level_end(&lines, section_position.line);
    find_word_in_lines(&lines, section_position.line - 1, section_end, needle)
        .or(Some(section_position))
}

/// The position of `needle` (as a whole word) inside the `wave_idx`-th item of the top-level
/// `waves:` list, or of that item's first line when the needle is not in it.
pub(crate) fn find_in_wave(source: &str, wave_idx: usize, needle: &str) -> Option<SourcePosition> {
    let waves_position = find_top_level_key(source, "waves")?;
    let lines: Vec<&str> = source.lines().collect();
    let waves_end = top_level_end(&lines, waves_position.line);
    let mut item_starts = Vec::new();
    let mut item_indent = None;
    for (line_idx, line) in lines
        .iter()
        .enumerate()
        .take(waves_end)
        .skip(waves_position.line)
    {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("- ") || trimmed == "-" {
            match item_indent {
                None => {
                    item_indent = Some(indent);
                    item_starts.push(line_idx);
                }
                Some(first_indent) if first_indent == indent => item_starts.push(line_idx),
                Some(_) => {}
            }
        }
    }
    let item_start = *item_starts.get(wave_idx)?;
    let item_end = item_starts.get(wave_idx + 1).copied().unwrap_or(waves_end);
    find_word_in_lines(&lines, item_start, item_end, needle).or(Some(SourcePosition {
        line: item_start + 1,
        column: lines[item_start].len() - lines[item_start].trim_start().len() + 1,
    }))
}

/// Index (0-based, exclusive) of the line ending the top-level section that starts on 1-based
/// line `section_line`: the next non-blank, non-comment line at column 1.
fn top_level_end(lines: &[&str], section_line: usize) -> usize {
    lines
        .iter()
        .enumerate()
        .skip(section_line)
        .find(|(_, line)| {
            !line.is_empty() && !line.starts_with([' ', '\t', '#']) && !line.starts_with('-')
        })
        .map_or(lines.len(), |(line_idx, _)| line_idx)
}

fn find_word_in_lines(
    lines: &[&str],
    start: usize,
    end: usize,
    needle: &str,
) -> Option<SourcePosition> {
    lines
        .iter()
        .enumerate()
        .take(end)
        .skip(start)
        .find_map(|(line_idx, line)| {
            // A comment may mention anything; only the YAML before it counts.
            let code = line.split(" #").next().unwrap_or(line);
            find_word(code, needle).map(|byte_idx| SourcePosition {
                line: line_idx + 1,
                column: code[..byte_idx].chars().count() + 1,
            })
        })
}

/// Byte index of `needle` in `haystack` where it is not part of a longer identifier.
fn find_word(haystack: &str, needle: &str) -> Option<usize> {
    let is_word_byte = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
    let bytes = haystack.as_bytes();
    haystack
        .match_indices(needle)
        .map(|(byte_idx, _)| byte_idx)
        .find(|&byte_idx| {
            let before_ok = byte_idx == 0 || !is_word_byte(bytes[byte_idx - 1]);
            let after_idx = byte_idx + needle.len();
            let needle_ends_in_word = needle
                .as_bytes()
                .last()
                .is_some_and(|&byte| is_word_byte(byte));
            let after_ok =
                !needle_ends_in_word || after_idx >= bytes.len() || !is_word_byte(bytes[after_idx]);
            before_ok && after_ok
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "\
fleet:
  source: file # exclude: [x]
  exclude: [a-1]
waves:
  - name: canary
    tenants: [t-1, t-10]
    max_failure_percent: 5
    percent: 1
  # comment at a lower indent
  -   name: rest
      percent: 100
salt: s
";

    #[test]
    fn finds_wave_fields_as_whole_words() {
        let percent = find_in_wave(SOURCE, 0, "percent:").unwrap();
        assert_eq!(percent, SourcePosition { line: 8, column: 5 });
        let tenant = find_in_wave(SOURCE, 0, "t-1").unwrap();
        assert_eq!(
            tenant,
            SourcePosition {
                line: 6,
                column: 15
            }
        );
        let tenant = find_in_wave(SOURCE, 0, "t-10").unwrap();
        assert_eq!(
            tenant,
            SourcePosition {
                line: 6,
                column: 20
            }
        );
        let second_percent = find_in_wave(SOURCE, 1, "percent:").unwrap();
        assert_eq!(
            second_percent,
            SourcePosition {
                line: 11,
                column: 7
            }
        );
        // Not in the item: the item's first line.
        let missing = find_in_wave(SOURCE, 1, "bake:").unwrap();
        assert_eq!(
            missing,
            SourcePosition {
                line: 10,
                column: 3
            }
        );
        assert_eq!(find_in_wave(SOURCE, 2, "percent:"), None);
    }

    #[test]
    fn finds_section_entries_outside_comments() {
        let exclude = find_in_section(SOURCE, "fleet", "exclude:").unwrap();
        assert_eq!(exclude, SourcePosition { line: 3, column: 3 });
        assert_eq!(
            find_top_level_key(SOURCE, "salt"),
            Some(SourcePosition {
                line: 12,
                column: 1
            })
        );
    }
}
