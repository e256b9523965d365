//! `--auto-compaction-mode` and `--auto-compaction-retention`, read as etcd
//! reads them (embed's `parseCompactionRetention` and `Config.Validate`), so
//! a value an etcd member accepts means the same here and a value it refuses
//! is refused with etcd's words.

use std::time::Duration;

use crate::go_duration::{self, GoDuration};

/// What the two flags ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention "0" (the default): no automatic compaction.
    Off,
    /// Keep about this much history, compacting every min(period, 1h).
    Periodic(Duration),
    /// Keep this many revisions behind the current one.
    Revision(i64),
}

/// The flags could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// etcd's message for a mode other than periodic or revision.
    #[error("unknown auto-compaction-mode {0:?}")]
    UnknownMode(String),
    #[error("undefined auto-compaction-mode")]
    UndefinedMode,
    /// etcd's message for a retention that is neither a number nor a Go duration.
    #[error("error parsing CompactionRetention: {0}")]
    Parse(go_duration::GoDurationError),
    /// etcd accepts a negative duration and then compacts in a busy loop;
    /// Cairn refuses it.
    #[error("--auto-compaction-retention {0:?} is negative")]
    Negative(String),
    /// More hours than a Go duration holds (etcd's would wrap around).
    #[error("--auto-compaction-retention {0:?} is too long")]
    TooLong(String),
}

impl AutoCompaction {
    /// etcd's reading: a plain non-negative integer is hours in periodic
    /// mode and revisions in revision mode; anything else must be a Go
    /// duration ("30m"), which in revision mode etcd takes as that many
    /// nanoseconds' worth of revisions (kept, as etcd does; the caller warns).
    pub fn from_flags(mode: &str, retention: &str) -> Result<Self, RetentionError> {
        let periodic = match mode {
            "periodic" => true,
            "revision" => false,
            "" => return Err(RetentionError::UndefinedMode),
            other => return Err(RetentionError::UnknownMode(other.to_owned())),
        };
        let retention = if retention.is_empty() { "0" } else { retention };
        let nanos = match retention.parse::<i64>() {
            Ok(n) if n >= 0 && !periodic => n,
            Ok(h) if h >= 0 => h
                .checked_mul(3_600_000_000_000)
                .ok_or_else(|| RetentionError::TooLong(retention.to_owned()))?,
            _ => {
                let GoDuration(d) = go_duration::parse(retention).map_err(RetentionError::Parse)?;
                d
            }
        };
        if nanos < 0 {
            return Err(RetentionError::Negative(retention.to_owned()));
        }
        Ok(match (nanos, periodic) {
            (0, _) => AutoCompaction::Off,
            (n, true) => AutoCompaction::Periodic(Duration::from_nanos(n as u64)),
            (n, false) => AutoCompaction::Revision(n),
        })
    }

    /// Whether a revision-mode retention came from a duration string, which
    /// etcd accepts but which means a retention of billions of revisions.
    pub fn retention_is_duration(retention: &str) -> bool {
        !retention.is_empty() && retention.parse::<i64>().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
        AutoCompaction::from_flags(mode, retention).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off() {
        assert_eq!(read("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(read("periodic", ""), Ok(AutoCompaction::Off));
        assert_eq!(read("revision", "0"), Ok(AutoCompaction::Off));
        assert_eq!(read("periodic", "0s"), Ok(AutoCompaction::Off));
    }

    #[test]
    fn periodic_takes_hours_or_a_duration() {
        let h = |n: u64| Ok(AutoCompaction::Periodic(Duration::from_secs(n * 3600)));
        assert_eq!(read("periodic", "1"), h(1));
        assert_eq!(read("periodic", "72"), h(72));
        assert_eq!(
            read("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            read("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn revision_takes_a_count() {
        assert_eq!(read("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        // etcd's int64(time.Duration): "1s" is a billion revisions.
        assert_eq!(
            read("revision", "1s"),
            Ok(AutoCompaction::Revision(1_000_000_000))
        );
        assert!(AutoCompaction::retention_is_duration("1s"));
        assert!(!AutoCompaction::retention_is_duration("1000"));
    }

    /// etcd's messages for what etcd refuses.
    #[test]
    fn refuses_as_etcd() {
        assert_eq!(
            read("hourly", "1"),
            Err(r#"unknown auto-compaction-mode "hourly""#.into())
        );
        assert_eq!(read("", "1"), Err("undefined auto-compaction-mode".into()));
        assert_eq!(
            read("periodic", "1x"),
            Err(
                r#"error parsing CompactionRetention: time: unknown unit "x" in duration "1x""#
                    .into()
            )
        );
        assert_eq!(
            read("revision", "many"),
            Err(r#"error parsing CompactionRetention: time: invalid duration "many""#.into())
        );
        assert_eq!(
            read("periodic", "-1"),
            Err(r#"error parsing CompactionRetention: time: missing unit in duration "-1""#.into())
        );
        assert_eq!(
            read("periodic", "-1h"),
            Err(r#"--auto-compaction-retention "-1h" is negative"#.into())
        );
    }
}
