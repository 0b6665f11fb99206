//! Every status and table line the real kernel printed in the VM parses into the typed
//! values and prints back byte for byte.

use cowctl::dm::{StatusLine, TableLine};

#[test]
fn captured_kernel_lines_round_trip() {
    let text = include_str!("data/dm-lines-6.1.txt");
    let (mut status, mut table) = (0, 0);
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Ok(t) = line.parse::<TableLine>() {
            assert_eq!(t.to_string(), line);
            table += 1;
        } else {
            let s: StatusLine = line.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.to_string(), line);
            status += 1;
        }
    }
    assert!(
        status > 10 && table > 0,
        "{status} status and {table} table lines"
    );
    for kind in ["Invalid", "Overflow"] {
        assert!(
            text.lines().any(|l| l.ends_with(kind)),
            "no captured {kind} line"
        );
    }
}
