# Shared bash functions of the benchmark scripts (scripts/bench-*). Source it,
# do not run it: the script sets `set -euo pipefail`, then
#
#   . "$(dirname "$0")/bench-lib.sh"
#   bench_init NAME           # cd to the repository, $BIN, $work, cleanup trap
#
# Loopback only: every address is 127.0.0.1. Every process is started through
# `bg` or `run`: bounded in lifetime by `timeout` (so even a `kill -9` of the
# script leaves nothing running for long), tracked by PID, and stopped on any
# exit of the script (end, error, Ctrl-C, TERM, HUP). Loops are bounded.
#
# Variables set by bench_init:
#   BIN    the smtptap binary ($SMTPTAP, default target/release/smtptap), copied
#          into $work so that a rebuild during the benchmark changes nothing
#   work   a fresh temporary directory under ${TMPDIR:-/tmp}, removed at exit
#          (BENCH_KEEP=1 keeps it and prints where)
#   LIFE   seconds any process may live (default 900; scripts raise it)
#   extra_dirs  directories outside $work that the script made: removed at exit
# shellcheck shell=bash

bench_init() {
  BENCH_NAME=$1
  cd "$(dirname "${BASH_SOURCE[1]}")/.."
  local bin=${SMTPTAP:-target/release/smtptap}
  [ -x "$bin" ] || { echo "$BENCH_NAME: no smtptap binary at $bin (cargo build --release, or set SMTPTAP)" >&2; exit 2; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/smtptap-$BENCH_NAME.XXXXXX")
  pids=()
  extra_dirs=()   # directories outside $work to remove at exit (recordings)
  LIFE=${LIFE:-900}
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  cp "$(realpath "$bin")" "$work/smtptap"
  BIN=$work/smtptap
  # relays and load tools hold many descriptors: soft limit up to the hard one
  ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
}

bench_cleanup() {
  trap - EXIT INT TERM HUP
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${extra_dirs[@]}"; do rm -rf "$p"; done
  if [ "${BENCH_KEEP:-}" = 1 ]; then
    echo "$BENCH_NAME: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}

# need TOOL...: exit 2 naming the first tool missing
need() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || { echo "$BENCH_NAME: missing tool: $t" >&2; exit 2; }; done
}

# bg NAME LIFE command...: start in the background under `timeout` (TERM after
# LIFE seconds, KILL 3 s after any TERM), output appended to $work/NAME.log;
# sets LAST_PID (the timeout process: our child, the one to stop).
bg() {
  local name=$1 life=$2; shift 2
  timeout -k 3 "$life" "$@" >>"$work/$name.log" 2>&1 &
  LAST_PID=$!
  pids+=("$LAST_PID")
}

# run LIFE LOG command...: run to completion, at most LIFE seconds, output to LOG;
# waited on with `wait`, so Ctrl-C and TERM interrupt it at once. Sets RC (124:
# timed out) and always returns 0 (callers test RC; set -e stays quiet).
run() {
  local life=$1 log=$2 pid; shift 2
  timeout -k 3 "$life" "$@" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  RC=0; wait "$pid" || RC=$?
  forget "$pid"
}

# stop PID: TERM what bg started (timeout passes it on; KILL 3 s later), reap it
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}
forget() {
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
  pids=("${keep[@]}")
}

# child PID: the process `timeout` (PID) runs, once it exists (at most ~2 s)
child() {
  local c _
  for _ in $(seq 40); do
    c=$(pgrep -P "$1" | head -1) && [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.05
  done
  echo "$BENCH_NAME: process $1 started nothing" >&2; return 1
}

# port: a free loopback port below the kernel's ephemeral range, so that the
# connections a run makes can never take it meanwhile
port() {
  python3 - "$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range)" <<'PY'
import random, socket, sys
top = int(sys.argv[1])
base = 20000 if top > 22000 else 10000
for _ in range(200):
    p = random.randrange(base, top)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        sys.exit(0)
    except OSError:
        pass
    finally:
        s.close()
sys.exit(1)
PY
}

# listening PORT: something listens on 127.0.0.1:PORT (or 0.0.0.0), seen in
# /proc/net/tcp without connecting (a connection would make a recording)
listening() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v a="0100007F:$hex" -v b="00000000:$hex" '$4 == "0A" && ($2 == a || $2 == b) {f=1} END {exit !f}' /proc/net/tcp
}

# wait_listen PORT PID NAME: wait (at most 20 s) until PORT listens; fails if
# PID (what bg started) exits first, showing the end of NAME's log
wait_listen() {
  local _
  for _ in $(seq 200); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "$BENCH_NAME: $3 does not listen on 127.0.0.1:$1; its log ends:" >&2
  tail -n 15 "$work/$3.log" >&2 || true
  return 1
}

