//! Writing a bbolt file from sorted keys, bucket by bucket, in one pass.
//!
//! Each bucket's tree is built bottom-up as its keys arrive: a leaf page is
//! written as soon as the next key would not fit, and its first key goes up
//! into the branch level above, which is written the same way. So the writer
//! holds one unfinished page per level of one tree, whatever the data's
//! size. Pages are written in order from page 2 on; the two meta pages come
//! last, once the root bucket's tree exists, so a file cut short by a crash
//! has no valid meta page and is refused whole.
//!
//! The file has no freelist (meta names `u64::MAX`, as etcd's do under
//! `NoFreelistSync`) and no free page: bbolt rebuilds an empty freelist
//! when it opens it for writing.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{BoltError, Result};
use crate::page::{
    Header, Meta, BRANCH, BUCKET_HEADER, BUCKET_LEAF_FLAG, DEFAULT_PAGE_SIZE, ELEMENT, HEADER,
    LEAF, META, NO_FREELIST,
};

/// bbolt's limits on a key and a value.
const MAX_KEY: usize = 32768;
const MAX_VALUE: usize = (1 << 31) - 2;

/// A bbolt file being written.
pub struct DbWriter {
    out: BufWriter<File>,
    path: PathBuf,
    page_size: usize,
    next_pgid: u64,
    /// Top-level buckets written so far: name and bucket header (with its
    /// inline page when it has one). A few dozen bytes each.
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DbWriter {
    /// Creates the file at `path`, which must not exist, with etcd's page size.
    pub fn create(path: &Path) -> Result<DbWriter> {
        Self::create_with_page_size(path, DEFAULT_PAGE_SIZE)
    }

    pub fn create_with_page_size(path: &Path, page_size: usize) -> Result<DbWriter> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| BoltError::io(format!("create {}", path.display()), e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Room for the meta pages, written last.
        out.write_all(&vec![0u8; 2 * page_size])
            .map_err(|e| BoltError::io("write", e))?;
        Ok(DbWriter {
            out,
            path: path.to_path_buf(),
            page_size,
            next_pgid: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts the top-level bucket `name`; its keys follow in ascending order.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_>> {
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(BoltError::DuplicateBucket(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        Ok(BucketWriter {
            name: name.to_vec(),
            tree: Tree::default(),
            db: self,
        })
    }

    /// Writes the root bucket and the meta pages (transaction `txid`, and
    /// `txid - 1` on page 1, as bbolt writes a copy of a database), then
    /// syncs the file. Returns the file's size.
    pub fn finish(mut self, txid: u64) -> Result<u64> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut tree = Tree::default();
        for (name, header) in buckets {
            tree.add(&mut self, &name, &header, BUCKET_LEAF_FLAG)?;
        }
        let root = match tree.finish(&mut self)? {
            Finished::Page(id) => id,
            // The root bucket always has a page of its own.
            Finished::Inline(page) => self.write_page(page)?,
        };
        let meta = Meta {
            page_size: self.page_size as u32,
            flags: 0,
            root,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: self.next_pgid,
            txid: txid.max(1),
        };
        let mut metas = vec![0u8; 2 * self.page_size];
        for (id, txid) in [(0u64, meta.txid), (1, meta.txid - 1)] {
            let page = &mut metas[id as usize * self.page_size..];
            Header {
                id,
                flags: META,
                count: 0,
                overflow: 0,
            }
            .write(page);
            let record = Meta { txid, ..meta }.encode();
            page[HEADER..HEADER + record.len()].copy_from_slice(&record);
        }
        let io = |e| BoltError::io(format!("write {}", self.path.display()), e);
        self.out.flush().map_err(io)?;
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&metas).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(meta.pgid * self.page_size as u64)
    }

    /// Writes an encoded page (its header's id and overflow filled in here)
    /// at the next free page id, padded to whole pages.
    fn write_page(&mut self, mut page: Vec<u8>) -> Result<u64> {
        let id = self.next_pgid;
        let pages = page.len().div_ceil(self.page_size).max(1);
        page.resize(pages * self.page_size, 0);
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        self.out
            .write_all(&page)
            .map_err(|e| BoltError::io(format!("write {}", self.path.display()), e))?;
        self.next_pgid += pages as u64;
        Ok(id)
    }
}

/// One top-level bucket being written (see [`DbWriter::bucket`]).
pub struct BucketWriter<'a> {
    db: &'a mut DbWriter,
    name: Vec<u8>,
    tree: Tree,
}

impl BucketWriter<'_> {
    /// Adds a key, which must sort after the previous one.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(BoltError::Corrupt(format!(
                "a key of {} bytes (bbolt takes 1 to {MAX_KEY})",
                key.len()
            )));
        }
        if value.len() > MAX_VALUE {
            return Err(BoltError::Corrupt(format!(
                "a value of {} bytes is too large for bbolt",
                value.len()
            )));
        }
        if self
            .tree
            .last_key
            .as_deref()
            .is_some_and(|last| last >= key)
        {
            return Err(BoltError::KeyOrder {
                bucket: String::from_utf8_lossy(&self.name).into_owned(),
            });
        }
        self.tree.last_key = Some(key.to_vec());
        self.tree.add(self.db, key, value, 0)
    }

    /// Writes what remains of the bucket's tree and records it in the root bucket.
    pub fn finish(mut self) -> Result<()> {
        let header = match self.tree.finish(self.db)? {
            Finished::Page(id) => {
                let mut h = vec![0u8; BUCKET_HEADER];
                h[0..8].copy_from_slice(&id.to_le_bytes());
                h
            }
            Finished::Inline(page) => {
                let mut h = vec![0u8; BUCKET_HEADER];
                h.extend_from_slice(&page);
                h
            }
        };
        self.db
            .buckets
            .push((std::mem::take(&mut self.name), header));
        Ok(())
    }
}

