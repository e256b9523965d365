//! `cairn bench`: a load generator for any etcd-v3 gRPC server.
//!
//! It drives Cairn and etcd with the very same generated tonic client
//! (`cairn_proto::etcdserverpb::kv_client::KvClient`), so that the numbers of
//! the two can be compared: `scripts/bench.sh` runs it against both and prints
//! the ratios; `docs/benchmarks.md` records results. A crate of its own: the
//! `cairn` binary only dispatches `cairn bench` here, and none of it is on a
//! server path.
//!
//! Model, like etcd's own `benchmark` tool (`--conns`/`--clients`): `clients`
//! concurrent workers, each with one request in flight at a time, spread round
//! robin over `conns` HTTP/2 connections (spread round robin over the
//! endpoints). Workloads:
//!
//! * `put`: puts of `--val-size`-byte values to keys drawn uniformly from a key
//!   space of `--key-space` keys.
//! * `range`: first populates every key of the key space (not measured), then
//!   single-key Range requests on uniformly drawn keys, linearizable by default
//!   or serializable with `--consistency s`. A response without exactly one
//!   key-value counts as an error.
//! * `watch`: watch fan-out (see the `watch` submodule): `--watchers` watchers
//!   on one prefix, over `--conns` connections, then a paced writer puts
//!   `--rate` values per second under the prefix for `--duration`; reports the
//!   delivery latency of every event to every watcher, and counts missing,
//!   duplicated and out-of-order events as errors.
//!
//! Each run has three phases: populate (range only), warm-up (`--warmup`
//! requests, not measured) and the measured phase, which ends after `--total`
//! requests or `--duration`, whichever comes first. Every phase is also bounded
//! by the whole-run `--time-limit` and every request by `--request-timeout`, so
//! a run always ends. Failed requests are counted per gRPC code and reported;
//! when their share passes `--max-error-rate` the run aborts with an error.
//!
//! Reported: successful requests per second over the measured phase's wall
//! time, and latency of successful requests (HdrHistogram, microsecond
//! resolution, 3 significant digits) at p50/p90/p99/p99.9 and max.

mod args;
mod connect;
mod cpu;
mod kv;
mod latency;
mod phase;
mod watch;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail};

pub use args::{BenchArgs, BenchClient, Consistency, Workload};

use args::validate;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::RangeRequest;
use connect::{connect, server_status};
use cpu::{process_cpu_seconds, processes_cpu_seconds};
use latency::latency_summary_ms;
use phase::{check_phase, run_phase, Ctx, Keys, Op, Rng, Stop};

