//! `cairn`: an etcd-v3-compatible datastore for Kubernetes.
//!
//! With no arguments it serves a one-member store on 127.0.0.1:2379 from
//! `./default.cairn`, as `etcd` does with `./default.etcd`.

use cairn_shim::{config, etcd_flags, server};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Every request allocates many small, short-lived buffers on one thread and
/// frees them on another; glibc's allocator spent ~8% of a put's CPU on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version = cairn_shim::release::LONG_VERSION.as_str(),
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: config::ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a load against any etcd-v3 endpoint (Cairn or etcd) and report throughput and latency.
    Bench(cairn_bench::BenchArgs),
    /// Live migration from a running etcd, or from kine (k3s: SQLite or PostgreSQL), into this (empty) Cairn cluster, keeping every revision.
    Migrate(cairn_migrate::MigrateArgs),
    /// Restore a data dir from an etcd snapshot, or report on a snapshot file (as etcdutl).
    Snapshot(cairn_shim::snapshot_cli::SnapshotArgs),
    /// Check this machine for Cairn: `cairn check disk` times fdatasync on the data dir's disk.
    Check(cairn_shim::disk_check::CheckArgs),
    /// Before restarting or upgrading a member of an etcd or Cairn cluster: is it safe now, and in which order?
    Upgrade(cairn_migrate::UpgradeArgs),
}

/// Resolves on Ctrl-C or SIGTERM: the process's stop signals, which the
/// library leaves to the binary (an in-process server is stopped by its caller).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// The command line: a subcommand as clap reads it, or the server's flags
/// as etcd takes them (Go flag syntax, `ETCD_*` variables, `--config-file`),
/// with the warnings about etcd flags that have no effect here.
fn parse_command_line() -> (Cli, Vec<String>) {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let serving = argv
        .get(1)
        .is_none_or(|a| a.to_string_lossy().starts_with('-'));
    if !serving {
        return (Cli::parse(), Vec::new());
    }
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    match etcd_flags::normalize(argv, env, &etcd_flags::cairn_flags()) {
        Ok(line) => (Cli::parse_from(line.args), line.warnings),
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::exit(2)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let (cli, flag_warnings) = parse_command_line();
    match cli.command {
        Some(Cmd::Bench(args)) => cairn_bench::run(args).await,
        Some(Cmd::Migrate(args)) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(cairn_migrate::log_writer)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            std::process::exit(cairn_migrate::run(args).await)
        }
        Some(Cmd::Snapshot(args)) => cairn_shim::snapshot_cli::run(args),
        Some(Cmd::Check(args)) => std::process::exit(cairn_shim::disk_check::run(args)),
        Some(Cmd::Upgrade(args)) => std::process::exit(
            cairn_migrate::upgrade::run(args, &cairn_shim::release::this_release()).await,
        ),
        None => {
            if let Err(e) = cairn_shim::logging::init(&cli.serve.log) {
                eprintln!("cairn: {e:#}");
                std::process::exit(1);
            }
            for warning in &flag_warnings {
                tracing::warn!("{warning}");
            }
            // The e2e harness reads this line to know the fail points it set
            // took (a build without the feature ignores FAILPOINTS).
            #[cfg(feature = "failpoints")]
            if let Ok(points) = std::env::var("FAILPOINTS") {
                tracing::info!(failpoints = %points, "fail points set");
            }
            // A storage fault ends serving with an error that says what the
            // operator does: printed plainly, exit status 1 (as etcd's fatal).
            if let Err(e) = server::serve(cli.serve, shutdown_signal()).await {
                eprintln!("cairn: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
