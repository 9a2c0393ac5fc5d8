#!/usr/bin/env bash
# The proxy bench: molt and nginx as reverse proxies in front of the same
# backend, with the same number of workers, measured by wrk in alternating
# rounds (A B A B ...). molt runs a chain of three modules on the route
# (rate_limit, header_rewrite, router); nginx does the equivalent work in its
# own config (adds a request and a response header, keep-alive upstream pool).
#
#   benches/proxy/run.sh [--rounds N] [--duration S] [--connections C] [--workers W]
#                        [--no-modules | --direct] [--count]
#
# --count, instead of the rounds, counts what molt does per request at one
# connection (wrk -c1 for --duration seconds; with --connections C, at C):
# malloc calls (a perf uprobe on libc's malloc), epoll_wait calls and all
# system calls, from `perf stat -p` on the molt process, divided by the
# requests wrk made.
#
# --no-modules runs molt's route without its module chain (and nginx without
# the extra headers): the proxy core alone, to see what the chain costs.
# --direct measures answering without an upstream: molt's chain is the
# built-in default's (rate_limit, header_rewrite, hello answering), nginx
# answers the same body with `return 200` and `add_header`.
#
# At the end it prints how molt's listener spread the requests over its
# workers (from `molt ctl metrics`).
#
# Installs wrk and nginx from Debian when missing (apt-get; needs root or
# sudo). Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail

ROUNDS=3 DURATION=10 CONNS=64 WORKERS=1 CHAIN='"rate_limit", "header_rewrite", "router"'
NGX_EXTRA='proxy_set_header X-Proxy molt-bench; add_header X-Served-By nginx;'
MODE=proxy COUNT=0 COUNT_CONNS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; COUNT_CONNS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --no-modules) CHAIN=''; NGX_EXTRA=''; shift ;;
    --direct) MODE=direct; CHAIN='"rate_limit", "header_rewrite", "hello"'; shift ;;
    --count) COUNT=1; shift ;;
    *) echo "usage: $0 [--rounds N] [--duration S] [--connections C] [--workers W] [--no-modules | --direct] [--count]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
ROOT=$PWD

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "installing ${need[*]} from Debian" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --workspace --quiet
BIN=$ROOT/target/release

WORK=$(mktemp -d /tmp/molt-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

BACKEND=127.0.0.1:18500 MOLT=127.0.0.1:18501 NGX=127.0.0.1:18502

# The backend: nginx answering a fixed 64-byte body, one worker, keep-alive.
mkdir -p "$WORK/backend" "$WORK/nginx"
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/backend/tmp;
  server {
    listen $BACKEND;
    location / { return 200 "0123456789012345678901234567890123456789012345678901234567890123"; }
  }
}
CONF
"$NGINX" -c "$WORK/backend/nginx.conf" -p "$WORK/backend" &
PIDS+=($!)

# nginx as the reverse proxy (or, --direct, answering itself).
if [ "$MODE" = direct ]; then
  NGX_LOCATION='add_header X-Served-By nginx; return 200 "hello from hello 1.0.0\n";'
  MOLT_UPSTREAM=''
else
  NGX_LOCATION="proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; $NGX_EXTRA"
  MOLT_UPSTREAM='upstream = "backend"'
fi
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx/tmp;
  proxy_temp_path $WORK/nginx/ptmp;
  upstream backend { server $BACKEND; keepalive 128; }
  server {
    listen $NGX;
    location / {
      $NGX_LOCATION
    }
  }
}
CONF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)

# molt as the reverse proxy, with a three-module chain.
cat >"$WORK/molt.toml" <<CONF
[runtime]
workers = $WORKERS
run_dir = "$WORK/run"
state_file = "$WORK/state.molt"
state_size_mb = 8

[[modules]]
name = "rate_limit"
path = "$BIN/librate_limit.so"
[modules.config]
rate = 1000000
burst = 200000

[[modules]]
name = "header_rewrite"
path = "$BIN/libheader_rewrite.so"
[modules.config]
"request.set.X-Proxy" = "molt-bench"
"response.set.X-Served-By" = "molt"

[[modules]]
name = "router"
path = "$BIN/librouter.so"
[modules.config]
default = "backend"

[[modules]]
name = "hello"
path = "$BIN/libhello.so"

[[http]]
listen = "$MOLT"
[http.upstreams]
backend = ["$BACKEND"]
[[http.routes]]
path = "/"
$MOLT_UPSTREAM
modules = [$CHAIN]
CONF
"$BIN/molt" run --config "$WORK/molt.toml" >"$WORK/molt.log" 2>&1 &
PIDS+=($!)

for addr in $BACKEND $MOLT $NGX; do
  for _ in $(seq 100); do curl -sf "http://$addr/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://$addr/" >/dev/null || { echo "nothing answers on $addr" >&2; cat "$WORK/molt.log" >&2; exit 1; }
