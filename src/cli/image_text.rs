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

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(1_796_170_200), "2026-12-02 00:10");
    }
}
