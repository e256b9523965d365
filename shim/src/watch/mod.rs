//! Watches: the hub that fans applied events out to watchers, and the gRPC
//! service that carries them.

mod hub;
mod service;
mod shared_events;
mod watcher;

pub use hub::WatchHub;
pub use service::WatchService;
