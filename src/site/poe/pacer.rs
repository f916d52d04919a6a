//! The account's send pace, set by what the site says.
//!
//! There is no known safe fixed interval between sends, so by default nothing waits while
//! the site takes every send. When the site refuses one because of its rate limit or too
//! many replies in flight, the refused send was not taken and may be sent again: the pacer
//! then holds every send of the account back for a backoff that doubles on each further
//! refusal and halves again on each taken send. Two optional user caps remain: a minimum
//! interval between sends and a number of sends per minute. The pacer is waited on right
//! before the send is pressed, so the pace holds between actual sends.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind};

/// The first backoff after a refusal, and the longest.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct State {
    last_send: Option<Instant>,
    /// Sends of the last minute, for the per-minute cap.
    recent: VecDeque<Instant>,
    backoff: Duration,
    /// No send before this (the current backoff).
    not_before: Option<Instant>,
}

#[derive(Debug)]
pub struct Pacer {
    min_interval: Duration,
    per_minute: u32,
    state: tokio::sync::Mutex<State>,
    /// The current backoff, readable without waiting (for `status`).
    backoff_ms: std::sync::atomic::AtomicU64,
}

impl Pacer {
    pub fn new(min_interval: Duration, per_minute: u32) -> Self {
        Pacer {
            min_interval,
            per_minute,
            state: tokio::sync::Mutex::new(State::default()),
            backoff_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// When the next send may go, given the state at `now`.
    fn next_slot(&self, s: &mut State, now: Instant) -> Instant {
        let mut at = now;
        if let Some(t) = s.not_before {
            at = at.max(t);
        }
        if let Some(last) = s.last_send {
            at = at.max(last + self.min_interval);
        }
        if self.per_minute > 0 {
            let minute = Duration::from_secs(60);
            while s
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= minute)
            {
                s.recent.pop_front();
            }
            if s.recent.len() >= self.per_minute as usize {
                if let Some(oldest) = s.recent.front() {
                    at = at.max(*oldest + minute);
                }
            }
        }
        at
    }

    /// Waits until the account may send, and books that moment as a send.
    pub async fn wait(&self, cancel: &CancellationToken) -> Result<(), Error> {
        let mut s = self.state.lock().await;
        loop {
            let now = Instant::now();
            let at = self.next_slot(&mut s, now);
            if at <= now {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = cancel.cancelled() => {
                    return Err(Error::new(ErrorKind::Cancelled, "the request was cancelled while waiting for its turn to send"))
                }
            }
        }
        let now = Instant::now();
        s.last_send = Some(now);
        if self.per_minute > 0 {
            s.recent.push_back(now);
        }
        Ok(())
    }

    /// The site refused a send for its rate or for too many replies in flight: hold every
    /// send back for a longer backoff.
    pub async fn refused(&self) -> Duration {
        let mut s = self.state.lock().await;
        s.backoff = (s.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
        s.not_before = Some(Instant::now() + s.backoff);
        self.publish(s.backoff);
        s.backoff
    }

    /// The site took a send: the backoff shrinks.
    pub async fn taken(&self) {
        let mut s = self.state.lock().await;
        if s.backoff.is_zero() {
            return;
        }
        s.backoff /= 2;
        if s.backoff < BACKOFF_FIRST {
            s.backoff = Duration::ZERO;
        }
        self.publish(s.backoff);
    }

    fn publish(&self, backoff: Duration) {
        self.backoff_ms.store(
            backoff.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The current backoff after refusals (zero while the site takes every send).
    pub fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn by_default_nothing_waits() {
        let pacer = Pacer::new(Duration::ZERO, 0);
        let cancel = CancellationToken::new();
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            pacer.wait(&cancel).await.expect("send");
        }
        assert!(t0.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_back_off_growing_and_taken_sends_shrink_it() {
        let pacer = Pacer::new(Duration::ZERO, 0);
        let cancel = CancellationToken::new();
        assert_eq!(pacer.refused().await, BACKOFF_FIRST);
        assert_eq!(pacer.refused().await, BACKOFF_FIRST * 2);
        assert_eq!(pacer.refused().await, BACKOFF_FIRST * 4);
        assert_eq!(pacer.backoff(), BACKOFF_FIRST * 4);
        let t0 = tokio::time::Instant::now();
        pacer.wait(&cancel).await.expect("send");
        assert!(t0.elapsed() >= BACKOFF_FIRST * 4);
        pacer.taken().await;
        assert_eq!(pacer.backoff(), BACKOFF_FIRST * 2);
        pacer.taken().await;
        pacer.taken().await;
        assert_eq!(pacer.backoff(), Duration::ZERO);
        for _ in 0..10 {
            pacer.refused().await;
        }
        assert_eq!(pacer.backoff(), BACKOFF_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn the_user_caps_hold_and_a_cancelled_wait_ends_at_once() {
        let pacer = Pacer::new(Duration::from_millis(200), 0);
        let cancel = CancellationToken::new();
        let t0 = tokio::time::Instant::now();
        pacer.wait(&cancel).await.expect("first");
        pacer.wait(&cancel).await.expect("second");
        assert!(t0.elapsed() >= Duration::from_millis(200));
        let capped = Pacer::new(Duration::ZERO, 2);
        let t1 = tokio::time::Instant::now();
        for _ in 0..3 {
            capped.wait(&cancel).await.expect("send");
        }
        assert!(t1.elapsed() >= Duration::from_secs(60));
        // Right after a send the next one must wait: a cancel ends that wait at once.
        pacer.wait(&cancel).await.expect("send");
        let other = CancellationToken::new();
        other.cancel();
        let e = pacer.wait(&other).await.expect_err("cancelled");
        assert_eq!(e.kind, ErrorKind::Cancelled);
    }
}
