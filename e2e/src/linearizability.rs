//! A linearizability checker for key-value histories recorded by fault tests.
//!
//! A fault test (partitions, crashes, leader changes) records every client
//! operation with a [`Recorder`]: when it was invoked, when it returned and what
//! it returned. [`check`] then decides whether some single total order of the
//! operations both respects real time (an operation that returned before
//! another was invoked comes first) and is what a sequential key-value store
//! would answer. If none exists, the store showed clients something no correct
//! store can: a stale read, a lost write, a revision going backwards.
//!
//! # Algorithm
//!
//! Wing & Gong's search with the memoization of Lowe and of porcupine:
//!
//! * The history is partitioned by key and each key is checked on its own:
//!   linearizability is local (Herlihy & Wing), so the whole history is
//!   linearizable exactly when every key's sub-history is. This turns one
//!   search exponential in the whole history into many small ones.
//! * Per key, the call and return entries are put in time order in a doubly
//!   linked list. A depth-first search repeatedly picks a call that comes before
//!   the first remaining return (an operation that may take effect now), steps
//!   the model with it and unlinks its call and return; reaching a return whose
//!   call is still linked means the order so far cannot be extended, so it
//!   backtracks (relinking the entries, as in dancing links).
//! * Every explored (set of linearized operations, model state) pair is cached:
//!   reaching the same pair by another order cannot lead anywhere new, and this
//!   is what keeps the search fast on real histories.
//! * The search has a deadline; past it the answer is [`CheckResult::Unknown`]
//!   rather than a hang (some histories, e.g. with many concurrent operations
//!   of unknown outcome, are exponential to check).
//!
//! # What is checked
//!
//! 1. Well-formedness: a Put or Delete is answered with [`Output::Written`] or
//!    [`Output::Unknown`], a Get with [`Output::Read`] or [`Output::Unknown`],
//!    and a completed operation has `ret >= call`.
//! 2. Revisions never go backwards in real time, across all keys: for
//!    completed operations A and B with `A.ret < B.call`, `A.revision <=
//!    B.revision`.
//! 3. Per key, there is an order of all its completed operations plus some
//!    subset of its Unknown ones (an Unknown operation may have taken effect at
//!    any point after its invoke, or never: its return time counts as
//!    infinite) that respects real time and in which, starting from an absent
//!    key:
//!    * Put sets the value, Delete removes it, and Get returns the current
//!      value (`None` if absent);
//!    * revisions only grow along the order, strictly at a Put and at a Delete
//!      of a present key (etcd bumps the store revision on each of these; a
//!      Delete of an absent key and a Get answer with the current revision).
//!      So a key's writes are ordered by revision, and a Get at revision r
//!      comes after the writes with revision <= r and before those above r.
//!      Unknown operations carry no revision and are not constrained by it.
//!
//! Touching intervals (`A.ret == B.call`) count as concurrent. A Get with an
//! Unknown output says nothing and is ignored. Timestamps are nanoseconds from
//! any origin common to the whole history (the [`Recorder`]'s creation).
//!
//! Not checked: cross-key consistency beyond point 2 (for example two writes to
//! different keys answering with the same revision), and any state a key had
//! before the history: every key must start absent, so use fresh keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A client request against one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Set `key` to `value`.
    Put {
        /// the key written
        key: String,
        /// the value written
        value: String,
    },
    /// Read `key`.
    Get {
        /// the key read
        key: String,
    },
    /// Delete `key` (one key, not a range).
    Delete {
        /// the key deleted
        key: String,
    },
}

impl Input {
    /// The key the request is about (the history is partitioned by it).
    pub fn key(&self) -> &str {
        match self {
            Input::Put { key, .. } | Input::Get { key } | Input::Delete { key } => key,
        }
    }
}

/// What the client learned about its request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A Put or Delete that succeeded; `revision` is the store revision of the response header.
    Written {
        /// the response header's revision
        revision: i64,
    },
    /// A Get's answer: the value (None if absent) and the header revision.
    Read {
        /// the value read, `None` if the key was absent
        value: Option<String>,
        /// the response header's revision
        revision: i64,
    },
    /// The client does not know whether the op took effect (timeout, connection lost):
    /// it may have taken effect at any point after its invoke, or never.
    Unknown,
}

impl Output {
    fn revision(&self) -> Option<i64> {
        match self {
            Output::Written { revision } | Output::Read { revision, .. } => Some(*revision),
            Output::Unknown => None,
        }
    }
}

/// One client operation: what was asked, what came back, and when.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Which client issued it (for reports only: the checker needs no per-client order).
    pub client: usize,
    /// The request.
    pub input: Input,
    /// The response.
    pub output: Output,
    /// When the request was invoked, in nanoseconds from the history's origin.
    pub call: u128,
    /// When the response arrived, in nanoseconds from the history's origin
    /// (ignored for [`Output::Unknown`]: such an op may take effect at any later time).
    pub ret: u128,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.input {
            Input::Put { key, value } => write!(f, "put({key:?}, {value:?})")?,
            Input::Get { key } => write!(f, "get({key:?})")?,
            Input::Delete { key } => write!(f, "delete({key:?})")?,
        }
        match &self.output {
            Output::Written { revision } => write!(f, " -> ok @rev {revision}")?,
            Output::Read { value, revision } => write!(f, " -> {value:?} @rev {revision}")?,
            Output::Unknown => write!(f, " -> unknown")?,
        }
        match self.output {
            Output::Unknown => write!(f, " [{} .. ?]", Millis(self.call)),
            _ => write!(f, " [{} .. {}]", Millis(self.call), Millis(self.ret)),
        }
    }
}

