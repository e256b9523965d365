//! Every acknowledged write is in the reference history, where it was
//! acknowledged: a Put's value at its revision, a Delete's tombstone at its
//! revision; and a write conditioned on the key's mod_revision (kube's
//! create, update and delete Txns) found the key as it was conditioned.

use std::collections::HashMap;

use crate::events::Ev;
use crate::robustness::history::History;

/// One acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub client: usize,
    pub key: Vec<u8>,
    /// `Some(value)` for a put, `None` for a delete that deleted the key.
    pub value: Option<Vec<u8>>,
    /// The response header's revision: the write's own.
    pub rev: i64,
    /// The Txn's condition, `mod_revision(key) == cond` (0: absent), if any.
    pub cond: Option<i64>,
}

/// The anomalies: acknowledged writes missing from `h` or contradicting it.
pub fn check_acked(h: &History, acked: &[Acked]) -> Vec<String> {
    let mut at: HashMap<(i64, &[u8]), &Ev> = HashMap::new();
    for e in h.events() {
        at.insert((e.rev(), e.kv.key.as_slice()), e);
    }
    let mut bad = Vec::new();
    for a in acked {
        let key = String::from_utf8_lossy(&a.key);
        let what = match &a.value {
            Some(v) => format!("put({key:?}, {:?})", String::from_utf8_lossy(v)),
            None => format!("delete({key:?})"),
        };
        let found = at.get(&(a.rev, a.key.as_slice()));
        let why = match found {
            None => Some(format!(
                "no event of the key at revision {} in the history (a lost write)",
                a.rev
            )),
            Some(e) if e.put != a.value.is_some() => {
                Some(format!("the history has {e:?} at that revision"))
            }
            Some(e) if a.value.as_ref().is_some_and(|v| *v != e.kv.value) => {
                Some(format!("the history has {e:?} at that revision"))
            }
            Some(e) => match a.cond {
                Some(c) if e.prev.as_ref().map_or(0, |p| p.modr) != c => Some(format!(
                    "its Txn required mod_revision {c}, but the key was {:?} before it",
                    e.prev
                )),
                _ => None,
            },
        };
        if let Some(why) = why {
            bad.push(format!(
                "client {} acknowledged {what} at revision {}{}: {why}",
                a.client,
                a.rev,
                a.cond
                    .map(|c| format!(" (if mod_revision == {c})"))
                    .unwrap_or_default()
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::history::build::history;

    fn put(key: &str, value: &str, rev: i64, cond: Option<i64>) -> Acked {
        Acked {
            client: 0,
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
            rev,
            cond,
        }
    }

    #[test]
    fn present_writes_pass_and_lost_or_misconditioned_ones_fail() {
        let h = history(&[("a", Some("1")), ("a", Some("2")), ("a", None)]);
        let del = Acked {
            value: None,
            cond: Some(3),
            ..put("a", "", 4, None)
        };
        let good = [put("a", "1", 2, Some(0)), put("a", "2", 3, Some(2)), del];
        assert_eq!(check_acked(&h, &good), Vec::<String>::new());
        assert!(check_acked(&h, &[put("a", "9", 5, None)])[0].contains("lost write"));
        assert!(check_acked(&h, &[put("a", "9", 3, None)])[0].contains("the history has"));
        assert!(check_acked(&h, &[put("a", "2", 3, Some(0))])[0].contains("required"));
    }
}
