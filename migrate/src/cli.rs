//! `cairn migrate`: the command line (clap) and what each subcommand prints
//! and exits with.
//!
//! Exit codes: 0 done; 1 failed (for `verify`: the sides differ); 2 (`verify`
//! only) it could not tell. Errors are one line on stderr, `error: ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::abort::run_abort;
use crate::connect::EndpointConfig;
use crate::cutover::{etcd_servers_line, run_cutover, writes_after_fence, VerifyMode};
use crate::error::{Error, Result};
use crate::kine::{KineDb, KineUrl};
use crate::source::{Credentials, Source};
use crate::start::{check_target_for, run_start};
use crate::status::StatusReport;
use crate::target::{phase_name, Target};
use crate::verify::{default_revision, verify};
use cairn_proto::migrate::Phase;

/// `cairn migrate`: live migration from a running etcd (3.4 or newer), or from kine (k3s's datastore, over SQLite or PostgreSQL), into an empty Cairn cluster.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes: 0 done; 1 failed (verify: the sides differ); 2 verify could not \
tell. cutover exits 0 when the switch is made, and lists any write the source still accepted \
after the fence. Guides: README.md, \"Migrating a live etcd cluster to Cairn\" and \"Migrating from k3s (kine)\"."
)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: MigrateCommand,
    /// Log filter for the migrator's log lines on stderr (tracing's syntax: info, debug, cairn_migrate=debug).
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,
}

/// The migration's steps.
#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Copy the source into the target, then follow its changes live until the cutover completes (resumes where the target stands).
    Start(StartArgs),
    /// Print the target's migration state.
    Status(StatusArgs),
    /// Compare both sides at one revision (HashKV and key by key); exit 0 only when nothing differs.
    Verify(VerifyArgs),
    /// Fence the source, bring the target to its last revision, verify, and switch.
    Cutover(CutoverArgs),
    /// Give the import up on the target; with --from, lift the source's fence.
    Abort(AbortArgs),
}

/// `--history`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum History {
    /// Copy the state at the source's compact revision and replay every revision after it.
    Full,
    /// Start at the source's current revision (its older history is not kept).
    None,
}

/// `-w` / `--write-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per field.
    Table,
    /// One JSON object.
    Json,
}

/// The source: an etcd cluster (etcdctl's flags, prefixed `from-`) or a kine database.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// The source: etcd's client URLs, comma-separated (http:// or
    /// https://), or kine's database: sqlite:///path/to/state.db or
    /// postgres://user:password@host:port/database?sslmode=...
    #[arg(long = "from", value_name = "URLS")]
    pub from: String,
    #[command(flatten)]
    pub tls: SourceTls,
}

/// The source, optional (`abort`).
#[derive(Args, Debug, Clone)]
pub struct OptionalSourceArgs {
    /// The source's client URLs, comma-separated: lift the NOSPACE fence there.
    #[arg(long = "from", value_name = "URLS")]
    pub from: Option<String>,
    #[command(flatten)]
    pub tls: SourceTls,
}

/// TLS and auth of the source.
#[derive(Args, Debug, Clone)]
pub struct SourceTls {
    /// CA bundle (PEM) to verify the source's certificates (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub from_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for the source.
    #[arg(long, value_name = "FILE")]
    pub from_cert: Option<PathBuf>,
    /// Client key (PEM) for the source.
    #[arg(long, value_name = "FILE")]
    pub from_key: Option<PathBuf>,
    /// User for a source with auth enabled: USER or USER:PASSWORD.
    #[arg(long, value_name = "USER[:PASSWORD]")]
    pub from_user: Option<String>,
    /// Password for --from-user (or put it after a colon in --from-user).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "CAIRN_MIGRATE_FROM_PASSWORD",
        hide_env_values = true
    )]
    pub from_password: Option<String>,
}

/// The target Cairn cluster (etcdctl's flags, prefixed `to-`).
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The target's client URLs, comma-separated (http:// or https://).
    #[arg(long = "to", value_name = "URLS")]
    pub to: String,
    /// CA bundle (PEM) to verify the target's certificates (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub to_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for the target.
    #[arg(long, value_name = "FILE")]
    pub to_cert: Option<PathBuf>,
    /// Client key (PEM) for the target.
    #[arg(long, value_name = "FILE")]
    pub to_key: Option<PathBuf>,
    /// How long connecting to one endpoint (of either side) may take.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
}

