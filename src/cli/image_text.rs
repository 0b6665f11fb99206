//! How `cowctl image` writes what a version takes and when it was made.

use crate::base::units::human;
use crate::image;

/// `8.0 MiB`, or `8.0 MiB (7.0 MiB shared)` where blocks are shared with other files.
pub(super) fn on_disk(s: image::space::Space) -> String {
    if s.shared == 0 {
        human(s.allocated)
    } else {
        format!("{} ({} shared)", human(s.allocated), human(s.shared))
    }
}

/// `YYYY-MM-DD HH:MM` of Unix seconds.
pub(super) fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// What `image prune` says of the versions it keeps, and why.
pub(super) fn prune_lines(family: &str, keep: &[(image::VersionName, String)], json: bool) {
    if !json {
        for (v, why) in keep {
            outln!("keep {family}@{v}: {why}");
        }
    }
}

/// What `image prune` says of a version it removes (or would): its name, size, space
/// (`stored`: "on disk", or "stored" in a pool), age and note.
pub(super) fn removal_line(
    family: &str,
    v: &image::Version,
    space: image::space::Space,
    (dry_run, stored): (bool, &str),
) -> String {
    format!(
        "{} {family}@{} ({}, {} {stored}, made {}{})",
        if dry_run { "would remove" } else { "remove" },
        v.name,
        human(v.size),
        on_disk(space),
        utc(v.created),
        if v.note.is_empty() {
            String::new()
        } else {
            format!(": {}", v.note)
        }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(1_796_170_200), "2026-12-02 00:10");
    }
}
