//! One log line each time a PC's condition changes, for the same events the alert rules in
//! `contrib/prometheus/` watch: fill past the warning, a snapshot overflowed, invalid or
//! parked by a reset that stopped, a COW at its auto-extend maximum, dnsmasq stopped. Every
//! line about a PC carries it as the `pc` field (JSON logs: `fields.pc`).

use std::collections::HashMap;

use crate::base::units::{human, percent};
use crate::room::status::{PcState, PcStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub pc: Option<String>,
    pub level: Level,
    /// state, warning, maximum, applied, removed, version, dnsmasq (and reset, autoextend
    /// from elsewhere).
    pub kind: &'static str,
    pub text: String,
}

/// What was seen of one PC at the last look.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: PcState,
    over_warning: bool,
    at_maximum: bool,
    version: Option<String>,
    next: Option<String>,
    resets: u64,
}

/// The last look at the room; `changes` compares the next one with it.
#[derive(Debug, Default)]
pub struct Events {
    pcs: HashMap<String, Seen>,
    dnsmasq: Option<bool>,
    /// Whether there was a look before: PCs of the first are not news.
    looked: bool,
}

fn broken(state: PcState) -> Option<&'static str> {
    Some(match state {
        PcState::Overflow => "its COW overflowed: the PC's writes fail until it is reset",
        PcState::Invalid => "its snapshot is invalid: the PC's disk fails its I/O; reset it",
        PcState::MergeFailed => "its snapshot merge failed: the PC's disk fails its I/O; reset it",
        PcState::Parked => {
            "a reset stopped half way: its disk fails all I/O until `cowctl reset` finishes it"
        }
        _ => return None,
    })
}

fn seen(r: &PcStatus, warn_percent: f64) -> (Seen, f64) {
    let fill = r
        .used_sectors
        .zip(r.capacity_sectors())
        .map(|(u, c)| percent(u, c));
    let max = r.max_sectors;
    let seen = Seen {
        state: r.state,
        over_warning: fill.is_some_and(|f| f >= warn_percent),
        at_maximum: max.is_some_and(|m| r.total_sectors.is_some_and(|t| t >= m)),
        version: r.image_version.clone(),
        next: r.next_version.clone(),
        resets: r.resets,
    };
    (seen, fill.unwrap_or(0.0))
}

type Say<'a> = dyn FnMut(Level, &'static str, String) + 'a;

/// A PC's state: broken, healthy again, applied or no longer served.
fn state_changes(before: Option<&Seen>, seen: &Seen, say: &mut Say) {
    if before.map(|b| b.state) == Some(seen.state) {
        return;
    }
    match (broken(seen.state), before.and_then(|b| broken(b.state))) {
        (Some(why), _) => say(Level::Error, "state", why.to_string()),
        (None, Some(_)) if seen.state == PcState::Active => {
            say(Level::Info, "state", "active again".to_string())
        }
        (None, Some(_)) => say(Level::Info, "state", format!("{} now", seen.state.as_str())),
        (None, None) => match before.map(|b| b.state) {
            Some(PcState::NotApplied) => say(
                Level::Info,
                "applied",
                format!("applied: served ({})", seen.state.as_str()),
            ),
            Some(_) if seen.state == PcState::NotApplied => {
                say(Level::Info, "applied", "no longer served".to_string())
            }
            _ => {}
        },
    }
}

/// Fill past the warning and back, the auto-extend maximum, a new image version.
fn fill_changes(
    before: Option<&Seen>,
    seen: &Seen,
    (fill, warn_percent, max): (f64, f64, Option<u64>),
    say: &mut Say,
) {
    let was = |f: fn(&Seen) -> bool| before.is_some_and(f);
    if seen.over_warning && !was(|b| b.over_warning) {
        say(
            Level::Warn,
            "warning",
            format!("COW {fill:.1}% full, past the warning at {warn_percent}%: reset it or grow its COW before it fills"),
        );
    } else if !seen.over_warning && was(|b| b.over_warning) {
        say(
            Level::Info,
            "warning",
            format!("COW {fill:.1}% full, below the warning at {warn_percent}% again"),
        );
    }
    if seen.at_maximum && !was(|b| b.at_maximum) {
        let m = human(max.unwrap_or(0) * 512);
        say(
            Level::Warn,
            "maximum",
            format!("COW grown to its auto-extend maximum ({m}): it cannot grow any more; reset it or raise autoextend.max"),
        );
    }
    let Some(b) = before else { return };
    // One event per reset, whoever did it: `feed.rs` drops the service's own, which it
    // announced already with who asked.
    for n in b.resets + 1..=seen.resets {
        say(
            Level::Info,
            "reset",
            format!("reset (its reset number {n})"),
        );
    }
    if seen.next.is_some() && seen.next != b.next {
        let v = seen.next.as_deref().unwrap_or("");
        say(
            Level::Info,
            "version",
            format!("version {v} promoted: it moves to it at its next reset"),
        );
    }
    if seen.version.is_some() && seen.version != b.version {
        let v = seen.version.as_deref().unwrap_or("");
        say(Level::Info, "version", format!("now runs version {v}"));
    }
}

