//! Cron schedules: parsing crontab entries and computing their slots in a timezone.
//!
//! # Grammar
//!
//! * Five fields `minute hour day-of-month month day-of-week` (the second is 0), or six fields
//!   `second minute hour day-of-month month day-of-week`.
//! * Each field is a comma-separated list of items. An item is `*` or `?` (every value), a
//!   value `a`, a range `a-b`, or one of those with a step: `*/n`, `a-b/n`, `a/n` (from `a`
//!   to the field's maximum). Months accept `JAN`-`DEC`, days of the week `SUN`-`SAT`
//!   (case-insensitive); day-of-week `0` and `7` both mean Sunday, and a day-of-week range
//!   may end on Sunday (`FRI-SUN`, `5-0`).
//! * Day-of-week runs 0-7 as in cronie, so `a/n` there is `a-7/n` and may land on Sunday:
//!   `3/4` is Wednesday and Sunday, `5/1` Friday to Sunday. (cronie itself refuses `a/n`;
//!   croner reads it so with its `sloppy_ranges`. `*/n` starts on Sunday, so 7 adds nothing.)
//! * Day rule (Vixie cron): when both day-of-month and day-of-week are restricted (anything
//!   but a bare `*` or `?`), a day matches when *either* matches; otherwise both must match.
//! * Macros: `@yearly`/`@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly`
//!   (`0 0 * * 0`), `@daily`/`@midnight` (`0 0 * * *`), `@hourly` (`0 * * * *`), `@reboot`
//!   (no slots; fired by whoever starts the task), and `@every <duration>` in humantime
//!   style (`30s`, `5m`, `1h30m`), at least one second and a whole number of seconds.
//!   `@every` slots are aligned to the Unix epoch (slot = k × interval since
//!   1970-01-01T00:00:00Z), independent of the timezone, so every node and every restart
//!   computes the same slots.
//!
//! # Time zones and daylight saving time
//!
//! Cron fields are matched against the local wall-clock time in the schedule's IANA
//! timezone. Each matching local time maps to one instant, and the slots are the distinct
//! instants obtained that way, so they are strictly increasing and no instant fires twice:
//!
//! * A local time that does not exist (spring-forward gap) fires at the first instant after
//!   the gap: `30 2 * * *` in Europe/Berlin on 2026-03-29 fires at 03:00 CEST (01:00 UTC).
//!   Several local times inside the gap, and the first valid local time after it, all map
//!   to that one instant and so fire once.
//! * A local time that occurs twice (fall-back overlap) fires once, at its first
//!   occurrence. An hourly schedule therefore skips the repeated hour, leaving a two-hour
//!   gap in UTC on that day.
//!
//! The mapping from local time to instant never decreases, which is what lets the search
//! below skip whole hours and minutes without looking at every second.
//!
//! # Search bounds
//!
//! [`Schedule::next_after`] looks at most [`SEARCH_DAYS`] days ahead, so schedules that can
//! never fire (`0 0 30 2 *`) return `None` instead of looping. [`catch_up`] counts at most
//! [`CATCH_UP_SCAN_LIMIT`] missed slots.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;

use crate::model::CatchUp;

/// How many days ahead (or back) a slot is searched for before giving up (about 5 years).
pub const SEARCH_DAYS: u64 = 5 * 366;

/// The most missed slots [`catch_up`] counts; beyond it `skipped` is a lower bound.
pub const CATCH_UP_SCAN_LIMIT: u64 = 100_000;

/// How far around a non-existent local time the end of its gap is searched for, in seconds.
/// Larger than any UTC offset plus any DST shift, so the window always straddles the gap.
const GAP_SEARCH_SECONDS: i64 = 26 * 3600;

/// A parsed crontab entry together with the timezone it is evaluated in.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Classic cron fields, matched against local wall-clock time.
    Cron(CronSpec),
    /// `@every`: slots every `seconds` seconds since the Unix epoch.
    Every { seconds: i64 },
    /// `@reboot`: no slots.
    Reboot,
}

/// The matching values of each cron field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CronSpec {
    seconds: ValueSet,
    minutes: ValueSet,
    hours: ValueSet,
    days_of_month: ValueSet,
    months: ValueSet,
    /// Sunday is 0; a parsed 7 is folded into 0.
    days_of_week: ValueSet,
    /// Day-of-month was something other than `*`/`?`.
    dom_restricted: bool,
    /// Day-of-week was something other than `*`/`?`.
    dow_restricted: bool,
}

/// A set of small numbers (0..=63) as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ValueSet(u64);

impl ValueSet {
    fn contains(self, value: u32) -> bool {
        value < 64 && self.0 & (1 << value) != 0
    }

    fn first(self) -> Option<u32> {
        (self.0 != 0).then(|| self.0.trailing_zeros())
    }

    fn last(self) -> Option<u32> {
        (self.0 != 0).then(|| 63 - self.0.leading_zeros())
    }

    /// The members in ascending order (reverse it for descending).
    fn iter(self) -> impl DoubleEndedIterator<Item = u32> {
        (0..64).filter(move |value| self.contains(*value))
    }
}

/// One of the six cron fields, used to say where a parse error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    /// Seconds, 0-59 (six-field form only).
    Second,
    /// Minutes, 0-59.
    Minute,
    /// Hours, 0-23.
    Hour,
    /// Day of the month, 1-31.
    DayOfMonth,
    /// Month, 1-12 or JAN-DEC.
    Month,
    /// Day of the week, 0-7 (0 and 7 are Sunday) or SUN-SAT.
    DayOfWeek,
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronField {
    /// The smallest and largest value accepted in the field.
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Second | CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    /// The value of a month or weekday name, if this field has names.
    fn named_value(self, text: &str) -> Option<u32> {
        let names: &[&str] = match self {
            CronField::Month => &MONTH_NAMES,
            CronField::DayOfWeek => &DAY_NAMES,
            _ => return None,
        };
        let offset = if self == CronField::Month { 1 } else { 0 };
        let index = names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))?;
        u32::try_from(index).ok().map(|index| index + offset)
    }

    /// What a value in this field should look like.
    fn expected_value(self) -> String {
        let (min, max) = self.bounds();
        match self {
            CronField::Month => format!("expected a number {min}-{max} or a month name JAN-DEC"),
            CronField::DayOfWeek => format!("expected a number {min}-{max} or a day name SUN-SAT"),
            _ => format!("expected a number {min}-{max}"),
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a schedule could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is blank.
    #[error(
        "empty schedule: expected a crontab entry such as `*/5 * * * *` or a macro such as `@daily`"
    )]
    Empty,
    /// Neither five nor six fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 fields \
         (second minute hour day-of-month month day-of-week), got {given}"
    )]
    FieldCount {
        /// How many fields were given.
        given: usize,
        /// Where the first surplus field starts, if there were too many.
        column: Option<usize>,
    },
    /// A field value, range, step or list is invalid.
    #[error("{field} field `{text}`: {problem}")]
    Field {
        /// Which field.
        field: CronField,
        /// The offending part of the field.
        text: String,
        /// What is wrong with it.
        problem: String,
        /// Where the offending part starts.
        column: usize,
    },
    /// An `@` word that is not a known macro.
    #[error(
        "unknown macro `{name}`: expected @yearly, @annually, @monthly, @weekly, @daily, \
         @midnight, @hourly, @reboot or @every <duration>"
    )]
    UnknownMacro {
        /// The word as written.
        name: String,
        /// Where it starts.
        column: usize,
    },
    /// A macro other than `@every` followed by more text.
    #[error("macro `{name}` takes no argument, but `{extra}` follows it")]
    UnexpectedArgument {
        /// The macro as written.
        name: String,
        /// The first surplus word.
        extra: String,
        /// Where the surplus starts.
        column: usize,
    },
    /// `@every` without a duration.
    #[error("`@every` needs a duration, e.g. `@every 30s` or `@every 1h30m`")]
    MissingInterval {
        /// Where `@every` starts.
        column: usize,
    },
    /// `@every` with a duration that cannot be used.
    #[error("`@every` duration `{text}`: {problem}")]
    Interval {
        /// The duration as written.
        text: String,
        /// What is wrong with it.
        problem: String,
        /// Where the duration starts.
        column: usize,
    },
    /// The timezone is not a known IANA name.
    #[error("unknown timezone `{name}`: expected an IANA name such as `UTC` or `Europe/Berlin`")]
    UnknownTimezone {
        /// The name as given.
        name: String,
    },
}

