//! Upgrade checks: "may I restart this member now?" for any etcd (3.4–3.6)
//! or Cairn cluster (`cairn upgrade check|plan`).
//!
//! The probe gathers what the cluster says about itself (read-only: Status,
//! MemberList, Alarm, `/health`, `/version`), and pure checks decide, so
//! every rule is unit-tested without a cluster.
//!
//! * [`probe`]: the observations, into [`facts`]; [`http`]: the two GETs.
//! * [`checks`]: one finding per check; [`quorum`] and [`version`]: the
//!   rules they rest on; [`verdict`]: PASS/WARN/UNKNOWN/FAIL and exit codes.
//! * [`plan`]: the order of a rolling upgrade; [`cli`]: flags and output.

pub mod checks;
pub mod cli;
pub mod facts;
pub mod http;
pub mod plan;
pub mod probe;
pub mod quorum;
pub mod verdict;
pub mod version;

pub use cli::{run, UpgradeArgs};
pub use version::{CairnRelease, Version};
