#!/usr/bin/env bash
# Forward-auth figures (issue 13), with the release build and Debian's nginx, all on loopback:
#  1. nginx serving a small static file over TLS (`loadtest --mode get`): the baseline;
#  2. verifies per second, signed in, keep-alive (`loadtest --mode verify`), same client, of a
#     plain target and of one with accents in its path and query (the most readings to judge);
#  3. signed-in page views (`--mode views`), which verifies must not fall below; verifies of a
#     4 KB target with the most readings we found in an ordinary URL, and page views while
#     those flood;
#  4. a gated request through nginx (the README's nginx configuration) at 8 clients, and the
#     time each auth subrequest spent in portcullis as nginx saw it ($upstream_response_time,
#     logged per subrequest): p50/p99.
# Usage: benches/forward_auth.sh [DURATION]   (default 10s; BIN=path/to/portcullis)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release/portcullis}
DUR=${1:-10s}
CLIENTS=8
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=benches/lib.sh
source benches/lib.sh
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
PC=$(free_port); PN=$(free_port); PG=$(free_port); PA=$(free_port)
PASSWORD='plum tractor velvet orbit'

cat >"$work/portcullis.toml" <<EOF
https_addr = "127.0.0.1:$PC"
http_addr = "off"
public_url = "https://localhost:$PC"
data_dir = "$work/data"
cert_dir = "$work/certs"
log_dir = "$work/logs"
trusted_proxies = ["127.0.0.1"]
login_quota_per_ip = "off"
login_quota_per_user = "off"
captcha_after_failures = 1000

[access]
[[access.rules]]
policy = "one_factor"
EOF
"$BIN" --config "$work/portcullis.toml" serve >"$work/serve.log" 2>&1 &
pids+=($!)
wait_port "$PC"
# The port opens a moment before the admin socket answers: retry briefly.
for _ in $(seq 50); do
    echo "$PASSWORD" | "$BIN" --config "$work/portcullis.toml" user add bench --password-stdin >/dev/null 2>&1 && break
    sleep 0.2
done

# nginx: the static file, the application (plain HTTP), and the gated application built from
# the README's configuration (names, ports and files replaced; the per-subrequest timing log
# added; upstream certificate checks off, as the development certificate is no CA).
mkdir -p "$work/www" "$work/nginx"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/small.txt"
sed -e "s|listen 443 ssl;|listen 127.0.0.1:$PG ssl;|" \
    -e "s|server_name app.example.com;|server_name localhost;|" \
    -e "s|/etc/ssl/app.example.com/fullchain.pem|$work/certs/cert.pem|" \
    -e "s|/etc/ssl/app.example.com/privkey.pem|$work/certs/key.pem|" \
    -e "s|127.0.0.1:4000|127.0.0.1:$PC|" -e "s|127.0.0.1:8080|127.0.0.1:$PA|" \
    -e "s|login.example.com|localhost|" -e "s|proxy_ssl_verify on;|proxy_ssl_verify off;|" \
    -e "s|        internal;|        internal;\n        access_log $work/verify.log timing;|" \
    -e "s|app.example.com|localhost:$PG|g" \
    contrib/forward-auth/nginx.conf >"$work/nginx/gated.conf"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    log_subrequest on;
    log_format timing '\$upstream_response_time';
    client_body_temp_path $work/nginx/cb; proxy_temp_path $work/nginx/p;
    fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
    server {
        listen 127.0.0.1:$PN ssl;
        ssl_certificate $work/certs/cert.pem;
        ssl_certificate_key $work/certs/key.pem;
        root $work/www;
    }
    server {
        listen 127.0.0.1:$PA;
        location / { return 200 "ok\n"; }
    }
    include $work/nginx/gated.conf;
}
EOF
"$NGINX" -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)
wait_port "$PN"
wait_port "$PG"

lt() { echo "$PASSWORD" | "$BIN" loadtest --username bench --password-stdin --concurrency "$CLIENTS" \
    --duration "$DUR" --ca "$work/certs/cert.pem" --http1 --json "$@" 2>/dev/null; }
field() { python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(r['$1'])"; }
static=$(lt --mode get --url "https://localhost:$PN/small.txt")
verify=$(lt --mode verify --url "https://localhost:$PC" --target "https://localhost:$PG/app")
# The most readings a target has: letters with accents in the path and the query, each read
# composed, decomposed, without accents and case-folded, with the query's other spellings.
accents=$(lt --mode verify --url "https://localhost:$PC" \
    --target "https://localhost:$PG/caf%C3%A9/%C3%89t%C3%A9?q=%C3%A9l%C3%A8ve+x&y=%C3%BC")
views=$(lt --mode views --url "https://localhost:$PC")
# Long targets, read and judged on the blocking pool one per core at a time: a 4 KB shop filter
# with brackets, spaces and accents in every parameter (the most readings we found in an
# ordinary URL); then signed-in page views while such verifies flood, which the pool keeps off
# the async workers. (A crafted target read too many ways is refused, 400, sooner.)
shop="https://localhost:$PG/caf%C3%A9s?$(python3 -c "print('filter[brand][]=Caf%C3%A9+Noir&' * 125)")"
long=$(lt --mode verify --url "https://localhost:$PC" --target "$shop")
lt --mode verify --url "https://localhost:$PC" --target "$shop" >/dev/null &
flood=$!
views_flooded=$(lt --mode views --url "https://localhost:$PC")
wait "$flood"
: >"$work/verify.log"
gated=$(lt --mode get --url "https://localhost:$PG/app" --sign-in-url "https://localhost:$PC")
echo "nginx static file over TLS:   $(field views_per_sec <<<"$static")/s  p99 $(field p99_ms <<<"$static") ms"
echo "verifies (signed in):         $(field views_per_sec <<<"$verify")/s  p99 $(field p99_ms <<<"$verify") ms  errors $(field errors <<<"$verify")"
echo "verifies, accented target:    $(field views_per_sec <<<"$accents")/s  p99 $(field p99_ms <<<"$accents") ms  errors $(field errors <<<"$accents")"
echo "signed-in page views:         $(field views_per_sec <<<"$views")/s  p99 $(field p99_ms <<<"$views") ms"
echo "verifies, 4 KB shop target:   $(field views_per_sec <<<"$long")/s  p99 $(field p99_ms <<<"$long") ms  errors $(field errors <<<"$long")"
echo "page views, 4 KB verifies on: $(field views_per_sec <<<"$views_flooded")/s  p99 $(field p99_ms <<<"$views_flooded") ms"
echo "gated GETs through nginx:     $(field views_per_sec <<<"$gated")/s  p99 $(field p99_ms <<<"$gated") ms  errors $(field errors <<<"$gated")"
sort -n "$work/verify.log" | awk '{v[NR] = $1} END {
    if (NR == 0) { print "no auth subrequests logged"; exit }
    printf "time in portcullis (nginx):   %d subrequests  p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
        NR, 1000 * v[int(NR * 0.50) + 1], 1000 * v[int(NR * 0.99) + 1], 1000 * v[NR] }'
