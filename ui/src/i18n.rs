//! German and English. English is the source text: templates, views and `app.js` write English,
//! and a page in German looks each text up in one catalog, `static/de.json`, which the browser
//! gets too (`/static/de.js`), so server and script translate alike.
//!
//! The catalog is a list of `[English, German]` pairs. A key with `{}` is a pattern for text made
//! at run time: `"{} min ago"` reads `"5 min ago"` and writes `"vor 5 Min."`, the parts in the
//! same order. The language comes from the `taskmesh_lang` cookie (the switch in the header sets
//! it), else from `Accept-Language`, else English.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::OnceLock;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

/// The German catalog, `[English, German]` pairs.
pub const DE_JSON: &str = include_str!("../static/de.json");

/// The cookie the language switch sets.
pub const COOKIE: &str = "taskmesh_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    De,
}

impl Lang {
    /// The language's tag, for `<html lang>` and the cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        let primary = code.split(['-', '_']).next()?.trim();
        if primary.eq_ignore_ascii_case("de") {
            Some(Lang::De)
        } else if primary.eq_ignore_ascii_case("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The cookie's choice, else the most wanted language of `Accept-Language` we have.
    pub fn of_request(headers: &HeaderMap) -> Self {
        Self::from_cookie(headers)
            .or_else(|| Self::from_accept_language(headers))
            .unwrap_or_default()
    }

    fn from_cookie(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .and_then(|(_, value)| Self::from_code(value))
    }

    /// `de-DE,de;q=0.9,en;q=0.8`: the highest `q` wins, the earlier of equals.
    fn from_accept_language(headers: &HeaderMap) -> Option<Self> {
        let value = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)?
            .to_str()
            .ok()?;
        let mut best: Option<(f32, Self)> = None;
        for item in value.split(',') {
            let mut parts = item.split(';');
            let Some(lang) = parts.next().and_then(Self::from_code) else {
                continue;
            };
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, lang));
            }
        }
        best.map(|(_, lang)| lang)
    }

    /// A literal text of a template or view in this language; English when the catalog lacks it
    /// (a unit test keeps it complete).
    pub fn t(self, english: &'static str) -> &'static str {
        match self {
            Lang::En => english,
            Lang::De => catalog().exact.get(english).copied().unwrap_or(english),
        }
    }

    /// Text made at run time ("5 min ago", "exit 2"): the exact entry, else the first pattern
    /// that reads it, with its parts translated in turn (`"{} must be {}, not {}"` holds
    /// "a whole number"), else the text as it is.
    pub fn tr<'a>(self, text: &'a str) -> Cow<'a, str> {
        match self {
            Lang::En => Cow::Borrowed(text),
            Lang::De => translate(catalog(), text, 3),
        }
    }
}

fn translate<'a>(catalog: &'static Catalog, text: &'a str, depth: u8) -> Cow<'a, str> {
    if let Some(german) = catalog.exact.get(text) {
        return Cow::Borrowed(german);
    }
    if depth == 0 {
        return Cow::Borrowed(text);
    }
    catalog
        .patterns
        .iter()
        .find_map(|(english, german)| {
            let parts = read_pattern(english, text)?;
            let mut out = String::with_capacity(german.len() + text.len());
            let mut pieces = german.split("{}");
            out.push_str(pieces.next().unwrap_or_default());
            for (piece, part) in pieces.zip(parts) {
                out.push_str(&translate(catalog, part, depth - 1));
                out.push_str(piece);
            }
            Some(out)
        })
        .map_or(Cow::Borrowed(text), Cow::Owned)
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Lang::of_request(&parts.headers))
    }
}

