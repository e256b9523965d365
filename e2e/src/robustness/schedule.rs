//! The faults a campaign injects, drawn from its seed.
//!
//! The schedule is a list of faults, each after a pause of load, drawn up
//! front so that a failure report can print it whole. Which member a fault
//! hits is a role (the leader, a follower, any member), resolved when the
//! fault runs: the leader at that moment is not known in advance.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A kind of fault, as named in `--faults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of one member, restarted after the hold.
    Kill,
    /// One member cut off from the others (a minority, or a lone leader).
    Partition,
    /// SIGSTOP of one member for longer than the election timeout, then SIGCONT.
    Pause,
    /// kill -9 of every member at once, then all restarted.
    RestartAll,
    /// A learner added, caught up and promoted, then another member removed.
    MemberChange,
    /// One member's filesystem (a tmpfs of its own) filled; freed after the
    /// hold, and the member restarted if it stopped.
    DiskFull,
    /// One member's Raft log fsyncs slowed (the `slow_fsync` fail point,
    /// set at runtime) for the hold.
    SlowDisk,
}

/// The default `--faults`: every kind that needs no privilege. Adding a
/// kind here would change what the existing seeds draw.
pub const ALL: [Kind; 5] = [
    Kind::Kill,
    Kind::Partition,
    Kind::Pause,
    Kind::RestartAll,
    Kind::MemberChange,
];

/// The disk faults, asked for by name. `disk-full` mounts a tmpfs per member
/// (root only).
pub const DISK: [Kind; 2] = [Kind::DiskFull, Kind::SlowDisk];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Partition => "partition",
            Kind::Pause => "pause",
            Kind::RestartAll => "restart-all",
            Kind::MemberChange => "member-change",
            Kind::DiskFull => "disk-full",
            Kind::SlowDisk => "slow-disk",
        }
    }

    /// For `slow-disk`: how much longer each Raft log fsync takes, drawn
    /// through `pick` (100 to 400 ms).
    pub fn fsync_delay(pick: usize) -> Duration {
        Duration::from_millis(100 * (1 + pick as u64 % 4))
    }
}

/// Parses a `--faults` list (comma-separated names).
pub fn parse_kinds(list: &str) -> Result<Vec<Kind>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match ALL.iter().chain(DISK.iter()).find(|k| k.name() == name) {
            Some(k) => *k,
            None => bail!(
                "unknown fault `{name}`; known: {},{}",
                ALL.map(Kind::name).join(","),
                DISK.map(Kind::name).join(",")
            ),
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

/// Which member a fault hits, resolved when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Follower,
    Any,
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Load without faults before this one starts.
    pub after: Duration,
    pub kind: Kind,
    pub target: Target,
    /// How long the member stays down, cut off or paused.
    pub hold: Duration,
    /// Picks among members of the same role (index modulo their number).
    pub pick: usize,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "after {:?}: {}", self.after, self.kind.name())?;
        match self.kind {
            Kind::RestartAll => write!(f, " (down {:?})", self.hold),
            Kind::MemberChange => write!(f, " (remove {:?} #{})", self.target, self.pick),
            Kind::SlowDisk => write!(
                f,
                " (fsync +{:?}) of the {:?} #{} for {:?}",
                Kind::fsync_delay(self.pick),
                self.target,
                self.pick,
                self.hold
            ),
            _ => write!(
                f,
                " of the {:?} #{} for {:?}",
                self.target, self.pick, self.hold
            ),
        }
    }
}

/// Draws `n` faults of the given kinds from `seed`. With `election` the
/// cluster's election timeout: pauses last longer than it, so that they
/// cause elections.
pub fn draw(seed: u64, kinds: &[Kind], n: usize, election: Duration) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    if kinds.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|_| {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let target = match rng.random_range(0..3) {
                0 => Target::Leader,
                1 => Target::Follower,
                _ => Target::Any,
            };
            let hold = match kind {
                Kind::Pause => election + ms(rng.random_range(200..2000)),
                Kind::Partition => ms(rng.random_range(500..3000)),
                Kind::Kill | Kind::RestartAll => ms(rng.random_range(0..2000)),
                Kind::MemberChange => Duration::ZERO,
                Kind::DiskFull | Kind::SlowDisk => ms(rng.random_range(1000..4000)),
            };
            Fault {
                after: ms(rng.random_range(500..2500)),
                kind,
                target,
                hold,
                pick: rng.random_range(0..16),
            }
        })
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_disk_faults_are_named_not_defaults() {
        assert_eq!(
            parse_kinds("kill,partition,kill").ok(),
            Some(vec![Kind::Kill, Kind::Partition])
        );
        let all = parse_kinds("kill,partition,pause,restart-all,member-change").ok();
        assert_eq!(all, Some(ALL.to_vec()));
        assert_eq!(
            parse_kinds("kill,disk-full,slow-disk").ok(),
            Some(vec![Kind::Kill, Kind::DiskFull, Kind::SlowDisk])
        );
        assert!(!ALL.contains(&Kind::DiskFull) && !ALL.contains(&Kind::SlowDisk));
        assert!(parse_kinds("flood")
            .unwrap_err()
            .to_string()
            .contains("unknown"));
    }

    #[test]
    fn disk_faults_hold_one_to_four_seconds() {
        let e = Duration::from_millis(500);
        let d = draw(3, &DISK, 50, e);
        assert!(d.iter().all(|f| DISK.contains(&f.kind)
            && f.hold >= Duration::from_secs(1)
            && f.hold < Duration::from_secs(4)));
        assert!((0..16).all(|p| {
            let d = Kind::fsync_delay(p);
            d >= Duration::from_millis(100) && d <= Duration::from_millis(400)
        }));
    }

    #[test]
    fn a_seed_draws_one_schedule() {
        let e = Duration::from_millis(500);
        let a = draw(7, &ALL, 20, e);
        assert_eq!(a, draw(7, &ALL, 20, e));
        assert_ne!(a, draw(8, &ALL, 20, e));
        assert!(a
            .iter()
            .filter(|f| f.kind == Kind::Pause)
            .all(|f| f.hold > e));
        assert!(draw(7, &[Kind::Kill], 10, e)
            .iter()
            .all(|f| f.kind == Kind::Kill));
    }
}
