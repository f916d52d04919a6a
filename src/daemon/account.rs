//! What poed knows of the account: signed in or not, the bots whose quota ran out, and the
//! last refusal the site gave. Updated from what pages and replies show; read by `status`,
//! `/health` and `/metrics`.

use std::sync::Mutex;

use crate::error::{Error, ErrorKind};
use crate::protocol::{AccountState, AccountStatus, DailyLimit, Points};
use crate::site::poe::frames::PointInfo;

#[derive(Debug, Default)]
pub struct Account {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    status: AccountStatus,
    /// When the browser received the frame of the points held (DevTools' monotonic clock,
    /// seconds).
    points_received: Option<f64>,
}

/// How far back a points reading may be timed and still count as older than the one held.
/// Readings of different tabs reach poed in their own order, milliseconds apart; a gap this
/// large means the clock itself changed (a new browser), so the reading is taken.
const REORDER_WINDOW_SECS: f64 = 30.0;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Account {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> AccountState {
        self.lock().status.state
    }

    pub fn snapshot(&self) -> AccountStatus {
        self.lock().status.clone()
    }

    /// A page of `bot` showed its prompt box: the profile is signed in.
    pub fn signed_in(&self) {
        self.lock().status.state = AccountState::SignedIn;
    }

    /// `bot` answered: signed in, and whatever limit was seen for it has passed.
    pub fn answered(&self, bot: &str) {
        let mut inner = self.lock();
        let a = &mut inner.status;
        a.state = AccountState::SignedIn;
        a.daily_limits.retain(|d| d.bot != bot);
    }

    /// Updates the state from an error a page or a reply of `bot` gave.
    pub fn failed(&self, bot: &str, e: &Error) {
        let mut inner = self.lock();
        let a = &mut inner.status;
        match e.kind {
            ErrorKind::NotLoggedIn => a.state = AccountState::SignedOut,
            ErrorKind::DailyLimit => {
                if e.state.as_deref() == Some("reached_limit") {
                    // The points ran out: the whole account is out until they reset.
                    a.out_of_points_until =
                        Some(a.points.as_ref().and_then(|p| p.reset_at).unwrap_or(0));
                }
                a.state = AccountState::SignedIn;
                a.daily_limits.retain(|d| d.bot != bot);
                a.daily_limits.push(DailyLimit {
                    bot: bot.to_owned(),
                    seen_at: unix_now(),
                });
                a.last_site_error = Some(e.to_string());
            }
            ErrorKind::SiteError
            | ErrorKind::RateLimited
            | ErrorKind::PromptTooLong
            | ErrorKind::BotUnavailable => a.last_site_error = Some(e.to_string()),
            _ => {}
        }
    }

    /// The site told the account's points, in a frame the browser received at `received`
    /// (DevTools' monotonic clock, seconds). Frames of different tabs reach poed in their own
    /// order: a reading the browser received before the one held is older news and is dropped.
    pub fn points(&self, info: &PointInfo, received: f64) {
        let mut inner = self.lock();
        if let Some(held) = inner.points_received {
            if received < held && held - received < REORDER_WINDOW_SECS {
                tracing::debug!(
                    balance = ?info.balance,
                    older_by_ms = (held - received) * 1000.0,
                    "points reading older than the one held, dropped"
                );
                return;
            }
        }
        inner.points_received = Some(received);
        let a = &mut inner.status;
        let reset_at = info
            .reset_micros
            .and_then(|us| u64::try_from(us / 1_000_000).ok());
        let old = a.points.take().unwrap_or_default();
        let points = Points {
            balance: info.balance.or(old.balance),
            allotment: info.allotment.or(old.allotment),
            reset_at: reset_at.or(old.reset_at),
            seen_at: unix_now(),
        };
        // Points back (a reset, or a top-up): the account can send again.
        if let (Some(until), Some(balance)) = (a.out_of_points_until, points.balance) {
            if balance > old.balance.unwrap_or(0) || (until != 0 && unix_now() >= until) {
                a.out_of_points_until = None;
            }
        }
        a.points = Some(points);
    }

    /// The session changed (cookies imported, signed in again): what was seen no longer holds.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let a = &mut inner.status;
        a.daily_limits.clear();
        a.last_site_error = None;
        a.out_of_points_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_kept_and_running_out_lasts_until_the_reset() {
        let a = Account::default();
        let info = |balance| PointInfo {
            balance: Some(balance),
            allotment: Some(3000),
            reset_micros: Some(1_900_000_000_000_000),
            warning_percent: None,
        };
        a.points(&info(2731), 1.0);
        let p = a.snapshot().points.expect("points");
        assert_eq!(
            (p.balance, p.allotment, p.reset_at),
            (Some(2731), Some(3000), Some(1_900_000_000))
        );
        a.failed(
            "GPT-4",
            &Error::new(ErrorKind::DailyLimit, "used up").with_state("reached_limit"),
        );
        assert_eq!(a.snapshot().out_of_points_until, Some(1_900_000_000));
        // Still out: the balance did not grow.
        a.points(&info(5), 2.0);
        assert!(a.snapshot().out_of_points_until.is_some());
        a.points(&info(3000), 3.0);
        assert!(a.snapshot().out_of_points_until.is_none());
    }

    #[test]
    fn a_reading_received_before_the_one_held_is_dropped() {
        let a = Account::default();
        let info = |balance| PointInfo {
            balance: Some(balance),
            allotment: None,
            reset_micros: None,
            warning_percent: None,
        };
        let balance = |a: &Account| a.snapshot().points.and_then(|p| p.balance);
        a.points(&info(2980), 100.5);
        // Another tab's frame, received earlier, reaches poed later.
        a.points(&info(2990), 100.2);
        assert_eq!(balance(&a), Some(2980));
        a.points(&info(2970), 100.9);
        assert_eq!(balance(&a), Some(2970));
        // Same receive time (one frame seen by two tabs): taken.
        a.points(&info(2960), 100.9);
        assert_eq!(balance(&a), Some(2960));
        // A new browser's clock may start anywhere: a reading far "older" is taken.
        a.points(&info(3000), 5.0);
        assert_eq!(balance(&a), Some(3000));
    }

    #[test]
    fn limits_are_kept_per_bot_until_that_bot_answers() {
        let a = Account::default();
        assert_eq!(a.state(), AccountState::Unknown);
        a.failed("GPT-4", &Error::new(ErrorKind::DailyLimit, "used up"));
        a.failed("Claude", &Error::new(ErrorKind::DailyLimit, "used up"));
        assert_eq!(a.snapshot().daily_limits.len(), 2);
        a.answered("GPT-4");
        assert!(a.snapshot().out_of_points_until.is_none());
        let s = a.snapshot();
        assert_eq!(s.state, AccountState::SignedIn);
        assert_eq!(s.daily_limits.len(), 1);
        assert_eq!(s.daily_limits[0].bot, "Claude");
        a.failed("GPT-4", &Error::new(ErrorKind::NotLoggedIn, "out"));
        assert_eq!(a.state(), AccountState::SignedOut);
        a.failed("GPT-4", &Error::new(ErrorKind::Timeout, "slow"));
        assert_eq!(a.state(), AccountState::SignedOut);
    }
}
