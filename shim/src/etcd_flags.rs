//! etcd's command line, as kubeadm, kind and etcd's own docs write it, turned
//! into Cairn's before clap reads it.
//!
//! An etcd static pod's manifest, a systemd unit or a container's `ETCD_*`
//! environment must start Cairn unchanged. So, as etcd's Go `flag` package:
//! `-flag` is `--flag`, a boolean takes its value only after `=`, and every
//! flag may come from `ETCD_<FLAG>` unless given on the command line; with
//! `--config-file`, the file alone configures the member.
//!
//! etcd flags Cairn does not implement are taken out here, by a table:
//! * one that changes nothing Cairn does (its subject does not exist in
//!   Cairn, such as bbolt's freelist) is accepted with one warning naming it;
//! * one that would change behaviour is accepted only at etcd's default
//!   value, and otherwise refuses the start, naming itself.
//!
//! The same holds for `--feature-gates` (etcd 3.6), whose gates replace
//! several `--experimental-*` flags.

use std::collections::BTreeMap;
use std::ffi::OsString;

use anyhow::{anyhow, bail, Context};

/// How an etcd flag that Cairn does not implement is treated.
#[derive(Clone, Copy, Debug)]
enum Treatment {
    /// Changes nothing Cairn has; the reason says why.
    Inert(&'static str),
    /// Accepted at etcd's default value only; the reason says what Cairn
    /// does instead.
    DefaultOnly(&'static str, &'static str),
}
use Treatment::{DefaultOnly, Inert};

/// The type of a flag's value, to compare it with the default as etcd reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Bool,
    Duration,
    Text,
}

struct Unimplemented {
    name: &'static str,
    kind: Kind,
    treatment: Treatment,
}

const fn flag(name: &'static str, kind: Kind, treatment: Treatment) -> Unimplemented {
    Unimplemented {
        name,
        kind,
        treatment,
    }
}

const NO_BBOLT: &str = "Cairn's store is SQLite, not bbolt";
const NO_WAL_FILES: &str =
    "Cairn keeps one Raft log file and one snapshot, and purges the log behind it itself";
const NO_AUTH: &str = "Cairn has no etcd authentication (clients authenticate with TLS certificates, as kube-apiserver does)";
const NO_V2: &str = "Cairn serves only the v3 API";
const NO_TRACING: &str = "Cairn does not export OpenTelemetry traces";
const NO_DISCOVERY: &str =
    "Cairn bootstraps from --initial-cluster only; discovery services are not supported";
const NO_AUTO_TLS: &str =
    "Cairn does not generate certificates; give --cert-file/--key-file (or the peer ones)";
const NO_CORRUPT_CHECK: &str = "Cairn does not compare its store with its peers' at start; `etcdctl endpoint hashkv --cluster` compares every member's on demand";
const COMPACTION_OWN_BATCHES: &str = "Cairn compacts in batches of its own";
const WARN_THRESHOLDS: &str = "Cairn's slow-request warnings use fixed thresholds";