impl ScheduleError {
    /// The 1-based character position in the expression the error points at, if any.
    pub fn column(&self) -> Option<usize> {
        match self {
            ScheduleError::Empty | ScheduleError::UnknownTimezone { .. } => None,
            ScheduleError::FieldCount { column, .. } => *column,
            ScheduleError::Field { column, .. }
            | ScheduleError::UnknownMacro { column, .. }
            | ScheduleError::UnexpectedArgument { column, .. }
            | ScheduleError::MissingInterval { column }
            | ScheduleError::Interval { column, .. } => Some(*column),
        }
    }
}

impl Schedule {
    /// Parses a crontab entry evaluated in the IANA timezone `tz` (e.g. "UTC", "Europe/Berlin").
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let tokens = tokenize(expr);
        let kind = match tokens.first() {
            None => return Err(ScheduleError::Empty),
            Some((_, word)) if word.starts_with('@') => parse_macro(expr, &tokens)?,
            Some(_) => Kind::Cron(parse_cron(expr, &tokens)?),
        };
        let tz = tz
            .parse::<Tz>()
            .map_err(|_| ScheduleError::UnknownTimezone {
                name: tz.to_owned(),
            })?;
        Ok(Schedule { kind, tz })
    }

    /// The first slot strictly after `after`, or None for @reboot (and if none exists within ~5 years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(spec) => next_cron_slot(spec, self.tz, after),
            Kind::Every { seconds } => {
                let index = after.timestamp().div_euclid(*seconds).checked_add(1)?;
                DateTime::from_timestamp(index.checked_mul(*seconds)?, 0)
            }
            Kind::Reboot => None,
        }
    }

    /// The last slot strictly before `before`, or None for @reboot (and if none exists within
    /// ~5 years back).
    fn prev_before(&self, before: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(spec) => prev_cron_slot(spec, self.tz, before),
            Kind::Every { seconds } => {
                // The latest whole second strictly before `before`.
                let mut latest = before.timestamp();
                if before.timestamp_subsec_nanos() == 0 {
                    latest = latest.checked_sub(1)?;
                }
                DateTime::from_timestamp(latest.div_euclid(*seconds).checked_mul(*seconds)?, 0)
            }
            Kind::Reboot => None,
        }
    }

    /// True for `@reboot`.
    pub fn is_reboot(&self) -> bool {
        self.kind == Kind::Reboot
    }

    /// The timezone it is evaluated in.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.tz
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Splits on whitespace, keeping each word's byte offset in `expr`.
fn tokenize(expr: &str) -> Vec<(usize, &str)> {
    let mut tokens = Vec::new();
    let mut start = None;
    for (index, ch) in expr.char_indices() {
        match (ch.is_whitespace(), start) {
            (true, Some(begin)) => {
                tokens.push((begin, &expr[begin..index]));
                start = None;
            }
            (false, None) => start = Some(index),
            _ => {}
        }
    }
    if let Some(begin) = start {
        tokens.push((begin, &expr[begin..]));
    }
    tokens
}

/// The 1-based character column of byte offset `offset` in `expr`.
fn column_at(expr: &str, offset: usize) -> usize {
    expr.get(..offset)
        .map_or(offset, |prefix| prefix.chars().count())
        + 1
}

fn parse_macro(expr: &str, tokens: &[(usize, &str)]) -> Result<Kind, ScheduleError> {
    let Some(&(offset, name)) = tokens.first() else {
        return Err(ScheduleError::Empty);
    };
    let lowercase = name.to_ascii_lowercase();
    if lowercase == "@every" {
        return parse_every(expr, offset, name);
    }
    let equivalent = match lowercase.as_str() {
        "@yearly" | "@annually" => Some("0 0 1 1 *"),
        "@monthly" => Some("0 0 1 * *"),
        "@weekly" => Some("0 0 * * 0"),
        "@daily" | "@midnight" => Some("0 0 * * *"),
        "@hourly" => Some("0 * * * *"),
        "@reboot" => None,
        _ => {
            return Err(ScheduleError::UnknownMacro {
                name: name.to_owned(),
                column: column_at(expr, offset),
            });
        }
    };
    if let Some(&(extra_offset, extra)) = tokens.get(1) {
        return Err(ScheduleError::UnexpectedArgument {
            name: name.to_owned(),
            extra: extra.to_owned(),
            column: column_at(expr, extra_offset),
        });
    }
    match equivalent {
        Some(fields) => Ok(Kind::Cron(parse_cron(fields, &tokenize(fields))?)),
        None => Ok(Kind::Reboot),
    }
}

fn parse_every(expr: &str, offset: usize, name: &str) -> Result<Kind, ScheduleError> {
    let after_name = offset + name.len();
    let rest = expr.get(after_name..).unwrap_or_default();
    let text = rest.trim();
    if text.is_empty() {
        return Err(ScheduleError::MissingInterval {
            column: column_at(expr, offset),
        });
    }
    let text_offset = after_name + (rest.len() - rest.trim_start().len());
    let invalid = |problem: String| ScheduleError::Interval {
        text: text.to_owned(),
        problem,
        column: column_at(expr, text_offset),
    };
    let interval = humantime::parse_duration(text).map_err(|err| {
        invalid(format!(
            "not a duration like `30s`, `5m` or `1h30m` ({err})"
        ))
    })?;
    if interval < Duration::from_secs(1) {
        return Err(invalid("must be at least 1s".to_owned()));
    }
    if interval.subsec_nanos() != 0 {
        return Err(invalid("must be a whole number of seconds".to_owned()));
    }
    let seconds = i64::try_from(interval.as_secs())
        .ok()
        .filter(|seconds| TimeDelta::try_seconds(*seconds).is_some())
        .ok_or_else(|| invalid("is too long".to_owned()))?;
    Ok(Kind::Every { seconds })
}

fn parse_cron(expr: &str, tokens: &[(usize, &str)]) -> Result<CronSpec, ScheduleError> {
    let (second, [minute, hour, day_of_month, month, day_of_week]) = match tokens {
        [m, h, dom, mon, dow] => (None, [m, h, dom, mon, dow]),
        [s, m, h, dom, mon, dow] => (Some(s), [m, h, dom, mon, dow]),
        _ => {
            return Err(ScheduleError::FieldCount {
                given: tokens.len(),
                column: tokens.get(6).map(|&(offset, _)| column_at(expr, offset)),
            });
        }
    };
    let field = |field: CronField, &(offset, text): &(usize, &str)| {
        FieldInput {
            expr,
            field,
            text,
            offset,
        }
        .parse()
    };
    Ok(CronSpec {
        seconds: match second {
            Some(token) => field(CronField::Second, token)?,
            None => ValueSet(1),
        },
        minutes: field(CronField::Minute, minute)?,
        hours: field(CronField::Hour, hour)?,
        days_of_month: field(CronField::DayOfMonth, day_of_month)?,
        months: field(CronField::Month, month)?,
        days_of_week: field(CronField::DayOfWeek, day_of_week)?,
        dom_restricted: is_restricted(day_of_month.1),
        dow_restricted: is_restricted(day_of_week.1),
    })
}

/// Anything but a bare `*` or `?` restricts a day field (for the Vixie OR rule).
fn is_restricted(text: &str) -> bool {
    text != "*" && text != "?"
}

/// One field's text and where it sits in the expression.
struct FieldInput<'a> {
    expr: &'a str,
    field: CronField,
    text: &'a str,
    /// Byte offset of `text` in `expr`.
    offset: usize,
}

