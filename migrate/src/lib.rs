//! Live migration from a running etcd into Cairn, keeping every revision
//! (`cairn migrate`).
//!
//! The migrator is a client of both sides and keeps no state of its own:
//! it reads the source with etcd's API (paginated Range at a revision,
//! Watch, leases, alarms for the fence) and writes the target through
//! Cairn's migration service (`cairnpb.migrate.v1.Migration`), whose every
//! import call names the position it continues from; everything needed to
//! resume is in the target's store. See docs/design.md, "Live migration
//! from etcd".
//!
//! * [`connect`]: endpoints, TLS, the auth token.
//! * [`source`] and [`watch`]: reading the source; [`target`]: the migration service.
//! * [`copy`], [`follow`], [`start`]: `cairn migrate start`.
//! * [`status`], [`verify`], [`cutover`], [`abort`]: the other subcommands.
//! * [`progress`]: the progress bar or log lines; [`cli`]: flags and exit codes.
//! * [`upgrade`]: `cairn upgrade check|plan`, whether restarting a member
//!   of an etcd or Cairn cluster is safe now.

pub mod abort;
pub mod cli;
pub mod connect;
pub mod copy;
pub mod cutover;
pub mod error;
pub mod follow;
pub mod kine;
pub mod kvread;
pub mod progress;
pub mod source;
pub mod start;
pub mod status;
pub mod target;
pub mod upgrade;
pub mod verify;
pub mod watch;

pub use cli::{run, MigrateArgs};
pub use error::{Error, Result};
pub use progress::log_writer;
pub use upgrade::UpgradeArgs;
