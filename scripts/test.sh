#!/usr/bin/env bash
# The project's one test command: formatting, lints, and every test in the workspace,
# including the seed's pika scripts run unmodified against Warren.
#
# Needs only the Rust toolchain (with rustfmt and clippy), python3 (with venv and pip)
# and Debian's apt. It makes examples-python/.venv and installs
# examples-python/requirements.txt into it, skipping that when the venv already has
# exactly those requirements, fetches rabbitmqadmin and installs Debian's chromium for
# the web UI's browser test (below).
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

# rabbitmqadmin, RabbitMQ's own CLI for its management API, drives Warren's API in the
# tests. It ships in Debian's rabbitmq-server package; only that one Python file is
# taken out of the package, without installing RabbitMQ.
tools="$root/target/tools"
if command -v rabbitmqadmin >/dev/null 2>&1; then
  WARREN_RABBITMQADMIN="$(command -v rabbitmqadmin)"
elif [ -x "$tools/rabbitmqadmin" ]; then
  WARREN_RABBITMQADMIN="$tools/rabbitmqadmin"
else
  echo "==> fetching rabbitmqadmin from Debian's rabbitmq-server package"
  mkdir -p "$tools/deb"
  (cd "$tools/deb" && apt-get download rabbitmq-server >/dev/null 2>&1) || {
    echo "apt-get download rabbitmq-server failed: install rabbitmq-server, or put rabbitmqadmin on PATH" >&2
    exit 1
  }
  dpkg-deb -x "$tools"/deb/rabbitmq-server_*.deb "$tools/deb/root"
  cp "$tools/deb/root/usr/bin/rabbitmqadmin" "$tools/rabbitmqadmin"
  rm -rf "$tools/deb"
  WARREN_RABBITMQADMIN="$tools/rabbitmqadmin"
fi
export WARREN_RABBITMQADMIN

# The web UI is tested in a real headless browser: Debian's chromium package.
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium (Debian's package) for the web UI's browser test"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
  if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; then
    "${as_root[@]}" apt-get update -q >/dev/null &&
      "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || {
        echo "installing chromium failed: install Debian's chromium package (apt-get install chromium)" >&2
        exit 1
      }
  fi
fi

echo "==> cargo fmt --all --check"
cargo fmt --all --check

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test --workspace"
cargo test --workspace
