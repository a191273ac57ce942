#!/usr/bin/env bash
#! benches/engines.sh: the embedded sled store and PostgreSQL side by side, in one run on one
#! machine, and a markdown table of what issue 12's targets name: logins/s against the raw
#! all-core argon2 verify rate (one instance; on PostgreSQL also two instances sharing the
#! cores), signed-in page views, the server's CPU per login beside argon2, idle RSS, the
#! database's statements, round trips, fsyncs and CPU per sign-in (and so how many instances
#! one database core carries), and the audit review over 1,000,000 PostgreSQL records.
#!
#! PostgreSQL is a throwaway cluster this script makes (Debian's `postgresql` binaries, the
#! newest under /usr/lib/postgresql or PG_BINDIR) in a temporary directory, on a Unix socket
#! only, with durability ON (fsync, synchronous_commit, full_page_writes: honest figures)
#! and `pg_stat_statements` preloaded. As root it runs as the `postgres` user.
#!
#! Usage: benches/engines.sh            (from anywhere; builds the release binary)
#! Environment: DURATION (per run, default 10s), CONCURRENCY (virtual users, default 8),
#!   ROW_VERIFY_SECONDS (raw rate before and after each run, default 2), STRACE_DURATION
#!   (default 5s; the fsync and round-trip counts need strace, skipped without it),
#!   AUDIT_RECORDS (default 1000000), AUDIT_HOURS (hours they span, default 720),
#!   CARGO_TARGET_DIR, PORTCULLIS_BIN (use this binary instead of building one).
#! Needs: cargo, curl, python3, the postgresql package; strace for the syscall counts.
set -euo pipefail

cd "$(dirname "$0")/.."
# Settings come from this script alone (report.sh, which calls it, exports its own).
for v in $(compgen -e | grep '^PORTCULLIS_' || true); do
    if [ "$v" != PORTCULLIS_BIN ]; then unset "$v"; fi
done
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-8}
ROW_VERIFY_SECONDS=${ROW_VERIFY_SECONDS:-2}
STRACE_DURATION=${STRACE_DURATION:-5s}
AUDIT_RECORDS=${AUDIT_RECORDS:-1000000}
AUDIT_HOURS=${AUDIT_HOURS:-720}
TARGET=${CARGO_TARGET_DIR:-target}

PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    echo "engines.sh: no PostgreSQL binaries (apt-get install postgresql, or set PG_BINDIR)" >&2
    exit 1
fi

if [ -n "${PORTCULLIS_BIN:-}" ]; then # a binary already built (to try the script itself)
    BIN=$(realpath "$PORTCULLIS_BIN")
else
    echo "building release..." >&2
    cargo build --release --quiet
    BIN=$(realpath "$TARGET/release/portcullis")
fi

WORK=$(mktemp -d)
chmod 711 "$WORK" # the postgres user reaches its directory inside
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -f "$WORK/pg/data/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop > /dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
trap cleanup EXIT
# shellcheck source=benches/lib.sh
source benches/lib.sh

# --- PostgreSQL -----------------------------------------------------------------------------
echo "starting a throwaway PostgreSQL ($PGBIN)..." >&2
mkdir -p "$WORK/pg/socket"
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$WORK/pg"; fi
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres -E UTF8 --locale=C --auth-local=trust --auth-host=reject > /dev/null
PGPORT=$(free_port)
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w -o "-k $WORK/pg/socket -p $PGPORT \
    -c listen_addresses='' -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
    -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
    -c pg_stat_statements.track_utility=on -c max_connections=200" start > /dev/null
psql_() { "$PGBIN/psql" -X -q -A -t -h "$WORK/pg/socket" -p "$PGPORT" -U postgres "$@"; }
psql_ -d postgres -c "CREATE DATABASE bench" -c "CREATE DATABASE audit_bench"
psql_ -d bench -c "CREATE EXTENSION pg_stat_statements"
POSTMASTER=$(head -n 1 "$WORK/pg/data/postmaster.pid")
SOCKET_ENC=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$WORK/pg/socket")
DB_URL="postgres://postgres@$SOCKET_ENC:$PGPORT/bench"
AUDIT_URL="postgres://postgres@$SOCKET_ENC:$PGPORT/audit_bench"

