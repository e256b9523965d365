//! Reading a bbolt file: pick the newer valid meta page, then walk a
//! bucket's B+tree in key order, reading one page at a time (memory is the
//! tree's height in pages, whatever the file's size).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{BoltError, Result};
use crate::page::{
    u32_at, u64_at, Header, Meta, BRANCH, BUCKET_HEADER, BUCKET_LEAF_FLAG, DEFAULT_PAGE_SIZE,
    ELEMENT, HEADER, LEAF, META,
};

/// Deeper than any real tree (etcd's reach 4 or 5 levels); a deeper walk is a
/// loop in a corrupt file.
const MAX_DEPTH: usize = 64;

/// An open bbolt file, read-only.
#[derive(Debug)]
pub struct Db {
    file: File,
    len: u64,
    page_size: usize,
    meta: Meta,
}

/// One key of a bucket, with its value, or with the header of the nested
/// bucket it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub is_bucket: bool,
}

/// A bucket's tree: a root page, or a leaf page stored inline in the
/// parent's value.
#[derive(Debug, Clone)]
enum Root {
    Page(u64),
    Inline(Vec<u8>),
}

/// A bucket of an open file.
#[derive(Debug, Clone)]
pub struct Bucket<'a> {
    db: &'a Db,
    root: Root,
    sequence: u64,
}

impl Db {
    /// Opens the bbolt file at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        let file =
            File::open(path).map_err(|e| BoltError::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| BoltError::io(format!("stat {}", path.display()), e))?
            .len();
        Self::from_file(file, len)
    }

    /// Reads the first `len` bytes of `file` as a bbolt file: an etcd
    /// snapshot is the database followed by its SHA-256, which bbolt knows
    /// nothing of.
    pub fn from_file(file: File, len: u64) -> Result<Db> {
        let read_meta = |at: u64| -> Result<Meta> {
            let mut buf = [0u8; HEADER + crate::page::META_LEN];
            if at + buf.len() as u64 > len {
                return Err(BoltError::NotBolt);
            }
            file.read_exact_at(&mut buf, at)
                .map_err(|e| BoltError::io("read a meta page", e))?;
            if Header::parse(&buf).flags & META == 0 {
                return Err(BoltError::NotBolt);
            }
            Meta::parse(&buf[HEADER..])
        };
        let m0 = read_meta(0);
        let page_size = match &m0 {
            Ok(m) => m.page_size as usize,
            Err(_) => DEFAULT_PAGE_SIZE,
        };
        let m1 = read_meta(page_size as u64);
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(a), Err(b)) => {
                return Err(match (a, b) {
                    (e @ BoltError::Io { .. }, _) | (_, e @ BoltError::Io { .. }) => e,
                    (e @ BoltError::Version(_), _) | (_, e @ BoltError::Version(_)) => e,
                    (BoltError::BadChecksum, _) | (_, BoltError::BadChecksum) => {
                        BoltError::BadChecksum
                    }
                    _ => BoltError::NotBolt,
                })
            }
        };
        let page_size = meta.page_size as usize;
        if !(512..=1 << 16).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::Corrupt(format!("page size {page_size}")));
        }
        let needed = meta.pgid.saturating_mul(page_size as u64);
        if needed > len {
            return Err(BoltError::Truncated {
                page: meta.pgid.saturating_sub(1),
                needed,
                len,
            });
        }
        Ok(Db {
            file,
            len,
            page_size,
            meta,
        })
    }

    /// The meta page in force (the valid one with the higher transaction id).
    pub fn meta_txid(&self) -> u64 {
        self.meta.txid
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes the database occupies: its high-water mark in pages.
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size as u64
    }

    /// The top-level buckets, with their contents unread.
    pub fn root(&self) -> Bucket<'_> {
        Bucket {
            db: self,
            root: Root::Page(self.meta.root),
            sequence: self.meta.root_sequence,
        }
    }

    /// The top-level bucket `name`, if the file has one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'_>>> {
        self.root().bucket(name)
    }

    /// The names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        for e in self.root().entries() {
            let e = e?;
            if e.is_bucket {
                names.push(e.key);
            }
        }
        Ok(names)
    }

    /// Page `id` with its overflow pages, checked to be a leaf or a branch.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.meta.pgid {
            return Err(BoltError::Corrupt(format!(
                "page {id} is outside the database (pages 2..{})",
                self.meta.pgid
            )));
        }
        let ps = self.page_size as u64;
        let at = id * ps;
        let mut first = vec![0u8; self.page_size];
        self.read(&mut first, at, id)?;
        let header = Header::parse(&first);
        if header.id != id {
            return Err(BoltError::Corrupt(format!(
                "page {id} says it is page {}",
                header.id
            )));
        }
        if header.flags & (BRANCH | LEAF) == 0 {
            return Err(BoltError::Corrupt(format!(
                "page {id} is neither a branch nor a leaf (flags {:#x})",
                header.flags
            )));
        }
        if header.overflow == 0 {
            return Ok(first);
        }
        let total = (u64::from(header.overflow) + 1) * ps;
        if id + u64::from(header.overflow) >= self.meta.pgid {
            return Err(BoltError::Corrupt(format!(
                "page {id}'s {} overflow pages pass the end of the database",
                header.overflow
            )));
        }
        let mut page = first;
        page.resize(total as usize, 0);
        self.read(&mut page[self.page_size..], at + ps, id)?;
        Ok(page)
    }

    fn read(&self, buf: &mut [u8], at: u64, page: u64) -> Result<()> {
        let needed = at + buf.len() as u64;
        if needed > self.len {
            return Err(BoltError::Truncated {
                page,
                needed,
                len: self.len,
            });
        }
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| BoltError::io(format!("read page {page}"), e))
    }
}