struct Catalog {
    exact: HashMap<&'static str, &'static str>,
    /// Most literal text first, so that the most specific pattern wins.
    patterns: Vec<(&'static str, &'static str)>,
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        static PAIRS: OnceLock<Vec<(String, String)>> = OnceLock::new();
        let pairs = PAIRS.get_or_init(|| {
            // A broken catalog is a build defect; the unit tests parse it, so this cannot
            // reach a user. Still, a page in English beats no page.
            serde_json::from_str(DE_JSON).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the German catalog does not parse; pages stay English");
                Vec::new()
            })
        });
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        for (english, german) in pairs {
            if english.contains("{}") {
                patterns.push((english.as_str(), german.as_str()));
            } else {
                exact.insert(english.as_str(), german.as_str());
            }
        }
        patterns.sort_by_key(|(english, _)| std::cmp::Reverse(english.chars().count()));
        Catalog { exact, patterns }
    })
}

/// The parts of `text` where the pattern `english` has `{}`, or `None` when it does not fit.
fn read_pattern<'a>(english: &str, text: &'a str) -> Option<Vec<&'a str>> {
    let literals: Vec<&str> = english.split("{}").collect();
    let (first, rest) = literals.split_first()?;
    let (last, middle) = rest.split_last()?;
    let mut remaining = text.strip_prefix(first)?.strip_suffix(last)?;
    let mut parts = Vec::with_capacity(rest.len());
    for literal in middle {
        let at = remaining.find(literal).filter(|&at| at > 0)?;
        parts.push(&remaining[..at]);
        remaining = &remaining[at + literal.len()..];
    }
    if remaining.is_empty() {
        return None;
    }
    parts.push(remaining);
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<(String, String)> {
        serde_json::from_str(DE_JSON).expect("static/de.json is a list of [English, German] pairs")
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
        h
    }

    #[test]
    fn the_language_comes_from_the_cookie_then_accept_language() {
        let cases = [
            ("accept-language", "de-DE,de;q=0.9,en;q=0.8", Lang::De),
            ("accept-language", "en-US,en;q=0.9,de;q=0.8", Lang::En),
            ("accept-language", "fr-FR,de;q=0.5,en;q=0.7", Lang::En),
            ("accept-language", "fr-FR,de;q=0.5", Lang::De),
            ("accept-language", "fr, es", Lang::En),
            ("accept-language", "de;q=0", Lang::En),
            ("cookie", "a=1; taskmesh_lang=de", Lang::De),
            ("cookie", "taskmesh_lang=xx", Lang::En),
        ];
        for (name, value, lang) in cases {
            assert_eq!(
                Lang::of_request(&headers(name, value)),
                lang,
                "{name}: {value}"
            );
        }
        let mut both = headers("accept-language", "de");
        both.insert("cookie", "taskmesh_lang=en".parse().expect("value"));
        assert_eq!(
            Lang::of_request(&both),
            Lang::En,
            "the switch beats the browser"
        );
    }

    #[test]
    fn patterns_carry_their_parts_over() {
        assert_eq!(
            read_pattern("{} of {} free", "6 of 8 free"),
            Some(vec!["6", "8"])
        );
        assert_eq!(read_pattern("{} min ago", " min ago"), None);
        assert_eq!(read_pattern("exit {}", "exited"), None);
        assert_eq!(Lang::De.tr("3 min ago"), "vor 3 Min.");
        assert_eq!(Lang::De.tr("6 of 8 free"), "6 von 8 frei");
        assert_eq!(Lang::De.tr("no such text"), "no such text");
        assert_eq!(Lang::En.tr("3 min ago"), "3 min ago");
        assert_eq!(Lang::De.t("Tasks"), "Aufgaben");
        // The parts are translated too: a validation message reads in one language.
        assert_eq!(
            Lang::De.tr("\"priority\" must be a whole number, not the text \"high\""),
            "\"priority\" muss eine ganze Zahl sein, nicht der Text \"high\""
        );
    }

    #[test]
    fn the_catalog_has_each_key_once_and_keeps_placeholders_and_markup() {
        let pairs = pairs();
        let mut seen = std::collections::HashSet::new();
        let tags = |s: &str| -> Vec<String> {
            let mut tags: Vec<String> = s
                .split('<')
                .skip(1)
                .filter_map(|t| t.split(['>', ' ']).next())
                .map(str::to_owned)
                .collect();
            tags.sort();
            tags
        };
        for (english, german) in &pairs {
            assert!(
                seen.insert(english.as_str()),
                "{english:?} is in the catalog twice"
            );
            assert!(
                !german.trim().is_empty(),
                "{english:?} has an empty German text"
            );
            assert_eq!(
                english.matches("{}").count(),
                german.matches("{}").count(),
                "{english:?} and {german:?} differ in placeholders"
            );
            assert_eq!(tags(english), tags(german), "{english:?}: markup differs");
        }
    }

    /// Every literal the templates and views translate (`t("…")`) and every text app.js
    /// translates (`T("…")`) has a German entry, and every entry is used somewhere.
    #[test]
    fn every_translated_text_has_a_german_entry_and_every_entry_a_use() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut sources = Vec::new();
        for dir in ["templates", "src", "static"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("dir") {
                let path = entry.expect("entry").path();
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("html" | "rs" | "js")
                ) && !path.ends_with("i18n.rs")
                {
                    sources.push(std::fs::read_to_string(&path).expect("read"));
                }
            }
        }
        let used = sources
            .iter()
            .flat_map(|s| literals(s))
            .collect::<std::collections::HashSet<_>>();
        let pairs = pairs();
        let known: std::collections::HashSet<&str> =
            pairs.iter().map(|(e, _)| e.as_str()).collect();
        let mut missing: Vec<&String> = used
            .iter()
            .filter(|u| !known.contains(u.as_str()))
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "no German text for {missing:#?}");
        // Run-time texts (a status, "crash loop", a login refusal) are made in the views or in
        // the crates below them: they count as used when a source spells them out, as written
        // or as a Rust literal. Patterns are exempt.
        let mut all = sources.concat();
        for dir in ["../core/src", "../consensus/src", "../node/src"] {
            all.push_str(&rust_sources(&root.join(dir)));
        }
        let mut unused: Vec<&str> = known
            .iter()
            .copied()
            .filter(|k| {
                !k.contains("{}")
                    && !used.contains(*k)
                    && !all.contains(*k)
                    && !all.contains(&k.replace('\\', "\\\\").replace('"', "\\\""))
            })
            .collect();
        unused.sort();
        assert!(
            unused.is_empty(),
            "German entries nothing uses: {unused:#?}"
        );
    }

    /// Every `.rs` file under `dir`, concatenated.
    fn rust_sources(dir: &std::path::Path) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.push_str(&rust_sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).expect("read"));
            }
        }
        out
    }

    /// The strings in `t("…")` and `T("…")` calls, and app.js's `` T(`…${x}…`) `` templates as
    /// patterns (`…{}…`); `tr` takes run-time text, not literals.
    fn literals(source: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (marker, quote) in [("t(\"", '"'), ("T(\"", '"'), ("T(`", '`')] {
            let mut rest = source;
            while let Some(at) = rest.find(marker) {
                let boundary = rest[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric() && c != '_');
                rest = &rest[at + marker.len()..];
                if boundary {
                    out.push(read_literal(rest, quote));
                }
            }
        }
        out
    }

    /// A string literal's text up to its closing quote; a template's `${…}` becomes `{}`.
    fn read_literal(source: &str, quote: char) -> String {
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => text.push('\n'),
                    Some(other) => text.push(other),
                    None => break,
                },
                '$' if quote == '`' && chars.peek() == Some(&'{') => {
                    let mut depth = 0;
                    for c in chars.by_ref() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 1 => break,
                            '}' => depth -= 1,
                            _ => {}
                        }
                    }
                    text.push_str("{}");
                }
                c if c == quote => break,
                c => text.push(c),
            }
        }
        text
    }
}
