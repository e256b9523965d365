//! etcd's `--config-file`: a YAML map whose keys are the flags' names, read
//! into the same (flag, value) list as a command line.
//!
//! As in etcd, TLS settings sit in two maps, `client-transport-security` and
//! `peer-transport-security`, whose keys drop the `peer-` prefix; lists (such
//! as `log-outputs`) become comma-separated values. A key that is no flag is
//! refused by name by the flag check that follows (etcd ignores it silently,
//! which hides typos).

use std::path::Path;

use anyhow::{bail, Context};
use yaml_rust2::{Yaml, YamlLoader};

/// The flags the file sets, in its order.
pub fn load(path: &Path) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config-file: cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("--config-file {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let docs = YamlLoader::load_from_str(text).context("not valid YAML")?;
    let mut flags = Vec::new();
    let Some(doc) = docs.first() else {
        return Ok(flags);
    };
    let Yaml::Hash(map) = doc else {
        bail!("the file must be a map of setting: value");
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            bail!("key {key:?} is not a string");
        };
        match key {
            "client-transport-security" => security(key, value, "", &mut flags)?,
            "peer-transport-security" => security(key, value, "peer-", &mut flags)?,
            _ => {
                let value = match value {
                    // A Go time.Duration read from YAML is a number of
                    // nanoseconds; the flag takes a duration string.
                    Yaml::Integer(ns) if is_duration(key) => format!("{ns}ns"),
                    _ => match scalar(key, value)? {
                        Some(v) => v,
                        None => continue,
                    },
                };
                flags.push((key.to_string(), Some(value)));
            }
        }
    }
    Ok(flags)
}

/// etcd's settings of type time.Duration: the flags named `*-time`,
/// `*-interval`, `*-timeout` and `*-duration`, but the two Raft timings,
/// which are numbers of milliseconds.
fn is_duration(key: &str) -> bool {
    !matches!(key, "heartbeat-interval" | "election-timeout")
        && ["-time", "-interval", "-timeout", "-duration"]
            .iter()
            .any(|s| key.ends_with(s))
}

/// One transport-security map, as the flags it stands for.
fn security(
    section: &str,
    value: &Yaml,
    prefix: &str,
    flags: &mut Vec<(String, Option<String>)>,
) -> anyhow::Result<()> {
    let map = match value {
        Yaml::Hash(m) => m,
        Yaml::Null => return Ok(()),
        _ => bail!("invalid {section}: must be a map"),
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            bail!("{section}: key {key:?} is not a string");
        };
        let flag = match (prefix, key) {
            ("", "allowed-hostname") => "client-cert-allowed-hostname".to_string(),
            ("", "allowed-cn") => "client-cert-allowed-cn".to_string(),
            ("", "crl-file") => "client-crl-file".to_string(),
            ("", k) => k.to_string(),
            (_, "allowed-cn") => "peer-cert-allowed-cn".to_string(),
            (_, "allowed-hostname") => "peer-cert-allowed-hostname".to_string(),
            (p, k) => format!("{p}{k}"),
        };
        if let Some(v) = scalar(&format!("{section}.{key}"), value)? {
            flags.push((flag, Some(v)));
        }
    }
    Ok(())
}

/// A flag's value as a command line would give it; `None` for a null.
fn scalar(key: &str, value: &Yaml) -> anyhow::Result<Option<String>> {
    Ok(Some(match value {
        Yaml::Null => return Ok(None),
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => {
            let mut parts = Vec::new();
            for item in items {
                match scalar(key, item)? {
                    Some(p) => parts.push(p),
                    None => continue,
                }
            }
            parts.join(",")
        }
        _ => bail!("{key}: value must be a string, number, boolean or list"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_sample_keys_become_flags() {
        let flags = parse(
            "name: 'm1'\n\
             data-dir: /var/lib/etcd\n\
             snapshot-count: 10000\n\
             listen-client-urls: https://127.0.0.1:2379\n\
             initial-cluster-state: 'new'\n\
             log-outputs: [stderr]\n\
             discovery:\n\
             client-transport-security:\n  cert-file: /c.crt\n  client-cert-auth: true\n  trusted-ca-file: /ca.crt\n\
             peer-transport-security:\n  cert-file: /p.crt\n  client-cert-auth: false\n  allowed-cn:\n",
        )
        .unwrap();
        let want: Vec<(String, Option<String>)> = [
            ("name", "m1"),
            ("data-dir", "/var/lib/etcd"),
            ("snapshot-count", "10000"),
            ("listen-client-urls", "https://127.0.0.1:2379"),
            ("initial-cluster-state", "new"),
            ("log-outputs", "stderr"),
            ("cert-file", "/c.crt"),
            ("client-cert-auth", "true"),
            ("trusted-ca-file", "/ca.crt"),
            ("peer-cert-file", "/p.crt"),
            ("peer-client-cert-auth", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
        assert_eq!(flags, want);
    }

    #[test]
    fn durations_are_nanoseconds_and_raft_timings_milliseconds() {
        let flags = parse(
            "grpc-keepalive-min-time: 5000000000\n\
             watch-progress-notify-interval: 5s\n\
             heartbeat-interval: 100\n\
             election-timeout: 1000\n",
        )
        .unwrap();
        let values: Vec<&str> = flags.iter().filter_map(|(_, v)| v.as_deref()).collect();
        assert_eq!(values, ["5000000000ns", "5s", "100", "1000"]);
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        assert!(parse("- a\n- b\n").unwrap_err().to_string().contains("map"));
        assert!(parse("name: [\n").unwrap_err().to_string().contains("YAML"));
        let e = parse("peer-transport-security: 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer-transport-security"), "{e}");
    }
}
