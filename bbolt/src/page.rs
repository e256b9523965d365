//! bbolt's on-disk records: the page header, the meta page, leaf and branch
//! elements, and the bucket header. All integers are little-endian (etcd's
//! files come from little-endian machines; bbolt writes native order).
//!
//! A page starts with a 16-byte header: id (u64), flags (u16), count (u16,
//! elements on the page), overflow (u32, pages that follow this one and
//! belong to it). Elements follow the header, 16 bytes each; an element's
//! `pos` is the distance from the element itself to its key, and a leaf's
//! value follows its key.

use crate::error::{BoltError, Result};

/// The page size etcd's files use (the OS page size on Linux x86-64 and arm64).
pub const DEFAULT_PAGE_SIZE: usize = 4096;

pub const HEADER: usize = 16;
pub const ELEMENT: usize = 16;

pub const BRANCH: u16 = 0x01;
pub const LEAF: u16 = 0x02;
pub const META: u16 = 0x04;

/// A leaf element whose value is a bucket header (a sub-bucket).
pub const BUCKET_LEAF_FLAG: u32 = 0x01;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
/// The freelist page id of a file written without a freelist (`NoFreelistSync`).
pub const NO_FREELIST: u64 = u64::MAX;

/// A bucket's header, the value of its leaf element: its root page (0 when
/// the bucket is inline: its one leaf page follows the header in the value)
/// and its sequence.
pub const BUCKET_HEADER: usize = 16;

/// Bytes of the meta record (after the page header) that its checksum covers.
const META_SUMMED: usize = 56;
pub const META_LEN: usize = META_SUMMED + 8;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Header {
        Header {
            id: u64_at(b, 0),
            flags: u16_at(b, 8),
            count: u16_at(b, 10),
            overflow: u32_at(b, 12),
        }
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }
}

/// The meta record: which tree is the database's, and how far the file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// The root bucket's root page and sequence.
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// The high-water mark: pages `0..pgid` are the file's.
    pub pgid: u64,
    pub txid: u64,
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
pub fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Meta {
    /// Parses the meta record at the start of `b` (just after a page
    /// header), checking magic, version and checksum in that order.
    pub fn parse(b: &[u8]) -> Result<Meta> {
        if b.len() < META_LEN {
            return Err(BoltError::NotBolt);
        }
        if u32_at(b, 0) != MAGIC {
            return Err(BoltError::NotBolt);
        }
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(BoltError::Version(version));
        }
        if fnv64a(&b[..META_SUMMED]) != u64_at(b, META_SUMMED) {
            return Err(BoltError::BadChecksum);
        }
        Ok(Meta {
            page_size: u32_at(b, 8),
            flags: u32_at(b, 12),
            root: u64_at(b, 16),
            root_sequence: u64_at(b, 24),
            freelist: u64_at(b, 32),
            pgid: u64_at(b, 40),
            txid: u64_at(b, 48),
        })
    }

    /// The record with its checksum, as it follows a meta page's header.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.to_le_bytes());
        b[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv64a(&b[..META_SUMMED]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64a_matches_the_published_vectors() {
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv64a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn a_meta_record_round_trips_and_a_flipped_bit_fails_its_checksum() {
        let meta = Meta {
            page_size: 4096,
            flags: 0,
            root: 8,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: 9,
            txid: 11,
        };
        let mut b = meta.encode();
        assert_eq!(Meta::parse(&b).unwrap(), meta);
        b[41] ^= 1;
        assert!(matches!(Meta::parse(&b), Err(BoltError::BadChecksum)));
        b[0] ^= 1;
        assert!(matches!(Meta::parse(&b), Err(BoltError::NotBolt)));
    }
}
