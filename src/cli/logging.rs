//! The service's log on stderr: text by default, JSON lines with `COWCTL_LOG_FORMAT=json`
//! (timestamp, level, target, the event's fields with its message, and the spans' fields
//! such as `pc`), for journald and log tools. `COWCTL_LOG` filters as `RUST_LOG` does.

use anyhow::{bail, Result};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// `COWCTL_LOG_FORMAT`'s value: unset or empty is text.
    pub fn parse(value: Option<&str>) -> Result<Format> {
        match value.map(str::trim) {
            None | Some("" | "text") => Ok(Format::Text),
            Some("json") => Ok(Format::Json),
            Some(other) => bail!(
                "COWCTL_LOG_FORMAT={other:?} is not a log format: use text (the default) or json"
            ),
        }
    }

    pub fn from_env() -> Result<Format> {
        let value = std::env::var_os("COWCTL_LOG_FORMAT");
        Format::parse(value.as_ref().map(|v| v.to_string_lossy()).as_deref())
    }
}

/// Installs the log for this process (once; later calls change nothing).
pub fn init() -> Result<()> {
    let format = Format::from_env()?;
    let filter =
        || EnvFilter::try_from_env("COWCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter())
            .try_init(),
        Format::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter())
            .try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_unless_json_is_asked_for() {
        for v in [None, Some(""), Some("text"), Some(" text ")] {
            assert_eq!(Format::parse(v).unwrap(), Format::Text, "{v:?}");
        }
        assert_eq!(Format::parse(Some("json")).unwrap(), Format::Json);
        let e = Format::parse(Some("x\nml")).unwrap_err().to_string();
        assert!(e.contains("use text (the default) or json"), "{e}");
        assert!(!e.contains('\n'), "the value is escaped: {e}");
    }
}
