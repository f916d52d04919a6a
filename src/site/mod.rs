//! Site adapters: what poed knows about the chat site it drives. Only Poe exists today; the
//! browser and daemon layers know nothing of the site's markup or frames.

pub mod poe;