# CPU milliseconds the database server has used so far: the postmaster with its reaped
# children, and every live child (backends, WAL writer, checkpointer …).
pg_cpu_ms() {
    python3 - "$POSTMASTER" "$TICKS" <<'PY'
import os, sys
pm, ticks = sys.argv[1], int(sys.argv[2])
total = 0
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        stat = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    f = stat[stat.rindex(")") + 2:].split()
    if p == pm:
        total += sum(int(x) for x in f[11:15])
    elif f[1] == pm:
        total += int(f[11]) + int(f[12])
print(total * 1000 // ticks)
PY
}
pg_pids() { echo "$POSTMASTER"; pgrep -P "$POSTMASTER" || true; }

# --- portcullis servers -----------------------------------------------------------------------
PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
# serve NAME [ENV=VALUE ...]: a release server in $WORK/NAME on a free port; sets PORT_<NAME>
# and PID_<NAME>. Every virtual user comes from 127.0.0.1: one address may hold them all.
serve() {
    local name=$1 port
    shift
    port=$(free_port)
    mkdir -p "$WORK/$name"
    env --chdir="$WORK/$name" -u PORTCULLIS_CONFIG PORTCULLIS_DATA_DIR="$WORK/$name/data" \
        PORTCULLIS_CERT_DIR="$WORK/$name/certs" PORTCULLIS_LOG_DIR="$WORK/$name/logs" \
        PORTCULLIS_HTTPS_ADDR="127.0.0.1:$port" PORTCULLIS_HTTP_ADDR=off \
        PORTCULLIS_LOGIN_QUOTA_PER_IP=off PORTCULLIS_LOGIN_QUOTA_PER_USER=off PORTCULLIS_CAPTCHA_AFTER_FAILURES=1000 \
        PORTCULLIS_MAX_CONNECTIONS_PER_IP=1024 PORTCULLIS_INSTANCE_NAME="$name" "$@" \
        "$BIN" serve > "$WORK/$name/server.out" 2>&1 &
    local pid=$! # env replaces itself with the server: same pid
    PIDS+=("$pid")
    for _ in $(seq 1 200); do
        if curl -skf "https://127.0.0.1:$port/healthz" > /dev/null 2>&1; then break; fi
        sleep 0.1
    done
    if ! curl -skf "https://127.0.0.1:$port/healthz" > /dev/null; then
        echo "engines.sh: the $name server did not start:" >&2
        tail -n 5 "$WORK/$name/server.out" >&2
        exit 1
    fi
    printf -v "PORT_$name" '%s' "$port"
    printf -v "PID_$name" '%s' "$pid"
}
cli() { # ENGINE-ENV... -- ARGS: the CLI with the given environment
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    env -u PORTCULLIS_CONFIG PORTCULLIS_DATA_DIR="$WORK/cli/data" PORTCULLIS_LOG_DIR="$WORK/cli/logs" "${envs[@]}" "$BIN" "$@"
}

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
settle() { # PID...: until the servers have finished queued work (at most 60 s)
    for _ in $(seq 1 120); do
        local a=0 b=0 p
        for p in "$@"; do a=$((a + $(cpu_ms "$p"))); done
        sleep 0.5
        for p in "$@"; do b=$((b + $(cpu_ms "$p"))); done
        if [ $((b - a)) -lt 50 ]; then return; fi
    done
}
raw() { "$BIN" bench-verify --seconds "$ROW_VERIFY_SECONDS" --all-cores-only --json; }
loadtest() { # PORT NAME CONCURRENCY DURATION USER extra...
    local port=$1 name=$2 c=$3 d=$4 user=$5
    shift 5
    printf '%s\n' "$PASSWORD" | "$BIN" loadtest --url "https://127.0.0.1:$port" --ca "$WORK/$name/certs/cert.pem" \
        --concurrency "$c" --duration "$d" --username "$user" --password-stdin --json "$@" 2>> "$WORK/progress.log" || echo null
}
# strace_count SECONDS_OF_LOADTEST PORT NAME PIDS...: syscall counts (fsync family and
# recvfrom) of the given processes and their threads during a short login run; prints
# {"run": ..., "calls": {"fsync": n, ...}, "recvfrom_ok": n} or null without strace.
strace_count() {
    local port=$1 name=$2
    shift 2
    if ! command -v strace > /dev/null; then echo null; return; fi
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    strace -f -c -e trace=fsync,fdatasync,sync_file_range,msync,recvfrom -o "$WORK/strace.txt" "${args[@]}" 2> /dev/null &
    local st=$!
    sleep 1
    local run
    run=$(loadtest "$port" "$name" "$CONCURRENCY" "$STRACE_DURATION" bench)
    kill -INT "$st" 2> /dev/null || true
    wait "$st" 2> /dev/null || true
    python3 - "$WORK/strace.txt" "$run" <<'PY'
import json, sys
calls, errors = {}, {}
# strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall"
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) in (5, 6) and parts[-1] in ("fsync", "fdatasync", "sync_file_range", "msync", "recvfrom"):
        calls[parts[-1]] = int(parts[3])
        errors[parts[-1]] = int(parts[4]) if len(parts) == 6 else 0
print(json.dumps({"run": json.loads(sys.argv[2]), "calls": calls,
                  "recvfrom_ok": calls.get("recvfrom", 0) - errors.get("recvfrom", 0)}))
PY
}

