//! The clock: synchronized (systemd's flag file, else the kernel's own: adjtimex, which is
//! what `timedatectl`'s NTPSynchronized reports), and not behind the newest time cowctl
//! recorded beside a COW (`<cow>.golden`: written at creation and every reset), which a
//! clock set back would put in the future.

use std::os::unix::fs::MetadataExt;

use super::{Area, Check};
use crate::image::golden_record::record_path;
use crate::manifest::Manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Yes,
    No,
    Unknown,
}

pub trait Clock {
    fn synchronized(&self) -> Synced;
    /// Unix seconds.
    fn now(&self) -> u64;
}

/// This machine's clock; `run` is /run.
pub struct SystemClock {
    pub run: std::path::PathBuf,
}

impl Clock for SystemClock {
    fn synchronized(&self) -> Synced {
        if self.run.join("systemd/timesync/synchronized").exists() {
            return Synced::Yes;
        }
        // SAFETY: timex is plain data, all zeros valid; with modes 0 adjtimex only reads
        // the kernel's state into it.
        let (state, tx) = unsafe {
            let mut tx: libc::timex = std::mem::zeroed();
            (libc::adjtimex(&mut tx), tx)
        };
        match state {
            -1 => Synced::Unknown,
            libc::TIME_ERROR => Synced::No,
            _ if tx.status & libc::STA_UNSYNC != 0 => Synced::No,
            _ => Synced::Yes,
        }
    }

    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The newest time recorded beside the manifest's COWs: the records' modification times
/// and their last resets; with the record's path.
pub fn newest_record(m: &Manifest) -> Option<(u64, std::path::PathBuf)> {
    m.pcs
        .iter()
        .filter_map(|pc| {
            let path = record_path(&pc.cow);
            let mtime = std::fs::metadata(&path).ok()?.mtime();
            let reset = std::fs::read(&path)
                .ok()
                .and_then(|b| {
                    serde_json::from_slice::<crate::image::golden_record::Golden>(&b).ok()
                })
                .and_then(|g| g.last_reset)
                .unwrap_or(0);
            Some((u64::try_from(mtime).unwrap_or(0).max(reset), path))
        })
        .max_by_key(|(t, _)| *t)
}

/// Slack for file systems' timestamps and a clock stepped by NTP.
const SLACK: u64 = 60;

pub fn checks(m: &Manifest, clock: &dyn Clock) -> Vec<Check> {
    let sync = match clock.synchronized() {
        Synced::Yes => Check::ok(Area::Clock, "the system clock is synchronized"),
        Synced::No => Check::warn(
            Area::Clock,
            "the system clock is not synchronized",
            "timedatectl set-ntp true (or start chrony / ntpd)",
        ),
        Synced::Unknown => Check::warn(
            Area::Clock,
            "whether the system clock is synchronized is unknown",
            "run an NTP client (chrony, systemd-timesyncd)",
        ),
    };
    let mut out = vec![sync];
    if let Some((newest, path)) = newest_record(m) {
        let now = clock.now();
        if now + SLACK < newest {
            out.push(Check::fail(
                Area::Clock,
                format!(
                    "the clock is {} s behind {} (the newest COW record)",
                    newest - now,
                    path.display()
                ),
                "set the clock right (chronyc makestep, or timedatectl set-ntp true)",
            ));
        } else {
            out.push(Check::ok(
                Area::Clock,
                format!("not behind the newest COW record ({})", path.display()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{manifest, FakeClock};
    use super::super::Status;
    use super::*;

    #[test]
    fn a_clock_behind_the_newest_record_fails() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(
            d.path(),
            &format!(
                "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: {}\n  cow_size: 1GiB\n  export: nbd\npcs:\n  - name: a\n  - name: b\n",
                d.path().display()
            ),
        );
        let clock = |synced, now| FakeClock { synced, now };
        let c = checks(&m, &clock(Synced::Unknown, 0));
        assert_eq!(c.len(), 1, "no records, nothing to compare: {c:?}");
        assert_eq!(c[0].status, Status::Warn);
        let record = record_path(&d.path().join("b.cow"));
        std::fs::write(
            &record,
            r#"{"image":"/g.img","size":1,"fingerprint":"x","last_reset":4000000000}"#,
        )
        .unwrap();
        let c = checks(&m, &clock(Synced::Yes, 3_999_000_000));
        assert_eq!(c[0].status, Status::Ok);
        assert_eq!(c[1].status, Status::Fail, "{}", c[1]);
        assert!(
            c[1].says.contains("1000000 s behind") && c[1].says.contains("b.cow.golden"),
            "{}",
            c[1]
        );
        let c = checks(&m, &clock(Synced::No, 4_000_000_030));
        assert_eq!(c[0].status, Status::Warn);
        assert_eq!(c[1].status, Status::Ok, "within the slack: {}", c[1]);
    }
}
