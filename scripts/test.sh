#!/usr/bin/env bash
# The project's one test command: formatting, lints, and every test in the workspace,
# including the seed's pika scripts run unmodified against Warren.
#
# Needs only the Rust toolchain (with rustfmt and clippy) and python3 (with venv and
# pip). It makes examples-python/.venv and installs examples-python/requirements.txt
# into it, skipping that when the venv already has exactly those requirements.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv=examples-python/.venv
requirements=examples-python/requirements.txt
stamp="$venv/.requirements.txt"

if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
  echo "==> $venv is up to date"
else
  echo "==> making $venv and installing $requirements"
  if ! python3 -m venv "$venv"; then
    echo "python3 -m venv failed: on Debian/Ubuntu install python3-venv" >&2
    exit 1
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi

echo "==> cargo fmt --all --check"
cargo fmt --all --check

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test --workspace"
cargo test --workspace
