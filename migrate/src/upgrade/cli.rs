//! `cairn upgrade check|plan`: flags (etcdctl's names), output, exit codes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::connect::{credentials, EndpointConfig};
use crate::error::{Error, Result};
use crate::upgrade::checks::{run_all, Question};
use crate::upgrade::plan::{plan, text};
use crate::upgrade::probe::{find_member, gather, ProbeConfig};
use crate::upgrade::verdict::{exit_code, json_lines, table};
use crate::upgrade::version::{CairnRelease, Version};

/// `cairn upgrade`: is restarting a member of an etcd or Cairn cluster safe now?
#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes (check): 0 safe (warnings allowed); 1 unsafe (a check failed); 2 could \
not tell (unreachable, or something not measurable). Read-only: it changes nothing."
)]
pub struct UpgradeArgs {
    #[command(subcommand)]
    pub command: UpgradeCommand,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum UpgradeCommand {
    /// Check whether restarting (or upgrading) a member is safe now; PASS, WARN or FAIL per check.
    Check(CheckArgs),
    /// Print the safe order of a rolling upgrade, with the check to run before each step.
    Plan(PlanArgs),
}

/// `-w` / `--write-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON object per line (per check, or per step).
    Json,
}

/// The cluster and how to reach it (etcdctl's flags).
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Client URLs of any members, comma-separated (http:// or https://); every member is found from the member list.
    #[arg(long, value_name = "URLS", default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// CA bundle (PEM) to verify the members' certificates (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// User for a cluster with auth enabled: USER or USER:PASSWORD.
    #[arg(long, value_name = "USER[:PASSWORD]")]
    pub user: Option<String>,
    /// Password for --user (or put it after a colon in --user).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "CAIRN_UPGRADE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// How long connecting to one endpoint may take.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::cli::parse_duration)]
    pub dial_timeout: Duration,
    /// How long any one request may take.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::cli::parse_duration)]
    pub command_timeout: Duration,
}

/// `cairn upgrade check`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes: 0 safe (warnings allowed); 1 unsafe (a check failed); 2 could not \
tell (unreachable, or something not measurable). Read-only: it changes nothing. Guide: README.md, \
\"Before restarting a member\"."
)]
pub struct CheckArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The member to restart: its name or ID (hex, as etcdctl prints it). Without it: could the cluster lose any one voter?
    #[arg(long, value_name = "NAME|ID")]
    pub member: Option<String>,
    /// The version the member will run after the restart (etcd's for etcd, Cairn's for Cairn).
    #[arg(long, value_name = "VERSION")]
    pub target_version: Option<String>,
    /// How long to watch the leader and the applied indexes (two Status samples this far apart).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub window: Duration,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: Output,
}

/// `cairn upgrade plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The version to upgrade to (added to each step's check).
    #[arg(long, value_name = "VERSION")]
    pub target_version: Option<String>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: Output,
}

impl ClusterArgs {
    /// User and password from --user (USER[:PASSWORD]) and --password.
    fn credentials(&self) -> Result<Option<(String, String)>> {
        credentials(
            self.user.as_deref(),
            self.password.as_deref(),
            ("--user", "--password"),
        )
    }

    fn probe(&self, window: Duration) -> Result<ProbeConfig> {
        Ok(ProbeConfig {
            endpoint: EndpointConfig {
                urls: self.endpoints.clone(),
                cacert: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                dial_timeout: self.dial_timeout,
            },
            credentials: self.credentials()?,
            window,
            command_timeout: self.command_timeout,
        })
    }

    /// `cairn upgrade check` with these connection flags (never the password).
    fn check_command(&self, target: Option<&str>) -> String {
        let mut cmd = format!("cairn upgrade check --endpoints {}", self.endpoints);
        for (flag, file) in [
            ("--cacert", &self.cacert),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            if let Some(f) = file {
                cmd.push_str(&format!(" {flag} {}", f.display()));
            }
        }
        if let Some(u) = &self.user {
            let user = u.split_once(':').map_or(u.as_str(), |(u, _)| u);
            cmd.push_str(&format!(" --user {user}"));
        }
        if let Some(t) = target {
            cmd.push_str(&format!(" --target-version {t}"));
        }
        cmd
    }
}

