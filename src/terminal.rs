//! Text that reaches a terminal: control characters from foreign data (PostgreSQL error details
//! quoting tenant rows, project names) are shown escaped, never interpreted.
//!
//! **Invariant:** every text rendering that can hold foreign data passes through
//! [`escape_controls`] before it is printed; JSON output and the journal escape on their own.

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

#[cfg(test)]
mod tests {
    use super::*;

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
