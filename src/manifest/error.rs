//! What is wrong with a manifest: each error (and warning) with its line and column, and
//! all of one manifest's errors printed as one report.

use std::fmt;
use std::path::PathBuf;

/// One problem in a manifest, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Something valid but risky in a manifest, with where it is: printed, never refused.
pub type ManifestWarning = ManifestError;

/// Every problem found in one manifest.
#[derive(Debug)]
pub struct ManifestErrors {
    pub path: PathBuf,
    pub errors: Vec<ManifestError>,
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [e] = self.errors.as_slice() {
            if e.line == 0 {
                return write!(
                    f,
                    "cannot read the manifest {}: {} (name one with -f or $COWCTL_MANIFEST)",
                    self.path.display(),
                    e.message
                );
            }
        }
        let n = self.errors.len();
        write!(
            f,
            "{} has {n} error{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            let field = if e.field.is_empty() {
                String::new()
            } else {
                format!("{}: ", e.field)
            };
            write!(
                f,
                "\n  {}:{}:{}: {field}{}",
                self.path.display(),
                e.line,
                e.column,
                e.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}
