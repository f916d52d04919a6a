//! Everything that talks to Chromium, and nothing that knows the site.
//!
//! - [`supervisor`]: owns the `Browser` and its handler task; launches Chromium on the
//!   persistent profile (or attaches to a running one) and shuts it down.
//! - [`profile_lock`]: Chromium's `Singleton*` lock files: stale ones are cleared, live ones
//!   are a clear startup error.
//! - [`tab`]: one tab and its event pump, which turns the tab's CDP WebSocket events into
//!   parsed updates for whoever is running a request on it.
//! - [`tab_pool`]: lends tabs to requests; FIFO queue with a cap, `busy` beyond it.
//! - [`cdp`]: small DevTools helpers: wait for a selector, insert text, click.

pub mod cdp;
pub mod profile_lock;
pub mod supervisor;
pub mod tab;
pub mod tab_pool;
