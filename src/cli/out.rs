//! Standard output that a reader may leave: `cowctl --json status | head` closes the pipe
//! early, and println! would panic. Once stdout is gone, cowctl prints nothing more but
//! finishes what it is doing (an apply cut off half way would leave half a room), and a
//! `status --watch` ends.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static GONE: AtomicBool = AtomicBool::new(false);

/// Writes one piece of output; after the first failed write, nothing.
pub fn write(args: std::fmt::Arguments<'_>) {
    if GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("cowctl: cannot write to standard output: {e}");
        }
    }
}

/// Whether standard output's reader has gone (or it failed): nothing more reaches it.
pub fn gone() -> bool {
    GONE.load(Ordering::Relaxed)
}

/// println! through [`write`].
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// print! through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}
