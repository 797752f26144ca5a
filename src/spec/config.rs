//! Typed reads of `config.json` fields with errors that name the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// A config object with the path it came from, for error messages.
pub struct Config<'a> {
    path: PathBuf,
    value: &'a Value,
}

impl<'a> Config<'a> {
    /// Wraps a parsed config.
    pub fn new(path: &Path, value: &'a Value) -> Self {
        Config { path: path.to_path_buf(), value }
    }

    fn missing(&self, field: &str, what: &str) -> Error {
        Error::config(&self.path, format!("field {field:?} is missing or not {what}"))
    }

    /// The raw value of a field (`null` counts as absent).
    pub fn raw(&self, field: &str) -> Option<&'a Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    /// A required non-negative integer.
    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| self.missing(field, "a non-negative integer"))
    }

    /// An optional non-negative integer (absent or null → None; wrong type → error).
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.raw(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.missing(field, "a non-negative integer")),
        }
    }

    /// The first present field among `fields`, as an integer.
    pub fn usize_any(&self, fields: &[&str]) -> Result<usize> {
        for f in fields {
            if let Some(v) = self.opt_usize(f)? {
                return Ok(v);
            }
        }
        Err(self.missing(&fields.join("\" or \""), "a non-negative integer"))
    }

    /// An optional number.
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.raw(field) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.missing(field, "a number")),
        }
    }

    /// A boolean with a default when absent.
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.raw(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.missing(field, "a boolean")),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.raw(field) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.missing(field, "a string")),
        }
    }

    /// A required string.
    pub fn str(&self, field: &str) -> Result<&'a str> {
        self.opt_str(field)?.ok_or_else(|| self.missing(field, "a string"))
    }

    /// An optional list of non-negative integers.
    pub fn usize_list(&self, field: &str) -> Result<Vec<usize>> {
        match self.raw(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.missing(field, "a list of non-negative integers")),
            Some(_) => Err(self.missing(field, "a list of non-negative integers")),
        }
    }

    /// An error about this config.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::config(&self.path, reason)
    }
}
