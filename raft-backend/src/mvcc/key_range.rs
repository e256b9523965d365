//! etcd's `(key, range_end)` convention turned into an explicit interval.

use std::ops::Bound;

/// A key range's lower and upper bound.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys a request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: exactly `key`.
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means unbounded (`range_end == "\0"`).
    Interval {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Interval {
                start: key.to_vec(),
                end: None,
            },
            end => KeyRange::Interval {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    /// The range as bounds over an ordered map keyed by `Vec<u8>` (borrowed,
    /// so a lookup copies no key); `None` when it is empty (end <= start).
    pub fn bounds(&self) -> Option<KeyBounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::Interval { start, end: None } => {
                Some((Bound::Included(start), Bound::Unbounded))
            }
            KeyRange::Interval {
                start,
                end: Some(end),
            } => (end > start).then_some((Bound::Included(start), Bound::Excluded(end))),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key.as_slice() == k,
            KeyRange::Interval { start, end } => {
                k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice())
            }
        }
    }
}

/// The smallest key greater than every key with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    // Every byte was 0xff (or the prefix was empty): the range is unbounded.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_forms() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"a") && all.contains(b"\xff\xff"));
        let from_b = KeyRange::new(b"b", b"\0");
        assert!(!from_b.contains(b"a") && from_b.contains(b"zzz"));
        let ab = KeyRange::new(b"a", b"b");
        assert!(ab.contains(b"a") && ab.contains(b"a\xff") && !ab.contains(b"b"));
        let inverted = KeyRange::new(b"z", b"a");
        assert!(!inverted.contains(b"m") && !inverted.contains(b"z"));
        assert_eq!(inverted.bounds(), None);
        assert_eq!(KeyRange::new(b"a", b"a").bounds(), None);
        assert_eq!(
            ab.bounds(),
            Some((Bound::Included(&b"a"[..]), Bound::Excluded(&b"b"[..])))
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
