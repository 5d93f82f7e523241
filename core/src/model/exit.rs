//! Exit-code rules: how a run ended, which rules that matches, and what they do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    TimedOut,
    /// The process could not be started (no such program, bad user, bad cwd …).
    FailedToStart {
        error: String,
    },
    /// The node running it went away (or restarted) before it finished.
    Lost,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Exited { code: 0 })
    }
}

/// Which outcomes a rule is for: `0`, `1-5`, `!0`, `*`, `timeout`, `signal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitMatch {
    Code(i32),
    Range(i32, i32),
    Not(Box<ExitMatch>),
    Any,
    Timeout,
    Signal,
}

impl ExitMatch {
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match self {
            ExitMatch::Code(c) => matches!(outcome, Outcome::Exited { code } if code == c),
            ExitMatch::Range(a, b) => {
                matches!(outcome, Outcome::Exited { code } if (*a..=*b).contains(code))
            }
            ExitMatch::Not(inner) => !inner.matches(outcome),
            ExitMatch::Any => true,
            ExitMatch::Timeout => matches!(outcome, Outcome::TimedOut),
            ExitMatch::Signal => matches!(outcome, Outcome::Signaled { .. }),
        }
    }
}

impl fmt::Display for ExitMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitMatch::Code(c) => write!(f, "{c}"),
            ExitMatch::Range(a, b) => write!(f, "{a}-{b}"),
            ExitMatch::Not(inner) => write!(f, "!{inner}"),
            ExitMatch::Any => f.write_str("*"),
            ExitMatch::Timeout => f.write_str("timeout"),
            ExitMatch::Signal => f.write_str("signal"),
        }
    }
}

impl FromStr for ExitMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let code = |t: &str| {
            t.trim().parse::<i32>().ok().filter(|c| (0..=255).contains(c)).ok_or_else(|| {
                format!("`{t}` is not an exit code (0-255); write a code, a range like 1-5, !0, *, timeout or signal")
            })
        };
        match s {
            "*" => Ok(ExitMatch::Any),
            "timeout" => Ok(ExitMatch::Timeout),
            "signal" => Ok(ExitMatch::Signal),
            _ if s.starts_with('!') => match s[1..].parse::<ExitMatch>()? {
                ExitMatch::Not(_) => Err(format!("`{s}`: write a single `!`")),
                inner => Ok(ExitMatch::Not(Box::new(inner))),
            },
            _ => match s.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (code(a)?, code(b)?);
                    if a > b {
                        return Err(format!("`{s}`: the range runs backwards"));
                    }
                    Ok(ExitMatch::Range(a, b))
                }
                None => code(s).map(ExitMatch::Code),
            },
        }
    }
}

impl Serialize for ExitMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExitMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Code(i64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(t) => t,
            Raw::Code(c) => c.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// On the wire a matcher is a string (`"0"`, `"1-5"`, `"!0"`, `"*"`, `"timeout"`, `"signal"`);
/// a plain exit code may also be sent as a number.
impl utoipa::PartialSchema for ExitMatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "an exit code (`0`), a range (`1-5`), a negation (`!0`), any outcome \
                         (`*`), `timeout` or `signal`",
                    ))
                    .examples(["0", "1-5", "!0", "*", "timeout", "signal"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .description(Some("an exit code")),
            )
            .into()
    }
}

impl utoipa::ToSchema for ExitMatch {}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// Run the task again, up to the settings' max retries, with backoff.
    Retry,
    /// Tell people through a notification channel from the settings.
    Notify { channel: String },
    /// Start another task (by name).
    Run { task: String },
    /// Disable this task.
    Disable,
}

impl Action {
    pub fn check(&self) -> Result<(), String> {
        match self {
            Action::Notify { channel } if channel.trim().is_empty() => {
                Err("notify needs a channel name".into())
            }
            Action::Run { task } if task.trim().is_empty() => Err("run needs a task name".into()),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Retry => f.write_str("retry"),
            Action::Notify { channel } => write!(f, "notify {channel}"),
            Action::Run { task } => write!(f, "run {task}"),
            Action::Disable => f.write_str("disable"),
        }
    }
}

/// One rule: when the outcome matches `on`, do `action`. Every matching rule acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExitRule {
    pub on: ExitMatch,
    #[serde(flatten)]
    pub action: Action,
}

/// The actions of all rules that match `outcome`, in rule order, each action once.
pub fn matching_actions<'a>(rules: &'a [ExitRule], outcome: &Outcome) -> Vec<&'a Action> {
    let mut out: Vec<&Action> = Vec::new();
    for rule in rules.iter().filter(|r| r.on.matches(outcome)) {
        if !out.contains(&&rule.action) {
            out.push(&rule.action);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Outcome {
        Outcome::Exited { code }
    }

    #[test]
    fn matching_table() {
        let signaled = Outcome::Signaled { signal: 9 };
        let cases: &[(&str, Outcome, bool)] = &[
            ("0", exited(0), true),
            ("0", exited(1), false),
            ("1-5", exited(3), true),
            ("1-5", exited(5), true),
            ("1-5", exited(6), false),
            ("!0", exited(0), false),
            ("!0", exited(2), true),
            ("!0", Outcome::TimedOut, true),
            ("!0", signaled.clone(), true),
            ("!1-5", exited(4), false),
            ("!1-5", exited(0), true),
            ("*", exited(0), true),
            ("*", Outcome::Lost, true),
            ("timeout", Outcome::TimedOut, true),
            ("timeout", exited(124), false),
            ("signal", signaled.clone(), true),
            ("signal", Outcome::TimedOut, false),
            ("2", Outcome::FailedToStart { error: "x".into() }, false),
        ];
        for (text, outcome, expected) in cases {
            let m: ExitMatch = text.parse().expect(text);
            assert_eq!(m.matches(outcome), *expected, "{text} vs {outcome:?}");
            assert_eq!(m.to_string(), *text, "round trip");
        }
    }

    #[test]
    fn bad_matches_are_explained() {
        for (text, fragment) in [
            ("256", "not an exit code"),
            ("5-1", "backwards"),
            ("!!0", "single `!`"),
            ("oops", "not an exit code"),
            ("", "not an exit code"),
        ] {
            let err = text.parse::<ExitMatch>().expect_err(text);
            assert!(err.contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn rules_deserialize_and_collect_actions_once() {
        let rules: Vec<ExitRule> = serde_json::from_value(serde_json::json!([
            {"on": "!0", "action": "retry"},
            {"on": 3, "action": "notify", "channel": "ops"},
            {"on": "1-5", "action": "retry"},
            {"on": "*", "action": "run", "task": "cleanup"}
        ]))
        .expect("rules");
        let actions = matching_actions(&rules, &exited(3));
        assert_eq!(
            actions,
            vec![
                &Action::Retry,
                &Action::Notify {
                    channel: "ops".into()
                },
                &Action::Run {
                    task: "cleanup".into()
                }
            ]
        );
        assert_eq!(
            matching_actions(&rules, &exited(0)),
            vec![&Action::Run {
                task: "cleanup".into()
            }]
        );
    }
}