/// Nanoseconds printed as milliseconds with microsecond precision, e.g. `12.345678ms`.
struct Millis(u128);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}ms", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The history is linearizable (see the module docs for exactly what that covers).
    Ok,
    /// No correct store could have produced the history; `detail` explains why,
    /// naming operations by their index in the history.
    Illegal {
        /// the key whose operations show the violation
        key: String,
        /// what was violated, with the operations involved
        detail: String,
    },
    /// The search hit its timeout before reaching a verdict (no violation was found).
    Unknown,
}

/// Checks that `history` is linearizable against a sequential key-value store
/// with etcd's revisions (see the module docs for exactly what is checked),
/// giving up with [`CheckResult::Unknown`] after `timeout`.
pub fn check(history: &[Operation], timeout: Duration) -> CheckResult {
    check_with(history, timeout, true)
}

/// [`check`], optionally ignoring revisions (tests use that to show an anomaly is
/// caught by the value model alone).
fn check_with(history: &[Operation], timeout: Duration, revisions: bool) -> CheckResult {
    // An unrepresentable deadline (a huge timeout) means no deadline.
    let deadline = Instant::now().checked_add(timeout);
    if let Err((key, detail)) = check_well_formed(history) {
        return CheckResult::Illegal { key, detail };
    }
    if revisions {
        if let Err((key, detail)) = check_revisions_monotonic(history) {
            return CheckResult::Illegal { key, detail };
        }
    }
    let mut partitions = partition(history);
    // Small keys first, so that one hard key running out of time does not hide
    // a violation an easy key shows.
    partitions.sort_by_key(|(key, ops)| (ops.len(), *key));
    let mut timed_out = false;
    for (key, ops) in partitions {
        match check_key(history, &ops, revisions, deadline) {
            Outcome::Linearizable => {}
            Outcome::Illegal(detail) => {
                return CheckResult::Illegal {
                    key: key.to_owned(),
                    detail,
                }
            }
            Outcome::TimedOut => timed_out = true,
        }
    }
    if timed_out {
        CheckResult::Unknown
    } else {
        CheckResult::Ok
    }
}

/// Point 1 of the module docs: the error is (key, detail) for the first bad op.
fn check_well_formed(history: &[Operation]) -> Result<(), (String, String)> {
    for (i, op) in history.iter().enumerate() {
        let matches = matches!(
            (&op.input, &op.output),
            (_, Output::Unknown)
                | (
                    Input::Put { .. } | Input::Delete { .. },
                    Output::Written { .. }
                )
                | (Input::Get { .. }, Output::Read { .. })
        );
        let problem = if !matches {
            "its output does not fit its input"
        } else if op.output != Output::Unknown && op.ret < op.call {
            "it returned before it was invoked"
        } else {
            continue;
        };
        return Err((
            op.input.key().to_owned(),
            format!("malformed history: op #{i} ({op}): {problem}"),
        ));
    }
    Ok(())
}

