//! Spacing between two sends of the account (`pool.min_send_interval_ms`).
//!
//! Sites flag accounts that send at a machine's rate. The pacer is waited on right before the
//! send button is clicked, so the interval holds between the actual sends, whatever each
//! request spent opening its chat and entering its prompt.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind};

pub struct Pacer {
    interval: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits until the account may send, and books that moment as its last send.
    pub async fn wait(&self, cancel: &CancellationToken) -> Result<(), Error> {
        if self.interval.is_zero() {
            return Ok(());
        }
        let mut last = self.last.lock().await;
        if let Some(at) = *last {
            tokio::select! {
                _ = tokio::time::sleep_until((at + self.interval).into()) => {}
                _ = cancel.cancelled() => {
                    return Err(Error::new(ErrorKind::Cancelled, "the request was cancelled"))
                }
            }
        }
        *last = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_are_spaced_and_a_cancelled_wait_ends_at_once() {
        let pacer = Pacer::new(Duration::from_millis(200));
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        pacer.wait(&cancel).await.expect("first");
        pacer.wait(&cancel).await.expect("second");
        assert!(t0.elapsed() >= Duration::from_millis(200));
        let other = CancellationToken::new();
        other.cancel();
        let e = pacer.wait(&other).await.expect_err("cancelled");
        assert_eq!(e.kind, ErrorKind::Cancelled);
        let off = Pacer::new(Duration::ZERO);
        let t1 = Instant::now();
        off.wait(&cancel).await.expect("off");
        off.wait(&cancel).await.expect("off");
        assert!(t1.elapsed() < Duration::from_millis(100));
    }
}
