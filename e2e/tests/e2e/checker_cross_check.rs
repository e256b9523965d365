//! Cross-checks the linearizability checker (`cairn_e2e::linearizability`)
//! with stateright's `LinearizabilityTester`, an independent search by
//! other authors, on a sample of small histories drawn from a seed: half as
//! a correct register answers them, half with one answer corrupted (a stale
//! or invented value, a revision that goes back). Both must agree on every
//! one; the sample must hold both verdicts.
//!
//! Both get the same sequential model (a key's value, and a revision floor
//! that a Put raises strictly, a Get never lowers), so what is compared is
//! the search: which interleavings real time allows, and what an operation
//! of unknown outcome may do (take effect at any time after its call, or
//! never). stateright's search is exponential without memoization, so the
//! histories are kept to a dozen operations.

use std::time::Duration;

use anyhow::{ensure, Result};
use cairn_e2e::linearizability::{check, CheckResult, Input, Operation, Output};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

const KEY: &str = "k";

/// One key of an etcd-like store, as the checker models it.
#[derive(Clone, Debug, Default)]
struct Register {
    value: Option<String>,
    /// The highest revision reached along the order (`None`: none yet).
    floor: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Put(String),
    Delete,
    Get,
}

#[derive(Clone, Debug, PartialEq)]
enum Ret {
    Written(i64),
    Read(Option<String>, i64),
    /// What an operation of unknown outcome "returns" if stateright
    /// linearizes it: nothing to compare, no revision.
    Unknown,
}

impl Register {
    /// Raises the floor to `r`, strictly or not; false if that goes back.
    fn raise(&mut self, r: i64, strictly: bool) -> bool {
        let ok = match self.floor {
            None => true,
            Some(f) => r > f || (!strictly && r == f),
        };
        if ok {
            self.floor = Some(r);
        }
        ok
    }
}

impl SequentialSpec for Register {
    type Op = Op;
    type Ret = Ret;

    /// Only reached for operations still in flight (of unknown outcome):
    /// they change the value and carry no revision.
    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Put(v) => self.value = Some(v.clone()),
            Op::Delete => self.value = None,
            Op::Get => {}
        }
        Ret::Unknown
    }

    fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        match (op, ret) {
            (_, Ret::Unknown) => {
                self.invoke(op);
                true
            }
            (Op::Put(v), Ret::Written(r)) => {
                let ok = self.raise(*r, true);
                self.value = Some(v.clone());
                ok
            }
            (Op::Delete, Ret::Written(r)) => {
                let strictly = self.value.is_some();
                self.value = None;
                self.raise(*r, strictly)
            }
            (Op::Get, Ret::Read(v, r)) => *v == self.value && self.raise(*r, false),
            _ => false,
        }
    }
}

/// A history of `clients` sequential clients on one key, answered by a
/// correct store: each operation takes effect at a random point inside its
/// interval; about one in six has an unknown outcome (taking effect or not).
fn correct_history(rng: &mut StdRng, clients: usize, ops: usize) -> Vec<Operation> {
    // (client, input, call, ret, effect time or None, unknown)
    let mut planned = Vec::new();
    let mut next_free = vec![0u128; clients];
    for n in 0..ops {
        let client = rng.random_range(0..clients);
        let call = next_free[client] + rng.random_range(1..40) * 10 + n as u128;
        let ret = call + rng.random_range(1..60) * 10 + 1;
        next_free[client] = ret;
        let input = match rng.random_range(0..5) {
            0 | 1 => Input::Put {
                key: KEY.into(),
                value: format!("v{n}"),
            },
            2 => Input::Delete { key: KEY.into() },
            _ => Input::Get { key: KEY.into() },
        };
        let unknown = rng.random_range(0..6) == 0;
        let effect = if unknown && rng.random_bool(0.5) {
            None
        } else {
            Some(rng.random_range(call..=ret))
        };
        planned.push((client, input, call, ret, effect, unknown));
    }
    // Apply in effect order, as the store would.
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|i| planned[*i].4.is_some())
        .collect();
    order.sort_by_key(|i| planned[*i].4);
    let mut value: Option<String> = None;
    let mut revision = 1i64;
    let mut outputs = vec![Output::Unknown; planned.len()];
    for i in order {
        outputs[i] = match &planned[i].1 {
            Input::Put { value: v, .. } => {
                revision += 1;
                value = Some(v.clone());
                Output::Written { revision }
            }
            Input::Delete { .. } => {
                if value.take().is_some() {
                    revision += 1;
                }
                Output::Written { revision }
            }
            Input::Get { .. } => Output::Read {
                value: value.clone(),
                revision,
            },
        };
    }
    planned
        .into_iter()
        .zip(outputs)
        .map(
            |((client, input, call, ret, _, unknown), output)| Operation {
                client,
                input,
                output: if unknown { Output::Unknown } else { output },
                call,
                ret,
            },
        )
        .collect()
}

