//! Checking one watch stream against the reference history.
//!
//! A watcher on a prefix from revision S must be sent exactly the
//! reference's events on that prefix from S on, in order, each with the
//! right prev_kv (when asked for, and not for a creation), possibly cut
//! short when the stream ends. A progress notification (periodic, or the
//! answer to a WatchProgressRequest) at revision R promises that every event
//! up to R was already sent: kube-apiserver's watch cache serves consistent
//! reads on that promise.

use std::fmt;

use crate::events::Ev;
use crate::robustness::history::History;

/// What one watcher received, in order.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    /// Names the stream in reports (member, prefix).
    pub what: String,
    pub prefix: Vec<u8>,
    /// The start revision the watch was created with.
    pub start: i64,
    pub prev_kv: bool,
    pub seen: Vec<Seen>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Seen {
    Event(Ev),
    /// A response with only a header: a progress notification at this revision.
    Progress(i64),
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Event(e) => write!(f, "{e:?}"),
            Seen::Progress(r) => write!(f, "PROGRESS@{r}"),
        }
    }
}

impl Stream {
    /// The reference events this watcher must be sent, shaped as sent.
    pub fn expected(&self, h: &History) -> Vec<Ev> {
        h.events()
            .iter()
            .filter(|e| e.rev() >= self.start && e.kv.key.starts_with(&self.prefix))
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv || (e.put && e.kv.create == e.kv.modr) {
                    e.prev = None;
                }
                e
            })
            .collect()
    }

    pub fn events(&self) -> usize {
        self.seen
            .iter()
            .filter(|s| matches!(s, Seen::Event(_)))
            .count()
    }
}

/// Checks `s` against `h`: the error describes the first anomaly with the
/// items around it.
pub fn check_stream(h: &History, s: &Stream) -> Result<(), String> {
    let expected = s.expected(h);
    let mut sent = 0;
    for (at, item) in s.seen.iter().enumerate() {
        match item {
            Seen::Event(e) => {
                if expected.get(sent) != Some(e) {
                    let what = match expected.iter().position(|x| x == e) {
                        Some(p) if p < sent => "a duplicate of an event already sent".to_string(),
                        Some(p) => format!(
                            "sent before {} event(s) it follows (a gap or a reordering; first: {:?})",
                            p - sent,
                            expected[sent]
                        ),
                        None if e.rev() > h.last_rev() => {
                            "above the reference history's last revision".into()
                        }
                        None => "not in the reference history as sent (prev_kv or fields differ)"
                            .into(),
                    };
                    return Err(format!(
                        "{}: item #{at} {e:?} is {what}\n{}",
                        s.what,
                        excerpt(s, at)
                    ));
                }
                sent += 1;
            }
            Seen::Progress(r) => {
                if let Some(missing) = expected.get(sent).filter(|e| e.rev() <= *r) {
                    return Err(format!(
                        "{}: item #{at}, a progress notification at revision {r}, overtook the event {missing:?} not yet sent\n{}",
                        s.what,
                        excerpt(s, at)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The stream's items around index `at`.
fn excerpt(s: &Stream, at: usize) -> String {
    let lo = at.saturating_sub(3);
    let hi = (at + 3).min(s.seen.len());
    let mut out = format!(
        "    stream {} (prefix {:?}, from revision {}, prev_kv {}), items {lo}..{hi}:",
        s.what,
        String::from_utf8_lossy(&s.prefix),
        s.start,
        s.prev_kv
    );
    for (i, item) in s.seen[lo..hi].iter().enumerate() {
        out.push_str(&format!("\n      [{}] {item:?}", lo + i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::history::build::history;

    fn stream(h: &History, prefix: &str, start: i64) -> Stream {
        let mut s = Stream {
            what: "test".into(),
            prefix: prefix.as_bytes().to_vec(),
            start,
            prev_kv: true,
            seen: Vec::new(),
        };
        s.seen = s.expected(h).into_iter().map(Seen::Event).collect();
        s
    }

    fn h() -> History {
        history(&[
            ("a/1", Some("x")),
            ("b/1", Some("y")),
            ("a/1", Some("z")),
            ("a/2", Some("w")),
            ("a/1", None),
        ])
    }

    #[test]
    fn the_expected_stream_passes_and_may_end_early() {
        let h = h();
        let mut s = stream(&h, "a/", 3);
        assert_eq!(s.events(), 3);
        s.seen.insert(1, Seen::Progress(4));
        s.seen.push(Seen::Progress(6));
        assert_eq!(check_stream(&h, &s), Ok(()));
        s.seen.truncate(2);
        assert_eq!(check_stream(&h, &s), Ok(()));
    }

    #[test]
    fn prev_kv_is_left_out_unless_asked_and_for_creations() {
        let h = h();
        let s = stream(&h, "a/", 2);
        let Seen::Event(first) = &s.seen[0] else {
            panic!("{s:?}")
        };
        assert!(first.prev.is_none());
        let mut no_prev = stream(&h, "a/", 2);
        no_prev.prev_kv = false;
        no_prev.seen = no_prev.expected(&h).into_iter().map(Seen::Event).collect();
        assert!(no_prev
            .seen
            .iter()
            .all(|s| matches!(s, Seen::Event(e) if e.prev.is_none())));
        // A prev_kv watcher sent no prev_kv is caught.
        let mut s = stream(&h, "a/", 2);
        if let Seen::Event(e) = &mut s.seen[1] {
            e.prev = None;
        }
        assert!(check_stream(&h, &s).unwrap_err().contains("prev_kv"));
    }

    #[test]
    fn gap_duplicate_reorder_and_early_progress_are_caught() {
        let h = h();
        let good = stream(&h, "a/", 2);
        let mut gap = good.clone();
        gap.seen.remove(1);
        assert!(check_stream(&h, &gap).unwrap_err().contains("gap"));
        let mut dup = good.clone();
        dup.seen.insert(2, dup.seen[1].clone());
        assert!(check_stream(&h, &dup).unwrap_err().contains("duplicate"));
        let mut reordered = good.clone();
        reordered.seen.swap(1, 2);
        assert!(check_stream(&h, &reordered).is_err());
        let mut early = good.clone();
        early.seen.insert(1, Seen::Progress(5));
        assert!(check_stream(&h, &early).unwrap_err().contains("overtook"));
    }
}