impl Events {
    /// The events since the last call. A PC seen for the first time gives events only for
    /// what is wrong with it (after the first call, also that it joined); a PC that left
    /// the manifest is forgotten, with an event.
    pub fn changes(
        &mut self,
        rows: &[PcStatus],
        warn_percent: f64,
        dnsmasq: Option<bool>,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let mut now = HashMap::new();
        for r in rows {
            let (seen, fill) = seen(r, warn_percent);
            let before = self.pcs.get(&r.name);
            let mut say = |level, kind, text: String| {
                out.push(Event {
                    pc: Some(r.name.clone()),
                    level,
                    kind,
                    text: format!("{}: {text}", r.name),
                })
            };
            if before.is_none() && self.looked {
                say(Level::Info, "applied", "added to the manifest".to_string());
            }
            state_changes(before, &seen, &mut say);
            fill_changes(before, &seen, (fill, warn_percent, r.max_sectors), &mut say);
            now.insert(r.name.clone(), seen);
        }
        let mut gone: Vec<&String> = self.pcs.keys().filter(|n| !now.contains_key(*n)).collect();
        gone.sort();
        for name in gone {
            out.push(Event {
                pc: Some(name.clone()),
                level: Level::Info,
                kind: "removed",
                text: format!("{name}: removed from the manifest"),
            });
        }
        self.pcs = now;
        self.looked = true;
        out.extend(self.dnsmasq_change(dnsmasq));
        out
    }

    fn dnsmasq_change(&mut self, dnsmasq: Option<bool>) -> Option<Event> {
        let pxe = |level, text: &str| Event {
            pc: None,
            level,
            kind: "dnsmasq",
            text: text.to_string(),
        };
        let e = match (self.dnsmasq, dnsmasq) {
            (Some(true) | None, Some(false)) => Some(pxe(
                Level::Error,
                "PXE: dnsmasq is not running: PCs cannot PXE-boot (run cowctl apply)",
            )),
            (Some(false), Some(true)) => Some(pxe(Level::Info, "PXE: dnsmasq runs again")),
            _ => None,
        };
        self.dnsmasq = dnsmasq;
        e
    }
}

