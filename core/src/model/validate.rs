//! Validation errors that say what was wrong and where: a field path, and line/column in JSON text.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where: `spec.dependencies[2]`, `when.schedule`, `cluster.retention_days`.
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            if self.path.is_empty() {
                "(document)"
            } else {
                &self.path
            }
        )?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The field a stale replacement is refused at: the `updated_at` the sender read.
const STALE_PATH: &str = "updated_at";

/// Input that was rejected, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub message: String,
    pub errors: Vec<FieldError>,
}

impl Invalid {
    pub fn new(message: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            message: message.into(),
            errors,
        }
    }

    /// The refusal of a replacement made from an outdated copy (see [`Invalid::is_stale`]).
    pub fn stale(message: impl Into<String>) -> Self {
        Self::field(STALE_PATH, message)
    }

    /// Whether this refuses a replacement because the thing changed since the sender read it
    /// (an answer about timing, not about the input: the API says `409`).
    pub fn is_stale(&self) -> bool {
        matches!(self.errors.as_slice(), [e] if e.path == STALE_PATH)
    }

    pub fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(path, message);
        Self {
            message: error.message.clone(),
            errors: vec![error],
        }
    }
}

/// Parses JSON text into `T`. An error names the field path below `prefix` and the line and
/// column in `text`.
pub fn parse_json<T: DeserializeOwned>(text: &str, prefix: &str) -> Result<T, Invalid> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut de);
    match parsed {
        Ok(value) => match de.end() {
            Ok(()) => Ok(value),
            Err(e) => Err(invalid_json(prefix, String::new(), &e)),
        },
        Err(err) => Err(invalid_json(prefix, err.path().to_string(), err.inner())),
    }
}

fn invalid_json(prefix: &str, sub: String, inner: &serde_json::Error) -> Invalid {
    // serde_path_to_error writes `?` for a position it could not name (inside a syntax error).
    let sub = sub.trim_end_matches("?").trim_end_matches('.').to_owned();
    let path = match (prefix.is_empty(), sub.as_str()) {
        (_, "." | "") => prefix.to_owned(),
        (true, sub) => sub.to_owned(),
        (false, sub) if sub.starts_with('[') => format!("{prefix}{sub}"),
        (false, sub) => format!("{prefix}.{sub}"),
    };
    let message = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("malformed JSON: {}", strip_position(&inner.to_string()))
        }
        _ => strip_position(&inner.to_string()),
    };
    Invalid {
        message: "invalid JSON".into(),
        errors: vec![FieldError {
            path,
            message,
            line: Some(inner.line()).filter(|l| *l > 0),
            column: Some(inner.column()).filter(|_| inner.line() > 0),
        }],
    }
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        items: Vec<u32>,
    }

    #[test]
    fn type_errors_have_path_line_and_column() {
        let err = parse_json::<Doc>("{\n \"items\": [1,\n  \"two\"]}", "box").expect_err("bad");
        let e = &err.errors[0];
        assert_eq!(e.path, "box.items[1]");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("expected u32"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_say_malformed() {
        let err = parse_json::<Doc>("{\"items\": [1,]}", "").expect_err("bad");
        assert!(err.errors[0].message.starts_with("malformed JSON"));
        assert_eq!(err.errors[0].line, Some(1));
        let err = parse_json::<Doc>("{\"items\": []} trailing", "").expect_err("bad");
        assert!(err.errors[0].message.contains("trailing"), "{:?}", err);
    }
}
