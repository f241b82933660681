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

# 3. bpffs for pinned programs, links and maps.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  need_root "mount bpffs"
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
say "ready"
