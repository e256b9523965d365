//! etcd's own snapshot format (a bbolt file, see `cairn-bbolt`), both ways:
//! the store written as etcd's backend (`export`, behind
//! `Maintenance.Snapshot`), and a store built from one (`import`, behind
//! `cairn snapshot restore`). `layout` says what each bucket holds, `file`
//! opens and checks a file, `status` reports on one as etcdutl does.

pub mod export;
pub mod file;
pub mod import;
pub mod layout;
pub mod status;

#[cfg(test)]
mod tests;
