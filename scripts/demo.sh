#!/usr/bin/env bash
# End-to-end demo: a private mosquitto, the daemon with the demo model, one task
# through the broker, the validated reply printed. Cleans up after itself.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
# The small production tier, Qwen2.5-Coder-0.5B (491 MB, sha256-checked): SmolLM2-135M,
# which the fast tests use, misreads the zone of this very example (it answered zone 2).
# EDGEAGENT_DEMO_MODEL=qwen-coder-1.5b runs the 4 GB boards' model (docs/models.md).
model="$("$python" "$here/scripts/fetch_model.py" "${EDGEAGENT_DEMO_MODEL:-qwen-coder}")"
work="$(mktemp -d)"
port="$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
"$mosquitto_bin" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
pids+=($!)

# The example config, pointed at the demo model, the private broker and a temp state dir.
sed -e "s|^path = .*gguf\"|path = \"$model\"|" \
    -e "s|^host = .*|host = \"127.0.0.1\"|" \
    -e "s|^port = 1883|port = $port|" \
    -e "s|^dir = .*|dir = \"$work/state\"|" \
    -e "s|^id = .*|id = \"demo\"|" \
    -e "s|^threads = .*|threads = $(nproc)|" \
    "$here/examples/config.toml" > "$work/config.toml"
edgeagent validate-config "$work/config.toml"

EDGEAGENT_LOG__FORMAT=console edgeagent run --config "$work/config.toml" 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 1 120); do
  if edgeagent status --config "$work/config.toml" --timeout 1 >/dev/null 2>&1; then break; fi
  sleep 0.5
done
echo "daemon online; sending a task to edgeagent/demo/tasks:" >&2
text="Zone 3 soil moisture sensor reads 12 %, the plants are wilting. Water zone 3 for 20 minutes."
echo "  $text" >&2
edgeagent submit --config "$work/config.toml" --device demo --catalog --id demo-1 "$text" | "$python" -m json.tool
echo "daemon log (last lines):" >&2
tail -n 3 "$work/daemon.log" >&2
