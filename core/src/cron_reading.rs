//! A crontab entry in plain words, for the schedule field's preview: `0 3 * * 1-5` reads
//! "every weekday at 03:00". Only the common forms are read; for the others there is no
//! reading and the preview shows the next times alone. The entry is assumed to parse
//! ([`crate::cron::Schedule::parse`] says what is wrong with one that does not).

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The entry in plain words, or `None` for a form this does not read.
pub fn reading(expr: &str) -> Option<String> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    let first = words.first()?.to_ascii_lowercase();
    if first.starts_with('@') {
        return match first.as_str() {
            "@reboot" => Some("when the node starts".into()),
            "@every" => Some(format!("every {}", words.get(1..)?.join(" "))),
            "@hourly" => reading("0 * * * *"),
            "@daily" | "@midnight" => reading("0 0 * * *"),
            "@weekly" => reading("0 0 * * 0"),
            "@monthly" => reading("0 0 1 * *"),
            "@yearly" | "@annually" => reading("0 0 1 1 *"),
            _ => None,
        };
    }
    let (second, rest) = match words.len() {
        6 => (Some(words[0]), &words[1..]),
        5 => (None, &words[..]),
        _ => return None,
    };
    let [minute, hour, day, month, weekday] = rest else {
        return None;
    };
    let time = time_of_day(second, minute, hour)?;
    let days = days(day, month, weekday)?;
    Some(match (days.as_str(), time) {
        ("", Time::Repeating(t)) => t,
        (d, Time::Repeating(t)) => format!("{t}, {d}"),
        ("", Time::At(t)) => format!("every day {t}"),
        (d, Time::At(t)) => format!("{d} {t}"),
    })
}

enum Time {
    /// "at 03:00", "at 03:00 and 15:00".
    At(String),
    /// "every 5 minutes", "every hour, on the hour".
    Repeating(String),
}

fn time_of_day(second: Option<&str>, minute: &str, hour: &str) -> Option<Time> {
    let at_second_zero = second.is_none_or(|s| s == "0");
    if let Some(second) = second.filter(|s| *s != "0") {
        // Seconds that vary: only "every n seconds" (of every minute) is read.
        return match (minute, hour) {
            ("*", "*") => Some(Time::Repeating(every(second, "second")?)),
            _ => None,
        };
    }
    let minute_value = number(minute, 59);
    let hours = list(hour, 23);
    Some(match (minute_value, hour) {
        (Some(0), "*") => Time::Repeating("every hour, on the hour".into()),
        (Some(m), "*") => Time::Repeating(format!("every hour at minute {m}")),
        (Some(m), _) => {
            let times: Vec<String> = hours?.iter().map(|h| format!("{h:02}:{m:02}")).collect();
            Time::At(format!("at {}", join_and(&times)))
        }
        (None, "*") if at_second_zero => Time::Repeating(every(minute, "minute")?),
        (None, _) => {
            let hours = hours?;
            let minutes = every(minute, "minute")?;
            let hours: Vec<String> = hours.iter().map(|h| format!("{h:02}:00")).collect();
            Time::Repeating(format!("{minutes} in the hours from {}", join_and(&hours)))
        }
    })
}

/// "every minute" for `*`, "every 5 minutes" for `*/5`.
fn every(field: &str, unit: &str) -> Option<String> {
    if field == "*" {
        return Some(format!("every {unit}"));
    }
    let step: u32 = field.strip_prefix("*/")?.parse().ok()?;
    Some(match step {
        1 => format!("every {unit}"),
        n => format!("every {n} {unit}s"),
    })
}

fn days(day: &str, month: &str, weekday: &str) -> Option<String> {
    let in_month = match month {
        "*" => String::new(),
        m => {
            let months = list(m, 12)?;
            let names: Vec<&str> = months
                .iter()
                .map(|m| MONTHS.get((*m as usize).checked_sub(1)?).copied())
                .collect::<Option<_>>()?;
            format!(" in {}", join_and(&names))
        }
    };
    Some(match (day, weekday) {
        ("*" | "?", "*" | "?") if in_month.is_empty() => String::new(),
        ("*" | "?", "*" | "?") => format!("every day{in_month}"),
        ("*" | "?", w) => {
            let mut days = list(w, 7)?;
            for d in &mut days {
                *d %= 7;
            }
            days.sort_unstable();
            days.dedup();
            let name = match days.as_slice() {
                [1, 2, 3, 4, 5] => "every weekday".to_owned(),
                [0, 6] => "every weekend day".to_owned(),
                _ => {
                    let names: Vec<&str> = days.iter().map(|d| WEEKDAYS[*d as usize]).collect();
                    format!("every {}", join_and(&names))
                }
            };
            format!("{name}{in_month}")
        }
        (d, "*" | "?") => {
            let days = list(d, 31)?;
            let ordinals: Vec<String> = days.iter().map(|d| ordinal(*d)).collect();
            match in_month.as_str() {
                "" => format!("on the {} of every month", join_and(&ordinals)),
                m => format!("on the {}{m}", join_and(&ordinals)),
            }
        }
        _ => return None,
    })
}

/// A single number no greater than `max`.
fn number(field: &str, max: u32) -> Option<u32> {
    field.parse().ok().filter(|n| *n <= max)
}

/// The values of a list of numbers and ranges (`1-5`, `1,3,5`, `9-11,14`), at most `max`.
fn list(field: &str, max: u32) -> Option<Vec<u32>> {
    let mut values = Vec::new();
    for part in field.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (number(from, max)?, number(to, max)?);
                if from > to {
                    return None;
                }
                values.extend(from..=to);
            }
            None => values.push(number(part, max)?),
        }
    }
    (!values.is_empty()).then_some(values)
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// "a", "a and b", "a, b and c".
fn join_and<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", init.join(", "), last.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reading;

    #[test]
    fn common_forms_read_plainly() {
        for (expr, expected) in [
            ("0 3 * * 1-5", "every weekday at 03:00"),
            ("*/5 * * * *", "every 5 minutes"),
            ("* * * * *", "every minute"),
            ("0 * * * *", "every hour, on the hour"),
            ("15 * * * *", "every hour at minute 15"),
            ("30 2 1 * *", "on the 1st of every month at 02:30"),
            ("0 0 * * 0", "every Sunday at 00:00"),
            ("0 0 * * 7", "every Sunday at 00:00"),
            ("0 9,17 * * *", "every day at 09:00 and 17:00"),
            (
                "0 8 * * 1,3,5",
                "every Monday, Wednesday and Friday at 08:00",
            ),
            ("0 10 * * 6,0", "every weekend day at 10:00"),
            ("0 0 1 1 *", "on the 1st in January at 00:00"),
            ("0 12 22 * *", "on the 22nd of every month at 12:00"),
            ("*/10 * * * * *", "every 10 seconds"),
            ("0 30 4 * * *", "every day at 04:30"),
            (
                "*/15 9-11 * * *",
                "every 15 minutes in the hours from 09:00, 10:00 and 11:00",
            ),
            ("@daily", "every day at 00:00"),
            ("@hourly", "every hour, on the hour"),
            ("@every 30s", "every 30s"),
            ("@reboot", "when the node starts"),
        ] {
            assert_eq!(reading(expr).as_deref(), Some(expected), "{expr}");
        }
    }

    #[test]
    fn other_forms_have_no_reading() {
        for expr in ["0 3 1 * 1", "5-10/2 * * * *", "0 3 L * *", "", "1 2 3"] {
            assert_eq!(reading(expr), None, "{expr}");
        }
    }
}