/// Writes the events to the log, one line each.
pub fn log(events: &[Event]) {
    for e in events {
        let pc = e.pc.as_deref().unwrap_or("");
        match (e.level, e.pc.is_some()) {
            (Level::Info, true) => tracing::info!(pc, "{}", e.text),
            (Level::Warn, true) => tracing::warn!(pc, "{}", e.text),
            (Level::Error, true) => tracing::error!(pc, "{}", e.text),
            (Level::Info, false) => tracing::info!("{}", e.text),
            (Level::Warn, false) => tracing::warn!("{}", e.text),
            (Level::Error, false) => tracing::error!("{}", e.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: PcState, used: u64, total: u64, max: Option<u64>) -> PcStatus {
        PcStatus {
            name: name.into(),
            image: "g".into(),
            image_version: None,
            next_version: None,
            export: String::new(),
            state,
            used_sectors: Some(used),
            total_sectors: Some(total),
            metadata_sectors: None,
            used_percent: Some(percent(used, total)),
            warn: false,
            initiators: Vec::new(),
            cow: format!("/cow/{name}.cow").into(),
            initial_sectors: total,
            max_sectors: max,
            resets: 0,
            last_reset: None,
            notes: Vec::new(),
            gateway: None,
        }
    }

    fn texts(e: &[Event]) -> Vec<(Option<&str>, Level, &str)> {
        e.iter()
            .map(|e| (e.pc.as_deref(), e.level, e.text.as_str()))
            .collect()
    }

    #[test]
    fn a_pc_crossing_the_warning_is_one_line_each_way_at_the_boundary() {
        let mut ev = Events::default();
        let a = PcState::Active;
        assert!(ev
            .changes(&[row("pc-1", a, 7499, 10000, None)], 75.0, None)
            .is_empty());
        let e = ev.changes(&[row("pc-1", a, 7500, 10000, None)], 75.0, None);
        assert_eq!(
            texts(&e),
            [(Some("pc-1"), Level::Warn, "pc-1: COW 75.0% full, past the warning at 75%: reset it or grow its COW before it fills")]
        );
        assert!(
            ev.changes(&[row("pc-1", a, 9000, 10000, None)], 75.0, None)
                .is_empty(),
            "said once"
        );
        let e = ev.changes(&[row("pc-1", a, 16, 10000, None)], 75.0, None);
        assert_eq!(
            texts(&e),
            [(
                Some("pc-1"),
                Level::Info,
                "pc-1: COW 0.2% full, below the warning at 75% again"
            )]
        );
    }

    #[test]
    fn overflow_invalid_and_the_auto_extend_maximum_are_said_once() {
        let mut ev = Events::default();
        let first = ev.changes(
            &[
                row("pc-1", PcState::Overflow, 100, 100, None),
                row("pc-2", PcState::Active, 10, 400, Some(400)),
                row("pc-3", PcState::Active, 10, 399, Some(400)),
                row("pc-4", PcState::NotApplied, 0, 400, None),
            ],
            90.0,
            None,
        );
        assert_eq!(
            texts(&first),
            [
                (Some("pc-1"), Level::Error, "pc-1: its COW overflowed: the PC's writes fail until it is reset"),
                (Some("pc-1"), Level::Warn, "pc-1: COW 100.0% full, past the warning at 90%: reset it or grow its COW before it fills"),
                (Some("pc-2"), Level::Warn, "pc-2: COW grown to its auto-extend maximum (200.0 KiB): it cannot grow any more; reset it or raise autoextend.max"),
            ],
            "a PC first seen healthy, or not applied, says nothing"
        );
        let e = ev.changes(
            &[
                row("pc-1", PcState::Active, 1, 100, None),
                row("pc-2", PcState::Invalid, 10, 400, Some(400)),
            ],
            90.0,
            None,
        );
        assert_eq!(
            texts(&e),
            [
                (Some("pc-1"), Level::Info, "pc-1: active again"),
                (
                    Some("pc-1"),
                    Level::Info,
                    "pc-1: COW 1.0% full, below the warning at 90% again"
                ),
                (
                    Some("pc-2"),
                    Level::Error,
                    "pc-2: its snapshot is invalid: the PC's disk fails its I/O; reset it"
                ),
                (Some("pc-3"), Level::Info, "pc-3: removed from the manifest"),
                (Some("pc-4"), Level::Info, "pc-4: removed from the manifest"),
            ]
        );
    }

    #[test]
    fn pcs_coming_and_going_and_versions_promoted() {
        let mut ev = Events::default();
        let a = PcState::Active;
        let first = [row("pc-1", PcState::NotApplied, 0, 100, None)];
        assert!(ev.changes(&first, 75.0, None).is_empty());
        let mut served = row("pc-1", a, 1, 100, None);
        let e = ev.changes(&[served.clone(), row("pc-2", a, 1, 100, None)], 75.0, None);
        assert_eq!(
            texts(&e),
            [
                (Some("pc-1"), Level::Info, "pc-1: applied: served (active)"),
                (Some("pc-2"), Level::Info, "pc-2: added to the manifest"),
            ]
        );
        assert_eq!((e[0].kind, e[1].kind), ("applied", "applied"));
        served.next_version = Some("8".into());
        let e = ev.changes(std::slice::from_ref(&served), 75.0, None);
        assert_eq!(
            texts(&e),
            [
                (
                    Some("pc-1"),
                    Level::Info,
                    "pc-1: version 8 promoted: it moves to it at its next reset"
                ),
                (Some("pc-2"), Level::Info, "pc-2: removed from the manifest"),
            ]
        );
        served.image_version = Some("8".into());
        served.next_version = None;
        served.resets = 1;
        let e = ev.changes(&[served], 75.0, None);
        assert_eq!(
            texts(&e),
            [
                (
                    Some("pc-1"),
                    Level::Info,
                    "pc-1: reset (its reset number 1)"
                ),
                (Some("pc-1"), Level::Info, "pc-1: now runs version 8")
            ]
        );
    }

    #[test]
    fn dnsmasq_stopping_and_coming_back() {
        let mut ev = Events::default();
        assert!(ev.changes(&[], 75.0, Some(true)).is_empty());
        let e = ev.changes(&[], 75.0, Some(false));
        assert_eq!(
            texts(&e),
            [(
                None,
                Level::Error,
                "PXE: dnsmasq is not running: PCs cannot PXE-boot (run cowctl apply)"
            )]
        );
        assert!(ev.changes(&[], 75.0, Some(false)).is_empty());
        let e = ev.changes(&[], 75.0, Some(true));
        assert_eq!(texts(&e), [(None, Level::Info, "PXE: dnsmasq runs again")]);
        assert!(
            ev.changes(&[], 75.0, None).is_empty(),
            "no pxe section: nothing to say"
        );
    }
}
