#!/usr/bin/env bash
# The main job across real NATs (needs root, iproute2 and iptables): builds network
# namespaces with two port-restricted-cone NAT routers, runs a peergroup-server on the
# lab's public network and a peergroup client behind each NAT, and prints each client's
# timeline: connected, joined, path "relay" from the first moment, path "direct" once
# hole punching succeeds (at_ms counts from the client's start), and the summary.
# A second scenario puts the clients behind symmetric NATs, where they stay on the relay.
# The namespaces are removed afterwards, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "nat-demo needs root (network namespaces)" >&2; exit 1; fi
command -v ip >/dev/null && command -v iptables >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables >/dev/null
}
for scenario in port_restricted_x_port_restricted symmetric_x_symmetric_stays_on_the_relay; do
  NATLAB_SHOW=1 cargo test --quiet -p peergroup --test nat_lab -- --exact "$scenario" --nocapture \
    | grep -E '^(NATLAB RESULT|.* \| client)' | sed 's/^NATLAB RESULT/result:/'
done
