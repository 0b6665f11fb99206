//! Auto-extend: when a PC's COW passes its manifest threshold, grow it by the step (never
//! past the maximum) while it is served, as LVM's snapshot autoextend does. `to_grow` decides,
//! `watch` polls a backend and applies it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::feed::Monitor;
use super::live_room::LiveRoom;
use crate::base::units::human;
use crate::manifest::Manifest;
use crate::room::status::{PcState, PcStatus};

/// How often the COWs are looked at. A PC must not write a whole step in this time.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    pub pc: String,
    pub from: u64,
    pub to: u64,
    pub max: u64,
    pub fill_percent: f64,
}

impl std::fmt::Display for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: COW {:.1}% full: grown from {} to {} (auto-extend, at most {})",
            self.pc,
            self.fill_percent,
            human(self.from),
            human(self.to),
            human(self.max)
        )
    }
}

/// The COWs to grow now: active, at or over their threshold, below their maximum.
pub fn to_grow(m: &Manifest, rows: &[PcStatus]) -> Vec<Growth> {
    rows.iter()
        .filter(|r| r.state == PcState::Active)
        .filter_map(|r| {
            let pc = m.pc(&r.name)?;
            let a = pc.autoextend?;
            let fill = r.used_percent?;
            let from = r.total_sectors? * 512;
            if fill < a.threshold {
                return None;
            }
            Some(Growth {
                pc: r.name.clone(),
                from,
                to: a.next_size(from, pc.chunk.bytes())?,
                max: a.max.bytes(),
                fill_percent: fill,
            })
        })
        .collect()
}

/// Grows what is due once; returns what was grown.
pub fn check(room: &dyn LiveRoom) -> Vec<Growth> {
    let m = room.manifest();
    if m.pcs.iter().all(|p| p.autoextend.is_none()) {
        return Vec::new();
    }
    let mut done = Vec::new();
    for g in to_grow(&m, &room.status()) {
        match room.grow(&g.pc, g.to) {
            Ok(()) => {
                tracing::info!(pc = %g.pc, "{g}");
                done.push(g);
            }
            Err(e) => {
                tracing::warn!(pc = %g.pc, "{}: cannot auto-extend its COW: {}", g.pc, crate::base::logtext::chain(&e))
            }
        }
    }
    done
}

/// How many `INTERVAL`s apart the room is looked at for the log's events (`events.rs`).
pub const EVENTS_EVERY: u32 = 5;

/// Checks every `INTERVAL`, for as long as the process runs; every `EVENTS_EVERY` checks, logs
/// what changed in the room; every `history::interval()`, samples each PC's fill.
pub fn watch(room: Arc<dyn LiveRoom>, monitor: Arc<Monitor>) {
    let mut events = super::events::Events::default();
    let sample_every = super::history::interval();
    let start = Instant::now();
    let (mut next_check, mut next_events, mut next_sample) = (start, start, start);
    // The feed's newest event at the last look at the room.
    let mut looked = 0;
    loop {
        let now = Instant::now();
        if now >= next_check {
            for g in check(room.as_ref()) {
                monitor.feed.keep(&growth_event(&g), None);
            }
            next_check = now + INTERVAL;
        }
        if now >= next_events {
            let m = room.manifest();
            let changes = events.changes(&room.status(), m.warn_percent, room.dnsmasq_up());
            monitor.feed.push(&changes, looked);
            looked = monitor.feed.newest();
            next_events = now + INTERVAL * EVENTS_EVERY;
        }
        if now >= next_sample {
            monitor.history.record(&room.status(), super::feed::now());
            next_sample = now + sample_every;
        }
        let wake = next_check.min(next_events).min(next_sample);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}

/// A growth as a feed event (it is already in the log).
fn growth_event(g: &Growth) -> super::events::Event {
    super::events::Event {
        pc: Some(g.pc.clone()),
        level: super::events::Level::Info,
        kind: "autoextend",
        text: g.to_string(),
    }
}