/// Every etcd 3.5 and 3.6 server flag that Cairn does not implement.
const UNIMPLEMENTED: &[Unimplemented] = &[
    flag("wal-dir", Kind::Text, DefaultOnly("", "Cairn keeps its Raft log in --data-dir")),
    flag("max-snapshots", Kind::Text, Inert(NO_WAL_FILES)),
    flag("max-wals", Kind::Text, Inert(NO_WAL_FILES)),
    flag("initial-election-tick-advance", Kind::Bool, Inert("Cairn's first election waits one randomized election timeout")),
    flag("backend-bbolt-freelist-type", Kind::Text, Inert(NO_BBOLT)),
    flag("experimental-backend-bbolt-freelist-type", Kind::Text, Inert(NO_BBOLT)),
    flag("backend-batch-interval", Kind::Duration, Inert("Cairn commits each applied batch of Raft entries at once")),
    flag("backend-batch-limit", Kind::Text, Inert("Cairn commits each applied batch of Raft entries at once")),
    flag("raft-read-timeout", Kind::Duration, Inert("Cairn's peer traffic is gRPC with its own deadlines")),
    flag("raft-write-timeout", Kind::Duration, Inert("Cairn's peer traffic is gRPC with its own deadlines")),
    flag("socket-reuse-port", Kind::Bool, DefaultOnly("false", "Cairn binds its listeners without SO_REUSEPORT")),
    flag("socket-reuse-address", Kind::Bool, DefaultOnly("false", "Cairn binds its listeners without SO_REUSEADDR")),
    flag("listen-client-http-urls", Kind::Text, DefaultOnly("", "Cairn serves HTTP beside gRPC on --listen-client-urls")),
    flag("discovery", Kind::Text, DefaultOnly("", NO_DISCOVERY)),
    flag("discovery-fallback", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-proxy", Kind::Text, DefaultOnly("", NO_DISCOVERY)),
    flag("discovery-srv", Kind::Text, DefaultOnly("", NO_DISCOVERY)),
    flag("discovery-srv-name", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-endpoints", Kind::Text, DefaultOnly("", NO_DISCOVERY)),
    flag("discovery-token", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-dial-timeout", Kind::Duration, Inert(NO_DISCOVERY)),
    flag("discovery-request-timeout", Kind::Duration, Inert(NO_DISCOVERY)),
    flag("discovery-keepalive-time", Kind::Duration, Inert(NO_DISCOVERY)),
    flag("discovery-keepalive-timeout", Kind::Duration, Inert(NO_DISCOVERY)),
    flag("discovery-insecure-transport", Kind::Bool, Inert(NO_DISCOVERY)),
    flag("discovery-insecure-skip-tls-verify", Kind::Bool, Inert(NO_DISCOVERY)),
    flag("discovery-cert", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-key", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-cacert", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-user", Kind::Text, Inert(NO_DISCOVERY)),
    flag("discovery-password", Kind::Text, Inert(NO_DISCOVERY)),
    flag("strict-reconfig-check", Kind::Bool, DefaultOnly("true", "Cairn always refuses a membership change that would lose quorum")),
    flag("pre-vote", Kind::Bool, DefaultOnly("true", "Cairn always runs Raft's pre-vote")),
    flag("client-cert-file", Kind::Text, DefaultOnly("", "Cairn presents --cert-file")),
    flag("client-key-file", Kind::Text, DefaultOnly("", "Cairn presents --key-file")),
    flag("peer-client-cert-file", Kind::Text, DefaultOnly("", "Cairn presents --peer-cert-file to its peers")),
    flag("peer-client-key-file", Kind::Text, DefaultOnly("", "Cairn presents --peer-key-file to its peers")),
    flag("client-cert-allowed-hostname", Kind::Text, DefaultOnly("", "Cairn accepts any client certificate its trusted CA signed")),
    flag("peer-cert-allowed-cn", Kind::Text, DefaultOnly("", "Cairn accepts any peer certificate its peer CA signed")),
    flag("peer-cert-allowed-hostname", Kind::Text, DefaultOnly("", "Cairn accepts any peer certificate its peer CA signed")),
    flag("experimental-peer-skip-client-san-verification", Kind::Bool, DefaultOnly("false", "Cairn accepts any peer certificate its peer CA signed")),
    flag("peer-skip-client-san-verification", Kind::Bool, DefaultOnly("false", "Cairn accepts any peer certificate its peer CA signed")),
    flag("auto-tls", Kind::Bool, DefaultOnly("false", NO_AUTO_TLS)),
    flag("peer-auto-tls", Kind::Bool, DefaultOnly("false", NO_AUTO_TLS)),
    flag("self-signed-cert-validity", Kind::Text, Inert(NO_AUTO_TLS)),
    flag("cors", Kind::Text, Inert("Cairn has no JSON gateway for browsers")),
    flag("host-whitelist", Kind::Text, DefaultOnly("*", "Cairn accepts any Host header")),
    flag("enable-log-rotation", Kind::Bool, DefaultOnly("false", "Cairn leaves log rotation to the system (journald, logrotate)")),
    flag("log-rotation-config-json", Kind::Text, Inert("Cairn leaves log rotation to the system (journald, logrotate)")),
    flag("enable-pprof", Kind::Bool, DefaultOnly("false", "Cairn has no Go profiler")),
    flag("experimental-enable-distributed-tracing", Kind::Bool, DefaultOnly("false", NO_TRACING)),
    flag("enable-distributed-tracing", Kind::Bool, DefaultOnly("false", NO_TRACING)),
    flag("experimental-distributed-tracing-address", Kind::Text, Inert(NO_TRACING)),
    flag("distributed-tracing-address", Kind::Text, Inert(NO_TRACING)),
    flag("experimental-distributed-tracing-service-name", Kind::Text, Inert(NO_TRACING)),
    flag("distributed-tracing-service-name", Kind::Text, Inert(NO_TRACING)),
    flag("experimental-distributed-tracing-instance-id", Kind::Text, Inert(NO_TRACING)),
    flag("distributed-tracing-instance-id", Kind::Text, Inert(NO_TRACING)),
    flag("experimental-distributed-tracing-sampling-rate", Kind::Text, Inert(NO_TRACING)),
    flag("distributed-tracing-sampling-rate", Kind::Text, Inert(NO_TRACING)),
    flag("auth-token", Kind::Text, Inert(NO_AUTH)),
    flag("bcrypt-cost", Kind::Text, Inert(NO_AUTH)),
    flag("auth-token-ttl", Kind::Text, Inert(NO_AUTH)),
    flag("enable-grpc-gateway", Kind::Bool, Inert("Cairn has no JSON gateway; kube-apiserver and etcdctl speak gRPC")),
    flag("experimental-initial-corrupt-check", Kind::Bool, Inert(NO_CORRUPT_CHECK)),
    flag("experimental-corrupt-check-time", Kind::Duration, DefaultOnly("0s", "Cairn runs no periodic corruption check")),
    flag("corrupt-check-time", Kind::Duration, DefaultOnly("0s", "Cairn runs no periodic corruption check")),
    flag("experimental-compact-hash-check-enabled", Kind::Bool, DefaultOnly("false", "Cairn runs no compaction hash check")),
    flag("experimental-compact-hash-check-time", Kind::Duration, Inert("Cairn runs no compaction hash check")),
    flag("compact-hash-check-time", Kind::Duration, Inert("Cairn runs no compaction hash check")),
    flag("experimental-enable-lease-checkpoint", Kind::Bool, DefaultOnly("false", "Cairn's leases restart their TTL on a new leader, as etcd's do without checkpoints")),
    flag("experimental-enable-lease-checkpoint-persist", Kind::Bool, DefaultOnly("false", "Cairn's leases restart their TTL on a new leader, as etcd's do without checkpoints")),
    flag("experimental-compaction-batch-limit", Kind::Text, Inert(COMPACTION_OWN_BATCHES)),
    flag("compaction-batch-limit", Kind::Text, Inert(COMPACTION_OWN_BATCHES)),
    flag("experimental-compaction-sleep-interval", Kind::Duration, Inert(COMPACTION_OWN_BATCHES)),
    flag("compaction-sleep-interval", Kind::Duration, Inert(COMPACTION_OWN_BATCHES)),
    flag("experimental-downgrade-check-time", Kind::Duration, Inert("Cairn's leader checks every member's release every 2 s")),
    flag("downgrade-check-time", Kind::Duration, Inert("Cairn's leader checks every member's release every 2 s")),
    flag("experimental-warning-apply-duration", Kind::Duration, Inert(WARN_THRESHOLDS)),
    flag("warning-apply-duration", Kind::Duration, Inert(WARN_THRESHOLDS)),
    flag("experimental-warning-unary-request-duration", Kind::Duration, Inert(WARN_THRESHOLDS)),
    flag("warning-unary-request-duration", Kind::Duration, Inert(WARN_THRESHOLDS)),
    flag("experimental-memory-mlock", Kind::Bool, DefaultOnly("false", "Cairn does not lock its pages in RAM")),
    flag("memory-mlock", Kind::Bool, DefaultOnly("false", "Cairn does not lock its pages in RAM")),
    flag("experimental-txn-mode-write-with-shared-buffer", Kind::Bool, Inert(NO_BBOLT)),
    flag("experimental-stop-grpc-service-on-defrag", Kind::Bool, DefaultOnly("false", "Cairn keeps serving during a defragmentation")),
    flag("experimental-bootstrap-defrag-threshold-megabytes", Kind::Text, Inert(NO_BBOLT)),
    flag("bootstrap-defrag-threshold-megabytes", Kind::Text, Inert(NO_BBOLT)),
    flag("experimental-max-learners", Kind::Text, DefaultOnly("1", "Cairn's limit on learners is not configurable")),
    flag("max-learners", Kind::Text, DefaultOnly("1", "Cairn's limit on learners is not configurable")),
    flag("experimental-wait-cluster-ready-timeout", Kind::Duration, Inert("Cairn serves clients once its attributes are published, without a fixed wait")),
    flag("unsafe-no-fsync", Kind::Bool, DefaultOnly("false", "Cairn always syncs its log before acknowledging a write")),
    flag("force-new-cluster", Kind::Bool, DefaultOnly("false", "Cairn cannot force a new cluster; restore a snapshot (`cairn snapshot restore`) instead")),
    flag("v2-deprecation", Kind::Text, Inert(NO_V2)),
    flag("enable-v2", Kind::Bool, DefaultOnly("false", NO_V2)),
    flag("experimental-enable-v2v3", Kind::Text, DefaultOnly("", NO_V2)),
    flag("proxy", Kind::Text, DefaultOnly("off", "Cairn is not a v2 proxy")),
    flag("proxy-failure-wait", Kind::Text, Inert("Cairn is not a v2 proxy")),
    flag("proxy-refresh-interval", Kind::Text, Inert("Cairn is not a v2 proxy")),
    flag("proxy-dial-timeout", Kind::Text, Inert("Cairn is not a v2 proxy")),
    flag("proxy-write-timeout", Kind::Text, Inert("Cairn is not a v2 proxy")),
    flag("proxy-read-timeout", Kind::Text, Inert("Cairn is not a v2 proxy")),
];

/// etcd 3.6's server feature gates, treated as the flags they replace.
const FEATURE_GATES: &[Unimplemented] = &[
    flag("InitialCorruptCheck", Kind::Bool, Inert(NO_CORRUPT_CHECK)),
    flag(
        "CompactHashCheck",
        Kind::Bool,
        DefaultOnly("false", "Cairn runs no compaction hash check"),
    ),
    flag(
        "LeaseCheckpoint",
        Kind::Bool,
        DefaultOnly(
            "false",
            "Cairn's leases restart their TTL on a new leader, as etcd's do without checkpoints",
        ),
    ),
    flag(
        "LeaseCheckpointPersist",
        Kind::Bool,
        DefaultOnly(
            "false",
            "Cairn's leases restart their TTL on a new leader, as etcd's do without checkpoints",
        ),
    ),
    flag(
        "StopGRPCServiceOnDefrag",
        Kind::Bool,
        DefaultOnly("false", "Cairn keeps serving during a defragmentation"),
    ),
    flag("TxnModeWriteWithSharedBuffer", Kind::Bool, Inert(NO_BBOLT)),
    flag(
        "SetMemberLocalAddr",
        Kind::Bool,
        DefaultOnly(
            "false",
            "Cairn dials its peers from the system's choice of address",
        ),
    ),
    flag(
        "AllAlpha",
        Kind::Bool,
        DefaultOnly("false", "Cairn implements none of etcd's alpha features"),
    ),
    flag(
        "AllBeta",
        Kind::Bool,
        DefaultOnly("false", "Cairn implements none of etcd's beta features"),
    ),
];

/// The command line clap reads, and the warnings to log once logging is up.
#[derive(Debug)]
pub struct EtcdCommandLine {
    pub args: Vec<OsString>,
    pub warnings: Vec<String>,
}

/// Cairn's own long flags (aliases included), each with whether it is a
/// switch (takes no value, or only after `=`), read from clap.
pub type CairnFlags = BTreeMap<String, bool>;

/// The server's flags as clap defines them.
pub fn cairn_flags() -> CairnFlags {
    use clap::Args;
    let cmd = crate::config::ServeArgs::augment_args(clap::Command::new("cairn"));
    let mut flags = CairnFlags::new();
    for arg in cmd.get_arguments() {
        let switch = arg.get_num_args().is_some_and(|n| n.min_values() == 0)
            || !arg.get_action().takes_values();
        for name in arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default())
        {
            flags.insert(name.to_string(), switch);
        }
    }
    for builtin in ["help", "version"] {
        flags.insert(builtin.to_string(), true);
    }
    flags
}

/// Turns a server command line (`argv`, program name first) as etcd takes
/// it, plus `ETCD_*` variables from `env`, into Cairn's.
pub fn normalize(
    argv: Vec<OsString>,
    env: impl IntoIterator<Item = (String, String)>,
    cairn_flags: &CairnFlags,
) -> anyhow::Result<EtcdCommandLine> {
    let mut iter = argv.into_iter();
    let program = iter.next().unwrap_or_else(|| OsString::from("cairn"));
    let mut given: Vec<(String, Option<String>)> = Vec::new();
    let mut rest = iter.peekable();
    while let Some(arg) = rest.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| anyhow!("argument {arg:?} is not UTF-8"))?
            .to_string();
        if text == "-h" || text == "-V" {
            given.push((
                if text == "-h" { "help" } else { "version" }.to_string(),
                None,
            ));
            continue;
        }
        let Some(body) = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-').filter(|b| b.len() > 1))
        else {
            bail!("unexpected argument {text:?}: Cairn's server takes only flags");
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        // A flag that takes a value may take it from the next argument,
        // except a boolean (as in Go).
        let value = match value {
            Some(v) => Some(v),
            None if !is_switch(&name, cairn_flags) => match rest.peek().and_then(|n| n.to_str()) {
                Some(next) if !next.starts_with('-') || next == "-" => {
                    let v = next.to_string();
                    rest.next();
                    Some(v)
                }
                _ => None,
            },
            None => None,
        };
        given.push((name, value));
    }

    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .collect();
    let mut warnings = Vec::new();
    let config_file = given
        .iter()
        .find(|(n, _)| n == "config-file")
        .map(|(_, v)| v.clone().unwrap_or_default())
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "ETCD_CONFIG_FILE")
                .map(|(_, v)| v.clone())
        });
    let flags = if let Some(path) = config_file {
        let others: Vec<&str> = given
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "config-file")
            .collect();
        if !others.is_empty() {
            warnings.push(format!(
                "--config-file {path} configures this member; as etcd, Cairn ignores the other flags given: --{}",
                others.join(", --")
            ));
        }
        crate::etcd_config_file::load(std::path::Path::new(&path))?
    } else {
        with_env(given, &env, cairn_flags, &mut warnings)
    };

    let mut args = vec![program];
    for (name, value) in flags {
        if name == "feature-gates" {
            feature_gates(value.as_deref().unwrap_or(""), &mut warnings)?;
            continue;
        }
        if let Some(u) = UNIMPLEMENTED.iter().find(|u| u.name == name) {
            check_unimplemented(u, "flag --", value.as_deref(), &mut warnings)?;
            continue;
        }
        if !cairn_flags.contains_key(&name) {
            bail!("unknown flag --{name}: neither Cairn nor etcd 3.5/3.6 has it");
        }
        args.push(match value {
            Some(v) => OsString::from(format!("--{name}={v}")),
            None => OsString::from(format!("--{name}")),
        });
    }
    Ok(EtcdCommandLine { args, warnings })
}

