//! Per-user token buckets: one over new messages, one over everything else a user asks
//! for (reads, typing, history and inbox requests, the HTTP API).
//!
//! The buckets are keyed by user id, not by connection, so opening more tabs or mixing
//! sockets and HTTP buys no extra rate. A bucket refills continuously at `rate` tokens per
//! second up to `burst`. A full bucket is indistinguishable from a missing one, so full
//! buckets are pruned from the map whenever it has doubled since the last sweep: memory
//! stays proportional to the users active within the last `burst / rate` seconds, not to
//! every user ever seen, and the sweep's cost is amortized over the insertions that
//! doubled the map.
//!
//! The map also has a hard bound (`memory.rate_limit_users`). Forgetting a bucket that is
//! still refilling would hand its user a fresh burst, so when that many users are all
//! refilling at once a new user is refused `rate_limited` instead, until the soonest of
//! them is full again; no sweep runs before then, so a crowd of newcomers cannot make
//! every request scan the map.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::ChatError;

/// Which of a user's two buckets an action draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// New `message` sends (PROTOCOL.md section 6: default 20/s, burst 50).
    Send,
    /// `message:read`, `typing`, `rooms`, `messages` and HTTP API requests (50/s, burst 100).
    Request,
}

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

/// The rate limits of every user, shared by all connections and HTTP requests.
pub struct RateLimiter {
    send: Buckets,
    request: Buckets,
}

impl RateLimiter {
    /// Buckets for at most `max_users` users at once, per kind.
    pub fn new(send: Rate, request: Rate, max_users: usize) -> RateLimiter {
        RateLimiter {
            send: Buckets::new(send.per_sec, send.burst, max_users),
            request: Buckets::new(request.per_sec, request.burst, max_users),
        }
    }

    /// Takes one token from `user`'s bucket, or refuses with `rate_limited` and the time
    /// until one token will be there.
    pub fn take(&self, user: &str, bucket: Bucket) -> Result<(), ChatError> {
        self.buckets(bucket)
            .take(user, Instant::now())
            .map_err(|wait| ChatError::rate_limited(millis_ceil(wait)))
    }

    /// Returns a token taken for an action that turned out not to count (a retry of a
    /// message that was already stored).
    pub fn give_back(&self, user: &str, bucket: Bucket) {
        self.buckets(bucket).give_back(user, Instant::now());
    }

    fn buckets(&self, bucket: Bucket) -> &Buckets {
        match bucket {
            Bucket::Send => &self.send,
            Bucket::Request => &self.request,
        }
    }
}

/// Whole milliseconds, rounded up so that a client waiting that long finds a token.
fn millis_ceil(wait: Duration) -> u64 {
    let nanos = wait.as_nanos();
    nanos.div_ceil(1_000_000).max(1) as u64
}

/// Fewest entries before the map is swept at all.
const MIN_SWEEP_LEN: usize = 1024;

struct Buckets {
    rate: f64,
    burst: f64,
    /// Most entries the map may hold.
    max_users: usize,
    state: Mutex<BucketMap>,
}

struct BucketMap {
    tokens: HashMap<String, Level>,
    /// Sweep full buckets once the map reaches this many entries.
    sweep_at: usize,
    /// After a sweep that left the map at `max_users`: no bucket is full before this, so
    /// new users are refused without sweeping again.
    saturated_until: Option<Instant>,
}

