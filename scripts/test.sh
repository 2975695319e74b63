#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: ruff, mypy, BPF compile check, pytest.
# Kernel tests run as root on the real kernel; JALKI_REQUIRE_KERNEL_TESTS=1
# turns any skipped kernel test into a failure (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy jalki_core $(ls -d plugins/jalki_*/jalki_*/ | grep -v "\.egg-info/$")
echo "== build_bpf --check"
.venv/bin/python build_bpf.py --check
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
