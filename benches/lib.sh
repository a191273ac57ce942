# shellcheck shell=bash
#! benches/lib.sh: what the bench scripts share, sourced by them (not run): a free loopback
#! port, and a process's CPU so far, whole or split between its argon2 threads and the rest.

TICKS=$(getconf CLK_TCK)

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PID: CPU milliseconds (user and system) the process has used so far.
cpu_ms() { awk -v t="$TICKS" '{ print int(($14 + $15) * 1000 / t) }' "/proc/$1/stat"; }

# PID: "ARGON2_MS OTHER_MS", the process's CPU so far split by thread: the argon2-* hashing
# threads, and everything else (async workers, the store, the log writer). Threads that have
# exited are counted in neither, so a run's figures are differences of two calls.
split_cpu_ms() {
    python3 - "$1" "$TICKS" <<'PY'
import os, sys
pid, ticks = sys.argv[1], int(sys.argv[2])
hash_t = other = 0
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{t}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    used = int(fields[11]) + int(fields[12])
    if name.startswith("argon2-"):
        hash_t += used
    else:
        other += used
print(hash_t * 1000 // ticks, other * 1000 // ticks)
PY
}
