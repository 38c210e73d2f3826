//! Text that reaches a terminal: control characters from foreign data (PostgreSQL error details
//! quoting tenant rows, project names) are shown escaped, never interpreted.
//!
//! **Invariant:** every text rendering that can hold foreign data passes through
//! [`escape_controls`] before it is printed; JSON output and the journal escape on their own.
//!
//! Error messages are wrapped at [`ERROR_WIDTH`] columns ([`wrap_lines`]) when stderr is a
//! terminal; to a pipe or a CI log each error stays on its own lines as written, so tools that
//! match error text see it whole.

/// The CLI's widest line: error messages on a terminal wrap here.
pub const ERROR_WIDTH: usize = 100;

/// `text` with every control character except newline and tab written as `\x1b` (C0 and DEL)
/// or `\u{9b}` (C1), so an escape sequence in tenant data cannot retitle, clear or rewrite the
/// operator's terminal.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `text` word-wrapped at `width` columns, line by line: a continuation is indented two spaces
/// past its line's own indent (so a listed `- item` stays readable), and a word longer than the
/// width (a path, a URL) is kept whole on a line of its own rather than cut.
pub fn wrap_lines(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / width.max(1) * 4);
    for source_line in text.lines() {
        if source_line.chars().count() <= width {
            out.push_str(source_line);
            out.push('\n');
            continue;
        }
        let indent_len = source_line.len() - source_line.trim_start().len();
        let indent = &source_line[..indent_len];
        let continuation = format!("{indent}  ");
        let mut line = String::from(indent);
        let mut line_has_word = false;
        for word in source_line.split_whitespace() {
            if line_has_word && line.chars().count() + 1 + word.chars().count() > width {
                out.push_str(&line);
                out.push('\n');
                line = continuation.clone();
                line_has_word = false;
            }
            if line_has_word {
                line.push(' ');
            }
            line.push_str(word);
            line_has_word = true;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_wrap_at_the_width_and_keep_their_words_and_list_indents() {
        let long = format!(
            "error: plan p.plan.yaml no longer matches the migrations in migrations; {}\n  - waves[rest].concurrency: 16 -> 1 {}\nshort",
            "re-run `schemafleet plan` and review ".repeat(4),
            "and more words ".repeat(9)
        );
        let wrapped = wrap_lines(&long, ERROR_WIDTH);
        assert!(
            wrapped
                .lines()
                .all(|line| line.chars().count() <= ERROR_WIDTH),
            "{wrapped}"
        );
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(&wrapped), words(&long), "no word lost or cut");
        assert!(
            wrapped.contains("\n    "),
            "a listed item continues past its dash: {wrapped}"
        );
        assert!(wrapped.ends_with("\nshort\n"));
        let path = format!("error: cannot read {}", "/very/long".repeat(12));
        let kept = wrap_lines(&path, ERROR_WIDTH);
        assert_eq!(kept.lines().count(), 2, "the path stays whole: {kept}");
    }

    #[test]
    fn escape_sequences_are_shown_not_run() {
        let detail =
            "Key (email)=(x\u{1b}]0;pwned\u{7}\u{1b}[2J\r\u{9b}31m) already exists.\n\tnext";
        assert_eq!(
            escape_controls(detail),
            "Key (email)=(x\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\u{9b}31m) already exists.\n\tnext"
        );
        assert_eq!(escape_controls("plain – ünïcode"), "plain – ünïcode");
    }
}