/// Adds the flags `ETCD_*` variables set and the command line does not.
fn with_env(
    mut given: Vec<(String, Option<String>)>,
    env: &[(String, String)],
    cairn_flags: &CairnFlags,
    warnings: &mut Vec<String>,
) -> Vec<(String, Option<String>)> {
    for (key, value) in env {
        let name = key["ETCD_".len()..].to_ascii_lowercase().replace('_', "-");
        let known = cairn_flags.contains_key(&name)
            || name == "feature-gates"
            || UNIMPLEMENTED.iter().any(|u| u.name == name);
        if !known {
            warnings.push(format!("unrecognized environment variable {key}={value}"));
            continue;
        }
        if given.iter().any(|(n, _)| *n == name) {
            warnings.push(format!(
                "recognized environment variable {key}, but unused: shadowed by the --{name} flag"
            ));
            continue;
        }
        given.push((name, Some(value.clone())));
    }
    given
}

/// A flag that takes its value only after `=` (in Go: a boolean).
fn is_switch(name: &str, cairn_flags: &CairnFlags) -> bool {
    UNIMPLEMENTED
        .iter()
        .any(|u| u.name == name && u.kind == Kind::Bool)
        || cairn_flags.get(name).copied().unwrap_or(false)
}

fn check_unimplemented(
    u: &Unimplemented,
    what: &str,
    value: Option<&str>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    let value = match (value, u.kind) {
        (Some(v), _) => v,
        (None, Kind::Bool) => "true",
        (None, _) => bail!("{what}{} needs a value", u.name),
    };
    match u.treatment {
        Inert(reason) => {
            warnings.push(format!(
                "{what}{}={value} is accepted and has no effect: {reason}",
                u.name
            ));
            Ok(())
        }
        DefaultOnly(default, reason) => {
            if same_value(u.kind, value, default)
                .with_context(|| format!("invalid value {value:?} for {what}{}", u.name))?
            {
                Ok(())
            } else {
                bail!(
                    "{what}{}={value} is not supported by Cairn (only etcd's default, {}): {reason}",
                    u.name,
                    if default.is_empty() { "unset" } else { default }
                )
            }
        }
    }
}