/// Changes one answered operation's output: a value no write wrote, a
/// stale value, or a revision moved back. Not every change makes the history
/// illegal (a stale value may still fit another order); the checkers decide.
fn corrupt(rng: &mut StdRng, h: &mut [Operation]) {
    let answered: Vec<usize> = (0..h.len())
        .filter(|i| !matches!(h[*i].output, Output::Unknown))
        .collect();
    let Some(&i) = answered.get(rng.random_range(0..answered.len().max(1))) else {
        return;
    };
    h[i].output = match &h[i].output {
        Output::Read { value, revision } => match rng.random_range(0..3) {
            0 => Output::Read {
                value: Some("never-written".into()),
                revision: *revision,
            },
            1 => Output::Read {
                value: if value.is_some() {
                    None
                } else {
                    Some("v0".into())
                },
                revision: *revision,
            },
            _ => Output::Read {
                value: value.clone(),
                revision: revision - rng.random_range(1..3),
            },
        },
        Output::Written { revision } => Output::Written {
            revision: revision - rng.random_range(1..3),
        },
        Output::Unknown => Output::Unknown,
    };
}

/// stateright's verdict: invocations and returns fed in time order (a call
/// before a return at the same instant: touching operations are
/// concurrent). An operation of unknown outcome gets a thread of its own and
/// never returns.
fn stateright_verdict(h: &[Operation]) -> bool {
    let mut events: Vec<(u128, bool, usize)> = Vec::new();
    for (i, op) in h.iter().enumerate() {
        events.push((op.call, false, i));
        if !matches!(op.output, Output::Unknown) {
            events.push((op.ret, true, i));
        }
    }
    events.sort();
    let thread = |i: usize| match h[i].output {
        Output::Unknown => 1000 + i,
        _ => h[i].client,
    };
    let mut t = LinearizabilityTester::new(Register::default());
    for (_, is_return, i) in events {
        let op = &h[i];
        let r = if is_return {
            let ret = match &op.output {
                Output::Written { revision } => Ret::Written(*revision),
                Output::Read { value, revision } => Ret::Read(value.clone(), *revision),
                Output::Unknown => Ret::Unknown,
            };
            t.on_return(thread(i), ret).map(drop)
        } else {
            let o = match &op.input {
                Input::Put { value, .. } => Op::Put(value.clone()),
                Input::Delete { .. } => Op::Delete,
                Input::Get { .. } => Op::Get,
            };
            t.on_invoke(thread(i), o).map(drop)
        };
        assert!(r.is_ok(), "malformed history for stateright: {r:?}");
    }
    t.is_consistent()
}

#[test]
fn the_checker_agrees_with_stateright() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut legal, mut illegal) = (0, 0);
    for n in 0..400 {
        let (clients, ops) = (rng.random_range(2..=4), rng.random_range(4..=11));
        let mut h = correct_history(&mut rng, clients, ops);
        if n % 2 == 1 {
            corrupt(&mut rng, &mut h);
        }
        let ours = match check(&h, Duration::from_secs(10)) {
            CheckResult::Ok => true,
            CheckResult::Illegal { .. } => false,
            CheckResult::Unknown => anyhow::bail!("history {n}: our checker timed out"),
        };
        let theirs = stateright_verdict(&h);
        ensure!(
            ours == theirs,
            "history {n}: ours says {}, stateright says {}:\n{}",
            if ours {
                "linearizable"
            } else {
                "not linearizable"
            },
            if theirs {
                "linearizable"
            } else {
                "not linearizable"
            },
            h.iter()
                .map(|o| format!("  {o}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if n % 2 == 0 {
            ensure!(ours, "history {n}: a correct store's history was refused");
        }
        if ours {
            legal += 1;
        } else {
            illegal += 1;
        }
    }
    eprintln!(
        "checker cross-check: 400 histories, {legal} linearizable, {illegal} not, both agree"
    );
    ensure!(
        illegal >= 100,
        "too few illegal histories ({illegal}) to compare"
    );
    Ok(())
}
