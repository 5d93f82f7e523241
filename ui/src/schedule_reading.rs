//! A schedule in plain words in the page's language: what [`taskmesh_core::cron_reading`]
//! reads from a crontab entry, told in English (core's own words) or German (here). The
//! words are built from the reading's parts rather than translated from the English
//! sentence, whose lists and ordinals no phrase catalog reads back reliably.

use taskmesh_core::cron_reading::{self, Days, Reading, Time, clock_times, join_list, names};

use crate::i18n::Lang;

const WOCHENTAGE: [&str; 7] = [
    "Sonntag",
    "Montag",
    "Dienstag",
    "Mittwoch",
    "Donnerstag",
    "Freitag",
    "Samstag",
];
const MONATE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

/// `expr` in plain words in `lang`, or `None` for a form that is not read.
pub fn reading(lang: Lang, expr: &str) -> Option<String> {
    let reading = cron_reading::read(expr)?;
    Some(match lang {
        Lang::En => reading.to_string(),
        Lang::De => german(&reading),
    })
}

fn und<S: AsRef<str>>(items: &[S]) -> String {
    join_list(items, "und")
}

fn german(reading: &Reading) -> String {
    let (time, days, months) = match reading {
        Reading::AtStart => return "beim Start des Knotens".into(),
        Reading::Interval(every) => return format!("alle {every}"),
        Reading::Schedule { time, days, months } => (time, days, months),
    };
    let months = und(&names(&MONATE, months, 1));
    let in_months = match months.as_str() {
        "" => String::new(),
        m => format!(" im {m}"),
    };
    let days = match days {
        Days::Any if months.is_empty() => String::new(),
        Days::Any => format!("täglich{in_months}"),
        Days::Weekdays(d) => {
            let name = match d.as_slice() {
                [1, 2, 3, 4, 5] => "werktags".to_owned(),
                [0, 6] => "am Wochenende".to_owned(),
                d => format!("jeden {}", und(&names(&WOCHENTAGE, d, 0))),
            };
            format!("{name}{in_months}")
        }
        Days::MonthDays(d) => {
            let days: Vec<String> = d.iter().map(|d| format!("{d}.")).collect();
            match months.as_str() {
                "" => format!("am {} jedes Monats", und(&days)),
                m => format!("am {} {m}", und(&days)),
            }
        }
    };
    let every = |n: u32, one: &str, many: &str| match n {
        1 => format!("jede {one}"),
        n => format!("alle {n} {many}"),
    };
    let (repeating, time) = match time {
        Time::EverySeconds(n) => (true, every(*n, "Sekunde", "Sekunden")),
        Time::EveryMinutes(n) => (true, every(*n, "Minute", "Minuten")),
        Time::Hourly(0) => (true, "jede volle Stunde".to_owned()),
        Time::Hourly(m) => (true, format!("jede Stunde zur Minute {m}")),
        Time::At(times) => (false, format!("um {}", und(&clock_times(times)))),
        Time::MinutesInHours(n, hours) => {
            let hours: Vec<(u32, u32)> = hours.iter().map(|h| (*h, 0)).collect();
            let minutes = every(*n, "Minute", "Minuten");
            (
                true,
                format!("{minutes} in den Stunden ab {}", und(&clock_times(&hours))),
            )
        }
    };
    match (days.as_str(), repeating) {
        ("", true) => time,
        (d, true) => format!("{time}, {d}"),
        ("", false) => format!("täglich {time}"),
        (d, false) => format!("{d} {time}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_read_in_german() {
        for (expr, expected) in [
            ("0 3 * * 1-5", "werktags um 03:00"),
            ("*/5 * * * *", "alle 5 Minuten"),
            ("* * * * *", "jede Minute"),
            ("0 * * * *", "jede volle Stunde"),
            ("15 * * * *", "jede Stunde zur Minute 15"),
            ("30 2 1 * *", "am 1. jedes Monats um 02:30"),
            ("0 0 * * 7", "jeden Sonntag um 00:00"),
            ("0 9,17 * * *", "täglich um 09:00 und 17:00"),
            (
                "0 8 * * 1,3,5",
                "jeden Montag, Mittwoch und Freitag um 08:00",
            ),
            ("0 10 * * 6,0", "am Wochenende um 10:00"),
            ("0 0 1 1 *", "am 1. Januar um 00:00"),
            ("0 12 1,15 * *", "am 1. und 15. jedes Monats um 12:00"),
            ("0 8 * 6 *", "täglich im Juni um 08:00"),
            ("0 8 * 1,7 1", "jeden Montag im Januar und Juli um 08:00"),
            (
                "*/10 * 9-11 * *",
                "alle 10 Minuten, am 9., 10. und 11. jedes Monats",
            ),
            ("*/10 * * * * *", "alle 10 Sekunden"),
            (
                "*/15 9-11 * * *",
                "alle 15 Minuten in den Stunden ab 09:00, 10:00 und 11:00",
            ),
            ("@monthly", "am 1. jedes Monats um 00:00"),
            ("@every 30s", "alle 30s"),
            ("@reboot", "beim Start des Knotens"),
        ] {
            assert_eq!(reading(Lang::De, expr).as_deref(), Some(expected), "{expr}");
        }
        assert_eq!(
            reading(Lang::En, "0 3 * * 1-5").as_deref(),
            Some("every weekday at 03:00")
        );
        assert_eq!(reading(Lang::De, "0 3 L * *"), None);
    }

    /// No reading in German keeps a word of its English one.
    #[test]
    fn no_english_word_is_left_in_a_german_reading() {
        let english: Vec<&str> = [
            "every", "at", "and", "day", "days", "minute", "minutes", "hour", "hours", "second",
            "seconds", "weekday", "weekend", "on", "the", "of", "month", "from", "when", "node",
            "starts",
        ]
        .into_iter()
        .chain(cron_reading::WEEKDAYS)
        .chain(
            cron_reading::MONTHS
                .into_iter()
                .filter(|m| !MONATE.contains(m)),
        )
        .collect();
        let mut exprs: Vec<String> = [
            "* * * * *",
            "*/5 * * * *",
            "0 * * * *",
            "0 3 * * *",
            "0 3 1 * *",
            "0 3 1 1 *",
            "*/10 * * * * *",
            "*/15 9-17 * * *",
            "@reboot",
            "@yearly",
            "@every 1h",
        ]
        .map(String::from)
        .into();
        exprs.extend((0..7).map(|d| format!("0 6 * * {d}")));
        exprs.extend((1..=12).map(|m| format!("0 6 * {m} 1-5")));
        exprs.extend((1..=12).map(|m| format!("0 6 2,3 {m} *")));
        for expr in &exprs {
            let german = reading(Lang::De, expr).unwrap_or_else(|| panic!("{expr} is read"));
            let left: Vec<&str> = german
                .split(|c: char| !c.is_alphabetic())
                .filter(|w| english.contains(w))
                .collect();
            assert!(left.is_empty(), "{expr}: {german:?} keeps {left:?}");
        }
    }
}
