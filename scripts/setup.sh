#!/usr/bin/env bash
# Set up jalki on Debian 12, as root: system packages, then a .venv at the
# repository root with the core (jalki) and the built-in plugins installed by
# pip, their BPF objects compiled by clang during the pip build.
# Idempotent: a second run only checks and re-installs the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "error: scripts/setup.sh installs system packages and must run as root (as a user with sudo rights: sudo bash scripts/setup.sh)" >&2
    exit 77
fi

APT_PACKAGES=(
    python3 python3-venv python3-dev gcc pkg-config   # Python, venv, and the cffi build of the libbpf binding
    clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool  # BPF C -> CO-RE objects; vmlinux.h from BTF
    iproute2 nftables procps kmod e2fsprogs           # network namespaces, faults, an ext4 loop device for the kernel tests
    libbpf-tools bpftrace                             # the peers the benchmarks compare against
    prometheus                                        # the daemon tests scrape /metrics with a real server
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tracefs is where classic tracepoints are found; mount it if the boot did not.
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

PYTHON=${PYTHON:-/usr/bin/python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel cffi
# The core: the cffi binding compiles against the system libbpf, the doctor's
# BPF object compiles with clang, all inside pip's normal build.
"${PIP[@]}" install --no-build-isolation --editable ".[dev]"
# Built-in plugins build against the installed core (its clang driver and headers).
for plugin in plugins/jalki_*/; do
    "${PIP[@]}" install --no-deps --no-build-isolation --editable "$plugin"
done
# --no-deps above keeps pip from fetching a released jalki over the editable core; the plugins' other
# dependencies (jalki-mcp: the mcp SDK; jalki-k8s: lightkube, and kubernetes-validate for its tests) are
# installed here, read from their pyproject.toml.
mapfile -t plugin_deps < <(.venv/bin/python - plugins/jalki_*/pyproject.toml <<'PY'
import re, sys, tomllib
for path in sys.argv[1:]:
    with open(path, "rb") as file:
        project = tomllib.load(file).get("project", {})  # run-time deps and the "test" extra (jalki-k8s)
        for dep in project.get("dependencies", []) + project.get("optional-dependencies", {}).get("test", []):
            if not re.match(r"jalki([-_]|\b)", dep):
                print(dep)
PY
)
if [ "${#plugin_deps[@]}" -gt 0 ]; then
    "${PIP[@]}" install "${plugin_deps[@]}"
fi
.venv/bin/jalki plugins >/dev/null
echo "setup: ready ($(.venv/bin/jalki --help >/dev/null && echo 'jalki installed'); plugins: $(.venv/bin/python -c 'from jalki_core.plugins import JalkiPlugins; print(", ".join(JalkiPlugins().plugin_names()))'))"
