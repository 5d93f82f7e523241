//! The cron parser: a crontab entry and a timezone (the input's first line and the rest), then
//! the next slots after a few instants, one of them in a DST change.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use taskmesh_core::cron::Schedule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, tz) = text.split_once('\n').unwrap_or((text, "UTC"));
    let Ok(schedule) = Schedule::parse(expr, tz) else {
        return;
    };
    for at in ["2026-01-01T00:00:00Z", "2026-03-29T00:59:59Z", "2026-10-25T00:30:00Z"] {
        let at: DateTime<Utc> = at.parse().expect("a valid instant");
        if let Some(next) = schedule.next_after(at) {
            assert!(next > at, "{expr:?} in {tz}: next slot {next} is not after {at}");
        }
    }
});