/// `--feature-gates=Name=bool,...`, each gate checked as a flag.
fn feature_gates(spec: &str, warnings: &mut Vec<String>) -> anyhow::Result<()> {
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("missing bool value for {pair} in --feature-gates"))?;
        let gate = FEATURE_GATES
            .iter()
            .find(|g| g.name == name.trim())
            .ok_or_else(|| anyhow!("unrecognized feature gate: {}", name.trim()))?;
        parse_go_bool(value.trim())
            .with_context(|| format!("invalid value of {name}={value} in --feature-gates"))?;
        check_unimplemented(gate, "feature gate ", Some(value.trim()), warnings)?;
    }
    Ok(())
}

fn same_value(kind: Kind, given: &str, default: &str) -> anyhow::Result<bool> {
    Ok(match kind {
        Kind::Bool => parse_go_bool(given)? == parse_go_bool(default)?,
        Kind::Duration => go_duration(given)? == go_duration(default)?,
        Kind::Text => given.trim() == default,
    })
}

/// A duration flag's value in nanoseconds, as Go's `time.ParseDuration`.
fn go_duration(s: &str) -> anyhow::Result<i64> {
    crate::go_duration::parse(s)
        .map(|d| d.0)
        .map_err(|e| anyhow!("{e}"))
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> anyhow::Result<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => bail!("{s:?} is not a boolean"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<EtcdCommandLine> {
        let argv = std::iter::once("etcd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        normalize(argv, env, &super::cairn_flags())
    }

    fn args(c: &EtcdCommandLine) -> Vec<String> {
        c.args[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn go_flag_syntax_becomes_clap_syntax() {
        let c = run(
            &[
                "-name=m1",
                "--data-dir",
                "/d",
                "--client-cert-auth",
                "--snapshot-count=10000",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            args(&c),
            [
                "--name=m1",
                "--data-dir=/d",
                "--client-cert-auth",
                "--snapshot-count=10000"
            ]
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn inert_flags_warn_by_name_and_default_only_flags_refuse_other_values() {
        let c = run(
            &[
                "--name=m1",
                "--experimental-initial-corrupt-check=true",
                "--max-wals=3",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(args(&c), ["--name=m1"]);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("--experimental-initial-corrupt-check=true"));
        assert!(c.warnings[1].contains("--max-wals=3"));

        // At etcd's default these change nothing: no warning.
        let c = run(
            &[
                "--pre-vote=true",
                "--corrupt-check-time=0",
                "--unsafe-no-fsync=false",
            ],
            &[],
        )
        .unwrap();
        assert!(c.warnings.is_empty() && args(&c).is_empty());

        for (flag, name) in [
            ("--unsafe-no-fsync", "--unsafe-no-fsync"),
            ("--wal-dir=/wal", "--wal-dir"),
            ("--corrupt-check-time=5m", "--corrupt-check-time"),
            ("--pre-vote=false", "--pre-vote"),
        ] {
            let e = run(&[flag], &[]).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("not supported"), "{e}");
        }
        let e = run(&["--no-such-flag=1"], &[]).unwrap_err().to_string();
        assert!(e.contains("--no-such-flag"), "{e}");
    }

    #[test]
    fn feature_gates_are_checked_gate_by_gate() {
        let c = run(&["--feature-gates=InitialCorruptCheck=true"], &[]).unwrap();
        assert!(
            c.warnings[0].contains("InitialCorruptCheck"),
            "{:?}",
            c.warnings
        );
        assert!(run(&["--feature-gates=CompactHashCheck=false"], &[])
            .unwrap()
            .warnings
            .is_empty());
        let e = run(&["--feature-gates=CompactHashCheck=true"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("CompactHashCheck"), "{e}");
        let e = run(&["--feature-gates=Nope=true"], &[])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "unrecognized feature gate: Nope");
    }

    #[test]
    fn etcd_environment_fills_what_the_command_line_does_not_give() {
        let c = run(
            &["--name=flag"],
            &[
                ("ETCD_NAME", "env"),
                ("ETCD_DATA_DIR", "/env"),
                ("ETCD_NOPE", "x"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(args(&c), ["--name=flag", "--data-dir=/env"]);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("ETCD_NAME") && w.contains("shadowed")));
        assert!(c.warnings.iter().any(|w| w.contains("ETCD_NOPE")));
    }

    #[test]
    fn the_example_config_file_sets_only_flags_cairn_has() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/cairn.yaml");
        let c = run(&["--config-file", path], &[("ETCD_NAME", "ignored")]).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(
            args(&c).contains(&"--name=cairn-1".to_string()),
            "{:?}",
            args(&c)
        );
    }

    #[test]
    fn go_durations_and_bools() {
        assert!(same_value(Kind::Duration, "0", "0s").unwrap());
        assert!(same_value(Kind::Duration, "90m", "1h30m").unwrap());
        assert!(same_value(Kind::Duration, "5", "0s").is_err());
        assert!(parse_go_bool("T").unwrap());
        assert!(parse_go_bool("yes").is_err());
    }
}
