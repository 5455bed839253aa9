#!/usr/bin/env bash
# Runs the integration guide's commands and its Python example against two real sandbox
# nodes (AT and RO): the guide's block marked `ci: python-setup` is run as written (only
# `python` is this script's virtual environment and the sandbox is a fresh one on ports of
# its own), then the example plays referral, arrival, answers, a return, a hearing, a
# safety alert and a claim.
# CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="$target/docs-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
cargo build --quiet --locked -p trm-node -p trmctl
work=$(mktemp -d)
# The nodes stop (and flush) before their folders go.
trap 'kill ${nodes:-} 2>/dev/null || true; wait ${nodes:-} 2>/dev/null || true; rm -rf "$work"' EXIT
"$target/debug/trmctl" sandbox init --dir "$work/sandbox" --nodes AT,RO --base-port 17400 >/dev/null
for id in AT RO; do
    RUST_LOG=warn "$target/debug/trm-node" --config "$work/sandbox/$id/node.toml" &
    nodes="${nodes:-} $!"
done
for id in AT RO; do
    for _ in $(seq 1 100); do
        "$target/debug/trmctl" status --config "$work/sandbox/$id/node.toml" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

# The guide's block, run where `sandbox/` is this run's sandbox and `proto/` and `docs/`
# are the repository's, with this run's ports.
block=$(awk '/<!-- ci: python-setup -->/{on=1; next} on && /^```sh/{next} on && /^```/{exit} on' \
    docs/integration-guide.md)
if [ -z "$block" ]; then
    echo "docs/integration-guide.md has no block marked ci: python-setup" >&2
    exit 1
fi
cp -r proto docs "$work/"
cd "$work"
block=${block//localhost:7400/localhost:17400}
block=${block//localhost:7410/localhost:17410}
echo "$block"
PATH="$venv/bin:$PATH" bash -euo pipefail -c "$block"
