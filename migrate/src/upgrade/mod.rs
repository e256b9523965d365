//! Upgrade checks: "may I restart this member now?" for any etcd (3.4–3.6)
//! or Cairn cluster (`cairn upgrade check|plan`).
//!
//! * [`version`]: the version skew rules; [`verdict`]: PASS/WARN/UNKNOWN/FAIL and exit codes.

pub mod verdict;
pub mod version;

pub use version::{CairnRelease, Version};