/// A bucket's level as of `at`.
#[derive(Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Buckets {
    fn new(rate: f64, burst: u32, max_users: usize) -> Buckets {
        let max_users = max_users.max(1);
        Buckets {
            rate,
            burst: f64::from(burst),
            max_users,
            state: Mutex::new(BucketMap {
                tokens: HashMap::new(),
                sweep_at: MIN_SWEEP_LEN.min(max_users),
                saturated_until: None,
            }),
        }
    }

    fn refilled(&self, level: Level, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(level.at).as_secs_f64();
        (level.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        // One lookup for a known user, the common case on every request.
        if let Some(level) = state.tokens.get_mut(user) {
            *level = self.spend(self.refilled(*level, now), now)?;
            return Ok(());
        }
        let level = self.spend(self.burst, now)?;
        if state.tokens.len() + 1 >= state.sweep_at {
            if let Some(until) = state.saturated_until.filter(|&until| now < until) {
                return Err(until - now);
            }
            self.sweep(&mut state, now);
            if state.tokens.len() >= self.max_users {
                let until = state.saturated_until.expect("a full sweep sets it");
                return Err(until.saturating_duration_since(now));
            }
        }
        state.tokens.insert(user.to_owned(), level);
        Ok(())
    }

    /// The level after taking one of `tokens`, or how long until there is one.
    fn spend(&self, tokens: f64, now: Instant) -> Result<Level, Duration> {
        if tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - tokens) / self.rate));
        }
        Ok(Level {
            tokens: tokens - 1.0,
            at: now,
        })
    }

    fn give_back(&self, user: &str, now: Instant) {
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        if let Some(level) = state.tokens.get_mut(user) {
            *level = Level {
                tokens: (self.refilled(*level, now) + 1.0).min(self.burst),
                at: now,
            };
        }
    }

    /// Drops every bucket that has refilled completely, and notes when the first of the
    /// rest will have.
    fn sweep(&self, state: &mut BucketMap, now: Instant) {
        let mut fewest_missing = self.burst;
        state.tokens.retain(|_, level| {
            let missing = self.burst - self.refilled(*level, now);
            fewest_missing = fewest_missing.min(missing);
            missing > 0.0
        });
        state.sweep_at = (state.tokens.len() * 2)
            .max(MIN_SWEEP_LEN)
            .min(self.max_users);
        state.saturated_until = (state.tokens.len() >= self.max_users)
            .then(|| now + Duration::from_secs_f64(fewest_missing / self.rate));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().unwrap().tokens.len()
    }

    #[cfg(test)]
    fn contains(&self, user: &str) -> bool {
        self.state.lock().unwrap().tokens.contains_key(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let buckets = Buckets::new(2.0, 5, 1000);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(buckets.take("a", start).is_ok());
        }
        let wait = buckets.take("a", start).unwrap_err();
        assert_eq!(millis_ceil(wait), 500);
        // Another user has a bucket of their own.
        assert!(buckets.take("b", start).is_ok());
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        assert!(buckets.take("a", later).is_ok());
        assert!(buckets.take("a", later).is_err());
        // A long pause refills up to the burst, not beyond.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(buckets.take("a", much_later).is_ok());
        }
        assert!(buckets.take("a", much_later).is_err());
    }

    #[test]
    fn a_token_given_back_can_be_taken_again() {
        let buckets = Buckets::new(1.0, 1, 1000);
        let now = Instant::now();
        assert!(buckets.take("a", now).is_ok());
        assert!(buckets.take("a", now).is_err());
        buckets.give_back("a", now);
        assert!(buckets.take("a", now).is_ok());
        // Giving back never overfills.
        buckets.give_back("a", now);
        buckets.give_back("a", now);
        assert!(buckets.take("a", now).is_ok());
        assert!(buckets.take("a", now).is_err());
    }

    #[test]
    fn full_buckets_are_swept() {
        let buckets = Buckets::new(10.0, 10, 1 << 20);
        let start = Instant::now();
        for i in 0..MIN_SWEEP_LEN - 1 {
            buckets.take(&format!("u{i}"), start).unwrap();
        }
        assert_eq!(buckets.len(), MIN_SWEEP_LEN - 1);
        // A second later every one of them is full again; the next new user sweeps them.
        buckets
            .take("newcomer", start + Duration::from_secs(1))
            .unwrap();
        assert_eq!(buckets.len(), 1);
    }

    #[test]
    fn idle_buckets_go_and_the_map_never_passes_its_bound() {
        // 1 token/s, burst 2: a bucket is full again at most 2 s after its last use.
        let buckets = Buckets::new(1.0, 2, 4);
        let start = Instant::now();
        for (i, user) in ["a", "b", "c", "d"].iter().enumerate() {
            buckets
                .take(user, start + Duration::from_millis(100 * i as u64))
                .unwrap();
        }
        assert_eq!(buckets.len(), 4);
        // All four are refilling: a newcomer is refused until the first of them ("a",
        // one token short since 0 ms) is full, at 1 s.
        let wait = buckets
            .take("e", start + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(buckets.len(), 4);
        // Known users are served as before.
        buckets
            .take("b", start + Duration::from_millis(600))
            .unwrap();
        // Refused again without another sweep: the wait counts down from the first one.
        let wait = buckets
            .take("f", start + Duration::from_millis(700))
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(300));
        // Once "a" is full it is dropped and the newcomer takes its place.
        buckets.take("e", start + Duration::from_secs(1)).unwrap();
        assert_eq!(buckets.len(), 4);
        assert!(buckets.contains("e") && !buckets.contains("a"));
        // Long idle: everyone refilled; the next newcomer's sweep empties the map.
        let later = start + Duration::from_secs(60);
        buckets.take("g", later).unwrap();
        assert_eq!(buckets.len(), 1);
        // A user whose bucket was dropped starts full, exactly as if it had been kept.
        for _ in 0..2 {
            buckets.take("a", later).unwrap();
        }
        assert!(buckets.take("a", later).is_err());
    }

    #[test]
    fn retry_after_is_whole_milliseconds_rounded_up() {
        assert_eq!(millis_ceil(Duration::from_micros(1)), 1);
        assert_eq!(millis_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(millis_ceil(Duration::from_millis(50)), 50);
        let limiter = RateLimiter::new(
            Rate {
                per_sec: 3.0,
                burst: 1,
            },
            Rate {
                per_sec: 1.0,
                burst: 1,
            },
            1000,
        );
        limiter.take("a", Bucket::Send).unwrap();
        let refused = limiter.take("a", Bucket::Send).unwrap_err();
        let retry = refused.retry_after_ms.unwrap();
        assert!((1..=334).contains(&retry), "{retry}");
        // The request bucket is separate.
        assert!(limiter.take("a", Bucket::Request).is_ok());
    }
}
