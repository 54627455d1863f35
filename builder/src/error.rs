//! The builder library's error type.

use std::path::PathBuf;

use firstboot::source::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{tool} not found: run scripts/setup (or install it with apt-get)")]
    ToolMissing { tool: String },
    #[error("command failed: {cmd}\n{detail}")]
    Command { cmd: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("package(s) not found in the configured repositories: {packages} ({detail})")]
    MissingPackages { packages: String, detail: String },
    #[error("repository {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
}

pub type Result<T> = std::result::Result<T, BuildError>;

/// Attach a path to an io::Error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| BuildError::Io {
            path: path.into(),
            source,
        })
    }
}
