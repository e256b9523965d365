//! The cluster version and the downgrade under way, kept in two `meta` rows
//! and written only by applying their log commands, so that every member
//! and every snapshot agree. A store from before these rows has neither: no
//! version decided, no downgrade (no layout change, so no schema bump).

use rusqlite::{Connection, OptionalExtension};

use crate::error::Result;
use crate::mvcc::schema::set_meta;
use crate::versions::{MinorVersion, VersionState};

const CLUSTER_VERSION: &str = "cluster_version";
/// The downgrade target while a downgrade is enabled; 0 otherwise.
const DOWNGRADE_TARGET: &str = "downgrade_target";

fn read(conn: &Connection, name: &str) -> Result<Option<MinorVersion>> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(MinorVersion::from_meta))
}

pub fn load(conn: &Connection) -> Result<VersionState> {
    Ok(VersionState {
        cluster: read(conn, CLUSTER_VERSION)?,
        downgrade_target: read(conn, DOWNGRADE_TARGET)?,
    })
}

pub fn set_cluster(conn: &Connection, v: MinorVersion) -> Result<()> {
    set_meta(conn, CLUSTER_VERSION, v.to_meta())
}

pub fn set_downgrade(conn: &Connection, target: Option<MinorVersion>) -> Result<()> {
    set_meta(
        conn,
        DOWNGRADE_TARGET,
        target.map_or(0, MinorVersion::to_meta),
    )
}
