#!/usr/bin/env bash
# Run edge/run_tflite.py on an emulated Raspberry Pi OS Bookworm userland (64-bit).
#
# The emulated Pi is Debian 12 arm64 with Python 3.11, run by qemu-user-static on this machine:
#   * qemu-user-static (the Debian package) is taken from PATH, or downloaded and unpacked;
#   * the arm64 python3.11 packages and the libraries they need are downloaded with apt into a
#     private apt state (nothing on the host changes) and unpacked with dpkg -x;
#   * the CPU is a Cortex-A72 (the Raspberry Pi 4's) and /proc/cpuinfo reads like a Pi 4's;
#   * the runner's requirements (edge/requirements.txt) are installed as aarch64 wheels with
#     pip install --target DIR --platform manylinux2014_aarch64 --only-binary=:all:.
# Everything is cached under $KERASCLS_PI_ROOT (default: .pi-root/ in the repository, which git
# ignores); a second setup is a no-op. Needs: bash, apt-get and dpkg-deb (Debian or Ubuntu), a
# Python with pip, and access to the Debian archive and PyPI.
#
# Usage:
#   edge/emulate_pi.sh setup                       build the emulated root (idempotent)
#   edge/emulate_pi.sh run MODEL.tflite IMAGE...   run run_tflite.py under emulation (any flags)
#   edge/emulate_pi.sh python ARGS...              run the emulated python3.11
#   edge/emulate_pi.sh info                        print the emulated platform
#   edge/emulate_pi.sh mirrors                     print the Debian archives setup downloads from
#
# Environment:
#   KERASCLS_PI_ROOT     cache directory (default: <repo>/.pi-root)
#   KERASCLS_PI_MIRROR   Debian archive URI (default: the one the system's apt sources give for
#                        bookworm; set it on a host whose apt has no Debian bookworm source)
#   KERASCLS_PI_SECURITY_MIRROR  Debian security archive URI (default: the system's, if any)
#   KERASCLS_PI_PYTHON   host Python whose pip downloads the wheels (default: the repo's .venv,
#                        else python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ROOT="${KERASCLS_PI_ROOT:-$REPO/.pi-root}"
MIRROR="${KERASCLS_PI_MIRROR:-}"
SECURITY_MIRROR="${KERASCLS_PI_SECURITY_MIRROR:-}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"
SUITE="bookworm"
PI_PACKAGES=(python3.11 libstdc++6 libgcc-s1)
PI_CPU="cortex-a72"  # the Raspberry Pi 4's CPU: wheels that need newer instructions fail here
WHEEL_PLATFORMS=(manylinux2014_aarch64)
for minor in $(seq 17 36); do WHEEL_PLATFORMS+=("manylinux_2_${minor}_aarch64"); done

SYSROOT="$ROOT/sysroot"
SITE="$ROOT/site"
QEMU_DIR="$ROOT/qemu"

die() { echo "error: emulate_pi.sh: $*" >&2; exit 2; }
say() { echo "emulate_pi.sh: $*" >&2; }

host_python() {
  if [[ -n "${KERASCLS_PI_PYTHON:-}" ]]; then echo "$KERASCLS_PI_PYTHON"
  elif [[ -x "$REPO/.venv/bin/python" ]]; then echo "$REPO/.venv/bin/python"
  else command -v python3 || die "no host python3 to run pip"
  fi
}

# The archive URI the system's apt sources give for suite $1 (empty if none does).
system_uri() {
  apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
    | awk -v suite="$1" '$2 == suite { print $1; exit }' || true
}

# The archives to download from: the system's configured apt sources, unless overridden.
resolve_mirrors() {
  [[ -n "$MIRROR" ]] || MIRROR="$(system_uri "$SUITE")"
  [[ -n "$MIRROR" ]] || die "the system's apt sources have no Debian $SUITE entry; set" \
    "KERASCLS_PI_MIRROR to a Debian archive URI"
  [[ -n "$SECURITY_MIRROR" ]] || SECURITY_MIRROR="$(system_uri "$SUITE-security")"
}

# A private apt configuration: its own lists, cache and (empty) dpkg status, one architecture.
apt_private() {
  local arch="$1"; shift
  local base="$ROOT/apt-$arch"
  resolve_mirrors
  mkdir -p "$base/lists/partial" "$base/archives/partial" "$base/etc/sources.list.d" \
           "$base/etc/preferences.d" "$base/etc/apt.conf.d"
  [[ -f "$base/status" ]] || : > "$base/status"
  cat > "$base/etc/sources.list" <<EOF
deb [arch=$arch signed-by=$KEYRING] $MIRROR $SUITE main
deb [arch=$arch signed-by=$KEYRING] $MIRROR $SUITE-updates main
EOF
  if [[ -n "$SECURITY_MIRROR" ]]; then
    echo "deb [arch=$arch signed-by=$KEYRING] $SECURITY_MIRROR $SUITE-security main" \
      >> "$base/etc/sources.list"
  fi
  apt-get -q \
    -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" \
    -o "Dir::Etc=$base/etc" -o "Dir::Etc::sourcelist=$base/etc/sources.list" \
    -o "Dir::Etc::sourceparts=$base/etc/sources.list.d" \
    -o "Dir::Etc::preferencesparts=$base/etc/preferences.d" \
    -o "Dir::Etc::parts=$base/etc/apt.conf.d" \
    -o "Dir::State=$base" -o "Dir::State::lists=$base/lists" -o "Dir::State::status=$base/status" \
    -o "Dir::Cache=$base" -o "Dir::Cache::archives=$base/archives" \
    -o "Debug::NoLocking=1" -o "APT::Install-Recommends=0" -o "APT::Sandbox::User=root" \
    "$@"
}

