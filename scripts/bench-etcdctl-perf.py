#!/usr/bin/env python3
"""Runs `etcdctl check perf` (Go clientv3, the client inside kube-apiserver)
against an endpoint list and prints one JSON object shaped like
`cairn bench --json`, so that scripts/bench.sh can table it beside the
other runs.

    bench-etcdctl-perf.py ETCDCTL ENDPOINTS LOAD

check perf writes at a fixed rate for 60 s (load s: 150 writes/s from 50
clients, m: 1,000 from 200, l: 8,000 from 500, xl: 15,000 from 1,000) and
reports the throughput it reached, its slowest request and the standard
deviation of the latencies; it has no percentiles. Its CPU time is read
with getrusage of the child, as the client's CPU per operation.
"""
import json
import re
import resource
import subprocess
import sys
import time

etcdctl, endpoints, load = sys.argv[1:4]
cmd = [etcdctl, "--endpoints", endpoints, "check", "perf", f"--load={load}"]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.monotonic()
p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
elapsed = time.monotonic() - t0
after = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
out = p.stdout + p.stderr
sys.stderr.write(out)


def number(pattern):
    m = re.search(pattern, out)
    return float(m.group(1)) if m else None


throughput = number(r"Throughput (?:is|too low:) (\d+) writes/s")
slowest = number(r"Slowest request took(?: too long:)? ([0-9.]+)s")
stddev = number(r"Stddev (?:is|too high:) ([0-9.]+)s")
duration = 60.0
ok = round(throughput * duration) if throughput is not None else 0
result = {
    "workload": "perf",
    "client": "etcdctl check perf (Go clientv3)",
    "load": load,
    "endpoints": endpoints.split(","),
    "verdict": "PASS" if p.returncode == 0 else "FAIL",
    "ok": ok,
    "errors": 0,
    "elapsed_s": duration,
    "ops_per_sec": throughput or 0.0,
    "stopped_by": "duration",
    # The whole run: check perf's own set-up and clean-up are in it too.
    "client_cpu_s": cpu,
    "client_cpu_total_s": cpu,
    "client_cpu_us_per_op": cpu * 1e6 / ok if ok else None,
    "wall_s": elapsed,
    "latency_us": {
        "p50": None,
        "p90": None,
        "p99": None,
        "p99_9": None,
        "max": slowest * 1e6 if slowest is not None else None,
        "stddev": stddev * 1e6 if stddev is not None else None,
    },
}
print(json.dumps(result))
# A FAIL verdict is a measurement (the server fell short of the load), not
# a broken run; a run that printed no throughput is.
sys.exit(0 if throughput is not None else 1)
