#!/usr/bin/env bash
#! benches/report.sh: measures this machine's raw argon2 verify rate, then a release server
#! under `portcullis loadtest` at several concurrencies, and prints a markdown table
#! (logins/s and their ratio to the raw rate, latency, /healthz p99 under the flood, RSS),
#! plus signed-in page views per second. Everything in one run on one machine, so the
#! ratios hold even when the absolute figures move with the machine's load.
#!
#! Usage: benches/report.sh            (from the repository root)
#! Environment: DURATION (per run, default 10s), CONCURRENCY (default "1 2 4 8 32 500"),
#!   VERIFY_SECONDS (default 5), ROW_VERIFY_SECONDS (default 2), PROBE_RATE (default 50),
#!   ROUNDS (saturation rounds, default 8), ROUND_DURATION (default 5s), ROUND_CONCURRENCY
#!   (default 8), ROUND_VERIFY_SECONDS (default 1.5), CARGO_TARGET_DIR.
#! Each row's ratio is to the raw all-core rate measured just before and just after that
#! row's run (the mean of the two), so a machine whose load drifts still gives fair ratios.
#! Then, unless ENGINES=off, benches/engines.sh: sled and PostgreSQL side by side.
#! Needs: cargo, curl, python3 (engines.sh: the postgresql package). The server listens on
#! 127.0.0.1 only, in a temporary directory that is removed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
HERE=$(pwd)
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-1 2 4 8 32 500}
VERIFY_SECONDS=${VERIFY_SECONDS:-5}
ROW_VERIFY_SECONDS=${ROW_VERIFY_SECONDS:-2}
PROBE_RATE=${PROBE_RATE:-50}
ROUNDS=${ROUNDS:-8}
ROUND_DURATION=${ROUND_DURATION:-5s}
ROUND_CONCURRENCY=${ROUND_CONCURRENCY:-8}
ROUND_VERIFY_SECONDS=${ROUND_VERIFY_SECONDS:-1.5}
TARGET=${CARGO_TARGET_DIR:-target}

echo "building release..." >&2
cargo build --release --quiet
BIN=$(realpath "$TARGET/release/portcullis")

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "raw verify rate (${VERIFY_SECONDS}s per case)..." >&2
"$BIN" bench-verify --seconds "$VERIFY_SECONDS" --json > "$WORK/verify.json"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PORTCULLIS_DATA_DIR="$WORK/data" PORTCULLIS_CERT_DIR="$WORK/certs" PORTCULLIS_LOG_DIR="$WORK/logs"
export PORTCULLIS_HTTPS_ADDR="127.0.0.1:$PORT" PORTCULLIS_HTTP_ADDR=off
export PORTCULLIS_LOGIN_QUOTA_PER_IP=off PORTCULLIS_LOGIN_QUOTA_PER_USER=off PORTCULLIS_CAPTCHA_AFTER_FAILURES=1000
# Every virtual user comes from 127.0.0.1: let one address hold them all (and the probe).
export PORTCULLIS_MAX_CONNECTIONS_PER_IP=1024
unset PORTCULLIS_CONFIG
cd "$WORK"

# A random password, never printed; one user for the login flood and one for page views
# (whose home page lists that user's sessions, so it must not inherit the flood's).
PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$PASSWORD" | "$BIN" user add bench --password-stdin > /dev/null
printf '%s\n' "$PASSWORD" | "$BIN" user add viewer --password-stdin > /dev/null

"$BIN" serve > "$WORK/server.out" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    if curl -skf "https://127.0.0.1:$PORT/healthz" > /dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -skf "https://127.0.0.1:$PORT/healthz" > /dev/null
sleep 2

status() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status"; }
# shellcheck source=benches/lib.sh
source benches/lib.sh
settle() { # until the server has finished the previous run's queued hashes (at most 60 s)
    for _ in $(seq 1 120); do
        local a b
        a=$(cpu_ms "$SERVER_PID")
        sleep 0.5
        b=$(cpu_ms "$SERVER_PID")
        if [ $((b - a)) -lt 50 ]; then return; fi
    done
}
IDLE_KB=$(status VmRSS)

loadtest() { # concurrency, duration, extra flags...
    local c=$1 d=$2
    shift 2
    printf '%s\n' "$PASSWORD" | "$BIN" loadtest --url "https://127.0.0.1:$PORT" --ca "$WORK/certs/cert.pem" \
        --concurrency "$c" --duration "$d" --password-stdin --json "$@" 2>> "$WORK/progress.log"
}

