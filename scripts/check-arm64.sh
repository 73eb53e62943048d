#!/usr/bin/env bash
# The arm64 check in one command: a bundle and a user through edge-lorax's torch-free runtime on x86 and on emulated
# arm64 cores, compared (benchmarks/arm64/check.py says what is compared and what counts as a mismatch).
#
#   sudo scripts/check-arm64.sh BUNDLE USER [--cpus cortex-a53,cortex-a76,neoverse-n1,a64fx] [--rows 200] [--json out.json]
#                               [--progress DIR] [--shards K]
#
# Needs: root (binfmt_misc, debootstrap, chroot, mounts) on Debian/Ubuntu with apt (installs qemu-user-static,
# binfmt-support, debootstrap when missing), network to Debian's mirror and PyPI, and the project's .venv (x86 side).
# Makes, once, an arm64 Debian 12 root filesystem under $EDGE_LORAX_ARM64_ROOTFS (default
# ~/.cache/edge-lorax/arm64-rootfs, ~0.6 GB, ~15 min) with a venv of the runtime's aarch64 wheels at the host's
# versions (onnxruntime, onnxruntime-genai, numpy, tokenizers, jinja2, safetensors, click) and this checkout installed
# with --no-deps (reinstalled when its source changes); later checks reuse it. An ExecuTorch bundle (export --target
# executorch) also gets /opt/venv-et (torch + executorch at the host's versions, ~3 GB: PyPI's aarch64 torch is a CUDA
# build whose libraries load without a GPU). Interrupted? Run the same command again: each side's output is kept and a
# decoder probe resumes after its last checkpoint (every 5 rows) (an emulated 200-row int4 run takes hours); --progress DIR
# mirrors those checkpoints to DIR (commit it, and a fresh machine with a bit-identical bundle resumes); --shards K
# splits a decoder core's task rows over K emulated probes at once (one host core each). Exit 0: every variant on every core
# within tolerance; 1: a mismatch (one line each on stderr); 2: bad arguments; other: set-up failed.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${EDGE_LORAX_PYTHON:-$REPO/.venv/bin/python}"
ROOTFS="${EDGE_LORAX_ARM64_ROOTFS:-$HOME/.cache/edge-lorax/arm64-rootfs}"
MIRROR="${EDGE_LORAX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
RUNTIME_PACKAGES=(onnxruntime onnxruntime-genai numpy tokenizers jinja2 safetensors click)
say() { echo "[check-arm64] $*" >&2; }
die() { echo "check-arm64: $*" >&2; exit 3; }