echo "raw verify rate..." >&2
"$BIN" bench-verify --seconds "$ROW_VERIFY_SECONDS" --json > "$WORK/verify.json"
: > "$WORK/rows.jsonl"

# measure ENGINE NAME ENV...: one engine's rows.
measure() {
    local engine=$1 name=$2
    shift 2
    echo "$engine: users, server, idle RSS..." >&2
    mkdir -p "$WORK/cli"
    printf '%s\n' "$PASSWORD" | cli "$@" PORTCULLIS_DATA_DIR="$WORK/$name/data" -- user add bench --password-stdin > /dev/null
    printf '%s\n' "$PASSWORD" | cli "$@" PORTCULLIS_DATA_DIR="$WORK/$name/data" -- user add viewer --password-stdin > /dev/null
    serve "$name" "$@"
    local port_var="PORT_$name" pid_var="PID_$name"
    local port=${!port_var} pid=${!pid_var}
    sleep 2
    local idle_kb
    idle_kb=$(rss_kb "$pid")
    loadtest "$port" "$name" "$CONCURRENCY" 2s bench > /dev/null # warm: pool connections, caches
    settle "$pid"

    echo "$engine: logins, $CONCURRENCY virtual users for $DURATION..." >&2
    local raw_before raw_after pg_before=0 pg_after=0 before after hb ob ha oa run
    raw_before=$(raw)
    if [ "$engine" = postgresql ]; then
        psql_ -d bench -c "SELECT pg_stat_statements_reset()" -c "SELECT pg_stat_reset_shared('wal')" > /dev/null
        pg_before=$(pg_cpu_ms)
    fi
    before=$(cpu_ms "$pid")
    read -r hb ob < <(split_cpu_ms "$pid")
    run=$(loadtest "$port" "$name" "$CONCURRENCY" "$DURATION" bench)
    after=$(cpu_ms "$pid")
    read -r ha oa < <(split_cpu_ms "$pid")
    local stmts=null wal=null
    if [ "$engine" = postgresql ]; then
        pg_after=$(pg_cpu_ms)
        stmts=$(psql_ -d bench -c "SELECT coalesce(json_agg(json_build_object('query', left(regexp_replace(query, '\s+', ' ', 'g'), 90), 'calls', calls, 'toplevel', toplevel, 'ms', round(total_exec_time::numeric, 1)) ORDER BY toplevel DESC, calls DESC), '[]') FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')")
        wal=$(psql_ -d bench -c "SELECT row_to_json(w) FROM (SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal) w")
    fi
    settle "$pid"
    raw_after=$(raw)
    echo "{\"engine\": \"$engine\", \"kind\": \"logins\", \"run\": $run, \"idle_kb\": $idle_kb, \"cpu_ms\": $((after - before)), \"argon2_cpu_ms\": $((ha - hb)), \"other_cpu_ms\": $((oa - ob)), \"db_cpu_ms\": $((pg_after - pg_before)), \"statements\": $stmts, \"wal\": $wal, \"raw\": [$raw_before, $raw_after]}" >> "$WORK/rows.jsonl"

    echo "$engine: signed-in page views for $DURATION..." >&2
    settle "$pid"
    local view_stmts=null view_db_before=0 view_db_after=0
    if [ "$engine" = postgresql ]; then
        psql_ -d bench -c "SELECT pg_stat_statements_reset()" > /dev/null
        view_db_before=$(pg_cpu_ms)
    fi
    run=$(loadtest "$port" "$name" "$CONCURRENCY" "$DURATION" viewer --mode views)
    if [ "$engine" = postgresql ]; then
        view_db_after=$(pg_cpu_ms)
        view_stmts=$(psql_ -d bench -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = 'bench') AND query NOT LIKE '%pg_stat_statements_reset%'")
    fi
    echo "{\"engine\": \"$engine\", \"kind\": \"views\", \"run\": $run, \"statements\": $view_stmts, \"db_cpu_ms\": $((view_db_after - view_db_before))}" >> "$WORK/rows.jsonl"

    echo "$engine: syscalls per sign-in under strace ($STRACE_DURATION)..." >&2
    settle "$pid"
    local counted
    if [ "$engine" = postgresql ]; then
        # shellcheck disable=SC2046
        counted=$(strace_count "$port" "$name" $(pg_pids))
    else
        counted=$(strace_count "$port" "$name" "$pid")
    fi
    echo "{\"engine\": \"$engine\", \"kind\": \"strace\", \"counted\": $counted}" >> "$WORK/rows.jsonl"
}

