//! Migration from kine, k3s's datastore, over SQLite or PostgreSQL: the
//! same live, revision-exact import as from etcd, read from kine's own
//! table instead of etcd's API (`cairn migrate start --from sqlite://… |
//! postgres://…`).
//!
//! Kine's authority is its source (k3s-io/kine v0.16.4:
//! `pkg/drivers/generic/generic.go`, `pkg/logstructured/sqllog/sql.go`,
//! `pkg/ttl/ttl.go`). It keeps one table, `kine(id, name, created, deleted,
//! create_revision, prev_revision, lease, value, old_value)`, where each
//! row is one revision: its id. [`row`] says what a row means in etcd's
//! model; [`db`] reads the table through [`sqlite`] or [`postgres`];
//! [`copy`], [`follow`], [`start`], [`verify`] and [`cutover`] are the
//! steps, writing the target through the same migration service as an
//! etcd source. See docs/design.md, "Migrating from kine".

pub mod copy;
pub mod cutover;
pub mod db;
pub mod follow;
pub mod postgres;
pub mod row;
pub mod source_url;
pub mod sqlite;
pub mod start;
pub mod tls;
pub mod verify;

pub use db::KineDb;
pub use source_url::KineUrl;