: > "$WORK/runs.jsonl"
for c in $CONCURRENCY; do
    echo "loadtest: $c virtual users for $DURATION..." >&2
    settle
    raw_before=$("$BIN" bench-verify --seconds "$ROW_VERIFY_SECONDS" --all-cores-only --json)
    echo 5 > "/proc/$SERVER_PID/clear_refs" 2>/dev/null || true # reset the peak (VmHWM)
    before=$(cpu_ms "$SERVER_PID")
    read -r hash_before other_before < <(split_cpu_ms "$SERVER_PID")
    out=$(loadtest "$c" "$DURATION" --username bench --probe-rate "$PROBE_RATE") || tail -n 1 "$WORK/progress.log" >&2
    after=$(cpu_ms "$SERVER_PID") # at once: work the server still does for requests cut at the deadline is left out
    read -r hash_after other_after < <(split_cpu_ms "$SERVER_PID")
    peak=$(status VmHWM)
    out=${out:-null}
    settle
    raw_after=$("$BIN" bench-verify --seconds "$ROW_VERIFY_SECONDS" --all-cores-only --json)
    echo "{\"run\": $out, \"peak_kb\": $peak, \"cpu_ms\": $((after - before)), \"argon2_cpu_ms\": $((hash_after - hash_before)), \"other_cpu_ms\": $((other_after - other_before)), \"raw\": [$raw_before, $raw_after]}" \
        >> "$WORK/runs.jsonl"
done

# Saturation, repeated: a shared machine's speed drifts by tens of percent within a minute, so
# one run's ratio says little. Short rounds alternate a raw measurement and a load test, and
# each round's logins/s is divided by the mean of the raw rates measured just before and
# just after it; the median round is reported.
echo "saturation: $ROUNDS rounds of HTTP/2 and HTTP/1.1, $ROUND_DURATION each at $ROUND_CONCURRENCY virtual users..." >&2
: > "$WORK/rounds.jsonl"
settle
raw_prev=$("$BIN" bench-verify --seconds "$ROUND_VERIFY_SECONDS" --all-cores-only --json)
for _ in $(seq 1 "$ROUNDS"); do
    for protocol in h2 http1; do # browsers speak HTTP/2; a reverse proxy, HTTP/1.1
        flag=()
        if [ "$protocol" = http1 ]; then flag=(--http1); fi
        read -r hash_before other_before < <(split_cpu_ms "$SERVER_PID")
        out=$(loadtest "$ROUND_CONCURRENCY" "$ROUND_DURATION" --username bench "${flag[@]}" || true)
        read -r hash_after other_after < <(split_cpu_ms "$SERVER_PID")
        settle
        raw_next=$("$BIN" bench-verify --seconds "$ROUND_VERIFY_SECONDS" --all-cores-only --json)
        echo "{\"run\": ${out:-null}, \"argon2_cpu_ms\": $((hash_after - hash_before)), \"other_cpu_ms\": $((other_after - other_before)), \"raw\": [$raw_prev, $raw_next]}" \
            >> "$WORK/rounds.jsonl"
        raw_prev=$raw_next
    done
done

echo "page views: 8 connections for $DURATION..." >&2
settle
echo 5 > "/proc/$SERVER_PID/clear_refs" 2>/dev/null || true
views=$(loadtest 8 "$DURATION" --username viewer --mode views --probe-rate "$PROBE_RATE" || true)
views=${views:-null}
echo "{\"run\": $views, \"peak_kb\": $(status VmHWM)}" > "$WORK/views.json"
TOTAL_PEAK_KB=$(status VmHWM)

python3 - "$WORK" "$IDLE_KB" "$TOTAL_PEAK_KB" "$DURATION" "$(nproc)" <<'EOF'
import json, sys
work, idle_kb, total_peak_kb, duration, cores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
v = json.load(open(f"{work}/verify.json"))
raw = v["raw_all_cores_per_sec"]
mib = lambda kb: f"{kb / 1024:.1f} MiB"
print(f"argon2id m={v['memory_kib']} KiB t={v['iterations']} p=1, {v['threads']} threads ({cores} cores), {duration} per run")
print()
print("| raw verify | crate (fresh memory) | pool workspace (reused) |")
print("| --- | --- | --- |")
for label, k in (("1 thread", "one_thread"), (f"{v['threads']} threads", "all_threads")):
    x = v[k]
    print(f"| {label} | {x['crate_per_sec']:.1f}/s ({x['crate_cpu_ms']:.1f} CPU ms each)"
          f" | {x['reused_per_sec']:.1f}/s ({x['reused_cpu_ms']:.1f} CPU ms each) |")
print()
print(f"Raw all-core verify rate at the start (the faster way): **{raw:.1f}/s**; one verify:"
      f" {v['one_verify_ms']:.1f} ms, {v['one_verify_cpu_ms']:.1f} ms of CPU. Idle RSS: **{mib(idle_kb)}**.")
