//! Cross-checking the checkers: a good run's records must pass every check,
//! and each planted anomaly (a stale read, a lost write, a reordered or
//! duplicated watch event, a progress notification ahead of an event, and a
//! few more) must be caught by the check meant to catch it. A checker that
//! passes everything would make every campaign pass.

use std::time::Duration;

use crate::events::K;
use crate::linearizability::{check, CheckResult, Input, Operation, Output};
use crate::robustness::acked::{check_acked, Acked};
use crate::robustness::history::{build, History};
use crate::robustness::reads::{check_reads, Got, ReadAt};
use crate::robustness::watch_check::{check_stream, Seen, Stream};

/// One self-check case: its name, and whether the checkers judged it right
/// (with what they said).
pub struct Case {
    pub name: &'static str,
    pub right: bool,
    pub said: String,
}

/// The writes of the good run: one client's, each acknowledged, one
/// revision each from 2.
const WRITES: [(&str, Option<&str>); 6] = [
    ("k/a", Some("1")),
    ("k/b", Some("2")),
    ("k/a", Some("3")),
    ("k/b", None),
    ("k/a", Some("4")),
    ("k/c", Some("5")),
];

fn good_history() -> History {
    build::history(&WRITES)
}

/// The KV history of the good run: each write, then a read of its key,
/// back to back in real time (10 ns per op).
fn good_ops() -> Vec<Operation> {
    let mut ops = Vec::new();
    for (i, (key, value)) in WRITES.iter().enumerate() {
        let rev = i as i64 + 2;
        let t = i as u128 * 100;
        let input = match value {
            Some(v) => Input::Put {
                key: key.to_string(),
                value: v.to_string(),
            },
            None => Input::Delete {
                key: key.to_string(),
            },
        };
        ops.push(Operation {
            client: 0,
            input,
            output: Output::Written { revision: rev },
            call: t,
            ret: t + 10,
        });
        ops.push(Operation {
            client: 1,
            input: Input::Get {
                key: key.to_string(),
            },
            output: Output::Read {
                value: value.map(str::to_string),
                revision: rev,
            },
            call: t + 20,
            ret: t + 30,
        });
    }
    ops
}

fn good_acked() -> Vec<Acked> {
    WRITES
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Acked {
            client: 0,
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
            rev: i as i64 + 2,
            cond: None,
        })
        .collect()
}

fn good_stream(h: &History) -> Stream {
    let mut s = Stream {
        what: "self-check".into(),
        prefix: b"k/".to_vec(),
        start: 2,
        prev_kv: true,
        seen: Vec::new(),
    };
    for e in s.expected(h) {
        let rev = e.rev();
        s.seen.push(Seen::Event(e));
        s.seen.push(Seen::Progress(rev));
    }
    s
}

fn good_read(h: &History, rev: i64) -> ReadAt {
    let state = h.states_at(&[rev]).pop().map(|s| s.1).unwrap_or_default();
    ReadAt {
        what: "self-check list".into(),
        prefix: b"k/".to_vec(),
        rev,
        got: Got::Kvs(state.into_values().collect::<Vec<K>>()),
    }
}

/// Runs every check on the records given; the findings, one per check that
/// objected.
fn judge(h: &History, ops: &[Operation], acked: &[Acked], s: &Stream, r: &ReadAt) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(h.validate().into_iter().map(|d| format!("history: {d}")));
    match check(ops, Duration::from_secs(10)) {
        CheckResult::Ok => {}
        CheckResult::Illegal { key, detail } => {
            out.push(format!("linearizability on {key}: {detail}"))
        }
        CheckResult::Unknown => out.push("linearizability: timed out".into()),
    }
    out.extend(
        check_acked(h, acked)
            .into_iter()
            .map(|d| format!("acked: {d}")),
    );
    if let Err(d) = check_stream(h, s) {
        out.push(format!("watch: {d}"));
    }
    out.extend(
        check_reads(h, std::slice::from_ref(r))
            .into_iter()
            .map(|d| format!("reads: {d}")),
    );
    out
}

