#!/usr/bin/env bash
# Writes the first corpus of the decoder targets from the golden-byte tests
# (protocol/tests/golden.rs): real encodings of every message variant, each prefixed with
# the `wire` target's selector byte, the probes for `probe`, and the stream frames, with
# their length prefixes, for `frames`. Run it after a wire format change, then minimise
# the corpora (fuzz/README.md). The other targets' corpora come from fuzzing alone.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
PEERGROUP_FUZZ_SEEDS="$seeds" cargo test -q -p peergroup-protocol --test golden >/dev/null

python3 - "$seeds" fuzz/corpus <<'PY'
import os, struct, sys
seeds, corpus = sys.argv[1], sys.argv[2]
# The `wire` target's first byte picks the decoder (see fuzz_targets/wire.rs).
selectors = {
    "ClientToServer": [0, 5], "ServerToClient": [1], "PeerToPeer": [2],
    "ClientDatagram": [3], "ServerDatagram": [4], "RoomsRequest": [6], "RoomsReply": [7],
}
def write(target, name, data):
    os.makedirs(os.path.join(corpus, target), exist_ok=True)
    with open(os.path.join(corpus, target, "golden-" + name), "wb") as f:
        f.write(data)
def bodies(kind):
    path = os.path.join(seeds, kind)
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        yield name, open(os.path.join(path, name), "rb").read()
stream = b""
for kind, sels in selectors.items():
    for name, body in bodies(kind):
        for sel in sels:
            write("wire", f"{sel}-{kind}-{name}", bytes([sel]) + body)
        if kind in ("ClientToServer", "ServerToClient", "PeerToPeer"):
            stream += struct.pack(">I", len(body)) + body
# A hello of this version and of others, as the server's first frame reader sees it.
for name, body in bodies("Hello"):
    write("wire", f"5-Hello-{name}", bytes([5, 0]) + body)
for name, body in bodies("Probe"):
    write("probe", name, body)
# Every frame in a row, read with the largest maximum in push sizes 1, 5 and 64, and
# then with a maximum the largest frames exceed.
write("frames", "all-frames", b"\xff\xff\x03\x01\x05\x40" + stream)
write("frames", "all-frames-small-max", b"\x00\x40\x01\x0d" + stream)
PY
echo "seeded fuzz/corpus/{wire,probe,frames}"
