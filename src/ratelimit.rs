//! Per-user token buckets: one over new messages, one over everything else a user asks
//! for (reads, typing, history and inbox requests, the HTTP API).
//!
//! The buckets are keyed by user id, not by connection, so opening more tabs or mixing
//! sockets and HTTP buys no extra rate. A bucket refills continuously at `rate` tokens per
//! second up to `burst`. A full bucket is indistinguishable from a missing one, so full
//! buckets are pruned from the map whenever it has doubled since the last sweep: memory
//! stays proportional to the users active within the last `burst / rate` seconds.

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
    pub fn new(send: Rate, request: Rate) -> RateLimiter {
        RateLimiter {
            send: Buckets::new(send.per_sec, send.burst),
            request: Buckets::new(request.per_sec, request.burst),
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
    state: Mutex<BucketMap>,
}

struct BucketMap {
    tokens: HashMap<String, Level>,
    /// Sweep full buckets once the map reaches this many entries.
    sweep_at: usize,
}

/// A bucket's level as of `at`.
#[derive(Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Buckets {
    fn new(rate: f64, burst: u32) -> Buckets {
        Buckets {
            rate,
            burst: f64::from(burst),
            state: Mutex::new(BucketMap {
                tokens: HashMap::new(),
                sweep_at: MIN_SWEEP_LEN,
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
        state.tokens.insert(user.to_owned(), level);
        if state.tokens.len() >= state.sweep_at {
            self.sweep(&mut state, now);
        }
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

    /// Drops every bucket that has refilled completely.
    fn sweep(&self, state: &mut BucketMap, now: Instant) {
        state
            .tokens
            .retain(|_, level| self.refilled(*level, now) < self.burst);
        state.sweep_at = (state.tokens.len() * 2).max(MIN_SWEEP_LEN);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().unwrap().tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let buckets = Buckets::new(2.0, 5);
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
        let buckets = Buckets::new(1.0, 1);
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
        let buckets = Buckets::new(10.0, 10);
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
        );
        limiter.take("a", Bucket::Send).unwrap();
        let refused = limiter.take("a", Bucket::Send).unwrap_err();
        let retry = refused.retry_after_ms.unwrap();
        assert!((1..=334).contains(&retry), "{retry}");
        // The request bucket is separate.
        assert!(limiter.take("a", Bucket::Request).is_ok());
    }
}
