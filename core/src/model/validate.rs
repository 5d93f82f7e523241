//! Validation errors that say what was wrong and where: a field path, and line/column in JSON text.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Parses JSON text into `T`. A syntax error is reported alone, with its line and column. Values
/// of the wrong kind are reported all at once, each at its field path below `prefix` with its
/// line and column, in plain words (`"priority" must be a whole number, not the text "high"`).
pub fn parse_json<T: DeserializeOwned>(text: &str, prefix: &str) -> Result<T, Invalid> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut de);
    let first = match parsed {
        Ok(value) => match de.end() {
            Ok(()) => return Ok(value),
            Err(e) => return Err(invalid_json(prefix, String::new(), &e)),
        },
        Err(err) => err,
    };
    let first = invalid_json(prefix, first.path().to_string(), first.inner());
    let syntax = first.message == SYNTAX;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(fields)) if !syntax => {
            Err(every_field_error::<T>(text, prefix, fields, first))
        }
        _ => Err(first),
    }
}

const SYNTAX: &str = "invalid JSON";
const KINDS: &str = "some values are not of the right kind";

/// Each top-level field of an object checked on its own, so that one wrong value does not hide
/// the next. A field alone may lack what its neighbours give (a required field is "missing"
/// then); only the whole document says that, in `first`.
fn every_field_error<T: DeserializeOwned>(
    text: &str,
    prefix: &str,
    fields: serde_json::Map<String, serde_json::Value>,
    first: Invalid,
) -> Invalid {
    let mut errors = first.errors.clone();
    for (key, value) in fields {
        let alone = serde_json::Value::Object([(key.clone(), value)].into_iter().collect());
        let Err(err) = serde_path_to_error::deserialize::<_, T>(alone) else {
            continue;
        };
        if err.inner().to_string().starts_with("missing field") {
            continue;
        }
        let mut found = invalid_json(prefix, err.path().to_string(), err.inner()).errors;
        for e in &mut found {
            if errors.iter().any(|known| known.path == e.path) {
                continue;
            }
            // The position of the field's name in the text: where the reader should look.
            (e.line, e.column) = position_of_key(text, &key);
            errors.push(e.clone());
        }
    }
    errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
    Invalid {
        message: first.message,
        errors,
    }
}

/// The line and column of `"key":` in `text`, if it is there.
fn position_of_key(text: &str, key: &str) -> (Option<usize>, Option<usize>) {
    let quoted = serde_json::to_string(key).unwrap_or_default();
    let Some(at) = text
        .match_indices(&quoted)
        .map(|(i, _)| i)
        .find(|&i| text[i + quoted.len()..].trim_start().starts_with(':'))
    else {
        return (None, None);
    };
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (Some(line), Some(column))
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
    let (heading, message) = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => (
            SYNTAX,
            format!("malformed JSON: {}", strip_position(&inner.to_string())),
        ),
        _ => (
            KINDS,
            plain_words(&sub, &strip_position(&inner.to_string())),
        ),
    };
    Invalid {
        message: heading.into(),
        errors: vec![FieldError {
            path,
            message,
            line: Some(inner.line()).filter(|l| *l > 0),
            column: Some(inner.column()).filter(|_| inner.line() > 0),
        }],
    }
}

/// serde's message about a value, said for people: `invalid type: string "high", expected i32`
/// at `priority` becomes `"priority" must be a whole number, not the text "high"`.
fn plain_words(path: &str, message: &str) -> String {
    let field = path.rsplit('.').next().unwrap_or(path);
    let name = match field {
        "" => "the document".to_owned(),
        f => format!("\"{f}\""),
    };
    let got_expected = |rest: &str| {
        rest.split_once(", expected ")
            .map(|(got, expected)| (got.to_owned(), expected.to_owned()))
    };
    if let Some((got, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(got_expected)
    {
        return format!("{name} must be {}, not {}", kind(&expected), value(&got));
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return match rest.split_once(", expected ") {
            Some((unknown, known)) => {
                format!(
                    "{unknown} is not a field here; the fields are {}",
                    known.trim_start_matches("one of ")
                )
            }
            None => format!(
                "{} is not a field here",
                rest.split(',').next().unwrap_or(rest)
            ),
        };
    }
    if let Some(missing) = message.strip_prefix("missing field ") {
        return format!("{missing} is missing");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        if let Some((got, known)) = rest.split_once(", expected ") {
            return format!(
                "{name} must be {}, not {got}",
                known.trim_start_matches("one of ")
            );
        }
    }
    message.to_owned()
}

/// What serde expected, in plain words.
fn kind(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
        "f32" | "f64" => "a number".into(),
        "a string" | "a borrowed string" | "a character" => "text in quotes".into(),
        "a sequence" | "a tuple" => "a list in [ ]".into(),
        "a map" => "an object in { }".into(),
        "a boolean" => "true or false".into(),
        e if e.starts_with("struct ") => "an object in { }".into(),
        e => e.to_owned(),
    }
}

/// The value serde was given, in plain words: `string "high"` → `the text "high"`.
fn value(got: &str) -> String {
    let unquote = |s: &str| s.trim_matches('`').to_owned();
    if let Some(text) = got.strip_prefix("string ") {
        return format!("the text {text}");
    }
    for (prefix, noun) in [
        ("integer ", "the number "),
        ("floating point ", "the number "),
        ("boolean ", ""),
    ] {
        if let Some(v) = got.strip_prefix(prefix) {
            return format!("{noun}{}", unquote(v));
        }
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "an object".into(),
        "null" | "unit value" => "null".into(),
        other => other.to_owned(),
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
        assert_eq!(
            e.message,
            "\"items[1]\" must be a whole number, 0 or more, not the text \"two\""
        );
        assert_eq!(err.message, KINDS);
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Spec {
        #[serde(default)]
        priority: i32,
        #[serde(default)]
        command: Vec<String>,
        #[serde(default)]
        shell: Option<String>,
        name: String,
    }

    #[test]
    fn every_wrong_value_is_reported_at_once_in_plain_words() {
        let text = "{\n  \"name\": \"x\",\n  \"priority\": \"high\",\n  \"command\": \"ls\",\n  \"colour\": 1,\n  \"shell\": 5\n}";
        let err = parse_json::<Spec>(text, "spec").expect_err("bad");
        let found: Vec<(&str, &str, Option<usize>)> = err
            .errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str(), e.line))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "spec.priority",
                    "\"priority\" must be a whole number, not the text \"high\"",
                    Some(3)
                ),
                (
                    "spec.command",
                    "\"command\" must be a list in [ ], not the text \"ls\"",
                    Some(4)
                ),
                (
                    "spec.colour",
                    "`colour` is not a field here; the fields are `priority`, `command`, `shell`, `name`",
                    Some(5)
                ),
                (
                    "spec.shell",
                    "\"shell\" must be text in quotes, not the number 5",
                    Some(6)
                ),
            ],
            "{err:?}"
        );
        // A required field is missing only in the whole document, and said so.
        let err = parse_json::<Spec>("{\"priority\": 1}", "").expect_err("no name");
        assert_eq!(err.errors.len(), 1, "{err:?}");
        assert_eq!(err.errors[0].message, "`name` is missing");
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
