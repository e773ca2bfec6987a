#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs with --enable-supernode-auth.
#
#   scripts/deploy/register_supernodes.sh fl-vmix auth/supernode-0.pub auth/supernode-1.pub ...
#
# Runs where the flwr connection lives ($FLWR_HOME/config.toml, written by
# `python -m fl_vmix.deploy connection --name fl-vmix --address HOST:PORT --root-cert ca.pem`).
# Prints one "<key.pub> <node-id>" line per key. A key that is already registered is reported and
# skipped (exit status stays 0); any other failure exits 2. `flwr supernode list fl-vmix` shows them.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=_env.sh
source "$HERE/_env.sh"

[[ $# -ge 2 ]] || die "usage: $0 <connection> <key.pub>..."
connection=$1; shift
for pub in "$@"; do
  [[ -f "$pub" ]] || die "$pub does not exist: create keys with python -m fl_vmix.deploy auth-keys --out <dir> --n <N>"
  out=$(flwr supernode register "$pub" "$connection" --format json 2>&1) || true
  if node_id=$(printf '%s' "$out" | "$PYTHON" -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("{"):]); print(d["node-id"]) if d.get("success") else sys.exit(1)' 2>/dev/null); then
    echo "$pub $node_id"
  elif printf '%s' "$out" | grep -qi "already"; then
    echo "$pub already registered" >&2
  else
    die "registering $pub failed: $out"
  fi
done
