//! What a reset did, on either backend, and where a reset puts the old COW meanwhile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Reset {
    pub pc: String,
    /// True when the PC was exported (and its I/O paused) during the reset.
    pub live: bool,
    /// From stopping the PC's I/O to resuming it (the whole reset when not live).
    pub seconds: f64,
    /// Including freeing the old COW's space after the PC was back.
    pub total_seconds: f64,
    #[serde(skip)]
    pub elapsed: Duration,
}

impl Reset {
    /// A reset of an exported PC whose I/O was paused for `paused` of the time since `start`.
    pub fn live(pc: &str, paused: Duration, start: Instant) -> Reset {
        Reset {
            pc: pc.to_string(),
            live: true,
            seconds: paused.as_secs_f64(),
            total_seconds: start.elapsed().as_secs_f64(),
            elapsed: paused,
        }
    }

    /// A reset of a PC nobody was served: only its COW file, in `took`.
    pub fn offline(pc: &str, took: Duration) -> Reset {
        Reset {
            pc: pc.to_string(),
            live: false,
            seconds: took.as_secs_f64(),
            total_seconds: took.as_secs_f64(),
            elapsed: took,
        }
    }
}

/// Where a live reset puts the old COW until its loop is detached.
pub fn discard_path(cow: &Path) -> PathBuf {
    let mut p = cow.as_os_str().to_owned();
    p.push(".discard");
    PathBuf::from(p)
}
