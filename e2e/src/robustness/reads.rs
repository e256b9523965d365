//! Reads at a known revision agree with the reference history: paginated
//! lists at a fixed revision, count_only ranges and serializable reads (a
//! member's read at its own applied revision) must show exactly the state
//! the history implies at the response's revision.

use crate::events::K;
use crate::robustness::history::History;

/// One successful read over a prefix.
#[derive(Clone, Debug)]
pub struct ReadAt {
    /// Names the read in reports (kind, member).
    pub what: String,
    pub prefix: Vec<u8>,
    /// The revision the read was served at (its header's, or the one asked for).
    pub rev: i64,
    pub got: Got,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    /// Every key-value of the prefix (all pages joined).
    Kvs(Vec<K>),
    /// A count_only answer.
    Count(i64),
}

/// The anomalies: reads that disagree with the history at their revision.
pub fn check_reads(h: &History, reads: &[ReadAt]) -> Vec<String> {
    let revs: Vec<i64> = reads.iter().map(|r| r.rev).collect();
    let states = h.states_at(&revs);
    let mut bad = Vec::new();
    for r in reads {
        let Ok(i) = states.binary_search_by_key(&r.rev, |s| s.0) else {
            continue;
        };
        let want: Vec<K> = states[i]
            .1
            .range(r.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&r.prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        let ok = match &r.got {
            Got::Kvs(got) => *got == want,
            Got::Count(n) => usize::try_from(*n).is_ok_and(|n| n == want.len()),
        };
        if !ok {
            let got = match &r.got {
                Got::Kvs(kvs) => describe_difference(kvs, &want),
                Got::Count(n) => format!("count {n}, the history has {} keys", want.len()),
            };
            bad.push(format!(
                "{} of {:?} at revision {}: {got}",
                r.what,
                String::from_utf8_lossy(&r.prefix),
                r.rev
            ));
        }
    }
    bad
}

fn describe_difference(got: &[K], want: &[K]) -> String {
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "{} keys, the history has {}; first difference at #{first}: read {:?}, history {:?}",
        got.len(),
        want.len(),
        got.get(first),
        want.get(first)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::history::build::history;

    #[test]
    fn reads_must_match_the_state_at_their_revision() {
        let h = history(&[
            ("p/a", Some("1")),
            ("p/b", Some("2")),
            ("q", Some("3")),
            ("p/a", None),
        ]);
        let state = h.states_at(&[3]).remove(0).1;
        let kvs: Vec<K> = state.values().cloned().collect();
        let read = |rev, got| ReadAt {
            what: "list".into(),
            prefix: b"p/".to_vec(),
            rev,
            got,
        };
        assert!(check_reads(
            &h,
            &[read(3, Got::Kvs(kvs.clone())), read(5, Got::Count(1))]
        )
        .is_empty());
        // A stale answer: revision 5's header with revision 3's keys.
        let bad = check_reads(&h, &[read(5, Got::Kvs(kvs)), read(4, Got::Count(1))]);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}
