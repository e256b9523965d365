//! Idle peer traffic and failover time of a 5-member Cairn cluster, at etcd's
//! Raft timings (heartbeat 100 ms, election 1000 ms) and at Cairn's defaults
//! (heartbeat 200 ms, election 1000 ms). Measurements for
//! docs/benchmarks.md, not assertions of speed, so ignored by default:
//!
//!   cargo build --release --bins
//!   cargo test --release -p cairn-e2e --test e2e -- --ignored --nocapture peer_traffic::
//!
//! Failover time is what a client sees: from the kill -9 of the leader until
//! a write through a surviving member succeeds.

use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_e2e::cluster::Cluster;

const MEMBERS: usize = 5;
const IDLE_WINDOW: Duration = Duration::from_secs(10);
const KILLS: usize = 8;

async fn measure(heartbeat: u64, election: u64) -> Result<()> {
    let all: Vec<usize> = (0..MEMBERS).collect();
    let mut c = Cluster::start_timed(MEMBERS, (heartbeat, election), &[]).await?;
    c.leader(&all, Duration::from_secs(20)).await?;
    let (b0, r0, t0) = (c.peer_bytes(), c.peer_rpcs().await?, Instant::now());
    // The measurement window itself.
    tokio::time::sleep(IDLE_WINDOW).await;
    let secs = t0.elapsed().as_secs_f64();
    let rpcs = (c.peer_rpcs().await? - r0) as f64 / secs;
    let bytes = (c.peer_bytes() - b0) as f64 / secs;

    let mut failovers = Vec::new();
    for round in 0..KILLS {
        let leader = c.leader(&all, Duration::from_secs(20)).await?;
        let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
        let mut clients = Vec::new();
        for &i in &survivors {
            clients.push(c.client(i).await?);
        }
        let killed = Instant::now();
        c.kill9(leader)?;
        let mut attempt = 0usize;
        loop {
            let n = clients.len();
            let client = &mut clients[attempt % n];
            attempt += 1;
            let put = client.put(format!("failover/{round}"), "x", None);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), put).await {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(30),
                "no write succeeded within 30 s of killing the leader"
            );
        }
        failovers.push(killed.elapsed().as_secs_f64() * 1e3);
        c.restart(leader)?;
        c.wait_all_ready(Duration::from_secs(30)).await?;
    }
    failovers.sort_by(f64::total_cmp);
    let median = failovers[failovers.len() / 2];
    let max = failovers.last().copied().unwrap_or(0.0);
    println!(
        "{MEMBERS} members, heartbeat {heartbeat} ms, election {election} ms: idle {rpcs:.1} peer RPCs/s, \
         {bytes:.0} peer bytes/s; failover (kill -9 leader to first write) over {KILLS} kills: \
         median {median:.0} ms, max {max:.0} ms, all {failovers:.0?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; see the module comment"]
async fn idle_traffic_and_failover() -> Result<()> {
    measure(100, 1000).await?;
    measure(200, 1000).await?;
    Ok(())
}
