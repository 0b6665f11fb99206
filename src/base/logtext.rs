//! Text from outside (the network, a manifest) on its way into a line-based file: a log
//! line, dnsmasq's configuration. A newline in it would start a line of the sender's
//! choosing, and an escape sequence would repaint the admin's terminal.

use std::fmt;

/// The first character that has no place in one line of text: a control character (C0,
/// DEL, C1) or a Unicode line or paragraph separator.
pub fn first_control(s: &str) -> Option<char> {
    s.chars().find(|&c| breaks_line(c))
}

fn breaks_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Shows `T` with every control character written out (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{85}`), so that what it says stays on its one line:
/// `tracing::info!("{} logged in", Escaped(&initiator))`.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::write(&mut EscapeWriter(f), format_args!("{}", self.0))
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error and its causes, each after ": " — the line the CLI prints after "cowctl: ",
/// and what the admin reads wherever an error becomes text (`{e:#}` of a plain error prints
/// only its own sentence).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

struct EscapeWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapeWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(breaks_line) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().expect("found at i");
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if u32::from(c) < 0x80 => write!(self.0, "\\x{:02x}", u32::from(c))?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_written_out_and_the_rest_kept() {
        let forged =
            "iqn.x:pc\n2024-01-01T00:00:00Z  INFO admin logged in\r\t\x1b[2J\x7f\u{85}\u{2028}é";
        assert_eq!(
            Escaped(forged).to_string(),
            "iqn.x:pc\\n2024-01-01T00:00:00Z  INFO admin logged in\\r\\t\\x1b[2J\\x7f\\u{85}\\u{2028}é"
        );
        assert_eq!(
            Escaped("plain text: 10.0.0.1").to_string(),
            "plain text: 10.0.0.1"
        );
        // Anything that displays, such as an error that quotes what a peer sent.
        let e = std::io::Error::other("no export named \"a\nb\"");
        assert_eq!(Escaped(&e).to_string(), "no export named \"a\\nb\"");
        assert!(!Escaped(forged).to_string().chars().any(breaks_line));
    }

    #[test]
    fn a_chain_reads_each_cause_after_a_colon() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("cannot read /x")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "cannot read /x: disk on fire");
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn the_first_control_character_is_found() {
        assert_eq!(first_control("eth1"), None);
        assert_eq!(first_control("eth1\ndhcp-script=/x"), Some('\n'));
        assert_eq!(first_control("a\u{7f}"), Some('\u{7f}'));
        assert_eq!(first_control("a\u{2029}"), Some('\u{2029}'));
    }
}
