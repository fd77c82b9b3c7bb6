use std::path::PathBuf;

use crate::diagnostic::Diagnostics;

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A definition did not load or did not validate; every problem found is inside.
    #[error("{0}")]
    Invalid(Diagnostics),
}
