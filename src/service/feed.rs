//! The room's recent events for the dashboard: resets (and who asked), auto-extend growth,
//! the changes `events.rs` sees, in a bounded list (`KEEP`). Each event is also logged, one
//! line each. `GET /api/events` reads the list; `/api/events/stream` follows it by `id`.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::events::{self, Level};

/// Events kept.
pub const KEEP: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Counts up from 1 for the service's lifetime.
    pub id: u64,
    /// Unix seconds.
    pub time: u64,
    /// reset, autoextend, state, warning, maximum, applied, removed, version, dnsmasq.
    pub kind: String,
    pub level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pc: Option<String>,
    /// For resets: `admin` (the bearer token), `pc` (the PC itself), `boot` (reset on boot),
    /// `cowctl` (seen by the watcher: `cowctl reset` or another process).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub by: Option<String>,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct Feed {
    inner: Mutex<(u64, VecDeque<Entry>)>,
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Feed {
    /// Keeps an event that is already in the log.
    pub fn keep(&self, ev: &events::Event, by: Option<&'static str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0 += 1;
        let entry = Entry {
            id: inner.0,
            time: now(),
            kind: ev.kind.to_string(),
            level: level_name(ev.level).to_string(),
            pc: ev.pc.clone(),
            by: by.map(str::to_string),
            text: ev.text.clone(),
        };
        if inner.1.len() == KEEP {
            inner.1.pop_front();
        }
        inner.1.push_back(entry);
    }

    /// Logs the events and keeps them. Of the resets the watcher saw, as many as the service
    /// announced itself since event `since` (HTTP resets, with who asked) are dropped; the
    /// others were done by `cowctl reset` or another process.
    pub fn push(&self, evs: &[events::Event], since: u64) {
        let mut announced = std::collections::HashMap::new();
        for e in self.after(since).into_iter().filter(|e| e.kind == "reset") {
            *announced.entry(e.pc).or_insert(0usize) += 1;
        }
        for e in evs {
            if e.kind == "reset" {
                let left = announced.entry(e.pc.clone()).or_insert(0);
                if *left > 0 {
                    *left -= 1;
                    continue;
                }
            }
            events::log(std::slice::from_ref(e));
            let by = (e.kind == "reset").then_some("cowctl");
            self.keep(e, by);
        }
    }

    /// A PC was reset; `by` says who asked (admin, pc, boot).
    pub fn reset(&self, pc: &str, by: &'static str, text: String) {
        self.reset_like("reset", pc, by, text)
    }

    /// Something done to a PC at someone's request (`reset`, `wake`); `by` says who asked.
    pub fn reset_like(&self, kind: &'static str, pc: &str, by: &'static str, text: String) {
        let ev = events::Event {
            pc: Some(pc.to_string()),
            level: Level::Info,
            kind,
            text,
        };
        events::log(std::slice::from_ref(&ev));
        self.keep(&ev, Some(by));
    }

    /// The newest `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = inner.1.len().saturating_sub(n);
        inner.1.iter().skip(skip).cloned().collect()
    }

    /// The events after `id`, oldest first.
    pub fn after(&self, id: u64) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.1.iter().filter(|e| e.id > id).cloned().collect()
    }

    /// The newest event's id (0: none yet).
    pub fn newest(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Everything kept, for the next process of a planned restart.
    fn export(&self) -> SavedFeed {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        SavedFeed {
            newest: inner.0,
            entries: inner.1.iter().cloned().collect(),
        }
    }

    /// Takes what the previous process kept (its newest KEEP), ids going on from its own.
    fn import(&self, saved: SavedFeed) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = saved.entries.len().saturating_sub(KEEP);
        inner.1 = saved.entries.into_iter().skip(skip).collect();
        inner.0 = saved.newest.max(inner.1.back().map_or(0, |e| e.id));
    }
}

/// What the watcher and the web share: the fill histories and the event feed.
#[derive(Debug, Default)]
pub struct Monitor {
    pub history: super::history::Histories,
    pub feed: Feed,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedFeed {
    newest: u64,
    entries: Vec<Entry>,
}

/// A Monitor as a planned restart hands it to the next process, so the dashboard keeps its
/// history and events.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedMonitor {
    history: super::history::SavedHistories,
    feed: SavedFeed,
}

impl Monitor {
    pub fn export(&self) -> SavedMonitor {
        SavedMonitor {
            history: self.history.export(),
            feed: self.feed.export(),
        }
    }

    pub fn import(&self, saved: SavedMonitor) {
        self.history.import(saved.history);
        self.feed.import(saved.feed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_keeps_the_last_500_and_follows_by_id() {
        let f = Feed::default();
        for i in 0..600 {
            f.reset("pc-1", "admin", format!("reset {i}"));
        }
        let all = f.last(1000);
        assert_eq!(all.len(), KEEP);
        assert_eq!((all[0].id, all[KEEP - 1].id), (101, 600));
        assert_eq!(f.last(2)[1].text, "reset 599");
        assert_eq!(f.after(598).len(), 2);
        assert_eq!(f.newest(), 600);
        let v = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(v["by"], "admin");
        assert_eq!(v["kind"], "reset");
        assert_eq!(v["pc"], "pc-1");
        // The watcher's sighting of the same reset is not said twice; another one is.
        let seen = |pc: &str| events::Event {
            pc: Some(pc.into()),
            level: Level::Info,
            kind: "reset",
            text: format!("{pc}: reset"),
        };
        f.push(&[seen("pc-1"), seen("pc-1"), seen("pc-2")], 599);
        let new = f.after(600);
        let got: Vec<_> = new
            .iter()
            .map(|e| (e.pc.as_deref(), e.by.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Some("pc-1"), Some("cowctl")),
                (Some("pc-2"), Some("cowctl"))
            ]
        );
    }
}