# start_sink NAME MAXCONN [-c]: Postfix's smtp-sink on a free port -> SINK_PORT,
# SINK_PID (to stop), SINK_PROC (the smtp-sink process). With -c it keeps running
# counters in its log: read them with sink_count NAME.
start_sink() {
  local name=$1 maxconn=$2 opts=()
  [ "${3:-}" = -c ] && opts+=(-c)
  [ "$(id -u)" = 0 ] && opts+=(-u nobody)   # required when run as root
  SINK_PORT=$(port)
  bg "$name" "$LIFE" smtp-sink "${opts[@]}" -m "$maxconn" "127.0.0.1:$SINK_PORT" 4096
  SINK_PID=$LAST_PID
  wait_listen "$SINK_PORT" "$SINK_PID" "$name"
  SINK_PROC=$(child "$SINK_PID")
}
# sink_count NAME: messages a -c sink has received so far
sink_count() {
  { tr '\r' '\n' <"$work/$1.log" | sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1 | grep .; } || echo 0
}
# wait_count NAME N: wait (at most 5 s) until the sink counted N; prints the count
wait_count() {
  local c _
  for _ in $(seq 50); do
    c=$(sink_count "$1"); [ "$c" -ge "$2" ] && break; sleep 0.1
  done
  echo "$c"
}

# start_relay KIND UPSTREAM_PORT [RECDIR [smtptap options...]]: a relay on a free
# port -> RELAY_PORT, RELAY_PID (to stop; empty for direct), RELAY_PROC (the relay
# process, to measure). KIND: direct (nothing started: RELAY_PORT is the
# upstream), haproxy (TCP mode, foreground) or smtptap (proxy, plaintext both
# sides, recording into RECDIR).
start_relay() {
  local kind=$1 up=$2 recdir=${3:-} maxconn
  RELAY_PID="" RELAY_PROC=""
  if [ "$kind" = direct ]; then RELAY_PORT=$up; return 0; fi
  RELAY_PORT=$(port)
  case $kind in
    haproxy)
      # haproxy raises its descriptor limit to about 2 x maxconn: stay under the hard limit
      maxconn=$(ulimit -Hn); [ "$maxconn" = unlimited ] && maxconn=200000
      maxconn=$(( (maxconn - 200) / 2 )); [ "$maxconn" -gt 100000 ] && maxconn=100000
      printf 'global\n  maxconn %s\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\nlisten smtp\n  bind 127.0.0.1:%s\n  server upstream 127.0.0.1:%s\n' \
        "$maxconn" "$RELAY_PORT" "$up" >"$work/haproxy.$RELAY_PORT.cfg"
      bg haproxy "$LIFE" haproxy -db -f "$work/haproxy.$RELAY_PORT.cfg" ;;
    smtptap)
      shift 3
      bg smtptap "$LIFE" "$BIN" proxy --listen "127.0.0.1:$RELAY_PORT" --upstream "127.0.0.1:$up" \
        --client-tls off --upstream-tls off --record-dir "$recdir" --ca-dir "$work/ca" "$@" ;;
    *) echo "$BENCH_NAME: unknown relay $kind" >&2; return 2 ;;
  esac
  RELAY_PID=$LAST_PID
  wait_listen "$RELAY_PORT" "$RELAY_PID" "$kind"
  RELAY_PROC=$(child "$RELAY_PID")
}
stop_relay() {
  [ -n "$RELAY_PID" ] && stop "$RELAY_PID"
  RELAY_PID="" RELAY_PROC=""
}

# cpu_ticks PID: user + system time of the process (all its threads), clock ticks
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
CLK_TCK=$(getconf CLK_TCK)
# status_kib PID FIELD: VmRSS, VmHWM... of the process, in KiB
status_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# host_busy: clock ticks the whole machine has been busy since boot
host_busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# settle: wait, at most about 1 s, for the machine to go nearly idle (under 15%
# of one core over 0.2 s), so that a run's aftermath does not spill into the next
settle() {
  local _ a b
  for _ in 1 2 3 4 5; do
    a=$(host_busy); sleep 0.2; b=$(host_busy)
    [ $(( (b - a) * 500 / CLK_TCK )) -lt 15 ] && return 0
  done
  return 0
}

# median: of the numbers on stdin, one per line or separated by spaces ("nan" if none)
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# ratio A B: A/B to 3 decimals ("nan" when either is missing or B is 0)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || b=="nan" || a=="" || b=="" || b+0==0) print "nan"; else printf "%.3f", a/b }'; }
# paired A B: median of A[i]/B[i] over two space-separated lists of per-run figures
paired() {
  awk -v a="$1" -v b="$2" 'BEGIN{n=split(a,x," "); split(b,y," "); for (i=1;i<=n;i++) if (y[i]+0 > 0) print x[i]/y[i]}' | median |
    awk '{ if ($1 == "nan") print; else printf "%.3f\n", $1 }'
}
# elapsed T0 T1: seconds between two `date +%s.%N`
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
# posint NAME VALUE: a knob must be a positive integer
posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "$BENCH_NAME: $1 must be a positive integer (got '$2')" >&2; exit 2; }; }