measure sled sled
kill -TERM "$PID_sled" && wait "$PID_sled" 2> /dev/null || true
measure postgresql pg1 PORTCULLIS_DATABASE_URL="$DB_URL"

echo "postgresql: two instances sharing the cores, $DURATION..." >&2
# The second instance gets the first one's factor key before it starts, as README says.
mkdir -p -m 700 "$WORK/pg2/data"
install -m 0600 "$WORK/pg1/data/factor.key" "$WORK/pg2/data/factor.key"
serve pg2 PORTCULLIS_DATABASE_URL="$DB_URL"
loadtest "$PORT_pg2" pg2 "$CONCURRENCY" 2s bench > /dev/null
settle "$PID_pg1" "$PID_pg2"
raw_before=$(raw)
half=$(((CONCURRENCY + 1) / 2))
loadtest "$PORT_pg1" pg1 "$half" "$DURATION" bench > "$WORK/two1.json" &
l1=$!
loadtest "$PORT_pg2" pg2 "$half" "$DURATION" bench > "$WORK/two2.json" &
l2=$!
wait "$l1" "$l2"
settle "$PID_pg1" "$PID_pg2"
raw_after=$(raw)
echo "{\"engine\": \"postgresql\", \"kind\": \"two\", \"runs\": [$(cat "$WORK/two1.json"), $(cat "$WORK/two2.json")], \"raw\": [$raw_before, $raw_after]}" >> "$WORK/rows.jsonl"
kill -TERM "$PID_pg2" "$PID_pg1" 2> /dev/null || true

