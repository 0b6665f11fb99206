//! Each PC's fill over the last day: a ring of `CAPACITY` samples (one a minute: 24 h) kept
//! in memory, for the dashboard's plots (`GET /api/history`). Bounded: a PC costs
//! `BYTES_PER_PC` however long the service runs; a PC that leaves the manifest is dropped.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::room::status::PcStatus;

/// Samples kept per PC: 24 h at one a minute.
pub const CAPACITY: usize = 1440;

/// How often the watcher samples; `COWCTL_HISTORY_INTERVAL_MS` (a test knob, read once)
/// makes it shorter so tests see the history grow.
pub fn interval() -> Duration {
    std::env::var("COWCTL_HISTORY_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(60))
}

/// One look at a PC's COW: when (Unix seconds), bytes in use, bytes it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub t: u64,
    pub used: u64,
    pub total: u64,
}

/// The memory a PC's ring takes: its samples, allocated once.
pub const BYTES_PER_PC: usize = CAPACITY * std::mem::size_of::<Sample>();

/// A fixed ring: the newest `CAPACITY` samples, oldest first.
#[derive(Debug)]
pub struct History {
    samples: Vec<Sample>,
    /// Where the next sample goes once the ring is full.
    next: usize,
}

impl Default for History {
    fn default() -> Self {
        History {
            samples: Vec::with_capacity(CAPACITY),
            next: 0,
        }
    }
}

impl History {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() < CAPACITY {
            self.samples.push(s);
        } else {
            self.samples[self.next] = s;
            self.next = (self.next + 1) % CAPACITY;
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        let (new, old) = self.samples.split_at(self.next);
        old.iter().chain(new)
    }

    /// The heap this ring holds.
    pub fn heap_bytes(&self) -> usize {
        self.samples.capacity() * std::mem::size_of::<Sample>()
    }
}

/// Every PC's samples as `[t, used, total]`, oldest first (a planned restart's handover).
pub type SavedHistories = BTreeMap<String, Vec<[u64; 3]>>;

/// Every PC's history.
#[derive(Debug, Default)]
pub struct Histories {
    pcs: Mutex<BTreeMap<String, History>>,
}

impl Histories {
    /// Samples every row with a fill at time `t`; forgets PCs no longer in `rows`.
    pub fn record(&self, rows: &[PcStatus], t: u64) {
        let mut pcs = self.pcs.lock().unwrap_or_else(|p| p.into_inner());
        pcs.retain(|name, _| rows.iter().any(|r| &r.name == name));
        for r in rows {
            let (Some(used), Some(total)) = (r.used_sectors, r.total_sectors) else {
                continue;
            };
            pcs.entry(r.name.clone()).or_default().push(Sample {
                t,
                used: used * 512,
                total: total * 512,
            });
        }
    }

    pub fn export(&self) -> SavedHistories {
        let pcs = self.pcs.lock().unwrap_or_else(|p| p.into_inner());
        pcs.iter()
            .map(|(name, h)| {
                let rows = h.samples().map(|s| [s.t, s.used, s.total]).collect();
                (name.clone(), rows)
            })
            .collect()
    }

    /// Takes the previous process's samples (each ring keeps its newest CAPACITY).
    pub fn import(&self, saved: SavedHistories) {
        let mut pcs = self.pcs.lock().unwrap_or_else(|p| p.into_inner());
        for (name, rows) in saved {
            let h = pcs.entry(name).or_default();
            for [t, used, total] in rows {
                h.push(Sample { t, used, total });
            }
        }
    }

    /// `{pc: [[t, used, total], …]}`, oldest first; one PC's only when `pc` names it; only
    /// samples after `since` (Unix seconds), so a page that has the rest fetches little.
    pub fn json(&self, pc: Option<&str>, since: u64) -> serde_json::Value {
        let pcs = self.pcs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = serde_json::Map::new();
        for (name, h) in pcs.iter().filter(|(n, _)| pc.is_none_or(|p| p == *n)) {
            let rows: Vec<[u64; 3]> = h
                .samples()
                .filter(|s| s.t > since)
                .map(|s| [s.t, s.used, s.total])
                .collect();
            out.insert(name.clone(), serde_json::json!(rows));
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pc_costs_34560_bytes_however_many_samples_it_sees() {
        assert_eq!(std::mem::size_of::<Sample>(), 24);
        assert_eq!(BYTES_PER_PC, 34_560, "1440 samples of 24 bytes");
        let mut h = History::default();
        assert_eq!(h.heap_bytes(), BYTES_PER_PC);
        for t in 0..5000 {
            h.push(Sample {
                t,
                used: t * 2,
                total: 100,
            });
        }
        assert_eq!(h.heap_bytes(), BYTES_PER_PC, "never grows");
        let ts: Vec<u64> = h.samples().map(|s| s.t).collect();
        assert_eq!(ts.len(), CAPACITY);
        assert_eq!(
            (ts[0], ts[CAPACITY - 1]),
            (5000 - 1440, 4999),
            "oldest first"
        );
        assert!(ts.windows(2).all(|w| w[0] + 1 == w[1]));
    }
}