impl<'a> Bucket<'a> {
    /// The bucket's sequence number (bbolt's `NextSequence`).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The bucket's keys in order, with their values or nested bucket headers.
    pub fn entries(&self) -> Entries<'a> {
        let first = match &self.root {
            Root::Page(id) => self.db.page(*id),
            Root::Inline(page) => Ok(page.clone()),
        };
        let mut entries = Entries {
            db: self.db,
            stack: Vec::new(),
            failed: false,
            pending: None,
        };
        match first.and_then(Frame::new) {
            Ok(frame) => entries.stack.push(frame),
            Err(e) => {
                entries.failed = true;
                entries.stack.clear();
                entries.pending = Some(e);
            }
        }
        entries
    }

    /// The nested bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>> {
        for e in self.entries() {
            let e = e?;
            if e.key.as_slice() > name {
                break;
            }
            if e.key == name {
                if !e.is_bucket {
                    return Ok(None);
                }
                return self.db.nested(&e.value).map(Some);
            }
        }
        Ok(None)
    }

    /// How many keys the bucket holds (nested bucket names included).
    pub fn len(&self) -> Result<u64> {
        let mut n = 0;
        for e in self.entries() {
            e?;
            n += 1;
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Db {
    /// The bucket a bucket header (a leaf value flagged as a bucket) describes.
    fn nested(&self, value: &[u8]) -> Result<Bucket<'_>> {
        if value.len() < BUCKET_HEADER {
            return Err(BoltError::Corrupt("a bucket header is short".into()));
        }
        let root = u64_at(value, 0);
        let sequence = u64_at(value, 8);
        let root = if root == 0 {
            Root::Inline(value[BUCKET_HEADER..].to_vec())
        } else {
            Root::Page(root)
        };
        Ok(Bucket {
            db: self,
            root,
            sequence,
        })
    }
}

/// A page being walked, and the next element to visit on it.
struct Frame {
    page: Vec<u8>,
    header: Header,
    next: usize,
}

impl Frame {
    fn new(page: Vec<u8>) -> Result<Frame> {
        if page.len() < HEADER {
            return Err(BoltError::Corrupt("an inline page is short".into()));
        }
        let header = Header::parse(&page);
        if header.flags & (BRANCH | LEAF) == 0 {
            return Err(BoltError::Corrupt(format!(
                "page {} is neither a branch nor a leaf",
                header.id
            )));
        }
        if HEADER + usize::from(header.count) * ELEMENT > page.len() {
            return Err(BoltError::Corrupt(format!(
                "page {}'s {} elements overrun it",
                header.id, header.count
            )));
        }
        Ok(Frame {
            page,
            header,
            next: 0,
        })
    }

    /// The bytes `len` long at `pos` from element `i`, checked to be on the page.
    fn slice(&self, i: usize, pos: u32, len: u32) -> Result<&[u8]> {
        let start = HEADER + i * ELEMENT + pos as usize;
        let end = start + len as usize;
        self.page.get(start..end).ok_or_else(|| {
            BoltError::Corrupt(format!(
                "page {} element {i} points past the page",
                self.header.id
            ))
        })
    }
}

/// A bucket's entries in key order (see [`Bucket::entries`]).
pub struct Entries<'a> {
    db: &'a Db,
    stack: Vec<Frame>,
    failed: bool,
    pending: Option<BoltError>,
}

impl Entries<'_> {
    fn step(&mut self) -> Result<Option<Entry>> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let i = top.next;
            if i >= usize::from(top.header.count) {
                self.stack.pop();
                continue;
            }
            top.next += 1;
            let el = HEADER + i * ELEMENT;
            if top.header.flags & BRANCH != 0 {
                let child = u64_at(&top.page, el + 8);
                if self.stack.len() >= MAX_DEPTH {
                    return Err(BoltError::Corrupt("the tree is too deep".into()));
                }
                let page = self.db.page(child)?;
                self.stack.push(Frame::new(page)?);
                continue;
            }
            let flags = u32_at(&top.page, el);
            let pos = u32_at(&top.page, el + 4);
            let ksize = u32_at(&top.page, el + 8);
            let vsize = u32_at(&top.page, el + 12);
            let key = top.slice(i, pos, ksize)?.to_vec();
            let value = top.slice(i, pos + ksize, vsize)?.to_vec();
            return Ok(Some(Entry {
                key,
                value,
                is_bucket: flags & BUCKET_LEAF_FLAG != 0,
            }));
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                self.stack.clear();
                Some(Err(e))
            }
        }
    }
}