impl FieldInput<'_> {
    /// An error about `piece`, which starts `at` bytes into the field.
    fn error(&self, at: usize, piece: &str, problem: impl Into<String>) -> ScheduleError {
        ScheduleError::Field {
            field: self.field,
            text: piece.to_owned(),
            problem: problem.into(),
            column: column_at(self.expr, self.offset + at),
        }
    }

    fn parse(&self) -> Result<ValueSet, ScheduleError> {
        let mut bits = 0;
        let mut at = 0;
        for item in self.text.split(',') {
            if item.is_empty() {
                return Err(self.error(at, self.text, "empty list item"));
            }
            bits |= self.parse_item(item, at)?;
            at += item.len() + 1;
        }
        if self.field == CronField::DayOfWeek && bits & (1 << 7) != 0 {
            bits = (bits & !(1 << 7)) | 1;
        }
        Ok(ValueSet(bits))
    }

    /// Parses `*`, `?`, `a`, `a-b`, optionally followed by `/step`, into a bit mask.
    fn parse_item(&self, item: &str, at: usize) -> Result<u64, ScheduleError> {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (
                base,
                Some(self.parse_step(item, step, at + base.len() + 1)?),
            ),
            None => (item, None),
        };
        let (min, max) = self.field.bounds();
        let (start, end) = if base == "*" || base == "?" {
            (min, max)
        } else if base.is_empty() {
            return Err(self.error(at, item, "missing value before `/`"));
        } else if let Some((first, last)) = base.split_once('-') {
            if first.is_empty() || last.is_empty() {
                return Err(self.error(at, base, "incomplete range, expected `start-end`"));
            }
            let start = self.parse_value(first, at)?;
            let mut end = self.parse_value(last, at + first.len() + 1)?;
            if self.field == CronField::DayOfWeek && end == 0 && start > 0 {
                end = 7; // `FRI-SUN`: Sunday as the end of a week
            }
            if start > end {
                return Err(self.error(
                    at,
                    base,
                    format!("reversed range, `{first}` comes after `{last}`"),
                ));
            }
            (start, end)
        } else {
            let value = self.parse_value(base, at)?;
            match step {
                // Up to the field's maximum: in day-of-week that is 7, Sunday (cronie's range).
                Some(_) => (value, max),
                None => (value, value),
            }
        };
        let step = step.unwrap_or(1);
        Ok((start..=end)
            .step_by(step as usize)
            .fold(0, |bits, value| bits | (1 << value)))
    }

    fn parse_value(&self, text: &str, at: usize) -> Result<u32, ScheduleError> {
        let (min, max) = self.field.bounds();
        let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<u32>().ok()
        } else if let Some(value) = self.field.named_value(text) {
            Some(value)
        } else {
            return Err(self.error(at, text, self.field.expected_value()));
        };
        match value {
            Some(value) if (min..=max).contains(&value) => Ok(value),
            _ => Err(self.error(at, text, format!("value out of range {min}-{max}"))),
        }
    }

    /// Parses the `text` after the `/` of `item`; errors show the whole item.
    fn parse_step(&self, item: &str, text: &str, at: usize) -> Result<u32, ScheduleError> {
        let max = self.field.bounds().1;
        if text.is_empty() {
            return Err(self.error(at, item, "missing step after `/`"));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(at, item, "step must be a number"));
        }
        match text.parse::<u32>() {
            Ok(0) => Err(self.error(at, item, "step must be at least 1")),
            Ok(step) if step <= max => Ok(step),
            _ => Err(self.error(at, item, format!("step out of range 1-{max}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slot search
// ---------------------------------------------------------------------------------------------

impl CronSpec {
    fn day_matches(&self, day: NaiveDate) -> bool {
        if !self.months.contains(day.month()) {
            return false;
        }
        let by_month_day = self.days_of_month.contains(day.day());
        let by_weekday = self
            .days_of_week
            .contains(day.weekday().num_days_from_sunday());
        if self.dom_restricted && self.dow_restricted {
            by_month_day || by_weekday
        } else {
            by_month_day && by_weekday
        }
    }
}

/// The instant a local wall-clock time fires at: the time itself if unique, its first
/// occurrence if repeated, the end of the gap if skipped. Never decreases as `local` grows.
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(time) => Some(time.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, second) => Some(first.min(second).with_timezone(&Utc)),
        LocalResult::None => end_of_gap(tz, local),
    }
}

/// The first instant whose wall-clock time is later than `local`, which lies in a gap.
fn end_of_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let wall_clock = |timestamp: i64| {
        DateTime::from_timestamp(timestamp, 0).map(|time| time.with_timezone(&tz).naive_local())
    };
    let pivot = local.and_utc().timestamp();
    // Invariant: wall_clock(low) < local < wall_clock(high).
    let mut low = pivot.checked_sub(GAP_SEARCH_SECONDS)?;
    let mut high = pivot.checked_add(GAP_SEARCH_SECONDS)?;
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if wall_clock(middle)? < local {
            low = middle;
        } else {
            high = middle;
        }
    }
    DateTime::from_timestamp(high, 0)
}

fn first_of_next_month(day: NaiveDate) -> Option<NaiveDate> {
    match day.month() {
        12 => NaiveDate::from_ymd_opt(day.year().checked_add(1)?, 1, 1),
        month => NaiveDate::from_ymd_opt(day.year(), month + 1, 1),
    }
}

fn last_of_previous_month(day: NaiveDate) -> Option<NaiveDate> {
    day.with_day(1)?.pred_opt()
}

fn next_cron_slot(spec: &CronSpec, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Local times before `after`'s own wall-clock time map to instants <= `after`, so the
    // search starts on its local date.
    let local_after = after.with_timezone(&tz).naive_local();
    let mut day = local_after.date();
    let last_day = day.checked_add_days(Days::new(SEARCH_DAYS))?;
    while day <= last_day {
        if !spec.months.contains(day.month()) {
            day = first_of_next_month(day)?;
            continue;
        }
        if spec.day_matches(day) {
            if let Some(slot) = first_slot_on_day(spec, tz, day, local_after, after) {
                return Some(slot);
            }
        }
        day = day.succ_opt()?;
    }
    None
}

/// The earliest slot on local date `day` that is later than `after`.
fn first_slot_on_day(
    spec: &CronSpec,
    tz: Tz,
    day: NaiveDate,
    local_after: NaiveDateTime,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let last_minute = spec.minutes.last()?;
    let last_second = spec.seconds.last()?;
    // The instant local time hour:minute:second fires at, if it is later than `after`.
    // Times before `local_after` are rejected without a timezone lookup.
    let slot = |hour: u32, minute: u32, second: u32| {
        let local = day.and_hms_opt(hour, minute, second)?;
        if local < local_after {
            return None;
        }
        resolve_local(tz, local).filter(|instant| *instant > after)
    };
    // Resolving never goes backwards, so an hour (minute) whose last candidate is not later
    // than `after` has no later candidate at all and is skipped whole.
    for hour in spec.hours.iter() {
        if slot(hour, last_minute, last_second).is_none() {
            continue;
        }
        for minute in spec.minutes.iter() {
            if slot(hour, minute, last_second).is_none() {
                continue;
            }
            if let Some(found) = spec
                .seconds
                .iter()
                .find_map(|second| slot(hour, minute, second))
            {
                return Some(found);
            }
        }
    }
    None
}

fn prev_cron_slot(spec: &CronSpec, tz: Tz, before: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local_before = before.with_timezone(&tz).naive_local();
    // If `before`'s wall-clock time is unique, later local times map to instants >= `before`
    // and can be rejected without a lookup. Inside a repeated hour they may map earlier.
    let upper_bound = match tz.from_local_datetime(&local_before) {
        LocalResult::Single(_) => Some(local_before),
        _ => None,
    };
    // A repeated hour can straddle midnight, so start one local day later.
    let mut day = local_before.date().succ_opt()?;
    let first_day = day.checked_sub_days(Days::new(SEARCH_DAYS + 1))?;
    while day >= first_day {
        if !spec.months.contains(day.month()) {
            day = last_of_previous_month(day)?;
            continue;
        }
        if spec.day_matches(day) {
            if let Some(slot) = last_slot_on_day(spec, tz, day, upper_bound, before) {
                return Some(slot);
            }
        }
        day = day.pred_opt()?;
    }
    None
}