/// `cairn migrate start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// `full`: keep the source's history from its compact revision on; `none`: start at its current revision.
    #[arg(long, value_enum, default_value = "full")]
    pub history: History,
    /// Keys per source page, at most (pages also stay near 4 MiB); smaller
    /// pages hold the source's and the target's Raft less long each.
    #[arg(long, default_value_t = crate::kvread::PAGE_KEYS, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub page_keys: i64,
}

/// `cairn migrate status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: Output,
}

/// `cairn migrate verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The revision to compare at (default: the latest both sides hold).
    #[arg(long)]
    pub revision: Option<i64>,
}

/// `cairn migrate cutover`.
#[derive(Args, Debug)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// How long the fenced part may take before the cutover gives up (and lifts the fence).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// What to verify at the source's last revision before switching, while
    /// writes wait: `hash` (HashKV; key by key too where HashKV cannot
    /// tell), `full` (HashKV and key by key: on a large store that takes
    /// minutes; run `cairn migrate verify` before the cutover instead),
    /// `none`.
    #[arg(long, value_enum, default_value = "hash")]
    pub verify: VerifyMode,
    /// How long to watch the source for writes it accepted after the fence.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub watch_after: Duration,
    /// kine sources: how long kine's table must stay unchanged (k3s
    /// stopped) before the cutover goes on.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub still: Duration,
}

/// `cairn migrate abort`.
#[derive(Args, Debug)]
pub struct AbortArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub source: OptionalSourceArgs,
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("invalid duration unit {u:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl TargetArgs {
    fn config(&self) -> EndpointConfig {
        EndpointConfig {
            urls: self.to.clone(),
            cacert: self.to_cacert.clone(),
            cert: self.to_cert.clone(),
            key: self.to_key.clone(),
            dial_timeout: self.dial_timeout,
        }
    }
}

impl SourceTls {
    fn config(&self, urls: &str, dial_timeout: Duration) -> EndpointConfig {
        EndpointConfig {
            urls: urls.to_string(),
            cacert: self.from_cacert.clone(),
            cert: self.from_cert.clone(),
            key: self.from_key.clone(),
            dial_timeout,
        }
    }

    /// User and password from --from-user (USER[:PASSWORD]) and --from-password.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        Ok(crate::connect::credentials(
            self.from_user.as_deref(),
            self.from_password.as_deref(),
            ("--from-user", "--from-password"),
        )?
        .map(|(user, password)| Credentials { user, password }))
    }
}

impl SourceTls {
    /// Refuses etcd's TLS and auth flags for a kine source, whose URL says it all.
    fn refuse_for_kine(&self) -> Result<()> {
        let given = [
            ("--from-cacert", self.from_cacert.is_some()),
            ("--from-cert", self.from_cert.is_some()),
            ("--from-key", self.from_key.is_some()),
            ("--from-user", self.from_user.is_some()),
            ("--from-password", self.from_password.is_some()),
        ];
        match given.iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(Error::BadInput(format!(
                "{flag} is for an etcd source; for kine, put the user, password and TLS settings in the URL (postgres://user:password@host/db?sslmode=verify-full&sslrootcert=ca.pem)"
            ))),
            None => Ok(()),
        }
    }
}

/// The target and a kine source, checked against each other.
async fn connect_kine(
    source: &SourceArgs,
    target: &TargetArgs,
) -> Result<(KineDb, Target, cairn_proto::migrate::MigrationState)> {
    source.tls.refuse_for_kine()?;
    let url = KineUrl::parse(&source.from)?;
    let (tgt, state) = Target::connect(&target.config()).await?;
    let db = KineDb::open(&url).await?;
    crate::kine::start::check_target_for(&state, &db, tgt.urls())?;
    Ok((db, tgt, state))
}

async fn connect_both(
    source: &SourceArgs,
    target: &TargetArgs,
) -> Result<(
    Source,
    Target,
    cairn_proto::migrate::MigrationState,
    crate::source::SourceInfo,
)> {
    let creds = source.tls.credentials()?;
    // The target first: reachable, Cairn, and its state, before anything is written anywhere.
    let (tgt, state) = Target::connect(&target.config()).await?;
    let (src, info) =
        Source::connect(&source.tls.config(&source.from, target.dial_timeout), creds).await?;
    check_target_for(&state, &info, tgt.urls())?;
    Ok((src, tgt, state, info))
}

