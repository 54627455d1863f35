//! TOML sources with located errors.
//!
//! Every configuration file habuild reads (profiles, cluster.toml) goes through
//! [`parse`], so a user always learns the file, line, column and key of a problem
//! and what was expected, whether serde rejected it (typo, wrong type, unknown key)
//! or a later semantic check did (see [`SourceFile::error_at`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One problem in a configuration file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key (`network.vip`), when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration file's text, kept so later checks can point at a key's line.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read file: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Deserialize the whole file; serde errors come back located.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str::<T>(&self.text).map_err(|e| self.serde_error(&e))
    }

    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(&self.text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let key = line.and_then(|l| self.key_on_line(l));
        ConfigError {
            path: self.path.clone(),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }
    }

    /// An error about the value at `key` (dotted path, e.g. `network.vip`).
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let pos = self.locate(key);
        ConfigError {
            path: self.path.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// 1-based (line, column) of the value of a dotted key, if present.
    pub fn locate(&self, key: &str) -> Option<(usize, usize)> {
        let doc = toml_edit::ImDocument::parse(self.text.as_str()).ok()?;
        let mut item: &toml_edit::Item = doc.as_item();
        for part in key.split('.') {
            // Array elements are located at their array.
            if part.parse::<usize>().is_err() {
                item = item.get(part)?;
            }
        }
        let span = item.span()?;
        Some(line_col(&self.text, span.start))
    }

    /// The dotted key written on a given line (`[table]` headers included).
    fn key_on_line(&self, line: usize) -> Option<String> {
        let mut table = String::new();
        for (i, raw) in self.text.lines().enumerate() {
            let l = raw.trim();
            if l.starts_with('[') {
                table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            }
            if i + 1 == line {
                if l.starts_with('[') {
                    return Some(table);
                }
                let k = l.split('=').next()?.trim();
                if k.is_empty() || k.starts_with('#') {
                    return None;
                }
                return Some(if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                });
            }
        }
        None
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |p| before.len() - p - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        net: Net,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Net {
        port: u16,
    }

    #[test]
    fn unknown_key_is_located() {
        let src = SourceFile::from_text("x.toml", "name = \"a\"\n[net]\nport = 1\nprot = 2\n");
        let e = src.parse::<Doc>().unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("net.prot"));
        assert!(e.message.contains("unknown field `prot`"), "{e}");
        assert!(e.to_string().starts_with("x.toml:4:"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let src = SourceFile::from_text("x.toml", "name = \"a\"\n[net]\nport = \"eighty\"\n");
        let e = src.parse::<Doc>().unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("net.port"));
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn semantic_error_points_at_key() {
        let src = SourceFile::from_text("x.toml", "name = \"a\"\n\n[net]\nport = 0\n");
        let e = src.error_at("net.port", "must be non-zero");
        assert_eq!((e.line, e.column), (Some(4), Some(8)));
        assert_eq!(
            e.to_string(),
            "x.toml:4:8: key `net.port`: must be non-zero"
        );
    }
}