done
if [ -n "$CHAIN" ]; then
  curl -si "http://$MOLT/" | grep -qi "X-Served-By: molt" || { echo "molt's module chain did not run" >&2; exit 1; }
fi

if [ "$COUNT" = 1 ]; then
  # count LABEL BINARY PIDS ADDR: malloc, epoll_wait and all syscalls of
  # PIDS (comma-separated) per request wrk made to ADDR.
  count() {
    local label=$1 bin=$2 pids=$3 addr=$4 stat reqs
    perf probe -q -x "$(ldd "$bin" | awk '/libc.so/ {print $3}')" malloc 2>/dev/null || true
    perf stat -x, -o "$WORK/stat-$label.txt" -e probe_libc:malloc -e syscalls:sys_enter_epoll_wait \
      -e raw_syscalls:sys_enter -p "$pids" -- sleep "$((DURATION + 1))" &
    stat=$!
    sleep 0.5
    if [ "$label" = molt ] && [ -n "${MALLOC_STACKS:-}" ]; then
      # Where the mallocs come from: call graphs into $MALLOC_STACKS (perf report -i ...).
      perf record -q --call-graph dwarf,16384 -e probe_libc:malloc -o "$MALLOC_STACKS" -p "$pids" -- sleep 1 >/dev/null 2>&1 &
    fi
    reqs=$(wrk -t1 -c"$COUNT_CONNS" -d"${DURATION}s" "http://$addr/" | awk '/requests in/ {print $1}')
    wait "$stat"
    echo "$label per request at $COUNT_CONNS connection(s) ($reqs requests in ${DURATION}s):"
    awk -F, -v n="$reqs" '$3 ~ /malloc/ {printf "  malloc       %.2f\n", $1/n}
                          $3 ~ /epoll_wait/ {printf "  epoll_wait   %.2f\n", $1/n}
                          $3 ~ /raw_syscalls/ {printf "  syscalls     %.2f\n", $1/n}' "$WORK/stat-$label.txt"
  }
  echo "molt's modules: [${CHAIN:-none}]"
  count molt "$BIN/molt" "${PIDS[-1]}" "$MOLT"
  # nginx's proxy workers (the master's children), the same way.
  NPIDS=$(pgrep -d, -P "${PIDS[1]}" || true)
  [ -n "$NPIDS" ] && count nginx "$NGINX" "$NPIDS" "$NGX"
  exit 0
fi

# wrk's --latency output -> "rps p50_us p99_us"
measure() {
  local out
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://$1/")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local errs
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -n "$errs" ] && echo "  ($1: $errs)" >&2
  echo "$rps $(to_us "$p50") $(to_us "$p99")"
}
to_us() {
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

echo "proxy bench: $(nproc) CPUs ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')), kernel $(uname -r)"
echo "mode $MODE, molt modules: [${CHAIN:-none}]"
echo "workers $WORKERS each, wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds A(molt) B(nginx), backend nginx (1 worker, 64-byte body)"
printf '%-6s %12s %10s %10s   %12s %10s %10s   %8s %8s\n' round molt_rps p50_us p99_us nginx_rps p50_us p99_us rps_x p99_x
RATIOS=() P99S=()
for r in $(seq "$ROUNDS"); do
  read -r mr m50 m99 < <(measure "$MOLT")
  read -r nr n50 n99 < <(measure "$NGX")
  rx=$(awk -v a="$mr" -v b="$nr" 'BEGIN {printf "%.3f", a/b}')
  px=$(awk -v a="$m99" -v b="$n99" 'BEGIN {printf "%.3f", a/b}')
  RATIOS+=("$rx") P99S+=("$px")
  printf '%-6s %12s %10s %10s   %12s %10s %10s   %8s %8s\n' "$r" "$mr" "$m50" "$m99" "$nr" "$n50" "$n99" "$rx" "$px"
done
echo "rps_x: molt req/s over nginx's (higher is better for molt); p99_x: molt p99 over nginx's (lower is better)"
# The summary the docs quote: geometric means over the rounds, and ranges.
summary() {
  printf '%s\n' "$@" | awk '{ l += log($1); n++; if (n == 1 || $1 < lo) lo = $1; if (n == 1 || $1 > hi) hi = $1 }
    END { printf "%.3f (%.3f-%.3f)", exp(l / n), lo, hi }'
}
echo "geomean over $ROUNDS rounds: rps_x $(summary "${RATIOS[@]}"), p99_x $(summary "${P99S[@]}")"
# How molt's SO_REUSEPORT listeners spread the requests over its workers.
"$BIN/molt" ctl metrics --socket "$WORK/run/ctl.sock" 2>/dev/null |
  awk '/^molt_http_requests_total/ { split($1, a, "\""); n[a[2]] = $2; t += $2 }
       END { if (t > 0) { printf "molt requests per worker:"; for (w in n) printf " worker %s %.1f%%", w, 100 * n[w] / t; print "" } }'