/// A tree under construction: one unfinished page per level, leaves first.
#[derive(Default)]
struct Tree {
    levels: Vec<Level>,
    last_key: Option<Vec<u8>>,
}

/// The unfinished page of one level, and how many pages the level has written.
#[derive(Default)]
struct Level {
    /// (flags, key, value): a leaf's value, or a branch's child page id.
    elements: Vec<(u32, Vec<u8>, Vec<u8>)>,
    bytes: usize,
    written: u64,
}

enum Finished {
    Page(u64),
    /// A leaf small enough to live in its parent's value (bbolt inlines a
    /// bucket up to a quarter of a page).
    Inline(Vec<u8>),
}

impl Tree {
    fn add(&mut self, db: &mut DbWriter, key: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.push(db, 0, flags, key.to_vec(), value.to_vec())
    }

    fn push(
        &mut self,
        db: &mut DbWriter,
        level: usize,
        flags: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Level::default);
        }
        let size = ELEMENT + key.len() + if level == 0 { value.len() } else { 0 };
        let l = &self.levels[level];
        if !l.elements.is_empty() && HEADER + l.bytes + size > db.page_size {
            self.flush(db, level)?;
        }
        let l = &mut self.levels[level];
        l.bytes += size;
        l.elements.push((flags, key, value));
        Ok(())
    }

    /// Writes level `level`'s unfinished page and hands its first key up.
    fn flush(&mut self, db: &mut DbWriter, level: usize) -> Result<()> {
        let l = &mut self.levels[level];
        let elements = std::mem::take(&mut l.elements);
        l.bytes = 0;
        l.written += 1;
        let first = elements
            .first()
            .map(|(_, k, _)| k.clone())
            .unwrap_or_default();
        let id = db.write_page(encode(level == 0, &elements))?;
        self.push(db, level + 1, 0, first, id.to_le_bytes().to_vec())
    }

    fn finish(mut self, db: &mut DbWriter) -> Result<Finished> {
        let mut level = 0;
        loop {
            if level >= self.levels.len() {
                // No key at all: an empty inline leaf.
                return Ok(Finished::Inline(encode(true, &[])));
            }
            let l = &self.levels[level];
            let is_top = self.levels.len() == level + 1 && l.written == 0;
            if is_top {
                let page = encode(level == 0, &l.elements);
                if level == 0 && page.len() <= db.page_size / 4 {
                    return Ok(Finished::Inline(page));
                }
                return db.write_page(page).map(Finished::Page);
            }
            if !l.elements.is_empty() {
                self.flush(db, level)?;
            }
            level += 1;
        }
    }
}

/// A leaf or branch page's bytes: header (id and overflow left for
/// `write_page`), elements, then keys (and a leaf's values).
fn encode(leaf: bool, elements: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let data: usize = elements
        .iter()
        .map(|(_, k, v)| k.len() + if leaf { v.len() } else { 0 })
        .sum();
    let mut page = vec![0u8; HEADER + ELEMENT * elements.len()];
    page.reserve(data);
    Header {
        id: 0,
        flags: if leaf { LEAF } else { BRANCH },
        count: elements.len() as u16,
        overflow: 0,
    }
    .write(&mut page);
    for (i, (flags, key, value)) in elements.iter().enumerate() {
        let el = HEADER + i * ELEMENT;
        let pos = (page.len() - el) as u32;
        if leaf {
            page[el..el + 4].copy_from_slice(&flags.to_le_bytes());
            page[el + 4..el + 8].copy_from_slice(&pos.to_le_bytes());
            page[el + 8..el + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[el + 12..el + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(key);
            page.extend_from_slice(value);
        } else {
            page[el..el + 4].copy_from_slice(&pos.to_le_bytes());
            page[el + 4..el + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[el + 8..el + 16].copy_from_slice(value);
            page.extend_from_slice(key);
        }
    }
    page
}
