//! The Poe adapter: the model table ([`models`]), prompt formatting ([`prompt`]), the parser
//! of the page's update-WebSocket frames ([`frames`]), the reader of the page's GraphQL
//! requests and responses ([`network`]), and the driver that runs one
//! completion in a tab ([`driver`]), spacing the account's sends ([`pacer`]), and the
//! reader of the site's bot list ([`discover`]). Selectors and URLs come from [`crate::config::SiteConfig`]
//! because the real site renames its CSS classes.

pub mod discover;
pub mod driver;
pub mod frames;
pub mod models;
pub mod network;
pub mod pacer;
pub mod prompt;
pub mod session;