/// Runs `cairn bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    if args.workload == Workload::Watch {
        watch::validate(&args)?;
    }
    let run_start = Instant::now();
    let hard_deadline = run_start + args.time_limit;
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();

    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        channels.push(connect(&endpoints[i % endpoints.len()]).await?);
    }
    let server = server_status(channels[0].clone()).await;

    // Fail fast, with the server's own words, when it cannot even answer one request.
    {
        let mut c = KvClient::new(channels[0].clone());
        tokio::time::timeout(
            args.request_timeout,
            c.range(RangeRequest {
                key: b"\0cairn-bench-probe".to_vec(),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| anyhow!("probe Range: no answer within {:?}", args.request_timeout))?
        .map_err(|s| anyhow!("probe Range failed: {:?}: {}", s.code(), s.message()))?;
    }

    if args.workload == Workload::Watch {
        return watch::run(&args, endpoints, channels, server, run_start).await;
    }

    let mut rng = Rng(args.seed ^ 0xA076_1D64_78BD_642F);
    let value: Vec<u8> = (0..args.val_size)
        .map(|_| b'a' + rng.below(26) as u8)
        .collect();
    let clients = kv::KvConn::open(args.client, &endpoints, &channels, args.clients).await?;
    let ctx = Arc::new(Ctx {
        clients,
        keys: Keys {
            prefix: args.key_prefix.as_bytes().to_vec(),
            width: args.key_size - args.key_prefix.len(),
        },
        value,
        key_space: args.key_space,
        serializable: args.consistency == Consistency::S,
        request_timeout: args.request_timeout,
        max_error_rate: args.max_error_rate,
        seed: args.seed,
        quiet: args.quiet,
    });
    let say = |msg: String| {
        if !args.quiet {
            eprintln!("bench: {msg}");
        }
    };

    let op = match args.workload {
        Workload::Put => Op::Put,
        Workload::Range => Op::Range,
        Workload::Watch => unreachable!("handled above"),
    };

    let mut populate = None;
    if args.workload == Workload::Range && !args.skip_populate {
        say(format!(
            "populating {} keys of {} bytes with {}-byte values",
            args.key_space, args.key_size, args.val_size
        ));
        let r = run_phase(
            &ctx,
            "populate",
            Op::Populate,
            Some(args.key_space),
            hard_deadline,
            Stop::TimeLimit,
            false,
        )
        .await?;
        check_phase("populate", &r)?;
        if r.ok < args.key_space {
            bail!(
                "populate wrote only {} of {} keys ({} puts failed: {:?}; stopped by {}, --time-limit {:?})",
                r.ok,
                args.key_space,
                r.errors,
                r.error_kinds,
                r.stop.name(),
                args.time_limit
            );
        }
        populate = Some(r);
    }

    let mut warm = None;
    if args.warmup > 0 {
        say(format!(
            "warm-up: {} {} requests",
            args.warmup,
            args.workload.name()
        ));
        let r = run_phase(
            &ctx,
            "warm-up",
            op,
            Some(args.warmup),
            hard_deadline,
            Stop::TimeLimit,
            false,
        )
        .await?;
        check_phase("warm-up", &r)?;
        warm = Some(r);
    }

    let total = match (args.total, args.duration) {
        (None, None) => Some(100_000),
        (t, _) => t,
    };
    let now = Instant::now();
    let (deadline, deadline_stop) = match args.duration {
        Some(d) if now + d <= hard_deadline => (now + d, Stop::Duration),
        _ => (hard_deadline, Stop::TimeLimit),
    };
    say(format!(
        "measuring: {} {} requests{}, {} clients over {} connections",
        total.map_or("unlimited".to_string(), |t| t.to_string()),
        args.workload.name(),
        args.duration
            .map_or(String::new(), |d| format!(" or {:?}", d)),
        args.clients,
        args.conns
    ));
    let cpu_before = process_cpu_seconds();
    let server_before = processes_cpu_seconds(&args.server_pids);
    let r = run_phase(&ctx, "measure", op, total, deadline, deadline_stop, true).await?;
    let cpu_after = process_cpu_seconds();
    let server_after = processes_cpu_seconds(&args.server_pids);
    let client_cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let server_cpu = (!args.server_pids.is_empty())
        .then(|| server_before.zip(server_after).map(|(a, b)| b - a))
        .flatten();
    // Per successful request; CPU time has a 10 ms tick, so short runs are coarse.
    let per_op_us = |cpu: Option<f64>| cpu.filter(|_| r.ok > 0).map(|c| c * 1e6 / r.ok as f64);

    let ops_per_sec = r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let h = &r.hist;
    let lat = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let error_rate = if r.ok + r.errors == 0 {
        0.0
    } else {
        r.errors as f64 / (r.ok + r.errors) as f64
    };
    let result = serde_json::json!({
        "workload": args.workload.name(),
        "client": args.client.name(),
        "endpoints": endpoints,
        "server": server,
        "conns": args.conns,
        "clients": args.clients,
        "key_size": args.key_size,
        "key_prefix": args.key_prefix,
        "key_space": args.key_space,
        "val_size": args.val_size,
        "consistency": (args.workload == Workload::Range).then(|| args.consistency.name()),
        "seed": args.seed,
        "populated": populate.as_ref().map(|p| p.ok),
        "populate_s": populate.as_ref().map(|p| p.elapsed.as_secs_f64()),
        "warmup": warm.as_ref().map_or(0, |w| w.ok + w.errors),
        "total": total,
        "duration_s": args.duration.map(|d| d.as_secs_f64()),
        "stopped_by": r.stop.name(),
        "ok": r.ok,
        "errors": r.errors,
        "error_rate": error_rate,
        "error_kinds": r.error_kinds,
        "first_errors": r.first_errors,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "ops_per_sec": ops_per_sec,
        "client_cpu_s": client_cpu,
        "client_cpu_total_s": cpu_after,
        "client_cpu_us_per_op": per_op_us(client_cpu),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_op": per_op_us(server_cpu),
        "latency_us": {
            "min": if h.is_empty() { 0 } else { h.min() },
            "mean": if h.is_empty() { 0.0 } else { h.mean() },
            "p50": lat(0.50),
            "p90": lat(0.90),
            "p99": lat(0.99),
            "p99_9": lat(0.999),
            "max": if h.is_empty() { 0 } else { h.max() },
        },
    });

    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} against {} ({})",
            args.workload.name(),
            endpoints.join(","),
            server["version"].as_str().unwrap_or("version unknown")
        );
        println!(
            "  {} clients over {} conns, key space {} x {} B, values {} B{}",
            args.clients,
            args.conns,
            args.key_space,
            args.key_size,
            args.val_size,
            if args.workload == Workload::Range {
                format!(", {}", args.consistency.name())
            } else {
                String::new()
            }
        );
        println!(
            "  requests: {} ok, {} errors in {:.3} s (stopped by {})",
            r.ok,
            r.errors,
            r.elapsed.as_secs_f64(),
            r.stop.name()
        );
        println!("  throughput: {ops_per_sec:.1} ops/s");
        println!("  latency ms: {}", latency_summary_ms(h));
        let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "  CPU per request, us: client {}, server {}",
            us(per_op_us(client_cpu)),
            us(per_op_us(server_cpu))
        );
        if r.errors > 0 {
            println!("  errors by kind: {:?}", r.error_kinds);
            for e in &r.first_errors {
                println!("    {e}");
            }
        }
    }
    check_phase("measurement", &r)?;
    if r.stop == Stop::TimeLimit {
        say(format!(
            "warning: measurement cut short by --time-limit {:?}",
            args.time_limit
        ));
    }
    if r.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}
