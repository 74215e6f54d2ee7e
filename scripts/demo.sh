#!/usr/bin/env bash
# The main job, visibly: builds peergroup, starts a peergroup-server on loopback, and has
# two peergroup clients (alice and bob) join one room and exchange sequenced messages over
# QUIC: through the server's relay at first, then directly once hole punching succeeds (the
# "path" lines). Each client prints its JSON lines (see `peergroup probe --help`); the
# summaries show every message arrived exactly once, in order, across the switch.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p peergroup-cli --bins
bin=target/debug
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/peergroup-server" --listen 127.0.0.1:0 --identity-dir "$work/identity" --log warn \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^listening on' "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
line=$(grep '^listening on' "$work/server.out") || { cat "$work/server.log"; exit 1; }
echo "server: $line"
addr=$(echo "$line" | awk '{print $3}')
cert=$(echo "$line" | awk '{print $7}')

probe() {
  "$bin/peergroup" probe --server "$addr" --server-cert "$cert" --room demo --name "$1" \
    --count 20 --rate 10 --duration 3 --expect-peers 1 | sed "s/^/$1: /"
}
probe alice & alice=$!
probe bob & bob=$!
status=0
wait "$alice" || status=1
wait "$bob" || status=1
if [ "$status" = 0 ]; then echo "demo: both clients received every message exactly once"; fi
exit "$status"
