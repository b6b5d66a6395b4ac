#!/usr/bin/env bash
# Prints a digest of every source the extension noisefuse._C is built from (setup.py and csrc/,
# the test-only csrc/emulation aside): `make gpu-bundle` stores it with its build, and
# scripts/gpu_check.sh uses that build only when the digest of the sources it runs is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
find setup.py csrc -path csrc/emulation -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum |
    cut -c1-16
