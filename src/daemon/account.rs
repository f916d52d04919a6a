//! What poed knows of the account: signed in or not, the bots whose quota ran out, and the
//! last refusal the site gave. Updated from what pages and replies show; read by `status`,
//! `/health` and `/metrics`.

use std::sync::Mutex;

use crate::error::{Error, ErrorKind};
use crate::protocol::{AccountState, AccountStatus, DailyLimit};

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

    /// The session changed (cookies imported, signed in again): what was seen no longer holds.
    pub fn reset(&self) {
        let mut a = self.lock();
        a.daily_limits.clear();
        a.last_site_error = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_kept_per_bot_until_that_bot_answers() {
        let a = Account::default();
        assert_eq!(a.state(), AccountState::Unknown);
        a.failed("GPT-4", &Error::new(ErrorKind::DailyLimit, "used up"));
        a.failed("Claude", &Error::new(ErrorKind::DailyLimit, "used up"));
        assert_eq!(a.snapshot().daily_limits.len(), 2);
        a.answered("GPT-4");
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