/// The latest slot on local date `day` that is earlier than `before`.
fn last_slot_on_day(
    spec: &CronSpec,
    tz: Tz,
    day: NaiveDate,
    upper_bound: Option<NaiveDateTime>,
    before: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let first_minute = spec.minutes.first()?;
    let first_second = spec.seconds.first()?;
    let slot = |hour: u32, minute: u32, second: u32| {
        let local = day.and_hms_opt(hour, minute, second)?;
        if upper_bound.is_some_and(|bound| local > bound) {
            return None;
        }
        resolve_local(tz, local).filter(|instant| *instant < before)
    };
    for hour in spec.hours.iter().rev() {
        if slot(hour, first_minute, first_second).is_none() {
            continue;
        }
        for minute in spec.minutes.iter().rev() {
            if slot(hour, minute, first_second).is_none() {
                continue;
            }
            if let Some(found) = spec
                .seconds
                .iter()
                .rev()
                .find_map(|second| slot(hour, minute, second))
            {
                return Some(found);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Catching up
// ---------------------------------------------------------------------------------------------

/// What to do with slots missed while nobody could fire them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpPlan {
    /// Missed slots to run now, oldest first.
    pub run: Vec<DateTime<Utc>>,
    /// How many missed slots are not run. A lower bound when more than
    /// [`CATCH_UP_SCAN_LIMIT`] slots were missed.
    pub skipped: u64,
    /// The first slot strictly after `now` (after `last_fired` if the clock went backwards).
    pub next: Option<DateTime<Utc>>,
}

/// Slots in (last_fired, now] decided by `policy`: One → only the latest missed slot runs, the others count as skipped;
/// All → every missed slot runs, oldest first, but at most `cap` of them (the rest, the oldest ones, are skipped and counted);
/// None → no missed slot runs, all are counted as skipped. `next` is the first slot strictly after `now`.
///
/// At most [`CATCH_UP_SCAN_LIMIT`] missed slots are counted and at most that many run. When
/// more were missed, the newest ones are still the ones that run, but `skipped` is only a
/// lower bound (at least [`CATCH_UP_SCAN_LIMIT`] minus the overlap with `run`).
///
/// If `now` is not after `last_fired` nothing is due, and `next` is the first slot after the
/// later of the two, so a clock that went backwards never re-fires a slot.
pub fn catch_up(
    schedule: &Schedule,
    last_fired: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: CatchUp,
    cap: usize,
) -> CatchUpPlan {
    let next = schedule.next_after(now.max(last_fired));
    let keep = match policy {
        CatchUp::One => 1,
        CatchUp::All => cap.min(CATCH_UP_SCAN_LIMIT as usize),
        CatchUp::None => 0,
    };
    let mut plan = CatchUpPlan {
        run: Vec::new(),
        skipped: 0,
        next,
    };
    if now <= last_fired {
        return plan;
    }

    // Walk forward from `last_fired`, keeping the newest `keep` slots seen.
    let mut newest = VecDeque::new();
    let mut counted: u64 = 0;
    let mut cursor = last_fired;
    let mut truncated = false;
    while let Some(slot) = schedule.next_after(cursor).filter(|slot| *slot <= now) {
        if counted == CATCH_UP_SCAN_LIMIT {
            truncated = true;
            break;
        }
        counted += 1;
        if keep > 0 {
            if newest.len() == keep {
                newest.pop_front();
            }
            newest.push_back(slot);
        }
        cursor = slot;
    }
    if !truncated {
        plan.run = newest.into();
        plan.skipped = counted - plan.run.len() as u64;
        return plan;
    }

    // Too many to walk: collect the newest `keep` slots backwards from `now` instead.
    let last_counted = cursor;
    let mut run = Vec::new();
    let mut cursor = now
        .checked_add_signed(TimeDelta::nanoseconds(1))
        .unwrap_or(now);
    while run.len() < keep {
        match schedule.prev_before(cursor) {
            Some(slot) if slot > last_fired => {
                run.push(slot);
                cursor = slot;
            }
            _ => break,
        }
    }
    run.reverse();
    let beyond_counted = run.iter().filter(|slot| **slot > last_counted).count() as u64;
    let kept = run.len() as u64;
    plan.skipped = if beyond_counted == kept {
        // No overlap with the counted slots: all of those were skipped, maybe more.
        CATCH_UP_SCAN_LIMIT
    } else {
        // The two walks met, so every slot was seen and the count is exact.
        CATCH_UP_SCAN_LIMIT + beyond_counted - kept
    };
    plan.run = run;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse()
            .unwrap_or_else(|err| panic!("bad test time {text}: {err}"))
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, tz).unwrap_or_else(|err| panic!("{expr} in {tz}: {err}"))
    }

    /// `count` consecutive slots after `start`.
    fn slots(expr: &str, tz: &str, start: &str, count: usize) -> Vec<DateTime<Utc>> {
        let schedule = schedule(expr, tz);
        let mut out = Vec::new();
        let mut cursor = at(start);
        while out.len() < count {
            let Some(slot) = schedule.next_after(cursor) else {
                break;
            };
            out.push(slot);
            cursor = slot;
        }
        out
    }

    #[test]
    fn parses_every_valid_form() {
        let valid = [
            "* * * * *",
            "? * * * ?",
            "0 0 * * *",
            "*/15 * * * * *",
            "59 59 23 31 12 7",
            "0-30/10 1-5 1,15 JAN-mar mon-FRI",
            "5,10-12/2,*/20 * * * *",
            "5/10 * * * *",
            "0 0 * * FRI-SUN",
            "  0   0 * * *  ",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@REBOOT",
            "@every 30s",
            "@every 1h30m",
            "@every 1h 30m",
            "@every 2h",
        ];
        for expr in valid {
            let result = Schedule::parse(expr, "UTC");
            assert!(result.is_ok(), "{expr}: {result:?}");
        }
    }

    #[test]
    fn equivalent_spellings_parse_to_the_same_schedule() {
        let pairs = [
            ("? * * * ?", "* * * * *"),
            ("0 * * * *", "0 0 * * * *"),
            ("0 0 * JAN-MAR MON-FRI", "0 0 * 1-3 1-5"),
            ("0 0 * jan-Mar mon-fri", "0 0 * 1-3 1-5"),
            ("0 0 * * 7", "0 0 * * 0"),
            ("0 0 * * SUN", "0 0 * * 0"),
            ("0 0 * * FRI-SUN", "0 0 * * 0,5,6"),
            ("0 0 * * 5-7", "0 0 * * 0,5,6"),
            ("*/20 * * * *", "0,20,40 * * * *"),
            ("10-30/10 * * * *", "10,20,30 * * * *"),
            ("45/5 * * * *", "45,50,55 * * * *"),
            ("0 0 * * */2", "0 0 * * 0,2,4,6"),
            // day-of-week `a/n` steps up to 7 (Sunday), as in cronie
            ("0 0 * * 3/4", "0 0 * * 3,0"),
            ("0 0 * * 1/2", "0 0 * * 1,3,5,0"),
            ("0 0 * * 5/1", "0 0 * * 5,6,0"),
            ("0 0 * * WED/4", "0 0 * * WED,SUN"),
            ("0 0 * * 6/4", "0 0 * * 6"),
            ("0 0 * * 7/3", "0 0 * * 0"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@every 1h30m", "@every 5400s"),
        ];
        for (left, right) in pairs {
            assert_eq!(
                schedule(left, "UTC"),
                schedule(right, "UTC"),
                "{left} vs {right}"
            );
        }
        assert_ne!(
            schedule("0 0 * * *", "UTC"),
            schedule("0 0 1-31 * *", "UTC")
        );
    }

    #[test]
    fn rejects_invalid_expressions_with_field_and_column() {
        let invalid: [(&str, &str, Option<usize>); 27] = [
            ("", "empty schedule", None),
            ("   ", "empty schedule", None),
            (
                "75 * * * *",
                "minute field `75`: value out of range 0-59",
                Some(1),
            ),
            (
                "0 24 * * *",
                "hour field `24`: value out of range 0-23",
                Some(3),
            ),
            (
                "0 0 0 * *",
                "day-of-month field `0`: value out of range 1-31",
                Some(5),
            ),
            (
                "0 0 * 13 *",
                "month field `13`: value out of range 1-12",
                Some(7),
            ),
            (
                "0 0 * * 8",
                "day-of-week field `8`: value out of range 0-7",
                Some(9),
            ),
            (
                "60 * * * * *",
                "second field `60`: value out of range 0-59",
                Some(1),
            ),
            (
                "0 99999999999 * * *",
                "hour field `99999999999`: value out of range",
                Some(3),
            ),
            ("* * * *", "expected 5 fields", None),
            ("* * * *", "got 4", None),
            ("* * * * * * *", "got 7", Some(13)),
            ("5-1 * * * *", "minute field `5-1`: reversed range", Some(1)),
            (
                "0 0 * MAR-JAN *",
                "month field `MAR-JAN`: reversed range",
                Some(7),
            ),
            (
                "*/0 * * * *",
                "minute field `*/0`: step must be at least 1",
                Some(3),
            ),
            (
                "*/60 * * * *",
                "minute field `*/60`: step out of range 1-59",
                Some(3),
            ),
            (
                "1,,2 * * * *",
                "minute field `1,,2`: empty list item",
                Some(3),
            ),
            ("1, * * * *", "empty list item", Some(3)),
            (
                "0 0 * FOO *",
                "month field `FOO`: expected a number 1-12 or a month name",
                Some(7),
            ),
            (
                "0 0 * * MOO",
                "day-of-week field `MOO`: expected a number 0-7 or a day",
                Some(9),
            ),
            (
                "a * * * *",
                "minute field `a`: expected a number 0-59",
                Some(1),
            ),
            (
                "0 0 * * 1-",
                "day-of-week field `1-`: incomplete range",
                Some(9),
            ),
            (
                "0 1-3/x * * *",
                "hour field `1-3/x`: step must be a number",
                Some(7),
            ),
            (" 0 0 5,40 * *", "day-of-month field `40`", Some(8)),
            ("@fortnightly", "unknown macro `@fortnightly`", Some(1)),
            (
                "@daily 5",
                "macro `@daily` takes no argument, but `5` follows it",
                Some(8),
            ),
            ("@every", "`@every` needs a duration", Some(1)),
        ];
        for (expr, fragment, column) in invalid {
            let err = Schedule::parse(expr, "UTC").expect_err(expr);
            assert!(
                err.to_string().contains(fragment),
                "{expr}: `{err}` lacks `{fragment}`"
            );
            assert_eq!(err.column(), column, "{expr}: column of `{err}`");
        }
    }

    #[test]
    fn rejects_bad_every_durations() {
        let invalid = [
            ("@every 0s", "must be at least 1s"),
            ("@every 500ms", "must be at least 1s"),
            ("@every 1500ms", "must be a whole number of seconds"),
            ("@every soon", "not a duration"),
            ("@every 5", "not a duration"),
            ("@every -5s", "not a duration"),
        ];
        for (expr, fragment) in invalid {
            let err = Schedule::parse(expr, "UTC").expect_err(expr);
            assert!(err.to_string().contains(fragment), "{expr}: {err}");
            assert_eq!(err.column(), Some(8), "{expr}");
        }
    }

    #[test]
    fn rejects_unknown_timezone_by_name() {
        let err = Schedule::parse("0 0 * * *", "Mars/Olympus").expect_err("unknown tz");
        assert_eq!(
            err,
            ScheduleError::UnknownTimezone {
                name: "Mars/Olympus".to_owned()
            }
        );
        assert!(err.to_string().contains("`Mars/Olympus`"));
        assert_eq!(err.column(), None);
    }

    #[test]
    fn reports_timezone_and_reboot() {
        let berlin = schedule("@reboot", "Europe/Berlin");
        assert!(berlin.is_reboot());
        assert_eq!(berlin.timezone(), chrono_tz::Europe::Berlin);
        assert_eq!(berlin.next_after(at("2026-01-01T00:00:00Z")), None);
        assert!(!schedule("@daily", "UTC").is_reboot());
        assert_eq!(schedule("@daily", "UTC").timezone(), chrono_tz::UTC);
    }

    #[test]
    fn next_after_in_utc() {
        // (expression, after, expected next)
        let cases = [
            (
                "*/15 * * * * *",
                "2026-01-05T10:00:07Z",
                Some("2026-01-05T10:00:15Z"),
            ),
            (
                "*/15 * * * * *",
                "2026-01-05T10:00:45Z",
                Some("2026-01-05T10:01:00Z"),
            ),
            (
                "*/15 * * * * *",
                "2026-01-05T10:00:14.999Z",
                Some("2026-01-05T10:00:15Z"),
            ),
            (
                "30 0 9 * * *",
                "2026-01-05T09:00:30Z",
                Some("2026-01-06T09:00:30Z"),
            ),
            (
                "* * * * *",
                "2026-01-05T10:00:00Z",
                Some("2026-01-05T10:01:00Z"),
            ),
            (
                "30 9 * * *",
                "2026-01-05T09:30:00Z",
                Some("2026-01-06T09:30:00Z"),
            ),
            (
                "30 9 * * *",
                "2026-01-05T09:29:59Z",
                Some("2026-01-05T09:30:00Z"),
            ),
            (
                "59 23 31 12 *",
                "2026-01-01T00:00:00Z",
                Some("2026-12-31T23:59:00Z"),
            ),
            // names, lists, ranges, steps
            (
                "0 0 * * MON-FRI",
                "2026-01-10T00:00:00Z",
                Some("2026-01-12T00:00:00Z"),
            ),
            (
                "0 12 * JAN,jul *",
                "2026-02-01T00:00:00Z",
                Some("2026-07-01T12:00:00Z"),
            ),
            (
                "5,10-12/2 * * * *",
                "2026-01-05T10:05:00Z",
                Some("2026-01-05T10:10:00Z"),
            ),
            (
                "5,10-12/2 * * * *",
                "2026-01-05T10:10:00Z",
                Some("2026-01-05T10:12:00Z"),
            ),
            (
                "5,10-12/2 * * * *",
                "2026-01-05T10:12:00Z",
                Some("2026-01-05T11:05:00Z"),
            ),
            (
                "0 */6 * * *",
                "2026-01-05T13:00:00Z",
                Some("2026-01-05T18:00:00Z"),
            ),
            (
                "0 0 * * 7",
                "2026-01-05T00:00:00Z",
                Some("2026-01-11T00:00:00Z"),
            ),
            (
                "0 0 * * FRI-SUN",
                "2026-01-05T00:00:00Z",
                Some("2026-01-09T00:00:00Z"),
            ),
            // Vixie: both day fields restricted → either matches (Fri 2 Jan, Fri 9 Jan, Tue 13 Jan)
            (
                "0 0 13 * FRI",
                "2026-01-01T00:00:00Z",
                Some("2026-01-02T00:00:00Z"),
            ),
            (
                "0 0 13 * FRI",
                "2026-01-09T00:00:00Z",
                Some("2026-01-13T00:00:00Z"),
            ),
            // only one restricted → it alone decides
            (
                "0 0 13 * *",
                "2026-01-01T00:00:00Z",
                Some("2026-01-13T00:00:00Z"),
            ),
            (
                "0 0 13 * ?",
                "2026-01-01T00:00:00Z",
                Some("2026-01-13T00:00:00Z"),
            ),
            (
                "0 0 * * FRI",
                "2026-01-09T00:00:00Z",
                Some("2026-01-16T00:00:00Z"),
            ),
            // macros
            (
                "@hourly",
                "2026-01-05T10:15:00Z",
                Some("2026-01-05T11:00:00Z"),
            ),
            (
                "@daily",
                "2026-01-05T10:15:00Z",
                Some("2026-01-06T00:00:00Z"),
            ),
            (
                "@weekly",
                "2026-01-05T10:15:00Z",
                Some("2026-01-11T00:00:00Z"),
            ),
            (
                "@monthly",
                "2026-01-05T10:15:00Z",
                Some("2026-02-01T00:00:00Z"),
            ),
            (
                "@yearly",
                "2026-01-05T10:15:00Z",
                Some("2027-01-01T00:00:00Z"),
            ),
            (
                "@every 30s",
                "2026-01-05T10:00:07Z",
                Some("2026-01-05T10:00:30Z"),
            ),
            (
                "@every 30s",
                "2026-01-05T10:00:30Z",
                Some("2026-01-05T10:01:00Z"),
            ),
            (
                "@every 1h30m",
                "1970-01-01T01:00:00Z",
                Some("1970-01-01T01:30:00Z"),
            ),
            (
                "@every 1h30m",
                "1970-01-01T01:30:00Z",
                Some("1970-01-01T03:00:00Z"),
            ),
            (
                "@every 7m",
                "1969-12-31T23:59:00Z",
                Some("1970-01-01T00:00:00Z"),
            ),
            ("@reboot", "2026-01-05T10:00:00Z", None),
            // leap day, impossible dates
            (
                "0 0 29 2 *",
                "2026-03-01T00:00:00Z",
                Some("2028-02-29T00:00:00Z"),
            ),
            ("0 0 30 2 *", "2026-01-01T00:00:00Z", None),
            ("0 0 31 4,6,9,11 *", "2026-01-01T00:00:00Z", None),
        ];
        for (expr, after, expected) in cases {
            assert_eq!(
                schedule(expr, "UTC").next_after(at(after)),
                expected.map(at),
                "{expr} after {after}"
            );
        }
    }

    #[test]
    fn every_is_aligned_to_the_epoch_in_any_timezone() {
        for expr in ["@every 30s", "@every 7m", "@every 1h30m", "@every 13s"] {
            let utc = schedule(expr, "UTC");
            let kolkata = schedule(expr, "Asia/Kolkata");
            let mut cursor = at("2026-03-29T00:59:58Z");
            for _ in 0..50 {
                let slot = utc.next_after(cursor).expect("slot");
                assert_eq!(kolkata.next_after(cursor), Some(slot), "{expr}");
                let Kind::Every { seconds } = utc.kind else {
                    panic!("{expr} is not @every");
                };
                assert_eq!(slot.timestamp() % seconds, 0, "{expr}: {slot}");
                assert!(slot > cursor);
                assert!(slot - cursor <= TimeDelta::seconds(seconds));
                assert_eq!(
                    utc.prev_before(slot + TimeDelta::milliseconds(1)),
                    Some(slot)
                );
                cursor = slot;
            }
        }
    }

    #[test]
    fn every_second_schedule_steps_one_second_at_a_time() {
        let slots = slots("* * * * * *", "Europe/Berlin", "2026-01-05T10:59:30Z", 3600);
        assert_eq!(slots.len(), 3600);
        assert_eq!(slots[0], at("2026-01-05T10:59:31Z"));
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], TimeDelta::seconds(1));
        }
    }

    #[test]
    fn timezone_offset_is_respected() {
        let cases = [
            (
                "Europe/Berlin",
                "2026-01-10T00:00:00Z",
                "2026-01-10T08:00:00Z",
            ),
            (
                "Europe/Berlin",
                "2026-07-10T00:00:00Z",
                "2026-07-10T07:00:00Z",
            ),
            (
                "America/New_York",
                "2026-01-10T00:00:00Z",
                "2026-01-10T14:00:00Z",
            ),
            (
                "America/New_York",
                "2026-07-10T00:00:00Z",
                "2026-07-10T13:00:00Z",
            ),
            (
                "Asia/Kolkata",
                "2026-01-10T00:00:00Z",
                "2026-01-10T03:30:00Z",
            ),
            ("UTC", "2026-01-10T00:00:00Z", "2026-01-10T09:00:00Z"),
        ];
        for (tz, after, expected) in cases {
            assert_eq!(
                schedule("0 9 * * *", tz).next_after(at(after)),
                Some(at(expected)),
                "{tz} after {after}"
            );
        }
    }

    #[test]
    fn dst_gap_fires_once_at_the_end_of_the_gap() {
        // (expression, tz, after, the next slots)
        let cases: [(&str, &str, &str, &[&str]); 5] = [
            // Berlin 2026-03-29 02:00 CET → 03:00 CEST (01:00 UTC).
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-28T12:00:00Z",
                &["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
            ),
            // 02:00, 02:20, 02:40 collapse into one slot.
            (
                "*/20 2 * * *",
                "Europe/Berlin",
                "2026-03-28T12:00:00Z",
                &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"],
            ),
            // gap times and 03:00 itself fire once; 03:30 is normal.
            (
                "0,30 2,3 * * *",
                "Europe/Berlin",
                "2026-03-29T00:00:00Z",
                &[
                    "2026-03-29T01:00:00Z",
                    "2026-03-29T01:30:00Z",
                    "2026-03-30T00:00:00Z",
                ],
            ),
            // New York 2026-03-08 02:00 EST → 03:00 EDT (07:00 UTC).
            (
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T12:00:00Z",
                &["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
            ),
            // every second across the Berlin gap
            (
                "* * * * * *",
                "Europe/Berlin",
                "2026-03-29T00:59:58Z",
                &[
                    "2026-03-29T00:59:59Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-29T01:00:01Z",
                ],
            ),
        ];
        for (expr, tz, after, expected) in cases {
            let expected: Vec<_> = expected.iter().map(|time| at(time)).collect();
            assert_eq!(
                slots(expr, tz, after, expected.len()),
                expected,
                "{expr} in {tz}"
            );
        }
    }

    #[test]
    fn dst_overlap_fires_once_at_the_first_occurrence() {
        let cases: [(&str, &str, &str, &[&str]); 3] = [
            // Berlin 2026-10-25 03:00 CEST → 02:00 CET: 02:30 CEST is 00:30 UTC.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-24T12:00:00Z",
                &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
            ),
            // Between the two occurrences: the second one (01:30 UTC) does not fire.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-25T00:45:00Z",
                &["2026-10-26T01:30:00Z"],
            ),
            // New York 2026-11-01 02:00 EDT → 01:00 EST: 01:30 EDT is 05:30 UTC.
            (
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            ),
        ];
        for (expr, tz, after, expected) in cases {
            let expected: Vec<_> = expected.iter().map(|time| at(time)).collect();
            assert_eq!(
                slots(expr, tz, after, expected.len()),
                expected,
                "{expr} in {tz} after {after}"
            );
        }
    }

    #[test]
    fn hourly_across_transitions() {
        let hour = TimeDelta::hours(1);
        // Spring forward: 00:00, 01:00 CET, then 03:00, 04:00 CEST — exactly 1h apart in UTC.
        let spring = slots("0 * * * *", "Europe/Berlin", "2026-03-28T22:30:00Z", 6);
        assert_eq!(spring[0], at("2026-03-28T23:00:00Z"));
        assert!(
            spring.windows(2).all(|pair| pair[1] - pair[0] == hour),
            "{spring:?}"
        );
        // Fall back: 02:00 CEST fires, the repeated 02:00 CET does not → one 2h step.
        let fall = slots("0 * * * *", "Europe/Berlin", "2026-10-24T21:30:00Z", 6);
        let expected: Vec<_> = [
            "2026-10-24T22:00:00Z",
            "2026-10-24T23:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T03:00:00Z",
            "2026-10-25T04:00:00Z",
        ]
        .iter()
        .map(|time| at(time))
        .collect();
        assert_eq!(fall, expected);
        let ny = slots("0 * * * *", "America/New_York", "2026-10-31T23:30:00Z", 48);
        let steps: Vec<_> = ny.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert_eq!(steps.iter().filter(|step| **step == hour * 2).count(), 1);
        assert!(steps.iter().all(|step| *step == hour || *step == hour * 2));
    }

    #[test]
    fn every_minute_counts_across_transition_days() {
        let count = |tz: &str, from: &str, until: &str| {
            slots("* * * * *", tz, from, 2000)
                .into_iter()
                .filter(|slot| *slot < at(until))
                .count()
        };
        // Berlin local 2026-03-29 lasts 23h: 1380 distinct slots.
        assert_eq!(
            count(
                "Europe/Berlin",
                "2026-03-28T22:59:59Z",
                "2026-03-29T22:00:00Z"
            ),
            1380
        );
        // Berlin local 2026-10-25 lasts 25h, but each local minute fires once: 1440 slots.
        assert_eq!(
            count(
                "Europe/Berlin",
                "2026-10-24T21:59:59Z",
                "2026-10-25T23:00:00Z"
            ),
            1440
        );
        // New York local 2026-11-01, 25h long.
        assert_eq!(
            count(
                "America/New_York",
                "2026-11-01T03:59:59Z",
                "2026-11-02T05:00:00Z"
            ),
            1440
        );
    }

    #[test]
    fn slots_are_strictly_increasing_and_match_backwards_search() {
        let cases = [
            ("*/7 * * * *", "Europe/Berlin", "2026-03-28T20:00:00Z"),
            ("*/7 * * * *", "Europe/Berlin", "2026-10-24T20:00:00Z"),
            ("*/10 1-3 * * *", "America/New_York", "2026-03-07T00:00:00Z"),
            ("*/10 0-3 * * *", "America/New_York", "2026-10-31T00:00:00Z"),
            ("0 0 13 * FRI", "Europe/Berlin", "2026-01-01T00:00:00Z"),
            ("*/20 2 * * *", "Europe/Berlin", "2026-03-27T00:00:00Z"),
        ];
        for (expr, tz, start) in cases {
            let schedule = schedule(expr, tz);
            let forward = slots(expr, tz, start, 200);
            assert_eq!(forward.len(), 200, "{expr}");
            assert!(
                forward.windows(2).all(|pair| pair[0] < pair[1]),
                "{expr} in {tz}"
            );
            for pair in forward.windows(2) {
                assert_eq!(
                    schedule.prev_before(pair[1]),
                    Some(pair[0]),
                    "{expr} in {tz}"
                );
            }
        }
    }

    #[test]
    fn far_apart_slots_are_found_backwards() {
        let leap = schedule("0 0 29 2 *", "UTC");
        assert_eq!(
            leap.prev_before(at("2031-01-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            schedule("0 0 30 2 *", "UTC").prev_before(at("2030-01-01T00:00:00Z")),
            None
        );
    }

    fn plan(runs: &[&str], skipped: u64, next: &str) -> CatchUpPlan {
        CatchUpPlan {
            run: runs.iter().map(|time| at(time)).collect(),
            skipped,
            next: Some(at(next)),
        }
    }

    #[test]
    fn catch_up_policies() {
        let every_ten = schedule("*/10 * * * *", "UTC");
        let last = at("2026-01-05T10:00:00Z");
        let now = at("2026-01-05T10:35:00Z");
        let next = "2026-01-05T10:40:00Z";
        let missed = [
            "2026-01-05T10:10:00Z",
            "2026-01-05T10:20:00Z",
            "2026-01-05T10:30:00Z",
        ];
        let cases = [
            (CatchUp::One, 10, plan(&missed[2..], 2, next)),
            (CatchUp::All, 10, plan(&missed, 0, next)),
            (CatchUp::All, 3, plan(&missed, 0, next)),
            (CatchUp::All, 2, plan(&missed[1..], 1, next)),
            (CatchUp::All, 0, plan(&[], 3, next)),
            (CatchUp::None, 10, plan(&[], 3, next)),
        ];
        for (policy, cap, expected) in cases {
            assert_eq!(
                catch_up(&every_ten, last, now, policy, cap),
                expected,
                "{policy:?} cap {cap}"
            );
        }
    }

    #[test]
    fn catch_up_edges() {
        let every_ten = schedule("*/10 * * * *", "UTC");
        let last = at("2026-01-05T10:00:00Z");
        for policy in [CatchUp::One, CatchUp::All, CatchUp::None] {
            // nothing missed
            assert_eq!(
                catch_up(&every_ten, last, last, policy, 5),
                plan(&[], 0, "2026-01-05T10:10:00Z"),
                "{policy:?}"
            );
            // clock went backwards: nothing runs, nothing fires twice
            assert_eq!(
                catch_up(&every_ten, last, at("2026-01-05T09:00:00Z"), policy, 5),
                plan(&[], 0, "2026-01-05T10:10:00Z"),
                "{policy:?}"
            );
            // not yet due
            assert_eq!(
                catch_up(&every_ten, last, at("2026-01-05T10:09:59Z"), policy, 5),
                plan(&[], 0, "2026-01-05T10:10:00Z"),
                "{policy:?}"
            );
            let reboot = schedule("@reboot", "UTC");
            let empty = CatchUpPlan {
                run: Vec::new(),
                skipped: 0,
                next: None,
            };
            assert_eq!(
                catch_up(&reboot, last, at("2026-02-01T00:00:00Z"), policy, 5),
                empty
            );
        }
        // `now` exactly on a slot includes it
        assert_eq!(
            catch_up(
                &every_ten,
                last,
                at("2026-01-05T10:10:00Z"),
                CatchUp::One,
                5
            ),
            plan(&["2026-01-05T10:10:00Z"], 0, "2026-01-05T10:20:00Z")
        );
    }

    #[test]
    fn catch_up_stops_counting_at_the_limit() {
        let last = at("2026-01-05T00:00:00Z");
        let now = at("2026-01-07T00:00:00Z"); // 172_800 one-second slots missed
        let next = "2026-01-07T00:00:01Z";
        let newest = [
            "2026-01-06T23:59:58Z",
            "2026-01-06T23:59:59Z",
            "2026-01-07T00:00:00Z",
        ];
        for expr in ["* * * * * *", "@every 1s"] {
            let every_second = schedule(expr, "Europe/Berlin");
            assert_eq!(
                catch_up(&every_second, last, now, CatchUp::One, 0),
                plan(&newest[2..], CATCH_UP_SCAN_LIMIT, next),
                "{expr}"
            );
        }
        let every_second = schedule("@every 1s", "UTC");
        assert_eq!(
            catch_up(&every_second, last, now, CatchUp::All, 3),
            plan(&newest, CATCH_UP_SCAN_LIMIT, next)
        );
        assert_eq!(
            catch_up(&every_second, last, now, CatchUp::None, 3),
            plan(&[], CATCH_UP_SCAN_LIMIT, next)
        );
        // 120_000 missed, cap above the limit: the walks overlap and the count is exact.
        let now = last + TimeDelta::seconds(120_000);
        let result = catch_up(&every_second, last, now, CatchUp::All, 1_000_000);
        assert_eq!(result.run.len() as u64, CATCH_UP_SCAN_LIMIT);
        assert_eq!(result.run.last(), Some(&now));
        assert_eq!(result.skipped, 20_000);
        assert!(result.run.windows(2).all(|pair| pair[0] < pair[1]));
    }

    /// A tiny xorshift generator, so the differential test sees the same expressions each run.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number in `0..n`.
        fn below(&mut self, n: u32) -> u32 {
            (self.next() % u64::from(n)) as u32
        }

        /// A number in `low..=high`.
        fn within(&mut self, low: u32, high: u32) -> u32 {
            low + self.below(high - low + 1)
        }

        fn percent(&mut self, chance: u32) -> bool {
            self.below(100) < chance
        }
    }

    /// A value of `field`, sometimes spelled as a month or weekday name.
    fn random_value(rng: &mut Xorshift, field: CronField, value: u32) -> String {
        let named = rng.percent(30);
        match field {
            CronField::Month if named => MONTH_NAMES[value as usize - 1].to_owned(),
            CronField::DayOfWeek if named => DAY_NAMES[value as usize % 7].to_owned(),
            _ => value.to_string(),
        }
    }

    /// One list item of `field`: `*`, `?`, a value, a range, or a step, all valid for our parser.
    fn random_item(rng: &mut Xorshift, field: CronField) -> String {
        let (min, max) = field.bounds();
        let step = rng.within(1, max.min(12));
        // Bare `*` and `?` are rare here: whole `*` fields come from `random_field`, and croner
        // refuses them inside a list (see DIFFERENCES).
        match rng.below(40) {
            0 => "*".to_owned(),
            1 => "?".to_owned(),
            2..=13 => {
                let value = rng.within(min, max);
                random_value(rng, field, value)
            }
            14..=21 => {
                let (first, last) = (rng.within(min, max), rng.within(min, max));
                let (first, last) = (first.min(last), first.max(last));
                // A day-of-week range may end on Sunday written as 0 (`5-0`).
                let last = if field == CronField::DayOfWeek && last == 7 && rng.percent(20) {
                    "0".to_owned()
                } else {
                    random_value(rng, field, last)
                };
                format!("{}-{last}", random_value(rng, field, first))
            }
            22..=27 => format!("*/{step}"),
            28..=33 => {
                let (first, last) = (rng.within(min, max), rng.within(min, max));
                let (first, last) = (first.min(last), first.max(last));
                format!("{first}-{last}/{step}")
            }
            _ => {
                let first = rng.within(min, max);
                format!("{}/{step}", random_value(rng, field, first))
            }
        }
    }

    /// A field of `field`: mostly `*`, else a list of one to three items.
    fn random_field(rng: &mut Xorshift, field: CronField) -> String {
        if rng.percent(40) {
            return "*".to_owned();
        }
        let items = rng.within(1, 3);
        (0..items)
            .map(|_| random_item(rng, field))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A random five- or six-field expression.
    fn random_expression(rng: &mut Xorshift) -> String {
        let mut fields = Vec::new();
        if rng.percent(50) {
            fields.push(random_field(rng, CronField::Second));
        }
        for field in [
            CronField::Minute,
            CronField::Hour,
            CronField::DayOfMonth,
            CronField::Month,
            CronField::DayOfWeek,
        ] {
            fields.push(random_field(rng, field));
        }
        fields.join(" ")
    }

    /// A known difference from croner: which expressions it concerns, and why we differ.
    struct Difference {
        why: &'static str,
        /// Whether croner refuses such an expression outright (else it reads it otherwise).
        croner_refuses: bool,
        /// Whether the difference concerns `expr`.
        applies: fn(&str) -> bool,
    }

    /// The day-of-week field's items.
    fn weekday_items(expr: &str) -> Vec<&str> {
        expr.split_whitespace()
            .last()
            .map(|field| field.split(',').collect())
            .unwrap_or_default()
    }

    const DIFFERENCES: [Difference; 4] = [
        Difference {
            why: "a bare `*` (or `?`) may be one item of a list for us and for cronie (`*,5`); \
                  croner takes it only as a whole field (`*/n` in a list is fine)",
            croner_refuses: true,
            applies: |expr| {
                expr.split_whitespace().any(|field| {
                    field.contains(',') && field.split(',').any(|item| item == "*" || item == "?")
                })
            },
        },
        Difference {
            why: "our grammar takes `?` for `*` in every field; croner only in the two day fields",
            croner_refuses: true,
            applies: |expr| {
                let fields: Vec<&str> = expr.split_whitespace().collect();
                let days = [fields.len() - 3, fields.len() - 1];
                fields
                    .iter()
                    .enumerate()
                    .any(|(index, field)| !days.contains(&index) && field.contains('?'))
            },
        },
        Difference {
            why: "our day-of-week range may end on Sunday written as 0 (`5-0` is `5-7`, like \
                  `FRI-SUN`); croner refuses it as a reversed range (so does cronie)",
            croner_refuses: true,
            applies: |expr| {
                weekday_items(expr).iter().any(|item| {
                    let range = item.split('/').next().unwrap_or_default();
                    range
                        .split_once('-')
                        .is_some_and(|(first, last)| last == "0" && first != "0" && first != "SUN")
                })
            },
        },
        Difference {
            why: "`SUN-SUN` and `0-SUN` are Sunday alone for us and for cronie (SUN is 0); \
                  croner rewrites `-SUN` to `-7` and so reads them as every day",
            croner_refuses: false,
            applies: |expr| {
                weekday_items(expr).iter().any(|item| {
                    let range = item.split('/').next().unwrap_or_default();
                    range.split_once('-').is_some_and(|(first, last)| {
                        last == "SUN" && (first == "0" || first == "SUN")
                    })
                })
            },
        },
    ];

    /// The next `count` firings after `start` by croner; fewer if it finds none.
    fn croner_slots(cron: &croner::Cron, start: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = start;
        while out.len() < count {
            let Ok(slot) = cron.find_next_occurrence(&cursor, false) else {
                break;
            };
            out.push(slot);
            cursor = slot;
        }
        out
    }

    /// Random five- and six-field expressions (fixed seed) give the same next firings as
    /// croner's, in UTC, except where [`DIFFERENCES`] says why not. Time zones stay out: our
    /// DST rule (one firing per local time) differs from croner's on purpose.
    #[test]
    fn agrees_with_croner_on_random_expressions_in_utc() {
        const EXPRESSIONS: usize = 3000;
        const FIRINGS: usize = 5;
        let starts = [
            "2026-01-01T00:00:00Z",
            "2027-02-28T23:59:59Z",
            "2028-02-29T12:34:56Z",
        ];
        // croner takes `a/n` only with sloppy ranges on; it then runs `a/n` to the field's
        // maximum, which in day-of-week is 7 (Sunday), as we do.
        let croner_parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .sloppy_ranges(true)
            .build();
        let mut rng = Xorshift(0x7a5c_3e11_d00d_f00d);
        let mut seen = [0usize; DIFFERENCES.len()];
        let mut compared = 0;
        let mut disagreements = Vec::new();
        for _ in 0..EXPRESSIONS {
            let expr = random_expression(&mut rng);
            let croner = croner_parser.parse(&expr);
            let known: Vec<usize> = (0..DIFFERENCES.len())
                .filter(|index| (DIFFERENCES[*index].applies)(&expr))
                .collect();
            for index in &known {
                seen[*index] += 1;
                if DIFFERENCES[*index].croner_refuses {
                    assert!(
                        croner.is_err(),
                        "croner parses {expr}; {}",
                        DIFFERENCES[*index].why
                    );
                }
            }
            if !known.is_empty() {
                continue;
            }
            let croner = match croner {
                Ok(croner) => croner,
                Err(err) => {
                    disagreements.push(format!("{expr}: croner refuses it: {err}"));
                    continue;
                }
            };
            for start in starts {
                let ours = slots(&expr, "UTC", start, FIRINGS);
                let theirs = croner_slots(&croner, at(start), FIRINGS);
                compared += ours.len();
                if ours != theirs {
                    disagreements.push(format!(
                        "{expr} after {start}:\n  ours   {ours:?}\n  croner {theirs:?}"
                    ));
                }
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreements, the first ones:\n{}",
            disagreements.len(),
            disagreements[..disagreements.len().min(10)].join("\n")
        );
        for (difference, seen) in DIFFERENCES.iter().zip(seen) {
            assert!(
                seen > 0,
                "no expression shows the difference: {}",
                difference.why
            );
        }
        // Most expressions are compared (about 32,600 of at most 45,000 slots with this seed).
        let most = EXPRESSIONS * starts.len() * FIRINGS / 2;
        assert!(compared > most, "only {compared} slots compared");
    }
}
