//! A crontab entry in plain words, for the schedule field's preview: `0 3 * * 1-5` reads
//! "every weekday at 03:00". Only the common forms are read; for the others there is no
//! reading and the preview shows the next times alone. The entry is assumed to parse
//! ([`crate::cron::Schedule::parse`] says what is wrong with one that does not).

/// The English names of the weekdays, 0 = Sunday.
pub const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
/// The English names of the months, January at 0.
pub const MONTHS: [&str; 12] = [
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

/// What a crontab entry says, for rendering in a language: English here ([`Reading`]'s
/// `Display`), German in the UI crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// `@reboot`.
    AtStart,
    /// `@every 30s`: the interval as written.
    Interval(String),
    /// A five- or six-field entry.
    Schedule {
        time: Time,
        days: Days,
        /// 1–12, ascending; empty: every month.
        months: Vec<u32>,
    },
}

/// The times of day of a [`Reading::Schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Time {
    /// Every n seconds (n = 1: every second).
    EverySeconds(u32),
    /// Every n minutes.
    EveryMinutes(u32),
    /// Every hour at this minute (0: on the hour).
    Hourly(u32),
    /// At these times of day, `(hour, minute)`.
    At(Vec<(u32, u32)>),
    /// Every n minutes within these hours.
    MinutesInHours(u32, Vec<u32>),
}

/// The days of a [`Reading::Schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Days {
    Any,
    /// Days of the week, 0 = Sunday, ascending.
    Weekdays(Vec<u32>),
    /// Days of the month, ascending.
    MonthDays(Vec<u32>),
}

/// What the entry says, or `None` for a form this does not read.
pub fn read(expr: &str) -> Option<Reading> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    let first = words.first()?.to_ascii_lowercase();
    if first.starts_with('@') {
        return match first.as_str() {
            "@reboot" => Some(Reading::AtStart),
            "@every" => Some(Reading::Interval(words.get(1..)?.join(" "))),
            "@hourly" => read("0 * * * *"),
            "@daily" | "@midnight" => read("0 0 * * *"),
            "@weekly" => read("0 0 * * 0"),
            "@monthly" => read("0 0 1 * *"),
            "@yearly" | "@annually" => read("0 0 1 1 *"),
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
    let days = days(day, weekday)?;
    let months = match *month {
        "*" => Vec::new(),
        m => from_one(list(m, 12)?)?,
    };
    Some(Reading::Schedule { time, days, months })
}

fn time_of_day(second: Option<&str>, minute: &str, hour: &str) -> Option<Time> {
    let at_second_zero = second.is_none_or(|s| s == "0");
    if let Some(second) = second.filter(|s| *s != "0") {
        // Seconds that vary: only "every n seconds" (of every minute) is read.
        return match (minute, hour) {
            ("*", "*") => Some(Time::EverySeconds(step(second)?)),
            _ => None,
        };
    }
    Some(match (number(minute, 59), hour) {
        (Some(m), "*") => Time::Hourly(m),
        (Some(m), _) => Time::At(list(hour, 23)?.into_iter().map(|h| (h, m)).collect()),
        (None, "*") if at_second_zero => Time::EveryMinutes(step(minute)?),
        (None, _) => Time::MinutesInHours(step(minute)?, list(hour, 23)?),
    })
}

/// 1 for `*`, n for `*/n`.
fn step(field: &str) -> Option<u32> {
    if field == "*" {
        return Some(1);
    }
    field.strip_prefix("*/")?.parse().ok().filter(|n| *n > 0)
}

fn days(day: &str, weekday: &str) -> Option<Days> {
    Some(match (day, weekday) {
        ("*" | "?", "*" | "?") => Days::Any,
        ("*" | "?", w) => {
            let mut days = list(w, 7)?;
            for d in &mut days {
                *d %= 7;
            }
            days.sort_unstable();
            days.dedup();
            Days::Weekdays(days)
        }
        (d, "*" | "?") => Days::MonthDays(from_one(list(d, 31)?)?),
        _ => return None,
    })
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (time, days, months) = match self {
            Reading::AtStart => return f.write_str("when the node starts"),
            Reading::Interval(every) => return write!(f, "every {every}"),
            Reading::Schedule { time, days, months } => (time, days, months),
        };
        let in_months = match months.as_slice() {
            [] => String::new(),
            m => format!(" in {}", join_and(&names(&MONTHS, m, 1))),
        };
        let days = match days {
            Days::Any if in_months.is_empty() => String::new(),
            Days::Any => format!("every day{in_months}"),
            Days::Weekdays(d) => {
                let name = match d.as_slice() {
                    [1, 2, 3, 4, 5] => "every weekday".to_owned(),
                    [0, 6] => "every weekend day".to_owned(),
                    d => format!("every {}", join_and(&names(&WEEKDAYS, d, 0))),
                };
                format!("{name}{in_months}")
            }
            Days::MonthDays(d) => {
                let ordinals: Vec<String> = d.iter().map(|d| ordinal(*d)).collect();
                match in_months.as_str() {
                    "" => format!("on the {} of every month", join_and(&ordinals)),
                    m => format!("on the {}{m}", join_and(&ordinals)),
                }
            }
        };
        let every = |n: u32, unit: &str| match n {
            1 => format!("every {unit}"),
            n => format!("every {n} {unit}s"),
        };
        let (repeating, time) = match time {
            Time::EverySeconds(n) => (true, every(*n, "second")),
            Time::EveryMinutes(n) => (true, every(*n, "minute")),
            Time::Hourly(0) => (true, "every hour, on the hour".to_owned()),
            Time::Hourly(m) => (true, format!("every hour at minute {m}")),
            Time::At(times) => (false, format!("at {}", join_and(&clock_times(times)))),
            Time::MinutesInHours(n, hours) => {
                let hours: Vec<(u32, u32)> = hours.iter().map(|h| (*h, 0)).collect();
                let minutes = every(*n, "minute");
                let hours = join_and(&clock_times(&hours));
                (true, format!("{minutes} in the hours from {hours}"))
            }
        };
        match (days.as_str(), repeating) {
            ("", true) => f.write_str(&time),
            (d, true) => write!(f, "{time}, {d}"),
            ("", false) => write!(f, "every day {time}"),
            (d, false) => write!(f, "{d} {time}"),
        }
    }
}

/// `names[value - first]` for each value.
pub fn names<'a>(names: &[&'a str], values: &[u32], first: u32) -> Vec<&'a str> {
    values
        .iter()
        .filter_map(|v| names.get(v.checked_sub(first)? as usize).copied())
        .collect()
}

/// `03:00` for `(3, 0)`.
pub fn clock_times(times: &[(u32, u32)]) -> Vec<String> {
    times
        .iter()
        .map(|(h, m)| format!("{h:02}:{m:02}"))
        .collect()
}

/// `values`, sorted, when none is 0 (months and days of the month count from 1).
fn from_one(mut values: Vec<u32>) -> Option<Vec<u32>> {
    values.sort_unstable();
    values.dedup();
    (!values.contains(&0)).then_some(values)
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
    join_list(items, "and")
}

/// `items` as a list with `and` before the last: "a", "a and b", "a, b and c".
pub fn join_list<S: AsRef<str>>(items: &[S], and: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} {and} {}", init.join(", "), last.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read;

    /// The entry in plain English words.
    fn reading(expr: &str) -> Option<String> {
        read(expr).map(|r| r.to_string())
    }

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