if [ $# -lt 2 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2
fi
[ "$(id -u)" = 0 ] || die "needs root (binfmt_misc, debootstrap, chroot and mounts); run it with sudo"
command -v apt-get >/dev/null || die "needs a Debian/Ubuntu host (apt-get) for qemu-user-static, binfmt-support, debootstrap"
[ -x "$PY" ] || die "no $PY; set up the project first (scripts/setup.sh) or point EDGE_LORAX_PYTHON at its python"

host_tools() {
  local missing=()
  for p in qemu-user-static binfmt-support debootstrap; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  fi
  # update-binfmts needs binfmt_misc mounted (it is not in a fresh container)
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is not registered under binfmt_misc"
}

make_rootfs() {
  [ -f "$ROOTFS/.edge-lorax-rootfs" ] && return 0
  say "making the arm64 root filesystem in $ROOTFS (once, ~15 min)"
  rm -rf "$ROOTFS.partial"; mkdir -p "$(dirname "$ROOTFS")"
  nice -n 10 debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS.partial" "$MIRROR" >&2
  touch "$ROOTFS.partial/.edge-lorax-rootfs"
  rm -rf "$ROOTFS"; mv "$ROOTFS.partial" "$ROOTFS"
}

in_rootfs() {  # a command inside the root filesystem (own mount namespace: /proc, /dev and nothing else bound)
  unshare --mount --propagation private sh -c "mount -t proc proc '$ROOTFS/proc' && mount --bind /dev '$ROOTFS/dev' \
    && mount --bind '$ROOTFS/etc/edge-lorax-cpuinfo' '$ROOTFS/proc/cpuinfo' \
    && exec env -i QEMU_CPU=cortex-a76 PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 /usr/sbin/chroot '$ROOTFS' $*"
}

runtime_venv() {
  # qemu 7.2 passes the host's x86 /proc/cpuinfo through; onnxruntime's cpuinfo then crashes, so bind an arm64 one
  printf 'processor\t: 0\nFeatures\t: fp asimd atomics asimddp cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd0b\nCPU revision\t: 0\n\n' \
    > "$ROOTFS/etc/edge-lorax-cpuinfo"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"  # pip in a fresh rootfs needs it
  local want=() v
  for p in "${RUNTIME_PACKAGES[@]}"; do
    v="$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null)" || die "the host .venv lacks $p"
    want+=("$p==$v")
  done
  [ "$(cat "$ROOTFS/opt/venv/.requirements" 2>/dev/null)" = "${want[*]} setuptools" ] && return 0
  say "installing the runtime's aarch64 wheels: ${want[*]}"
  in_rootfs "/usr/bin/python3 -m venv /opt/venv" >&2
  in_rootfs "/opt/venv/bin/pip install -q --only-binary=:all: ${want[*]} 'setuptools>=68' wheel" >&2
  echo "${want[*]} setuptools" > "$ROOTFS/opt/venv/.requirements"
}

install_project() {  # this checkout, --no-deps, reinstalled when its source changes
  local src="$ROOTFS/opt/edge-lorax" stamp
  stamp="$(cd "$REPO" && find pyproject.toml edge_lorax benchmarks/arm64 -name "*.py" -o -name pyproject.toml | sort | xargs cat | sha256sum | cut -c1-16)"
  [ "$(cat "$src/.stamp" 2>/dev/null)" = "$stamp" ] && return 0
  say "installing this checkout (--no-deps) into the root filesystem"
  rm -rf "$src"; mkdir -p "$src/benchmarks"
  (cd "$REPO" && cp -r pyproject.toml README.md edge_lorax "$src/" && cp -r benchmarks/arm64 "$src/benchmarks/")
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  in_rootfs "/opt/venv/bin/pip install -q --no-deps --no-build-isolation /opt/edge-lorax" >&2
  echo "$stamp" > "$src/.stamp"
}

executorch_venv() {  # ExecuTorch bundles only: torch + executorch at the host's versions in a second venv
  grep -q '"target": *"executorch"' "$1/manifest.json" 2>/dev/null || return 0
  local want site
  want="$("$PY" -c 'from importlib.metadata import version as v; print("torch==" + v("torch").split("+")[0], "executorch==" + v("executorch"))')" \
    || die "the host's $PY has no executorch; install the project's executorch extra (scripts/setup.sh)"
  [ "$(cat "$ROOTFS/opt/venv-et/.requirements" 2>/dev/null)" = "$want" ] && return 0
  # ExecuTorch's Python binding imports torch; PyPI's aarch64 torch is a CUDA build, so its CUDA libraries (~2.3 GB)
  # come with it: they load without a GPU and stay unused. pip runs on the host (pip under qemu took > 40 min here):
  # the aarch64 wheels of Debian 12's Python 3.11 go straight into the venv's site-packages
  say "installing $want into /opt/venv-et (once; ~3 GB of aarch64 wheels)"
  in_rootfs "/usr/bin/python3 -m venv /opt/venv-et" >&2
  site="$ROOTFS/opt/venv-et/lib/python3.11/site-packages"
  local tags=() v
  for v in 17 18 24 25 26 27 28 29 31 34; do tags+=(--platform "manylinux_2_${v}_aarch64"); done
  # pip evaluates dependency markers on the host (executorch wants x86-only coremltools there): torch with its
  # dependencies (their markers hold on any Linux), then executorch and what its runtime imports without theirs
  local pip=("$PY" -m pip install -q --upgrade --target "$site" "${tags[@]}" --platform manylinux2014_aarch64
             --python-version 3.11 --implementation cp --only-binary=:all:)
  "${pip[@]}" ${want%% *} >&2
  "${pip[@]}" --no-deps ${want#* } "numpy==$("$PY" -c 'import numpy; print(numpy.__version__)')" flatbuffers ruamel.yaml \
    tabulate pyyaml packaging >&2
  echo "$want" > "$ROOTFS/opt/venv-et/.requirements"
}

host_tools
make_rootfs
runtime_venv
executorch_venv "$1"
install_project
exec "$PY" "$REPO/benchmarks/arm64/check.py" --rootfs "$ROOTFS" "$@"
