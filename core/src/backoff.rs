//! Capped doubling delays between tries, with optional jitter.
//!
//! One [`Backoff`] serves every retry loop of a node: the mesh redialling configured peers, the
//! notifier's delivery tries, the MySQL sink, and the supervisor's retries and daemon restarts.
//! It depends on nothing but std.
//!
//! Without jitter a delay is `first × 2^n`, at most `max`. Jitter shortens each wait that
//! [`Backoff::next_wait`] hands out by a random part of up to `fraction` of it, so nodes that
//! started together spread their tries out; a jittered wait is never longer than the plain one,
//! so the cap still holds. The random source is a small splitmix64 generator with a seed the
//! caller passes in ([`clock_seed`] for a different one each time, a constant in tests).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Doubling delays from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The plain (unjittered) wait [`Backoff::next_wait`] hands out next.
    current: Duration,
    jitter: Option<Jitter>,
}

#[derive(Debug, Clone)]
struct Jitter {
    /// The largest part of a wait taken off, 0.0..=1.0.
    fraction: f64,
    /// splitmix64 state: good numbers from any seed, 0 and small ones included.
    state: u64,
}

impl Jitter {
    /// A number in `0.0..1.0`.
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits, as many as an f64 holds exactly.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Backoff {
    /// Waits of `first`, then twice as long each time, at most `max`; no jitter.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            current: first,
            jitter: None,
        }
    }

    /// The same, with each wait from [`Backoff::next_wait`] shortened by a random part of up to
    /// `fraction` (clamped to 0.0..=1.0), drawn from a generator seeded with `seed`.
    pub fn with_jitter(self, fraction: f64, seed: u64) -> Self {
        Self {
            jitter: Some(Jitter {
                fraction: fraction.clamp(0.0, 1.0),
                state: seed,
            }),
            ..self
        }
    }

    /// The plain delay before retry number `retry` (0 for the first): `first × 2^retry`,
    /// at most `max`. Pure, without jitter, for callers that count their tries themselves.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The wait before the next try (jittered, if asked for); each call doubles the one after,
    /// up to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.current.min(self.max);
        self.current = self.current.saturating_mul(2).min(self.max);
        match &mut self.jitter {
            Some(jitter) => {
                let cut = jitter.fraction * jitter.next_unit();
                wait.saturating_sub(wait.mul_f64(cut))
            }
            None => wait,
        }
    }

    /// Starts again from `first` (the jitter generator goes on where it was).
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

/// A seed that differs from call to call and from process to process: the clock, hashed with
/// std's randomly keyed hasher. Cheap, and not for anything secret.
pub fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn next_doubles_up_to_the_cap_and_reset_starts_over() {
        // (first, max, the waits `next` hands out)
        let cases: [(u64, u64, &[u64]); 5] = [
            (
                500,
                30_000,
                &[500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
            ),
            (1000, 30_000, &[1000, 2000, 4000, 8000, 16000, 30000, 30000]),
            (50, 200, &[50, 100, 200, 200]),
            (0, 1000, &[0, 0, 0]),
            // a first wait above the cap is cut to it
            (5000, 1000, &[1000, 1000]),
        ];
        for (first, max, expected) in cases {
            let mut backoff = Backoff::new(ms(first), ms(max));
            let waits: Vec<Duration> = expected.iter().map(|_| backoff.next_wait()).collect();
            let expected: Vec<Duration> = expected.iter().map(|wait| ms(*wait)).collect();
            assert_eq!(waits, expected, "first {first} ms, max {max} ms");
            backoff.reset();
            assert_eq!(backoff.next_wait(), expected[0], "after reset");
        }
    }

    #[test]
    fn delay_is_the_plain_wait_of_a_retry_number() {
        let backoff = Backoff::new(ms(1000), ms(300_000));
        // (retry, delay)
        let cases = [
            (0, ms(1000)),
            (1, ms(2000)),
            (4, ms(16_000)),
            (8, ms(256_000)),
            (9, ms(300_000)),
            (31, ms(300_000)),
            (32, ms(300_000)),
            (u32::MAX, ms(300_000)),
        ];
        for (retry, expected) in cases {
            assert_eq!(backoff.delay(retry), expected, "retry {retry}");
        }
        let mut stepping = backoff.clone();
        for retry in 0..12 {
            assert_eq!(stepping.next_wait(), backoff.delay(retry), "retry {retry}");
        }
        // No overflow, whatever the numbers.
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
    }

    #[test]
    fn jitter_shortens_each_wait_by_at_most_its_fraction() {
        // (fraction, seed)
        let cases = [(0.25, 1), (0.25, 42), (0.5, 7), (1.0, 99), (3.0, 5)];
        for (fraction, seed) in cases {
            let mut plain = Backoff::new(ms(1000), ms(30_000));
            let mut jittered = plain.clone().with_jitter(fraction, seed);
            let kept = 1.0 - fraction.min(1.0);
            for _ in 0..50 {
                let (limit, wait) = (plain.next_wait(), jittered.next_wait());
                assert!(wait <= limit, "{wait:?} > {limit:?} (fraction {fraction})");
                assert!(
                    wait >= limit.mul_f64(kept),
                    "{wait:?} < {kept} × {limit:?} (fraction {fraction})"
                );
            }
        }
    }

    #[test]
    fn jitter_is_deterministic_for_a_seed_and_differs_between_seeds() {
        let waits = |seed: u64| {
            let mut backoff = Backoff::new(ms(1000), ms(30_000)).with_jitter(0.25, seed);
            (0..8).map(|_| backoff.next_wait()).collect::<Vec<_>>()
        };
        assert_eq!(waits(42), waits(42));
        assert_ne!(waits(42), waits(43));
        // Jitter spreads: the first waits of different seeds are not all the same.
        let firsts: std::collections::HashSet<Duration> =
            (0..20).map(|seed| waits(seed)[0]).collect();
        assert!(firsts.len() > 15, "{firsts:?}");
        // No jitter at fraction 0.
        let mut none = Backoff::new(ms(1000), ms(30_000)).with_jitter(0.0, 42);
        assert_eq!(none.next_wait(), ms(1000));
        assert_eq!(none.next_wait(), ms(2000));
    }

    #[test]
    fn clock_seeds_differ() {
        assert_ne!(clock_seed(), clock_seed());
    }
}
