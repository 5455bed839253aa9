#!/usr/bin/env bash
# Runs the integration guide's Python example against a real sandbox node: generates the
# Python stubs from proto/ with a stock grpcio-tools, starts the node, calls it. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/docs-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools
stubs=target/docs-python
rm -rf "$stubs" && mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$stubs" \
    --grpc_python_out="$stubs" proto/trm/v1/*.proto
cargo build --quiet --locked -p trm-node -p trmctl
dir=$(mktemp -d)
trap 'kill "${node:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
target/debug/trmctl sandbox init --dir "$dir" --nodes AT,RO --base-port 17400 >/dev/null
RUST_LOG=warn target/debug/trm-node --config "$dir/AT/node.toml" &
node=$!
for _ in $(seq 1 100); do
    target/debug/trmctl status --config "$dir/AT/node.toml" >/dev/null 2>&1 && break
    sleep 0.1
done
PYTHONPATH="$stubs" "$venv/bin/python" docs/examples/referral_client.py "$dir/AT" localhost:17400
