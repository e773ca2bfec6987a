#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs with --enable-supernode-auth.
#
#   scripts/deploy/register_supernodes.sh fl-vmix auth/supernode-0.pub auth/supernode-1.pub ...
#
# Runs on the SuperLink host (the operator's): the Control API listens on 127.0.0.1 only, so the flwr
# connection is `python -m fl_vmix.deploy connection --name fl-vmix --address 127.0.0.1:9093 --root-cert ca.pem`
# (or a `ssh -L 9093:127.0.0.1:9093` tunnel from the operator's machine). Each .pub comes from its data owner,
# who created the key pair on its own host (`python -m fl_vmix.deploy auth-keys --out auth --n 1`).
# Prints one "<key.pub> <node-id>" line per key. A key that is already registered is reported and
# skipped (exit status stays 0); any other failure exits 2. `flwr supernode list fl-vmix` shows them.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=_env.sh
source "$HERE/_env.sh"

[[ $# -ge 2 ]] || die "usage: $0 <connection> <key.pub>..."
connection=$1; shift
for pub in "$@"; do
  [[ -f "$pub" ]] || die "$pub does not exist: the data owner creates it on its host with python -m fl_vmix.deploy auth-keys --out <dir> --n 1 and sends you the .pub"
  out=$(flwr supernode register "$pub" "$connection" --format json 2>&1) || true
  if node_id=$(printf '%s' "$out" | "$PYTHON" -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("{"):]); print(d["node-id"]) if d.get("success") else sys.exit(1)' 2>/dev/null); then
    echo "$pub $node_id"
  elif printf '%s' "$out" | grep -qi "already"; then
    echo "$pub already registered" >&2
  else
    die "registering $pub failed: $out"
  fi
done