echo "postgresql: audit review over $AUDIT_RECORDS records (filling with fsync on)..." >&2
audit=$(cli PORTCULLIS_DATABASE_URL="$AUDIT_URL" -- bench-audit --records "$AUDIT_RECORDS" --hours "$AUDIT_HOURS" || echo null)
audit24=null
if [ "$audit" != null ]; then
    # The same count within 24 hours: the summary then reads its scan limit and says partial.
    psql_ -d postgres -c "CREATE DATABASE audit_day"
    audit24=$(cli PORTCULLIS_DATABASE_URL="postgres://postgres@$SOCKET_ENC:$PGPORT/audit_day" -- bench-audit --records "$AUDIT_RECORDS" --hours 24 || echo null)
fi
echo "{\"kind\": \"audit\", \"spread\": $audit, \"day\": $audit24}" >> "$WORK/rows.jsonl"

python3 - "$WORK" "$(nproc)" "$DURATION" "$CONCURRENCY" "$(psql_ -d postgres -c 'SHOW server_version')" <<'EOF'
import json, sys
work, cores, duration, conc, pgver = sys.argv[1:6]
v = json.load(open(f"{work}/verify.json"))
rows = [json.loads(l) for l in open(f"{work}/rows.jsonl")]
get = lambda engine, kind: next((r for r in rows if r.get("engine") == engine and r["kind"] == kind), None)
raw_of = lambda r: sum(x["raw_all_cores_per_sec"] for x in r["raw"]) / len(r["raw"])
verify_cpu = lambda r: sum(x["all_cores_verify_cpu_ms"] for x in r["raw"]) / len(r["raw"])
mib = lambda kb: f"{kb / 1024:.1f} MiB"
ENGINES = ("sled", "postgresql")

print(f"argon2id m={v['memory_kib']} KiB t={v['iterations']} p=1, {cores} cores, {conc} virtual users, {duration} per run;"
      f" PostgreSQL {pgver} on a Unix socket, fsync on, synchronous_commit on.")
print()
print("| measure | sled | PostgreSQL | target |")
print("| --- | ---: | ---: | --- |")
cells = {}
for e in ENGINES:
    r = get(e, "logins")
    c = {}
    run = r and r["run"]
    if run and run["logins"]:
        n = run["logins"]
        raw = raw_of(r)
        c["lps"] = f"{run['logins_per_sec']:.1f}/s"
        spread = " – ".join(f"{x['raw_all_cores_per_sec']:.1f}" for x in r["raw"])
        c["raw"] = f"{raw:.1f}/s ({spread})"
        c["ratio"] = run["logins_per_sec"] / raw
        c["split"] = f"{r['argon2_cpu_ms'] / n:.2f} · {r['other_cpu_ms'] / n:.2f} ms"
        c["overhead"] = r["other_cpu_ms"] / r["argon2_cpu_ms"] if r["argon2_cpu_ms"] else None
        vc = verify_cpu(r)
        c["beyond"] = (r["cpu_ms"] / n - vc) / vc if vc else None
        c["p99"] = f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f} ms"
        c["errors"] = ", ".join(f"{k}: {x}" for k, x in run["errors_by_kind"].items()) or "0"
        c["idle"] = r["idle_kb"]
        # Where the machine's CPU went per login: the server's argon2 threads and the rest of
        # it, the load generator, the database (PostgreSQL), and what is left (idle, others).
        budget = int(cores) * 1000 / run["logins_per_sec"]
        client = run.get("client_cpu_ms", 0) / n
        db = r["db_cpu_ms"] / n if e == "postgresql" else 0.0
        used = r["argon2_cpu_ms"] / n + r["other_cpu_ms"] / n + client + db
        c["budget"] = (f"{budget:.2f} = {r['argon2_cpu_ms'] / n:.2f} · {r['other_cpu_ms'] / n:.2f} · {client:.2f} · "
                       + (f"{db:.2f}" if e == "postgresql" else "–") + f" · {budget - used:.2f}")
        # The same run with the load generator's and the database's CPU given back to the
        # server, as where they run on other machines: a projection, not the target's measure.
        c["projected"] = run["logins_per_sec"] * budget / (budget - client - db) / raw if budget > client + db else None
        if e == "postgresql":
            c["db_ms"] = r["db_cpu_ms"] / n
            stmts = r["statements"] or []
            c["stmts"] = sum(s["calls"] for s in stmts if s["toplevel"]) / n
            c["nested"] = sum(s["calls"] for s in stmts if not s["toplevel"]) / n
            c["top"] = stmts
            wal = r["wal"] or {}
            c["wal_sync"] = wal.get("wal_sync", 0) / n
            c["wal_bytes"] = wal.get("wal_bytes", 0) / n
    vr = get(e, "views")
    if vr and vr["run"]:
        c["views"] = vr["run"]["views_per_sec"]
        c["views_p99"] = vr["run"]["p99_ms"]
        if e == "postgresql" and vr["run"]["views"]:
            c["view_stmts"] = (vr["statements"] or 0) / vr["run"]["views"]
            c["view_db_ms"] = vr["db_cpu_ms"] / vr["run"]["views"]
    sr = get(e, "strace")
    if sr and sr["counted"] and sr["counted"]["run"] and sr["counted"]["run"]["logins"]:
        n = sr["counted"]["run"]["logins"]
        calls = sr["counted"]["calls"]
        c["fsyncs"] = sum(calls.get(k, 0) for k in ("fsync", "fdatasync", "sync_file_range", "msync")) / n
        c["fsync_detail"] = ", ".join(f"{k} {x / n:.2f}" for k, x in calls.items() if k != "recvfrom")
        if e == "postgresql":
            c["trips"] = sr["counted"]["recvfrom_ok"] / n
    cells[e] = c