fn parse_target(t: Option<&str>) -> Result<Option<Version>> {
    t.map(|t| {
        Version::parse(t).ok_or_else(|| {
            Error::BadInput(format!(
                "--target-version {t:?} is not a version like 3.6.0"
            ))
        })
    })
    .transpose()
}

async fn check(a: CheckArgs, this: &CairnRelease) -> Result<i32> {
    let target = parse_target(a.target_version.as_deref())?;
    let facts = gather(&a.cluster.probe(a.window)?).await?;
    let stopping = match &a.member {
        Some(m) => Some(find_member(&facts, m)?),
        None => None,
    };
    let findings = run_all(&facts, &Question { stopping, target }, this);
    match a.write_out {
        Output::Table => {
            print!("{}", table(&findings));
            let code = exit_code(&findings);
            let who = stopping.map_or_else(
                || "losing any one voter".to_string(),
                |i| format!("restarting {}", facts.members[i].label()),
            );
            println!(
                "{}",
                match code {
                    0 => format!("{who} is safe now"),
                    1 => format!("{who} is NOT safe now"),
                    _ => format!("could not tell whether {who} is safe"),
                }
            );
        }
        Output::Json => print!("{}", json_lines(&findings)),
    }
    Ok(exit_code(&findings))
}

async fn plan_cmd(a: PlanArgs) -> Result<i32> {
    parse_target(a.target_version.as_deref())?;
    // One short look: the plan needs roles, not stability.
    let facts = gather(&a.cluster.probe(Duration::ZERO)?).await?;
    let before = a.cluster.check_command(a.target_version.as_deref());
    let steps = plan(&facts, &before);
    match a.write_out {
        Output::Table => {
            println!("0. before the first step, the whole cluster:\n   check:  {before}");
            print!("{}", text(&steps));
        }
        Output::Json => {
            for s in &steps {
                println!("{}", serde_json::to_string(s).unwrap_or_default());
            }
        }
    }
    Ok(0)
}

/// Runs `cairn upgrade ...`; returns the exit code. `this` is the running
/// binary's own release (what it would bring to a Cairn cluster).
pub async fn run(args: UpgradeArgs, this: &CairnRelease) -> i32 {
    let result = match args.command {
        UpgradeCommand::Check(a) => check(a, this).await,
        UpgradeCommand::Plan(a) => plan_cmd(a).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        2
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        u: UpgradeArgs,
    }

    fn parse(args: &[&str]) -> UpgradeArgs {
        let mut v = vec!["cairn-upgrade"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().u
    }

    #[test]
    fn check_takes_etcdctl_flags() {
        let a = parse(&[
            "check",
            "--endpoints",
            "https://e1:2379,https://e2:2379",
            "--cacert",
            "ca.pem",
            "--user",
            "root:pw",
            "--member",
            "m1",
            "--target-version",
            "3.6.0",
            "-w",
            "json",
        ]);
        let UpgradeCommand::Check(c) = a.command else {
            panic!("not check")
        };
        assert_eq!(c.member.as_deref(), Some("m1"));
        assert_eq!(c.write_out, Output::Json);
        assert_eq!(c.window, Duration::from_secs(1));
        assert_eq!(
            c.cluster.credentials().unwrap(),
            Some(("root".into(), "pw".into()))
        );
        assert_eq!(
            c.cluster.check_command(Some("3.6.0")),
            "cairn upgrade check --endpoints https://e1:2379,https://e2:2379 --cacert ca.pem --user root --target-version 3.6.0"
        );
    }

    #[test]
    fn credentials_need_a_password_once() {
        let c = |u: Option<&str>, p: Option<&str>| credentials(u, p, ("--user", "--password"));
        assert_eq!(c(None, None).unwrap(), None);
        assert!(c(Some("root"), None).is_err());
        assert!(c(Some("root:a"), Some("b")).is_err());
        assert!(c(None, Some("b")).is_err());
        assert!(c(Some(":pw"), None).is_err());
        assert_eq!(
            c(Some("root"), Some("b")).unwrap(),
            Some(("root".into(), "b".into()))
        );
    }

    #[test]
    fn bad_targets_are_refused() {
        assert!(parse_target(Some("three")).is_err());
        assert_eq!(parse_target(None).unwrap(), None);
    }
}