print()
print("Each row: logins/s ÷ the raw all-core verify rate measured just before and just after that")
print("row's run (their mean). CPU per login, from the server's threads and the load generator's")
print("own clock: *argon2* is the hashing threads, *server rest* everything else the server did")
print("(TLS, HTTP, handlers, sled, the log), *generator* the load generator on the same cores.")
print("*Server overhead* = server rest ÷ argon2: what the server adds to the hash, measured in")
print("the same run on the same requests, so the machine's drift hardly moves it.")
print()
print("| concurrency | logins/s | raw verifies/s | × raw rate | p50 | p99 | /healthz p99 | CPU/login: argon2 · server rest · generator | server overhead | errors | peak RSS |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")

def cpu_split(row, r):
    n = r["logins"] or 1
    a, o, g = row["argon2_cpu_ms"] / n, row["other_cpu_ms"] / n, r.get("client_cpu_ms", 0) / n
    return a, o, g, f"{a:.2f} · {o:.2f} · {g:.2f} ms", (f"{100 * o / a:.1f} %" if a else "?")

def raw_of(row):
    return sum(x["raw_all_cores_per_sec"] for x in row["raw"]) / len(row["raw"])

for line in open(f"{work}/runs.jsonl"):
    row = json.loads(line)
    r = row["run"]
    if not r:
        print("| ? | run failed | | | | | | | | | |")
        continue
    errs = ", ".join(f"{k}: {n}" for k, n in r["errors_by_kind"].items()) or "0"
    probe = r.get("probe") or {}
    row_raw = raw_of(row)
    spread = " – ".join(f"{x['raw_all_cores_per_sec']:.1f}" for x in row["raw"])
    _, _, _, split, overhead = cpu_split(row, r)
    print(f"| {r['concurrency']} | {r['logins_per_sec']:.1f} | {row_raw:.1f} ({spread}) | {r['logins_per_sec'] / row_raw:.3f}"
          f" | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {probe.get('p99_ms', 0):.1f} ms | {split}"
          f" | {overhead} | {errs} | {mib(row['peak_kb'])} |")
print()

rounds = [json.loads(l) for l in open(f"{work}/rounds.jsonl")]
rounds = [x for x in rounds if x["run"] and x["run"]["logins"]]
med = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2
if rounds:
    print(f"Saturation: alternating rounds of {rounds[0]['run']['concurrency']} virtual users for"
          f" {rounds[0]['run']['duration_s']:.0f} s, HTTP/2 then HTTP/1.1, each divided by the raw rate"
          f" measured just before and just after it:")
    print()
    print("| round | protocol | logins/s | raw verifies/s (before – after) | × raw rate | CPU/login: argon2 · server rest · generator | server overhead |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    by_protocol = {}
    for i, row in enumerate(rounds, 1):
        r = row["run"]
        raw_r = raw_of(row)
        ratio = r["logins_per_sec"] / raw_r
        a, o, g, split, overhead = cpu_split(row, r)
        stats = by_protocol.setdefault(r["protocol"], {"ratio": [], "overhead": [], "share": []})
        stats["ratio"].append(ratio)
        stats["overhead"].append(o / a if a else 0)
        stats["share"].append(a / (a + o + g) if a else 0)
        spread = " – ".join(f"{x['raw_all_cores_per_sec']:.1f}" for x in row["raw"])
        print(f"| {(i + 1) // 2} | {r['protocol']} | {r['logins_per_sec']:.1f} | {raw_r:.1f} ({spread}) | {ratio:.3f} | {split} | {overhead} |")
    print()
    for protocol, st in by_protocol.items():
        rs = st["ratio"]
        print(f"- {protocol}: **median × raw rate {med(rs):.3f}** (mean {sum(rs) / len(rs):.3f},"
              f" range {min(rs):.3f} – {max(rs):.3f}); median server overhead **{100 * med(st['overhead']):.1f} %**;"
              f" argon2's share of all CPU spent per login, generator included: {100 * med(st['share']):.1f} %.")
    print()
row = json.load(open(f"{work}/views.json"))
r = row["run"]
if r:
    probe = r.get("probe") or {}
    errs = ", ".join(f"{k}: {n}" for k, n in r["errors_by_kind"].items()) or "0"
    print("| signed-in page views | views/s | p50 | p99 | /healthz p99 | errors | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    print(f"| GET /, 8 connections | {r['views_per_sec']:.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms"
          f" | {probe.get('p99_ms', 0):.1f} ms | {errs} | {mib(row['peak_kb'])} |")
else:
    print("page views: run failed")
print()
print(f"Peak RSS over the whole run: {mib(total_peak_kb)}.")
EOF

if [ "${ENGINES:-on}" != off ]; then
    kill -TERM "$SERVER_PID" 2> /dev/null && wait "$SERVER_PID" 2> /dev/null || true
    echo
    echo "### sled and PostgreSQL side by side (benches/engines.sh)"
    echo
    "$HERE/benches/engines.sh"
fi
