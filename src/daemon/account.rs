//! What poed knows of the account: signed in or not, the bots whose quota ran out, and the
//! last refusal the site gave. Updated from what pages and replies show; read by `status`,
//! `/health` and `/metrics`.

use std::sync::Mutex;

use crate::error::{Error, ErrorKind};
use crate::protocol::{AccountState, AccountStatus, DailyLimit, Points};
use crate::site::poe::frames::PointInfo;

#[derive(Debug, Default)]
pub struct Account {
    inner: Mutex<AccountStatus>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Account {
    fn lock(&self) -> std::sync::MutexGuard<'_, AccountStatus> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> AccountState {
        self.lock().state
    }

    pub fn snapshot(&self) -> AccountStatus {
        self.lock().clone()
    }

    /// A page of `bot` showed its prompt box: the profile is signed in.
    pub fn signed_in(&self) {
        self.lock().state = AccountState::SignedIn;
    }

    /// `bot` answered: signed in, and whatever limit was seen for it has passed.
    pub fn answered(&self, bot: &str) {
        let mut a = self.lock();
        a.state = AccountState::SignedIn;
        a.daily_limits.retain(|d| d.bot != bot);
    }

    /// Updates the state from an error a page or a reply of `bot` gave.
    pub fn failed(&self, bot: &str, e: &Error) {
        let mut a = self.lock();
        match e.kind {
            ErrorKind::NotLoggedIn => a.state = AccountState::SignedOut,
            ErrorKind::DailyLimit if e.state.as_deref() == Some("reached_limit") => {
                // The points ran out: the account is out until they reset.
                a.state = AccountState::SignedIn;
                a.out_of_points_until =
                    Some(a.points.as_ref().and_then(|p| p.reset_at).unwrap_or(0));
                a.last_site_error = Some(e.to_string());
            }
            ErrorKind::DailyLimit => {
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

    /// The site told the account's points.
    pub fn points(&self, info: &PointInfo) {
        let mut a = self.lock();
        let reset_at = info.reset_micros.and_then(|us| u64::try_from(us / 1_000_000).ok());
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
        let mut a = self.lock();
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
        a.points(&info(2731));
        let p = a.snapshot().points.expect("points");
        assert_eq!((p.balance, p.allotment, p.reset_at), (Some(2731), Some(3000), Some(1_900_000_000)));
        a.failed(
            "GPT-4",
            &Error::new(ErrorKind::DailyLimit, "used up").with_state("reached_limit"),
        );
        assert_eq!(a.snapshot().out_of_points_until, Some(1_900_000_000));
        // Still out: the balance did not grow.
        a.points(&info(5));
        assert!(a.snapshot().out_of_points_until.is_some());
        a.points(&info(3000));
        assert!(a.snapshot().out_of_points_until.is_none());
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