async fn start(a: StartArgs) -> Result<()> {
    let history_none = a.history == History::None;
    let (st, tgt) = if KineUrl::is_kine(&a.source.from) {
        let (db, tgt, _) = connect_kine(&a.source, &a.target).await?;
        let st = crate::kine::start::run_start(&db, &tgt, history_none, a.page_keys).await?;
        (st, tgt)
    } else {
        let (src, tgt, _, info) = connect_both(&a.source, &a.target).await?;
        let st = run_start(&src, &info, &tgt, history_none, a.page_keys).await?;
        (st, tgt)
    };
    println!(
        "the target at {} was cut over at revision {}; the migration is complete",
        tgt.urls(),
        st.target_revision
    );
    Ok(())
}

async fn status(a: StatusArgs) -> Result<()> {
    let (_, state) = Target::connect(&a.target.config()).await?;
    let report = StatusReport::from_state(&state);
    match a.write_out {
        Output::Json => println!("{}", report.json()),
        Output::Table => print!("{}", report.table()),
    }
    Ok(())
}

/// Refuses to verify a target that holds no complete copy.
fn check_verifiable(tgt: &Target, state: &cairn_proto::migrate::MigrationState) -> Result<()> {
    match Phase::try_from(state.phase) {
        Ok(Phase::Following | Phase::CutOver) => Ok(()),
        _ => Err(Error::BadInput(format!(
            "the target at {} holds no complete copy to verify (phase {})",
            tgt.urls(),
            phase_name(state.phase)
        ))),
    }
}

async fn verify_cmd(a: VerifyArgs) -> Result<bool> {
    if KineUrl::is_kine(&a.source.from) {
        let (db, tgt, state) = connect_kine(&a.source, &a.target).await?;
        check_verifiable(&tgt, &state)?;
        let revision = match a.revision {
            Some(r) => r,
            None => {
                let t = crate::kvread::current_revision(&tgt.conn).await?;
                db.heads().await?.current.min(t)
            }
        };
        let report = crate::kine::verify::verify(&db, &tgt, revision).await?;
        for l in report.lines() {
            println!("{l}");
        }
        return Ok(report.ok());
    }
    let (src, tgt, state, _) = connect_both(&a.source, &a.target).await?;
    check_verifiable(&tgt, &state)?;
    let revision = match a.revision {
        Some(r) => r,
        None => default_revision(&src, &tgt).await?,
    };
    let report = verify(
        &src,
        &tgt,
        revision,
        state.history_none,
        state.shared_revision_keys,
    )
    .await?;
    for l in report.lines() {
        println!("{l}");
    }
    Ok(report.ok())
}

async fn cutover_kine(a: CutoverArgs) -> Result<()> {
    let (db, tgt, _) = connect_kine(&a.source, &a.target).await?;
    let done = crate::kine::cutover::run_cutover(&db, &tgt, a.timeout, a.verify, a.still).await?;
    println!("{}", done.verified.summary());
    println!(
        "cutover complete: the target took over at revision {}, kine's last",
        done.revision
    );
    println!(
        "catch-up, verification and switch took {:.3}s; keep k3s stopped, and point kube-apiserver at the target:",
        done.took.as_secs_f64()
    );
    println!("{}", etcd_servers_line(tgt.urls()));
    match crate::kine::cutover::rows_after_cutover(&db, done.revision, a.watch_after).await {
        Ok(lines) if lines.is_empty() => println!(
            "no row reached kine after revision {} (watched {:.1}s)",
            done.revision,
            a.watch_after.as_secs_f64()
        ),
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => eprintln!("warning: could not read kine after the cutover: {e}"),
    }
    Ok(())
}

async fn cutover(a: CutoverArgs) -> Result<()> {
    if KineUrl::is_kine(&a.source.from) {
        return cutover_kine(a).await;
    }
    let (src, tgt, _, _) = connect_both(&a.source, &a.target).await?;
    let done = run_cutover(&src, &tgt, a.timeout, a.verify).await?;
    println!("{}", done.verified.summary());
    println!(
        "cutover complete: the target took over at revision {}",
        done.revision
    );
    println!(
        "write unavailability (fence to switch): {:.3}s",
        done.unavailable.as_secs_f64()
    );
    println!(
        "the source stays fenced (NOSPACE alarm on member {:x}); point kube-apiserver at the target:",
        done.fenced_member
    );
    println!("{}", etcd_servers_line(tgt.urls()));
    match writes_after_fence(&src, done.revision, a.watch_after).await {
        Ok(lines) if lines.is_empty() => println!(
            "no write reached the source after revision {} (watched {:.1}s)",
            done.revision,
            a.watch_after.as_secs_f64()
        ),
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => eprintln!("warning: could not watch the source after the fence: {e}"),
    }
    Ok(())
}

