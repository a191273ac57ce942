#!/usr/bin/env bash
#! benches/metrics_overhead.sh: what counting metrics costs. Two release servers side by side,
#! one with `metrics_addr` on (scraped every second while loaded, far more often than
#! Prometheus would) and one with it off, take the same signed-in page views
#! (`portcullis loadtest --mode views`) in alternating rounds (on, off, off, on, ...), and the
#! script prints the server CPU per view of each and their ratio (on / off). Both servers share
#! the machine and the rounds alternate, so a shared machine's drifting load falls on both.
#!
#! Usage: benches/metrics_overhead.sh        (from the repository root)
#! Environment: ROUNDS (pairs of runs, default 6), DURATION (per run, default 5s),
#!   CONCURRENCY (virtual users, default 8), CARGO_TARGET_DIR.
#! Needs: cargo, curl, python3. Both servers listen on 127.0.0.1 only, in a temporary
#! directory removed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-8}
TARGET=${CARGO_TARGET_DIR:-target}

echo "building release..." >&2
cargo build --release --quiet
BIN=$(realpath "$TARGET/release/portcullis")

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=benches/lib.sh
source benches/lib.sh
PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
unset PORTCULLIS_CONFIG
declare -A PORT PID

start() { # name, metrics_addr
    local name=$1 metrics=$2 dir="$WORK/$1"
    mkdir -p "$dir"
    PORT[$name]=$(free_port)
    (
        cd "$dir"
        export PORTCULLIS_DATA_DIR="$dir/data" PORTCULLIS_CERT_DIR="$dir/certs" PORTCULLIS_LOG_DIR="$dir/logs"
        export PORTCULLIS_HTTPS_ADDR="127.0.0.1:${PORT[$name]}" PORTCULLIS_HTTP_ADDR=off
        export PORTCULLIS_METRICS_ADDR="$metrics" PORTCULLIS_MAX_CONNECTIONS_PER_IP=1024
        export PORTCULLIS_LOGIN_QUOTA_PER_IP=off PORTCULLIS_LOGIN_QUOTA_PER_USER=off
        printf '%s\n' "$PASSWORD" | "$BIN" user add viewer --password-stdin > /dev/null
        exec "$BIN" serve > "$dir/server.out" 2>&1
    ) &
    PID[$name]=$!
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        if curl -skf "https://127.0.0.1:${PORT[$name]}/healthz" > /dev/null 2>&1; then return; fi
        sleep 0.1
    done
    curl -skf "https://127.0.0.1:${PORT[$name]}/healthz" > /dev/null
}

METRICS_PORT=$(free_port)
start on "127.0.0.1:$METRICS_PORT"
start off off
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^portcullis_build_info' \
    || { echo "the metrics listener does not answer" >&2; exit 1; }


run() { # name → "cpu_ms views"
    local name=$1 scraper=
    if [ "$name" = on ]; then
        (while true; do curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" > /dev/null || true; sleep 1; done) &
        scraper=$!
    fi
    local before after out
    before=$(cpu_ms "${PID[$name]}")
    out=$(printf '%s\n' "$PASSWORD" | "$BIN" loadtest --url "https://127.0.0.1:${PORT[$name]}" --mode views \
        --ca "$WORK/$name/certs/cert.pem" --username viewer --password-stdin --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --json 2>> "$WORK/progress.log")
    after=$(cpu_ms "${PID[$name]}")
    if [ -n "$scraper" ]; then kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true; fi
    echo "$((after - before)) $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["views"])' "$out")"
}

# One warm-up run each (connections, caches, the first sign-ins), not counted.
run on > /dev/null
run off > /dev/null

: > "$WORK/rounds"
for i in $(seq 1 "$ROUNDS"); do
    # ABBA order: neither server always runs first in a round.
    if [ $((i % 2)) -eq 1 ]; then order="on off"; else order="off on"; fi
    for name in $order; do
        read -r cpu views < <(run "$name")
        echo "$i $name $cpu $views" >> "$WORK/rounds"
        echo "round $i, metrics $name: ${cpu} ms server CPU, $views views" >&2
    done
done

python3 - "$WORK/rounds" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1])]
tot = {"on": [0, 0], "off": [0, 0]}
per_round = {}
for r, name, cpu, views in rows:
    tot[name][0] += int(cpu); tot[name][1] += int(views)
    per_round.setdefault(r, {})[name] = int(cpu) / max(int(views), 1)
us = {k: 1000 * c / max(v, 1) for k, (c, v) in tot.items()}
ratios = sorted(p["on"] / p["off"] for p in per_round.values() if p.get("off"))
print("| metrics | views | server CPU | CPU per view |")
print("| --- | --- | --- | --- |")
for k in ("on", "off"):
    print(f"| {k} | {tot[k][1]} | {tot[k][0]} ms | {us[k]:.1f} µs |")
print()
print(f"ratio on/off, all rounds: {us['on'] / us['off']:.3f}; per round: median {ratios[len(ratios) // 2]:.3f}, "
      f"range {ratios[0]:.3f}–{ratios[-1]:.3f}")
PY