apt_update_once() {
  local arch="$1" stamp="$ROOT/apt-$1/.updated"
  if [[ ! -f "$stamp" ]]; then
    say "downloading the Debian $SUITE package lists for $arch"
    apt_private "$arch" update >/dev/null || die "apt-get update for $arch failed (mirror $MIRROR)"
    touch "$stamp"
  fi
}

setup_qemu() {
  if command -v qemu-aarch64-static >/dev/null 2>&1; then return; fi
  [[ -x "$QEMU_DIR/usr/bin/qemu-aarch64-static" ]] && return
  local arch; arch="$(dpkg --print-architecture)"
  apt_update_once "$arch"
  say "downloading qemu-user-static ($arch)"
  apt_private "$arch" install -y --download-only qemu-user-static >/dev/null \
    || die "could not download qemu-user-static"
  local unpack="$ROOT/qemu-unpack"
  rm -rf "$unpack"; mkdir -p "$unpack" "$QEMU_DIR/usr/bin"
  dpkg-deb -x "$(ls "$ROOT/apt-$arch"/archives/qemu-user-static_*.deb | head -n1)" "$unpack"
  mv "$unpack/usr/bin/qemu-aarch64-static" "$QEMU_DIR/usr/bin/"
  rm -rf "$unpack" "$ROOT/apt-$arch"/archives/*.deb
}

qemu_bin() {
  if command -v qemu-aarch64-static >/dev/null 2>&1; then command -v qemu-aarch64-static
  else echo "$QEMU_DIR/usr/bin/qemu-aarch64-static"
  fi
}

setup_sysroot() {
  [[ -f "$SYSROOT/.complete" ]] && return
  apt_update_once arm64
  say "downloading arm64 ${PI_PACKAGES[*]} and their dependencies"
  apt_private arm64 install -y --download-only "${PI_PACKAGES[@]}" >/dev/null \
    || die "could not download the arm64 packages"
  rm -rf "$SYSROOT"; mkdir -p "$SYSROOT"
  local deb
  for deb in "$ROOT"/apt-arm64/archives/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
  rm -f "$ROOT"/apt-arm64/archives/*.deb
  [[ -x "$SYSROOT/usr/bin/python3.11" ]] || die "python3.11 is missing from the unpacked packages"
  write_cpuinfo
  touch "$SYSROOT/.complete"
}

# What a Raspberry Pi 4 (Cortex-A72) shows in /proc/cpuinfo. qemu-user reads paths under the
# -L prefix first, so the runtime's CPU detection (which parses /proc/cpuinfo and would
# otherwise find this machine's x86 one) sees a Pi. One entry per CPU that sysfs lists here.
write_cpuinfo() {
  local n i
  n="$(getconf _NPROCESSORS_CONF 2>/dev/null || echo 1)"
  mkdir -p "$SYSROOT/proc"
  {
    for ((i = 0; i < n; i++)); do
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
      printf 'CPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
  } > "$SYSROOT/proc/cpuinfo"
}

setup_site() {
  local req="$HERE/requirements.txt" stamp="$SITE/.complete"
  if [[ -f "$stamp" ]] && cmp -s "$req" "$stamp"; then return; fi
  local py; py="$(host_python)"
  local platforms=()
  for p in "${WHEEL_PLATFORMS[@]}"; do platforms+=(--platform "$p"); done
  say "installing aarch64 wheels from $req"
  rm -rf "$SITE"
  "$py" -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$SITE" \
    "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 \
    --only-binary=:all: -r "$req" || die "pip could not install the aarch64 wheels"
  cp "$req" "$stamp"
}

setup() {
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "needs apt-get and dpkg-deb (a Debian or Ubuntu host)"
  [[ -f "$KEYRING" ]] || die "needs the Debian archive keyring $KEYRING: apt-get install debian-archive-keyring"
  mkdir -p "$ROOT"
  setup_qemu
  setup_sysroot
  setup_site
}

emulated_python() {
  setup
  exec env -i PATH=/usr/bin:/bin HOME="${HOME:-/root}" LANG=C.UTF-8 \
    PYTHONPATH="$SITE" PYTHONDONTWRITEBYTECODE=1 QEMU_LD_PREFIX="$SYSROOT" \
    QEMU_CPU="$PI_CPU" "$(qemu_bin)" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "$@"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup) setup; say "ready: $ROOT" ;;
  run) emulated_python "$REPO/edge/run_tflite.py" "$@" ;;
  python) emulated_python "$@" ;;
  info) emulated_python -c 'import platform, sys; print(platform.machine(), platform.libc_ver()[1], sys.version.split()[0])' ;;
  mirrors) resolve_mirrors; echo "$SUITE $MIRROR"; echo "$SUITE-security ${SECURITY_MIRROR:-none}" ;;
  *) die "usage: emulate_pi.sh setup | run MODEL.tflite IMAGE_OR_DIR... [flags] | python ARGS... | info | mirrors" ;;
esac
