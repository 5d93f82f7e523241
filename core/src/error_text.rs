//! Errors as people read them: the error and its causes, in one line.

/// An error with its causes, each once: "connecting to MySQL u@h:3306/db: Access denied …".
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    // The driver nests its I/O errors: "Input/output error: Input/output error: refused".
    let mut parts: Vec<&str> = text.split(": ").collect();
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_text_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("connecting to MySQL u@h:1/d")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("Connection refused"));
        assert_eq!(
            error_text(&e),
            "connecting to MySQL u@h:1/d: Connection refused"
        );
    }
}
