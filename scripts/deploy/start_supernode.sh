#!/usr/bin/env bash
# Start one fl_vmix SuperNode (one per data owner, on the owner's host): TLS to the SuperLink's gateway,
# authenticated with its own key pair, and its node config pointing at its own data folder and VisualMixer key.
#
#   python -m fl_vmix.deploy keygen client-0/client.key        # once, on this host: the owner's key
#   python -m fl_vmix.deploy auth-keys --out auth --n 1         # once: send auth/supernode-0.pub to the operator
#   SUPERLINK=10.0.0.5:8000 CA_CERT=ca.pem AUTH_KEY=auth/supernode-0 DATA_PATH=client-0 \
#     CLIENTAPPIO_PORT=9094 scripts/deploy/start_supernode.sh [more flower-supernode flags]
#
# SUPERLINK        the gateway's HOST:PORT (start_gateway.sh's LISTEN), as named in the SuperLink certificate.
# CA_CERT          ca.pem from the operator (verifies the SuperLink).
# AUTH_KEY         this node's private key from `python -m fl_vmix.deploy auth-keys`, created on this host (the
#                  operator gets only its .pub and registers it: scripts/deploy/register_supernodes.sh).
# DATA_PATH        this node's folder from the operator's `python -m fl_vmix.deploy export` (data.npz, meta.json).
# KEY_FILE         its VisualMixer key (default DATA_PATH/client.key), created on this host with `python -m
#                  fl_vmix.deploy keygen`; no one else has it. The ClientApp reads it from the node config, never
#                  from the run config. The ClientApp is code the operator submits and runs with this script's
#                  rights, so it could read the key: see "Who can do what" in the README.
# TRUSTED_ENTITIES optional YAML file of Ed25519 keys ({fpk_id: 'ssh-ed25519 ...'}) for flower-supernode
#                  --trusted-entities: the node then runs only apps whose Flower Hub review is signed by one of
#                  them and refuses every other (an app sent with `flwr run .`, as fl_vmix is, carries no signature).
# CLIENTAPPIO_PORT the SuperNode's local port for its ClientApp processes (default 9094); every SuperNode
#                  on the same host needs its own.
# ACTIVATION_WAIT_S how long to retry when the SuperLink refuses to activate the node (default 150 s):
#                  after a crash the SuperLink takes about 60 s (2 missed heartbeats) to let the node back in.
# PYTHON           interpreter of the environment with fl_vmix installed (default: python on PATH).
#
# `python -m fl_vmix.deploy check-node` runs first: a missing/unreadable data folder or key, a bad auth
# key, an expired CA or a SuperLink whose certificate is not trusted stop the script with the fix
# (exit 2). A SuperLink that is not up yet is only a warning: the SuperNode keeps retrying.
# Signals (TERM, INT, HUP) are passed on to flower-supernode; the script exits with its status.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=_env.sh
source "$HERE/_env.sh"

SUPERLINK=${SUPERLINK:?set SUPERLINK to the SuperLink HOST:PORT}
CA_CERT=${CA_CERT:?set CA_CERT to the ca.pem that signed the SuperLink certificate}
AUTH_KEY=${AUTH_KEY:?set AUTH_KEY to this SuperNode private key (python -m fl_vmix.deploy auth-keys)}
DATA_PATH=${DATA_PATH:?set DATA_PATH to this node client-<i> folder (python -m fl_vmix.deploy export)}
KEY_FILE=${KEY_FILE:-$DATA_PATH/client.key}
CLIENTAPPIO_PORT=${CLIENTAPPIO_PORT:-9094}
trust=()
if [[ -n "${TRUSTED_ENTITIES:-}" ]]; then
  [[ -f "$TRUSTED_ENTITIES" ]] || die "TRUSTED_ENTITIES=$TRUSTED_ENTITIES does not exist: give a YAML file {fpk_id: 'ssh-ed25519 ...'} or unset it"
  trust=(--trusted-entities "$TRUSTED_ENTITIES")
fi

node_config=$("$PYTHON" -m fl_vmix.deploy check-node --data-path "$DATA_PATH" --key-file "$KEY_FILE" \
  --auth-key "$AUTH_KEY" --ca-cert "$CA_CERT" --superlink "$SUPERLINK" --print-node-config) || exit 2
echo "$(basename "$0"): node config: $node_config" >&2

# Flower exits (with status 1) after printing "Exit Code: 305" when the SuperLink refuses to activate the
# node: its key is not registered, or the SuperLink still counts an earlier instance of this node as
# online (after a crash it notices only when 2 heartbeats, about 60 s, are missed). The output passes
# through watch_output, which notes that line; then the script retries for ACTIVATION_WAIT_S seconds.
ACTIVATION_WAIT_S=${ACTIVATION_WAIT_S:-150}
deadline=$((SECONDS + ACTIVATION_WAIT_S))
refused=$(mktemp "${TMPDIR:-/tmp}/fl_vmix_supernode.XXXXXX")
child=""
stopping=0
trap 'stopping=1; [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
trap 'rm -f "$refused"' EXIT
watch_output() {
  trap '' INT TERM HUP  # ends at end of input, after flower-supernode has written its last line
  while IFS= read -r line; do
    printf '%s\n' "$line"
    [[ $line == *"Exit Code: 305"* ]] && : > "$refused"
  done
}
set +e
while true; do
  rm -f "$refused"
  exec {out}> >(watch_output)
  watcher=$!
  flower-supernode --root-certificates "$CA_CERT" --superlink "$SUPERLINK" --auth-supernode-private-key "$AUTH_KEY" \
    --port "$CLIENTAPPIO_PORT" --node-config "$node_config" "${trust[@]}" "$@" >&"$out" 2>&1 &
  child=$!
  exec {out}>&-
  wait "$child"; status=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done  # a trapped signal interrupts wait
  child=""
  wait "$watcher"
  [[ -e "$refused" && $stopping -eq 0 ]] || break
  if (( SECONDS >= deadline )); then
    echo "$(basename "$0"): the SuperLink refused this SuperNode (Exit Code 305) for ${ACTIVATION_WAIT_S} s. With" \
         "--enable-supernode-auth this means its public key ${AUTH_KEY}.pub is not registered: run" \
         "scripts/deploy/register_supernodes.sh <connection> ${AUTH_KEY}.pub where the flwr connection lives, then start" \
         "this SuperNode again. (Or another SuperNode with the same key is online: use one key per SuperNode.)" >&2
    break
  fi
  echo "$(basename "$0"): the SuperLink refused activation (Exit Code 305); a restarted node is let back in once the" \
       "SuperLink marks its previous instance offline (about 60 s after a crash); retrying in 10 s" >&2
  sleep 10 & child=$!
  wait "$child"; child=""
  (( stopping )) && { status=143; break; }
done
exit "$status"