def cell(e, k, fmt=str, empty="–"):
    x = cells[e].get(k)
    return fmt(x) if x is not None else empty

pct = lambda x: f"{100 * x:.1f} %"
print(f"| logins/s, one instance | {cell('sled', 'lps')} | {cell('postgresql', 'lps')} | |")
print(f"| raw all-core verifies/s (before – after) | {cell('sled', 'raw')} | {cell('postgresql', 'raw')} | |")
print(f"| **× raw rate, one instance** | {cell('sled', 'ratio', lambda x: f'{x:.3f}')} | {cell('postgresql', 'ratio', lambda x: f'**{x:.3f}**')} | ≥ 0.95 |")
two = next((r for r in rows if r["kind"] == "two"), None)
two_cell = "–"
if two and all(two["runs"]):
    lps = sum(x["logins_per_sec"] for x in two["runs"])
    two_cell = f"**{lps / raw_of(two):.3f}** ({lps:.1f}/s; raw {raw_of(two):.1f}/s)"
print(f"| **× raw rate, two instances sharing the cores** | n/a (one process per sled store) | {two_cell} | ≥ 0.95 |")
print(f"| CPU ms per login: all cores = argon2 threads · rest of the server · load generator · database · idle or other | {cell('sled', 'budget')} | {cell('postgresql', 'budget')} | |")
print(f"| × raw rate had the load generator and the database cores of their own (projected from the row above) | {cell('sled', 'projected', lambda x: f'{x:.3f}')} | {cell('postgresql', 'projected', lambda x: f'{x:.3f}')} | (not the target's measure) |")
print(f"| login p50 / p99 | {cell('sled', 'p99')} | {cell('postgresql', 'p99')} | |")
print(f"| errors | {cell('sled', 'errors')} | {cell('postgresql', 'errors')} | |")
print(f"| CPU per login: argon2 threads · rest of the server | {cell('sled', 'split')} | {cell('postgresql', 'split')} | |")
print(f"| **server CPU beside argon2** (rest ÷ argon2 threads) | {cell('sled', 'overhead', pct)} | {cell('postgresql', 'overhead', pct)} | ≤ 5 % |")
print(f"| server CPU per login − raw verify CPU, ÷ raw verify CPU | {cell('sled', 'beyond', pct)} | {cell('postgresql', 'beyond', pct)} | ≤ 5 % |")
sv, pv = cells["sled"].get("views"), cells["postgresql"].get("views")
ratio_v = f"**{pv / sv:.2f} × sled**" if sv and pv else "–"
print(f"| signed-in page views/s (p99) | {sv or 0:.0f} ({cells['sled'].get('views_p99', 0):.2f} ms) | {pv or 0:.0f} ({cells['postgresql'].get('views_p99', 0):.2f} ms); {ratio_v} | ≥ 0.5 × sled |")
print(f"| per page view: statements · database CPU | – | {cell('postgresql', 'view_stmts', lambda x: f'{x:.2f}')} · {cell('postgresql', 'view_db_ms', lambda x: f'{x:.3f} ms')} | |")
print(f"| **idle RSS** | {cell('sled', 'idle', mib)} | {cell('postgresql', 'idle', mib)} | ≤ 40 MiB (PostgreSQL) |")
print(f"| fsync-family calls per sign-in (strace) | {cell('sled', 'fsyncs', lambda x: f'{x:.2f}')} ({cell('sled', 'fsync_detail')}) | {cell('postgresql', 'fsyncs', lambda x: f'{x:.2f}')} ({cell('postgresql', 'fsync_detail')}) | |")
pg = cells["postgresql"]
print(f"| WAL syncs per sign-in (pg_stat_wal) | – | {cell('postgresql', 'wal_sync', lambda x: f'{x:.2f}')} ({cell('postgresql', 'wal_bytes', lambda x: f'{x:.0f}')} WAL bytes) | |")
print(f"| statements per sign-in sent by portcullis (pg_stat_statements, top level) | – | {cell('postgresql', 'stmts', lambda x: f'{x:.1f}')} (and {cell('postgresql', 'nested', lambda x: f'{x:.1f}')} run inside its functions) | |")
print(f"| round trips per sign-in (backend reads, strace) | – | {cell('postgresql', 'trips', lambda x: f'{x:.1f}')} | |")
if pg.get("db_ms") is not None:
    db_ms = pg["db_ms"]
    per_core = 1000 / db_ms if db_ms else float("inf")
    inst = pg.get("ratio", 0) * raw_of(get("postgresql", "logins"))
    print(f"| **database server CPU per sign-in** | – | **{db_ms:.2f} ms** | |")
    print(f"| sign-ins one database core carries | – | {per_core:.0f}/s = **{per_core / inst:.1f} instances** like this one ({inst:.0f} logins/s each) | |")