async fn abort(a: AbortArgs) -> Result<()> {
    let creds = a.source.tls.credentials()?;
    let (tgt, _) = Target::connect(&a.target.config()).await?;
    let src = match &a.source.from {
        Some(from) if KineUrl::is_kine(from) => {
            println!(
                "kine is not fenced by the migrator: nothing to lift there; start k3s again to go back to it"
            );
            None
        }
        Some(urls) => Some(
            Source::connect(&a.source.tls.config(urls, a.target.dial_timeout), creds)
                .await?
                .0,
        ),
        None => None,
    };
    for l in run_abort(&tgt, src.as_ref()).await? {
        println!("{l}");
    }
    Ok(())
}

fn exit_with(r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Runs `cairn migrate ...`; returns the process's exit code.
pub async fn run(args: MigrateArgs) -> i32 {
    match args.command {
        MigrateCommand::Start(a) => exit_with(start(a).await),
        MigrateCommand::Status(a) => exit_with(status(a).await),
        MigrateCommand::Cutover(a) => exit_with(cutover(a).await),
        MigrateCommand::Abort(a) => exit_with(abort(a).await),
        MigrateCommand::Verify(a) => match verify_cmd(a).await {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        m: MigrateArgs,
    }

    fn parse(args: &[&str]) -> MigrateArgs {
        let mut v = vec!["cairn-migrate"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().m
    }

    #[test]
    fn start_takes_etcdctl_style_flags() {
        let a = parse(&[
            "start",
            "--from",
            "https://e1:2379,https://e2:2379",
            "--from-cacert",
            "ca.pem",
            "--from-cert",
            "c.pem",
            "--from-key",
            "k.pem",
            "--from-user",
            "root:pw",
            "--to",
            "http://c1:2379",
            "--history",
            "none",
        ]);
        let MigrateCommand::Start(s) = a.command else {
            panic!("not start")
        };
        assert_eq!(s.history, History::None);
        assert_eq!(s.source.from, "https://e1:2379,https://e2:2379");
        let c = s.source.tls.credentials().unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("root", "pw"));
        assert_eq!(s.target.dial_timeout, Duration::from_secs(5));
    }

    #[test]
    fn credentials_need_a_password_once() {
        let tls = |user: Option<&str>, pw: Option<&str>| SourceTls {
            from_cacert: None,
            from_cert: None,
            from_key: None,
            from_user: user.map(String::from),
            from_password: pw.map(String::from),
        };
        assert!(tls(None, None).credentials().unwrap().is_none());
        assert!(tls(Some("root"), None).credentials().is_err());
        assert!(tls(Some("root:a"), Some("b")).credentials().is_err());
        assert!(tls(None, Some("b")).credentials().is_err());
        let c = tls(Some("root"), Some("b")).credentials().unwrap().unwrap();
        assert_eq!(c.password, "b");
    }

    #[test]
    fn status_verify_cutover_abort_parse() {
        let a = parse(&["status", "--to", "http://c:2379", "-w", "json"]);
        assert!(matches!(
            a.command,
            MigrateCommand::Status(StatusArgs {
                write_out: Output::Json,
                ..
            })
        ));
        let a = parse(&[
            "verify",
            "--from",
            "http://e:2379",
            "--to",
            "http://c:2379",
            "--revision",
            "42",
        ]);
        assert!(matches!(
            a.command,
            MigrateCommand::Verify(VerifyArgs {
                revision: Some(42),
                ..
            })
        ));
        let a = parse(&[
            "cutover",
            "--from",
            "http://e:2379",
            "--to",
            "http://c:2379",
            "--timeout",
            "90s",
        ]);
        let MigrateCommand::Cutover(c) = a.command else {
            panic!("not cutover")
        };
        assert_eq!(c.timeout, Duration::from_secs(90));
        assert_eq!(c.watch_after, Duration::from_secs(2));
        let a = parse(&["abort", "--to", "http://c:2379"]);
        let MigrateCommand::Abort(ab) = a.command else {
            panic!("not abort")
        };
        assert!(ab.source.from.is_none());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
    }
}
