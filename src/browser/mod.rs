//! Everything that talks to Chromium, and nothing that knows the site.
//!
//! - [`supervisor`]: owns the `Browser`, its handler task and the Chromium process; launches
//!   Chromium on the persistent profile (or attaches to a running one), watches it, relaunches
//!   it and shuts it down.
//! - [`pipe`]: Chromium's DevTools on a private pipe (`--remote-debugging-pipe`), bridged to
//!   chromiumoxide's WebSocket client through a one-shot, secret-guarded loopback listener:
//!   no debugging port another local process could use.
//! - [`profile_lock`]: the profile before a launch: private modes (0700), Chromium's
//!   `Singleton*` lock files (stale ones are cleared, live ones are a clear startup error).
//! - [`tab`]: one tab and its event pump, which turns the tab's CDP WebSocket events into
//!   parsed updates for whoever is running a request on it.
//! - [`update_socket`]: which of a tab's WebSockets is the site's update socket, and whether
//!   one is open (a send waits for it).
//! - [`tab_pool`]: lends tabs to requests; FIFO queue with a cap, `busy` beyond it.
//! - [`priority`]: the launched browser's GPU process at a low CPU priority, so the processes
//!   that carry a request get the cores first.
//! - [`user_agent`]: the agent the tabs present (a headless browser's as its windowed self).
//! - [`cdp`]: small DevTools helpers: wait for a selector, insert text, click.

pub mod cdp;
pub mod pipe;
pub mod priority;
pub mod profile_lock;
pub mod supervisor;
pub mod tab;
pub mod tab_pool;
pub mod update_socket;
pub mod user_agent;
