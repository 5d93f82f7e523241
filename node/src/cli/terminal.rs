//! Task output made safe for a terminal: escape sequences and control characters removed.
//!
//! A task's output is whatever its program prints, and a terminal acts on escape sequences:
//! OSC sequences set the window title, write the clipboard (OSC 52) or make links, CSI
//! sequences move the cursor and erase what was shown, and a carriage return rewrites a line.
//! `task run --follow` prints the output through [`terminal_safe`], which keeps text, newlines
//! and tabs and drops every ANSI/ECMA-48 sequence (CSI, OSC, DCS, SOS, PM, APC and two-byte
//! escapes), every other C0 control character, DEL, and the C1 controls (U+0080 to U+009F,
//! which some terminals read as 8-bit CSI or OSC).

/// `text` without escape sequences and control characters, except `\n` and `\t`.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\u{1b}' => match chars.peek().copied() {
                // CSI: parameters and intermediates up to a final byte @ to ~.
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                // OSC, DCS, SOS, PM, APC: a string up to ST (ESC \) or, for OSC, BEL.
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    chars.next();
                    skip_string(&mut chars);
                }
                // nF escapes: intermediates (space to /) then one final character.
                Some(' '..='/') => {
                    while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                    chars.next_if(|c| ('0'..='~').contains(c));
                }
                // Two-character escapes (ESC c resets the terminal).
                Some('0'..='~') => {
                    chars.next();
                }
                // A lone ESC.
                _ => {}
            },
            // 8-bit CSI and the string introducers, as C1 characters.
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Skips a CSI sequence's parameters, intermediates and final byte (@ to ~).
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if ('@'..='~').contains(&c) {
            return;
        }
    }
}

/// Skips a control string up to its terminator: ST (ESC \ or U+009C) or BEL; all of it if
/// unterminated.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' if chars.next_if_eq(&'\\').is_some() => return,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn escape_sequences_and_controls_are_removed_text_stays() {
        let cases = [
            ("plain", "hello world\n", "hello world\n"),
            ("tabs and newlines stay", "a\tb\nc\n", "a\tb\nc\n"),
            ("unicode stays", "größe ✓ 日本\n", "größe ✓ 日本\n"),
            ("SGR colour", "\x1b[1;31mred\x1b[0m\n", "red\n"),
            (
                "cursor movement and erase",
                "ok\x1b[2A\x1b[2K\x1b[?25l!",
                "ok!",
            ),
            ("OSC title ended by BEL", "\x1b]0;pwned\x07after", "after"),
            (
                "OSC 52 clipboard ended by ST",
                "a\x1b]52;c;ZWNobyBoaQ==\x1b\\b",
                "ab",
            ),
            (
                "OSC 8 hyperlink",
                "\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\",
                "click",
            ),
            ("DCS string", "x\x1bPq#0;2;0;0;0\x1b\\y", "xy"),
            ("APC and PM strings", "1\x1b_apc\x1b\\2\x1b^pm\x072", "122"),
            (
                "an unterminated OSC takes the rest",
                "a\x1b]0;title without end",
                "a",
            ),
            ("an unterminated CSI takes the rest", "a\x1b[12;3", "a"),
            ("terminal reset ESC c", "\x1bcclean", "clean"),
            ("charset escape ESC ( B", "\x1b(Bz", "z"),
            ("a lone ESC at the end", "end\x1b", "end"),
            (
                "an ESC before a newline keeps the newline",
                "a\x1b\nb",
                "a\nb",
            ),
            (
                "carriage return cannot rewrite a line",
                "fake\rreal\n",
                "fakereal\n",
            ),
            (
                "bell, backspace, form feed, NUL, DEL",
                "a\x07b\x08c\x0cd\0e\x7f",
                "abcde",
            ),
            ("8-bit CSI", "a\u{9b}31mb", "ab"),
            ("8-bit OSC ended by 8-bit ST", "a\u{9d}0;t\u{9c}b", "ab"),
            ("other C1 controls", "a\u{85}b\u{8d}c", "abc"),
        ];
        for (name, input, want) in cases {
            assert_eq!(terminal_safe(input), want, "{name}");
        }
    }
}