/// Runs the good run and every planted anomaly.
pub fn run() -> Vec<Case> {
    let h = good_history();
    let (ops, acked, stream, read) = (good_ops(), good_acked(), good_stream(&h), good_read(&h, 5));
    let mut cases = Vec::new();
    let mut case = |name: &'static str, prefix: Option<&str>, found: Vec<String>| {
        let right = match prefix {
            None => found.is_empty(),
            Some(p) => found.iter().any(|f| f.starts_with(p)),
        };
        cases.push(Case {
            name,
            right,
            said: if found.is_empty() {
                "no anomaly".into()
            } else {
                found.join("\n")
            },
        });
    };
    case(
        "a good run passes",
        None,
        judge(&h, &ops, &acked, &stream, &read),
    );

    // A stale read: after k/a was written 3 (rev 4), a read of 1.
    let mut stale = ops.clone();
    stale[5].output = Output::Read {
        value: Some("1".into()),
        revision: 4,
    };
    case(
        "stale read",
        Some("linearizability"),
        judge(&h, &stale, &acked, &stream, &read),
    );

    // A lost write: k/c=5 acknowledged at rev 7, absent from the history
    // (and a later read does not see it).
    let lost = History::new(h.events()[..5].to_vec());
    let mut lost_ops = ops.clone();
    lost_ops[11].output = Output::Read {
        value: None,
        revision: 7,
    };
    let lost_stream = good_stream(&lost);
    let lost_read = good_read(&lost, 5);
    let found = judge(&lost, &lost_ops, &acked, &lost_stream, &lost_read);
    case(
        "lost write (acknowledged writes)",
        Some("acked"),
        found.clone(),
    );
    case(
        "lost write (linearizability)",
        Some("linearizability"),
        found,
    );

    let mut reordered = stream.clone();
    reordered.seen.swap(2, 4);
    case(
        "reordered watch event",
        Some("watch"),
        judge(&h, &ops, &acked, &reordered, &read),
    );

    let mut duplicated = stream.clone();
    duplicated.seen.insert(4, duplicated.seen[2].clone());
    case(
        "duplicated watch event",
        Some("watch"),
        judge(&h, &ops, &acked, &duplicated, &read),
    );

    let mut gap = stream.clone();
    gap.seen.remove(4);
    case(
        "watch event missing (a gap)",
        Some("watch"),
        judge(&h, &ops, &acked, &gap, &read),
    );

    // A progress notification at rev 4 sent before rev 4's event.
    let mut early = stream.clone();
    early.seen.insert(2, Seen::Progress(4));
    case(
        "progress notification ahead of an event",
        Some("watch"),
        judge(&h, &ops, &acked, &early, &read),
    );

    let mut wrong_prev = stream.clone();
    if let Some(Seen::Event(e)) = wrong_prev.seen.get_mut(4) {
        e.prev = None;
    }
    case(
        "watch event without its prev_kv",
        Some("watch"),
        judge(&h, &ops, &acked, &wrong_prev, &read),
    );

    let mut bad_history = h.clone();
    bad_history = History::new(
        bad_history
            .events()
            .iter()
            .filter(|e| e.rev() != 4)
            .cloned()
            .collect(),
    );
    case(
        "revision missing from the history",
        Some("history"),
        judge(
            &bad_history,
            &ops,
            &acked,
            &good_stream(&bad_history),
            &read,
        ),
    );

    // A list at revision 5 that shows revision 3's state.
    let mut stale_list = good_read(&h, 3);
    stale_list.rev = 5;
    case(
        "stale list at a revision",
        Some("reads"),
        judge(&h, &ops, &acked, &stream, &stale_list),
    );
    cases
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_planted_anomaly_is_caught() {
        let cases = super::run();
        assert!(cases.len() >= 10);
        for c in cases {
            assert!(c.right, "{}: {}", c.name, c.said);
        }
    }
}