print()
audit = next(r for r in rows if r["kind"] == "audit")
for key, label in (("spread", "spread evenly over the last"), ("day", "all within the last")):
    a = audit.get(key)
    if not a:
        print(f"audit bench ({key}): failed")
        continue
    print(f"Audit review on PostgreSQL, {a['records']:,} records {label} {a['hours']} h (filled in {a['fill_s']:.0f} s);"
          f" median and slowest of the repeats, through `review::review` as the CLI and admin page call it:")
    print()
    print("| query | median | slowest | rows / records counted | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    for t in a["timings"]:
        target = "≤ 1 s" if t["query"].startswith("summary") else ("≤ 10 ms" if "last hour" in t["query"] else "")
        note = " (partial: scan limit)" if t["partial"] else ""
        print(f"| {t['query']} | {t['median_ms']:.1f} ms | {t['max_ms']:.1f} ms | {t['rows']:,}{note} | {target} |")
    print()
top = pg.get("top") or []
lps = get("postgresql", "logins")
if top and lps and lps["run"]:
    n = lps["run"]["logins"]
    print("Statements per sign-in on PostgreSQL (pg_stat_statements, login run only):")
    print()
    print("| calls per sign-in | exec ms per sign-in | level | statement |")
    print("| ---: | ---: | --- | --- |")
    for s in top[:24]:
        q = s["query"].replace("|", "\\|")
        level = "top" if s["toplevel"] else "nested"
        print(f"| {s['calls'] / n:.2f} | {s['ms'] / n:.3f} | {level} | `{q}` |")
EOF