/// Point 2 of the module docs, in O(n log n): sweeps the completed ops in call
/// order while folding in, by return order, every op that returned before.
fn check_revisions_monotonic(history: &[Operation]) -> Result<(), (String, String)> {
    let completed: Vec<(usize, i64)> = history
        .iter()
        .enumerate()
        .filter_map(|(i, op)| op.output.revision().map(|r| (i, r)))
        .collect();
    let mut by_call = completed.clone();
    by_call.sort_by_key(|&(i, _)| history[i].call);
    let mut by_ret = completed;
    by_ret.sort_by_key(|&(i, _)| history[i].ret);
    let mut returned = by_ret.iter().peekable();
    // The highest revision among ops that returned before the current call.
    let mut max: Option<(usize, i64)> = None;
    for &(b, rev_b) in &by_call {
        while let Some(&&(a, rev_a)) = returned.peek() {
            if history[a].ret >= history[b].call {
                break;
            }
            if max.is_none_or(|(_, m)| rev_a > m) {
                max = Some((a, rev_a));
            }
            returned.next();
        }
        if let Some((a, rev_a)) = max {
            if rev_a > rev_b {
                return Err((
                    history[b].input.key().to_owned(),
                    format!(
                        "revision went backwards: op #{a} ({}) returned revision {rev_a} \
                         before op #{b} ({}) was invoked, which returned revision {rev_b}",
                        history[a], history[b]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Groups op indices by key, leaving out ops that cannot matter: Gets with an
/// Unknown output (they say nothing), and Unknown Puts of a value no completed
/// Get on the key returned. Such a Put can always be taken as not applied: in
/// any order where it applied, no Get sits between it and the next write (that
/// Get would have returned its value), and the next write does not depend on it
/// (a Put overwrites; a Delete of a present key is only constrained more).
fn partition(history: &[Operation]) -> Vec<(&str, Vec<usize>)> {
    let mut observed: HashSet<(&str, &str)> = HashSet::new();
    for op in history {
        if let (
            Input::Get { key },
            Output::Read {
                value: Some(value), ..
            },
        ) = (&op.input, &op.output)
        {
            observed.insert((key, value));
        }
    }
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        let irrelevant = match (&op.input, &op.output) {
            (Input::Get { .. }, Output::Unknown) => true,
            (Input::Put { key, value }, Output::Unknown) => {
                !observed.contains(&(key.as_str(), value.as_str()))
            }
            _ => false,
        };
        if !irrelevant {
            by_key.entry(op.input.key()).or_default().push(i);
        }
    }
    by_key.into_iter().collect()
}

/// The verdict on one key.
enum Outcome {
    Linearizable,
    Illegal(String),
    TimedOut,
}

/// An op of one key as the model sees it: values interned to small ids, and no
/// revision where it is unknown (or revisions are not checked).
#[derive(Clone, Copy)]
enum Step {
    Put {
        value: u32,
        revision: Option<i64>,
    },
    Delete {
        revision: Option<i64>,
    },
    Get {
        value: Option<u32>,
        revision: Option<i64>,
    },
}

/// Maps a key's values to small ids, so model states are cheap to copy, hash
/// and compare.
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: &'a str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.next_id();
        self.ids.insert(value, id);
        self.names.push(value);
        id
    }

    /// An id no value has.
    fn unwritten(&self) -> u32 {
        self.next_id()
    }

    fn next_id(&self) -> u32 {
        // A key with 2^32 distinct values is not a test history.
        u32::try_from(self.names.len()).unwrap_or(u32::MAX)
    }

    fn name(&self, id: u32) -> Option<&'a str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.names.get(i))
            .copied()
    }
}

/// The sequential model's state for one key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    /// The current value (interned), `None` if absent.
    value: Option<u32>,
    /// The highest revision seen so far along the order: the next op's revision
    /// must not be below it (and must be above it for a Put or a Delete of a
    /// present key).
    floor: i64,
}

const INITIAL: State = State {
    value: None,
    floor: i64::MIN,
};

/// Steps the model, or says why the op cannot come next.
fn apply(state: State, step: Step) -> Result<State, String> {
    let raise = |revision: Option<i64>, strictly: bool| match revision {
        None => Ok(state.floor),
        Some(r) if r > state.floor || (!strictly && r == state.floor) => Ok(r),
        Some(r) => Err(format!(
            "its revision {r} is {} the revision {} already reached",
            if strictly { "not above" } else { "below" },
            state.floor
        )),
    };
    match step {
        Step::Put { value, revision } => Ok(State {
            value: Some(value),
            floor: raise(revision, true)?,
        }),
        Step::Delete { revision } => Ok(State {
            value: None,
            floor: raise(revision, state.value.is_some())?,
        }),
        Step::Get { value, revision } => {
            if value != state.value {
                return Err("it read a different value".to_owned());
            }
            Ok(State {
                value,
                floor: raise(revision, false)?,
            })
        }
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A call or return entry in the time-ordered doubly linked list.
struct Node {
    /// the op (index into the key's ops), NIL for the head
    op: usize,
    /// a call entry (else a return entry)
    is_call: bool,
    /// for a call, its return entry; NIL if it has none (an Unknown op)
    matching: usize,
    prev: usize,
    next: usize,
}

/// The time-ordered list of one key's call and return entries.
struct Entries {
    nodes: Vec<Node>,
}

impl Entries {
    /// Builds the list: calls at `call`, returns at `ret` (none if `ret` is None),
    /// a call before a return at the same time (touching ops are concurrent).
    fn new(times: &[(u128, Option<u128>)]) -> Entries {
        let mut order: Vec<(u128, bool, usize)> = Vec::with_capacity(times.len() * 2);
        for (op, &(call, ret)) in times.iter().enumerate() {
            order.push((call, false, op));
            if let Some(ret) = ret {
                order.push((ret, true, op));
            }
        }
        order.sort_unstable();
        let mut nodes = Vec::with_capacity(order.len() + 1);
        nodes.push(Node {
            op: NIL,
            is_call: false,
            matching: NIL,
            prev: NIL,
            next: NIL,
        });
        let mut ret_node = vec![NIL; times.len()];
        for (i, &(_, is_return, op)) in order.iter().enumerate() {
            let id = i + 1;
            nodes[id - 1].next = id;
            nodes.push(Node {
                op,
                is_call: !is_return,
                matching: NIL,
                prev: id - 1,
                next: NIL,
            });
            if is_return {
                ret_node[op] = id;
            }
        }
        for node in nodes.iter_mut().skip(1) {
            if node.is_call {
                node.matching = ret_node[node.op];
            }
        }
        Entries { nodes }
    }

    fn unlink(&mut self, id: usize) {
        let (prev, next) = (self.nodes[id].prev, self.nodes[id].next);
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    /// Undoes `unlink(id)`; undos must come in the reverse order of the unlinks.
    fn relink(&mut self, id: usize) {
        let (prev, next) = (self.nodes[id].prev, self.nodes[id].next);
        self.nodes[prev].next = id;
        if next != NIL {
            self.nodes[next].prev = id;
        }
    }

    /// Takes a linearized call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.nodes[call].matching;
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes `lift(call)`.
    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].matching;
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// How many search steps between deadline checks (reading the clock is not free).
const DEADLINE_EVERY: u32 = 1024;

/// Point 3 of the module docs for one key's ops (`ops` are history indices).
fn check_key(
    history: &[Operation],
    ops: &[usize],
    revisions: bool,
    deadline: Option<Instant>,
) -> Outcome {
    let mut values = Interner::default();
    let steps: Vec<Step> = ops
        .iter()
        .map(|&i| {
            let op = &history[i];
            let revision = op.output.revision().filter(|_| revisions);
            match (&op.input, &op.output) {
                (Input::Put { value, .. }, _) => Step::Put {
                    value: values.intern(value),
                    revision,
                },
                (Input::Delete { .. }, _) => Step::Delete { revision },
                (_, Output::Read { value, .. }) => Step::Get {
                    value: value.as_deref().map(|v| values.intern(v)),
                    revision,
                },
                // Not reached: `partition` leaves out Gets with an Unknown output.
                // Were one here, a value no op wrote would match nothing, and
                // an Unknown op need not be linearized anyway.
                (Input::Get { .. }, _) => Step::Get {
                    value: Some(values.unwritten()),
                    revision,
                },
            }
        })
        .collect();
    let required: Vec<bool> = ops
        .iter()
        .map(|&i| history[i].output != Output::Unknown)
        .collect();
    let times: Vec<(u128, Option<u128>)> = ops
        .iter()
        .zip(&required)
        .map(|(&i, &req)| (history[i].call, req.then_some(history[i].ret)))
        .collect();
    let mut entries = Entries::new(&times);

    let required_total = required.iter().filter(|&&r| r).count();
    let mut required_done = 0;
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    // Explored (linearized set, state) pairs, grouped by set so a lookup needs no allocation.
    let mut cache: HashMap<Vec<u64>, Vec<State>> = HashMap::new();
    // The linearized calls (entry ids) with the state before each.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut state = INITIAL;
    let mut entry = entries.nodes[HEAD].next;
    let mut until_deadline_check = DEADLINE_EVERY;

    while required_done < required_total {
        until_deadline_check -= 1;
        if until_deadline_check == 0 {
            until_deadline_check = DEADLINE_EVERY;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Outcome::TimedOut;
            }
        }
        if entry == NIL || !entries.nodes[entry].is_call {
            // A return whose call is not linearized: nothing can come next. Backtrack.
            let Some((call, before)) = stack.pop() else {
                return Outcome::Illegal(explain(history, ops, &steps, &required, &best, &values));
            };
            let op = entries.nodes[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            if required[op] {
                required_done -= 1;
            }
            state = before;
            entries.unlift(call);
            entry = entries.nodes[call].next;
            continue;
        }
        let op = entries.nodes[entry].op;
        if let Ok(after) = apply(state, steps[op]) {
            linearized[op / 64] |= 1 << (op % 64);
            let new = match cache.get_mut(linearized.as_slice()) {
                Some(states) if states.contains(&after) => false,
                Some(states) => {
                    states.push(after);
                    true
                }
                None => {
                    cache.insert(linearized.clone(), vec![after]);
                    true
                }
            };
            if new {
                stack.push((entry, state));
                state = after;
                if required[op] {
                    required_done += 1;
                }
                entries.lift(entry);
                if stack.len() > best.len() {
                    best = stack.iter().map(|&(e, _)| entries.nodes[e].op).collect();
                }
                entry = entries.nodes[HEAD].next;
                continue;
            }
            linearized[op / 64] &= !(1 << (op % 64));
        }
        entry = entries.nodes[entry].next;
    }
    Outcome::Linearizable
}

/// How many ops of the longest prefix, and of the candidates, a report lists.
const REPORT_PREFIX: usize = 6;
const REPORT_CANDIDATES: usize = 8;

/// Describes why a key has no linearization: the longest order the search found
/// (`best`, indices into `ops`), the state it leaves, and why each op that could
/// come next by real time cannot.
fn explain(
    history: &[Operation],
    ops: &[usize],
    steps: &[Step],
    required: &[bool],
    best: &[usize],
    values: &Interner<'_>,
) -> String {
    let mut state = INITIAL;
    for &op in best {
        if let Ok(after) = apply(state, steps[op]) {
            state = after;
        }
    }
    let unknown = required.iter().filter(|&&r| !r).count();
    let mut out = format!(
        "no linearization of the {} ops on this key ({unknown} of unknown outcome); \
         the longest order found has {} ops",
        ops.len(),
        best.len()
    );
    if !best.is_empty() {
        out.push_str(", ending with:");
        for &op in &best[best.len().saturating_sub(REPORT_PREFIX)..] {
            out.push_str(&format!("\n  #{} {}", ops[op], history[ops[op]]));
        }
    }
    let value = state.value.and_then(|id| values.name(id));
    out.push_str(&format!("\nleaving value {value:?}"));
    if state.floor != i64::MIN {
        out.push_str(&format!(" at revision {}", state.floor));
    }
    // Candidates: ops not in the order whose call precedes every remaining return.
    let mut done = vec![false; ops.len()];
    for &op in best {
        done[op] = true;
    }
    let first_return = (0..ops.len())
        .filter(|&op| required[op] && !done[op])
        .map(|op| history[ops[op]].ret)
        .min();
    let candidates: Vec<usize> = (0..ops.len())
        .filter(|&op| !done[op] && first_return.is_none_or(|r| history[ops[op]].call <= r))
        .collect();
    out.push_str("; none of these can come next:");
    for &op in candidates.iter().take(REPORT_CANDIDATES) {
        let why = match apply(state, steps[op]) {
            Err(why) => why,
            // It could step, but every order through it was already explored.
            Ok(_) => "every order continuing with it fails later".to_owned(),
        };
        out.push_str(&format!("\n  #{} {}: {why}", ops[op], history[ops[op]]));
    }
    if candidates.len() > REPORT_CANDIDATES {
        out.push_str(&format!(
            "\n  ... and {} more",
            candidates.len() - REPORT_CANDIDATES
        ));
    }
    out
}

/// Records a history of concurrent operations with real timestamps. Cheap to
/// clone and shareable across threads and tasks: every clone appends to the
/// same history.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    /// The origin of the history's timestamps.
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history whose timestamps count from now.
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::new(RecorderInner {
                start: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    fn now(&self) -> u128 {
        self.inner.start.elapsed().as_nanos()
    }

    /// Notes that `client` is about to send `input`: call it before sending, so
    /// the op's interval covers the whole request.
    pub fn invoke(&self, client: usize, input: Input) -> PendingOp {
        let call = self.now();
        PendingOp {
            recorder: self.clone(),
            op: Some((client, input, call)),
        }
    }

    /// The completed (and abandoned) ops so far, in invoke order. Call it once
    /// every client is done: ops still pending are not in it.
    pub fn history(&self) -> Vec<Operation> {
        let mut ops = self
            .inner
            .ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ops.sort_by_key(|op| (op.call, op.ret));
        ops
    }
}

/// An invoked op awaiting its response. Dropping it without
/// [`complete`](PendingOp::complete) (a panic, a cancelled task) records it as
/// [`Output::Unknown`]: the request may still have taken effect.
#[must_use = "complete it with the response (dropping it records an Unknown output)"]
pub struct PendingOp {
    recorder: Recorder,
    /// (client, input, call); taken when recorded.
    op: Option<(usize, Input, u128)>,
}

impl PendingOp {
    /// Records the op with `output`, returned now: call it as soon as the response
    /// (or the error) arrives.
    pub fn complete(mut self, output: Output) {
        self.record(output);
    }

    /// Records the op as `input` answered with `output`: for a conditional
    /// write (a Txn on mod_revision) whose failed compare made it a read of
    /// the key (its else branch), known only once the response arrives.
    pub fn complete_as(mut self, input: Input, output: Output) {
        if let Some(op) = self.op.as_mut() {
            op.1 = input;
        }
        self.record(output);
    }

    fn record(&mut self, output: Output) {
        if let Some((client, input, call)) = self.op.take() {
            let ret = self.recorder.now();
            self.recorder
                .inner
                .ops
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Operation {
                    client,
                    input,
                    output,
                    call,
                    ret,
                });
        }
    }
}

impl Drop for PendingOp {
    fn drop(&mut self) {
        self.record(Output::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn put(client: usize, key: &str, value: &str, call: u128, ret: u128, rev: i64) -> Operation {
        Operation {
            client,
            input: Input::Put {
                key: key.to_owned(),
                value: value.to_owned(),
            },
            output: Output::Written { revision: rev },
            call,
            ret,
        }
    }

    fn get(
        client: usize,
        key: &str,
        value: Option<&str>,
        call: u128,
        ret: u128,
        rev: i64,
    ) -> Operation {
        Operation {
            client,
            input: Input::Get {
                key: key.to_owned(),
            },
            output: Output::Read {
                value: value.map(str::to_owned),
                revision: rev,
            },
            call,
            ret,
        }
    }

    fn del(client: usize, key: &str, call: u128, ret: u128, rev: i64) -> Operation {
        Operation {
            client,
            input: Input::Delete {
                key: key.to_owned(),
            },
            output: Output::Written { revision: rev },
            call,
            ret,
        }
    }

    /// The same op with an Unknown output (its ret is then meaningless).
    fn unknown(mut op: Operation) -> Operation {
        op.output = Output::Unknown;
        op.ret = u128::MAX;
        op
    }

    /// Both with and without the revision checks.
    fn assert_ok(history: &[Operation]) {
        assert_eq!(check(history, TIMEOUT), CheckResult::Ok, "{history:#?}");
        assert_eq!(
            check_with(history, TIMEOUT, false),
            CheckResult::Ok,
            "values only: {history:#?}"
        );
    }

    /// Returns the detail.
    fn assert_illegal(history: &[Operation], key: &str) -> String {
        match check(history, TIMEOUT) {
            CheckResult::Illegal { key: k, detail } => {
                assert_eq!(k, key, "{detail}");
                detail
            }
            other => panic!("expected Illegal, got {other:?} for {history:#?}"),
        }
    }

    /// Illegal by the value model alone, revisions ignored.
    fn assert_illegal_by_values(history: &[Operation]) {
        let result = check_with(history, TIMEOUT, false);
        assert!(
            matches!(result, CheckResult::Illegal { .. }),
            "expected Illegal by values alone, got {result:?}"
        );
    }

    #[test]
    fn empty_history_is_ok() {
        assert_ok(&[]);
    }

    #[test]
    fn sequential_legal() {
        assert_ok(&[
            get(0, "k", None, 0, 1, 1),
            put(0, "k", "a", 2, 3, 2),
            get(1, "k", Some("a"), 4, 5, 2),
            put(0, "k", "b", 6, 7, 3),
            get(1, "k", Some("b"), 8, 9, 3),
            del(0, "k", 10, 11, 4),
            get(1, "k", None, 12, 13, 4),
            // A Delete of an absent key does not bump the revision.
            del(1, "k", 14, 15, 4),
            put(0, "k", "a", 16, 17, 5),
            get(1, "k", Some("a"), 18, 19, 5),
        ]);
    }

    #[test]
    fn sequential_wrong_value_is_illegal() {
        let h = [put(0, "k", "a", 0, 1, 2), get(1, "k", Some("b"), 2, 3, 2)];
        let detail = assert_illegal(&h, "k");
        assert!(detail.contains("#1"), "{detail}");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn sequential_read_after_delete_is_illegal() {
        let h = [
            put(0, "k", "a", 0, 1, 2),
            del(0, "k", 2, 3, 3),
            get(0, "k", Some("a"), 4, 5, 3),
        ];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn read_of_a_value_before_its_write_is_illegal() {
        let h = [get(0, "k", Some("a"), 0, 1, 1), put(1, "k", "a", 2, 3, 2)];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn keys_are_independent() {
        assert_ok(&[
            put(0, "x", "1", 0, 10, 2),
            put(1, "y", "1", 0, 10, 3),
            get(0, "x", Some("1"), 11, 12, 3),
            get(1, "y", None, 1, 2, 1),
        ]);
    }

    #[test]
    fn concurrent_writes_legal_only_in_one_order() {
        // Two overlapping puts, then reads that fix their order: the put of "b"
        // must take effect first, though it was invoked after "a".
        assert_ok(&[
            put(0, "k", "a", 0, 100, 3),
            put(1, "k", "b", 10, 90, 2),
            get(2, "k", Some("a"), 110, 120, 3),
        ]);
        // Interleaved: a, read a, b, read b, with both puts spanning both reads.
        assert_ok(&[
            put(0, "k", "a", 0, 100, 2),
            put(1, "k", "b", 0, 100, 3),
            get(2, "k", Some("a"), 10, 20, 2),
            get(2, "k", Some("b"), 30, 40, 3),
        ]);
    }

    #[test]
    fn concurrent_flip_flop_is_illegal() {
        // a, then b, then a again needs a third write.
        let h = [
            put(0, "k", "a", 0, 100, 2),
            put(1, "k", "b", 0, 100, 3),
            get(2, "k", Some("a"), 10, 20, 2),
            get(2, "k", Some("b"), 30, 40, 3),
            get(2, "k", Some("a"), 110, 120, 3),
        ];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn revisions_order_concurrent_writes() {
        // By values alone either order works; the revisions say b came last, so
        // a later read of a (at the latest revision) is illegal.
        let h = [
            put(0, "k", "a", 0, 100, 2),
            put(1, "k", "b", 0, 100, 3),
            get(2, "k", Some("a"), 110, 120, 3),
        ];
        assert_eq!(check_with(&h, TIMEOUT, false), CheckResult::Ok);
        let detail = assert_illegal(&h, "k");
        assert!(detail.contains("revision"), "{detail}");
    }

    #[test]
    fn read_revision_must_match_its_place() {
        // A read of "a" at revision 3 cannot sit before the write at revision 3.
        let h = [
            put(0, "k", "a", 0, 100, 2),
            put(1, "k", "b", 0, 100, 3),
            get(2, "k", Some("a"), 10, 20, 3),
        ];
        assert_eq!(check_with(&h, TIMEOUT, false), CheckResult::Ok);
        assert_illegal(&h, "k");
        // A Put must bump the revision, even concurrently.
        let h = [put(0, "k", "a", 0, 100, 2), put(1, "k", "b", 0, 100, 2)];
        assert_illegal(&h, "k");
    }

    #[test]
    fn stale_read_is_detected() {
        // The put of "b" completed before the get was invoked, yet it read "a".
        let mut h = vec![
            put(0, "k", "a", 0, 10, 2),
            put(0, "k", "b", 20, 30, 3),
            get(1, "k", Some("a"), 40, 50, 3),
        ];
        let detail = assert_illegal(&h, "k");
        assert!(detail.contains("#2"), "{detail}");
        assert_illegal_by_values(&h);
        // With the stale revision too, the real-time revision check catches it.
        h[2] = get(1, "k", Some("a"), 40, 50, 2);
        let detail = assert_illegal(&h, "k");
        assert!(detail.contains("went backwards"), "{detail}");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn lost_write_is_detected() {
        // An acknowledged put, then a later non-overlapping read of the old value.
        let h = [
            put(0, "k", "a", 0, 10, 2),
            put(0, "k", "b", 20, 30, 3),
            get(1, "k", Some("b"), 40, 50, 3),
            put(2, "k", "c", 60, 70, 4),
            get(1, "k", Some("b"), 80, 90, 4),
        ];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
        // And a lost first write: the key reads as absent afterwards.
        let h = [put(0, "k", "a", 0, 10, 2), get(1, "k", None, 20, 30, 2)];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn unknown_put_may_have_applied_or_not() {
        // Applied.
        assert_ok(&[
            unknown(put(0, "k", "a", 0, 0, 0)),
            get(1, "k", Some("a"), 10, 20, 2),
        ]);
        // Not applied.
        assert_ok(&[
            unknown(put(0, "k", "a", 0, 0, 0)),
            get(1, "k", None, 10, 20, 1),
        ]);
        // Applied late: long after the client gave up.
        assert_ok(&[
            unknown(put(0, "k", "a", 0, 0, 0)),
            get(1, "k", None, 10, 20, 1),
            get(1, "k", Some("a"), 30, 40, 2),
        ]);
        // But once seen it cannot be unseen...
        let h = [
            unknown(put(0, "k", "a", 0, 0, 0)),
            get(1, "k", Some("a"), 10, 20, 2),
            get(1, "k", None, 30, 40, 2),
        ];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
        // ...and it cannot apply before it was invoked.
        let h = [
            get(1, "k", Some("a"), 0, 10, 2),
            unknown(put(0, "k", "a", 20, 0, 0)),
        ];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn unknown_delete_may_have_applied_or_not() {
        assert_ok(&[
            put(0, "k", "a", 0, 10, 2),
            unknown(del(0, "k", 20, 0, 0)),
            get(1, "k", Some("a"), 30, 40, 2),
        ]);
        assert_ok(&[
            put(0, "k", "a", 0, 10, 2),
            unknown(del(0, "k", 20, 0, 0)),
            get(1, "k", None, 30, 40, 3),
        ]);
        // It applies at most once.
        let h = [
            put(0, "k", "a", 0, 10, 2),
            unknown(del(0, "k", 20, 0, 0)),
            get(1, "k", None, 30, 40, 3),
            put(0, "k", "b", 50, 60, 4),
            get(1, "k", None, 70, 80, 4),
        ];
        assert_illegal(&h, "k");
        assert_illegal_by_values(&h);
    }

    #[test]
    fn unknown_get_is_ignored() {
        assert_ok(&[
            put(0, "k", "a", 0, 10, 2),
            Operation {
                client: 1,
                input: Input::Get {
                    key: "k".to_owned(),
                },
                output: Output::Unknown,
                call: 20,
                ret: 30,
            },
        ]);
    }

    #[test]
    fn revision_going_backwards_across_keys_is_illegal() {
        let h = [put(0, "x", "a", 0, 10, 5), get(1, "y", None, 20, 30, 4)];
        let detail = assert_illegal(&h, "y");
        assert!(
            detail.contains("went backwards") && detail.contains("#0") && detail.contains("#1"),
            "{detail}"
        );
        // Concurrent (even touching) ops may see revisions in either order.
        assert_ok(&[put(0, "x", "a", 0, 10, 5), get(1, "y", None, 10, 30, 4)]);
    }

    #[test]
    fn revision_going_backwards_within_a_key_is_illegal() {
        let h = [put(0, "k", "a", 0, 10, 5), put(0, "k", "b", 20, 30, 4)];
        assert_illegal(&h, "k");
    }

    #[test]
    fn malformed_ops_are_reported() {
        let mut bad = get(0, "k", None, 0, 10, 1);
        bad.output = Output::Written { revision: 1 };
        let detail = assert_illegal(&[bad], "k");
        assert!(detail.contains("malformed"), "{detail}");
        let detail = assert_illegal(&[put(0, "k", "a", 10, 5, 2)], "k");
        assert!(detail.contains("malformed"), "{detail}");
    }

    #[test]
    fn hard_history_times_out_as_unknown() {
        // Many concurrent Unknown puts, reads that need them in one order, then
        // an impossible read: proving it impossible means trying exponentially
        // many subsets of the puts.
        let n = 40;
        let mut h: Vec<Operation> = (0..n)
            .map(|i| unknown(put(i, "k", &format!("v{i}"), 0, 0, 0)))
            .collect();
        for i in 0..n {
            let t = 1000 + 10 * i as u128;
            h.push(get(n, "k", Some(&format!("v{i}")), t, t + 5, 1));
        }
        h.push(get(n, "k", Some("never"), 5000, 5005, 1));
        let start = Instant::now();
        assert_eq!(check(&h, Duration::from_millis(100)), CheckResult::Unknown);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    /// A random history of a linearizable store: each op takes effect at a random
    /// point of its interval; `clients` each issue ops back to back. Put values
    /// are unique. Some ops end Unknown, half of those not applied at all.
    fn simulate(
        rng: &mut StdRng,
        n: usize,
        keys: usize,
        clients: usize,
        unknown_rate: f64,
    ) -> Vec<Operation> {
        let mut free_at = vec![0u128; clients];
        let mut ops = Vec::with_capacity(n);
        let mut effect_at = Vec::with_capacity(n);
        for i in 0..n {
            let client = rng.random_range(0..clients);
            let call = free_at[client] + rng.random_range(0..50);
            let ret = call + rng.random_range(1..100);
            free_at[client] = ret + 1;
            effect_at.push(rng.random_range(call..=ret));
            let key = format!("k{}", rng.random_range(0..keys));
            let input = match rng.random_range(0..20) {
                0..9 => Input::Put {
                    key,
                    value: format!("v{i}"),
                },
                9..17 => Input::Get { key },
                _ => Input::Delete { key },
            };
            ops.push(Operation {
                client,
                input,
                output: Output::Unknown,
                call,
                ret,
            });
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (effect_at[i], i));
        let mut store: HashMap<String, String> = HashMap::new();
        let mut revision = 1;
        for i in order {
            let op = &mut ops[i];
            let unknown = rng.random_bool(unknown_rate);
            if unknown && rng.random_bool(0.5) {
                continue;
            }
            let output = match &op.input {
                Input::Put { key, value } => {
                    store.insert(key.clone(), value.clone());
                    revision += 1;
                    Output::Written { revision }
                }
                Input::Delete { key } => {
                    if store.remove(key).is_some() {
                        revision += 1;
                    }
                    Output::Written { revision }
                }
                Input::Get { key } => Output::Read {
                    value: store.get(key).cloned(),
                    revision,
                },
            };
            if !unknown {
                op.output = output;
            }
        }
        ops
    }

    fn is_completed_put(op: &Operation, key: &str) -> bool {
        matches!((&op.input, &op.output), (Input::Put { key: k, .. }, Output::Written { .. }) if k == key)
    }

    /// A read R, and a put P of another value, with a completed write W on the
    /// same key strictly between them in real time: R cannot read P's value.
    fn find_stale(h: &[Operation]) -> Option<(usize, String)> {
        for (r, read) in h.iter().enumerate() {
            let (Input::Get { key }, Output::Read { value, .. }) = (&read.input, &read.output)
            else {
                continue;
            };
            for w in h.iter().filter(|w| {
                w.input.key() == key
                    && !matches!(w.input, Input::Get { .. })
                    && matches!(w.output, Output::Written { .. })
                    && w.ret < read.call
            }) {
                for p in h
                    .iter()
                    .filter(|p| is_completed_put(p, key) && p.ret < w.call)
                {
                    if let Input::Put { value: stale, .. } = &p.input {
                        if value.as_ref() != Some(stale) {
                            return Some((r, stale.clone()));
                        }
                    }
                }
            }
        }
        None
    }

    fn set_read_value(op: &mut Operation, new: Option<String>) {
        if let Output::Read { value, .. } = &mut op.output {
            *value = new;
        }
    }

    #[test]
    fn randomized_legal_histories_pass_and_mutations_fail() {
        let start = Instant::now();
        let mut stale_checked = 0;
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let h = simulate(&mut rng, 200, 3, 6, 0.05);
            assert_eq!(check(&h, TIMEOUT), CheckResult::Ok, "seed {seed}");
            assert_eq!(
                check_with(&h, TIMEOUT, false),
                CheckResult::Ok,
                "seed {seed}"
            );

            // A read of a value never written.
            let reads: Vec<usize> = (0..h.len())
                .filter(|&i| matches!(h[i].output, Output::Read { .. }))
                .collect();
            let r = reads[rng.random_range(0..reads.len())];
            let mut bad = h.clone();
            set_read_value(&mut bad[r], Some("never written".to_owned()));
            let key = h[r].input.key();
            assert!(
                matches!(check(&bad, TIMEOUT), CheckResult::Illegal { key: ref k, .. } if k == key),
                "seed {seed}: read #{r} mutated"
            );
            assert_illegal_by_values(&bad);

            // A stale read.
            if let Some((r, stale)) = find_stale(&h) {
                let mut bad = h.clone();
                set_read_value(&mut bad[r], Some(stale));
                assert!(
                    matches!(check(&bad, TIMEOUT), CheckResult::Illegal { .. }),
                    "seed {seed}: stale read #{r}"
                );
                assert_illegal_by_values(&bad);
                stale_checked += 1;
            }
        }
        assert!(stale_checked >= 30, "only {stale_checked} stale mutations");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn large_history_checks_within_a_second() {
        let mut rng = StdRng::seed_from_u64(7);
        let h = simulate(&mut rng, 2000, 10, 8, 0.01);
        let start = Instant::now();
        assert_eq!(check(&h, Duration::from_secs(1)), CheckResult::Ok);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn recorder_records_concurrent_ops() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Recorder>();

        // A store that is linearizable by construction (one lock), with etcd's revisions.
        let store = Arc::new(Mutex::new((HashMap::<String, String>::new(), 1i64)));
        let recorder = Recorder::new();
        std::thread::scope(|s| {
            for client in 0..4 {
                let (store, recorder) = (Arc::clone(&store), recorder.clone());
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(client as u64);
                    for i in 0..100 {
                        let key = format!("k{}", rng.random_range(0..2));
                        let input = match rng.random_range(0..3) {
                            0 => Input::Put {
                                key,
                                value: format!("c{client}-{i}"),
                            },
                            1 => Input::Get { key },
                            _ => Input::Delete { key },
                        };
                        let pending = recorder.invoke(client, input.clone());
                        let output = {
                            let mut guard = store.lock().unwrap();
                            let (map, revision) = &mut *guard;
                            match input {
                                Input::Put { key, value } => {
                                    map.insert(key, value);
                                    *revision += 1;
                                    Output::Written {
                                        revision: *revision,
                                    }
                                }
                                Input::Delete { key } => {
                                    if map.remove(&key).is_some() {
                                        *revision += 1;
                                    }
                                    Output::Written {
                                        revision: *revision,
                                    }
                                }
                                Input::Get { key } => Output::Read {
                                    value: map.get(&key).cloned(),
                                    revision: *revision,
                                },
                            }
                        };
                        pending.complete(output);
                    }
                });
            }
        });
        let h = recorder.history();
        assert_eq!(h.len(), 400);
        assert!(h.windows(2).all(|w| w[0].call <= w[1].call));
        assert!(h.iter().all(|op| op.call <= op.ret));
        assert_eq!(check(&h, TIMEOUT), CheckResult::Ok);
    }

    #[test]
    fn dropped_pending_op_is_recorded_unknown() {
        let recorder = Recorder::new();
        drop(recorder.invoke(
            3,
            Input::Put {
                key: "k".to_owned(),
                value: "a".to_owned(),
            },
        ));
        recorder
            .invoke(
                4,
                Input::Get {
                    key: "k".to_owned(),
                },
            )
            .complete(Output::Read {
                value: Some("a".to_owned()),
                revision: 2,
            });
        let h = recorder.history();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].client, &h[0].output), (3, &Output::Unknown));
        assert_eq!(check(&h, TIMEOUT), CheckResult::Ok);
    }
}
