//! Brace ranges, so a room of PCs is written once: `pc-{01..14}` expands to pc-01 … pc-14,
//! keeping the zero padding of the first bound. Every ranged field of one entry must expand
//! to the same count; `{name}` in any field is replaced by the PC's name.

/// The values a field expands to: one per PC, or `None` when it has no range.
pub fn expand(value: &str) -> Result<Option<Vec<String>>, String> {
    let Some(open) = value.find('{') else {
        return Ok(None);
    };
    let Some(close_rel) = value[open..].find('}') else {
        return Ok(None);
    };
    let close = open + close_rel;
    let inner = &value[open + 1..close];
    let Some((a, b)) = inner.split_once("..") else {
        return Ok(None);
    }; // e.g. {name}
    let (from, to): (u64, u64) = match (a.parse(), b.parse()) {
        (Ok(x), Ok(y)) => (x, y),
        _ => {
            return Err(format!(
                "range {{{inner}}} must be two whole numbers, as in {{01..14}}"
            ))
        }
    };
    if to < from {
        return Err(format!("range {{{inner}}} counts down"));
    }
    if to - from >= 4096 {
        return Err(format!("range {{{inner}}} is too long (at most 4096 PCs)"));
    }
    let width = if a.starts_with('0') { a.len() } else { 0 };
    let (prefix, suffix) = (&value[..open], &value[close + 1..]);
    if suffix.contains("..") && suffix.contains('{') {
        return Err("only one range per field".to_string());
    }
    Ok(Some(
        (from..=to)
            .map(|n| format!("{prefix}{n:0width$}{suffix}"))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_with_padding() {
        assert_eq!(
            expand("pc-{01..03}").unwrap().unwrap(),
            ["pc-01", "pc-02", "pc-03"]
        );
        assert_eq!(
            expand("10.0.0.{101..102}").unwrap().unwrap(),
            ["10.0.0.101", "10.0.0.102"]
        );
        assert_eq!(expand("{8..10}").unwrap().unwrap(), ["8", "9", "10"]);
        assert_eq!(expand("plain").unwrap(), None);
        assert_eq!(expand("iqn.x:{name}").unwrap(), None);
    }

    #[test]
    fn refuses_bad_ranges() {
        assert!(expand("pc-{a..b}").is_err());
        assert!(expand("pc-{5..1}").is_err());
        assert!(expand("pc-{0..99999}").is_err());
    }
}
