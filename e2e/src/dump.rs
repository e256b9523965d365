//! A full snapshot of a store's keyspace, for "nothing changed" checks.

use std::fmt;

use anyhow::{Context, Result};
use etcd_client::{Client, GetOptions};

/// A key-value with every field etcd returns, printable with escaped bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kv {
    /// key bytes
    pub key: Vec<u8>,
    /// value bytes
    pub value: Vec<u8>,
    /// create_revision
    pub create_revision: i64,
    /// mod_revision
    pub mod_revision: i64,
    /// version
    pub version: i64,
    /// lease
    pub lease: i64,
}

impl Kv {
    /// Copies every field of a client key-value.
    pub fn from_client(kv: &etcd_client::KeyValue) -> Kv {
        Kv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// Bytes printed as an escaped byte string, e.g. `b"k/\x00\xff"`.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Kv {{ key: {:?}, value: {:?}, create: {}, mod: {}, version: {}, lease: {} }}",
            Escaped(&self.key),
            Escaped(&self.value),
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease
        )
    }
}

/// The current revision and every key-value, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// header.revision of the full range.
    pub revision: i64,
    /// All key-values.
    pub kvs: Vec<Kv>,
}

/// Reads the whole keyspace (`"\0"` to `"\0"`) at the current revision.
pub async fn dump(client: &mut Client) -> Result<Dump> {
    let resp = client
        .get(vec![0u8], Some(GetOptions::new().with_range(vec![0u8])))
        .await
        .context("full-range dump")?;
    Ok(Dump {
        revision: resp
            .header()
            .context("range response without header")?
            .revision(),
        kvs: resp.kvs().iter().map(Kv::from_client).collect(),
    })
}
