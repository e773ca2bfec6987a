#!/usr/bin/env bash
# Start the fl_vmix SuperLink: TLS on its one HTTPS port (Fleet, Control and Runtime APIs), SuperNode
# authentication (only SuperNodes whose public key was registered may connect), bound to loopback.
#
#   CERT_DIR=certs PORT=9093 scripts/deploy/start_superlink.sh [more flower-superlink flags]
#   CERT_DIR=certs LISTEN=0.0.0.0:8000 UPSTREAM=127.0.0.1:9093 scripts/deploy/start_gateway.sh   # for SuperNodes
#
# Flower's open-source Control API (flwr run, flwr supernode register/unregister, flwr stop) authenticates no
# one, so whoever reaches this port can submit code that every SuperNode runs. It therefore listens on
# 127.0.0.1 only: the operator drives the federation from this host (or through `ssh -L PORT:127.0.0.1:PORT`);
# SuperNodes reach the Fleet API through start_gateway.sh, which forwards nothing else.
#
# CERT_DIR  folder written by `python -m fl_vmix.deploy certs --out CERT_DIR --hosts <this host's name/IP>`
#           (ca.pem, server.pem, server.key); the certificate must name the address SuperNodes dial.
# HOST      address to bind (default 127.0.0.1). Anything else exposes the Control API to the network and is
#           refused unless EXPOSE_CONTROL_API=1 (for a network where every host that can reach it may run code
#           on every SuperNode).
# PORT      the SuperLink's port (default 9093); the operator's flwr connection uses 127.0.0.1:PORT.
# DATABASE  optional SQLite file for the SuperLink's state, so registered SuperNodes survive a restart
#           (default: in memory; registrations are lost when the SuperLink stops).
# FLWR_HOME where the SuperLink installs app bundles (default ~/.flwr).
# PYTHON    interpreter of the environment with fl_vmix installed (default: python on PATH).
#
# The certificates are checked first (expired, not yet valid, not signed by ca.pem, key mismatch), so a
# bad pair fails here with the fix instead of as TLS errors on every SuperNode. The script execs
# flower-superlink: its PID is the SuperLink's; stop it with `kill <pid>` (SIGTERM).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=_env.sh
source "$HERE/_env.sh"

CERT_DIR=${CERT_DIR:?set CERT_DIR to the folder written by: python -m fl_vmix.deploy certs --out CERT_DIR --hosts <this host>}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-9093}
case "$HOST" in
  127.0.0.1|localhost|::1) ;;
  *) [[ "${EXPOSE_CONTROL_API:-0}" == 1 ]] || die "HOST=$HOST would serve Flower's unauthenticated Control API to the" \
       "network: anyone reaching it with ca.pem could register SuperNodes and run code on every SuperNode. Keep the" \
       "default HOST=127.0.0.1 and start scripts/deploy/start_gateway.sh for the SuperNodes (set EXPOSE_CONTROL_API=1" \
       "only if every host on that network may drive the federation)";;
esac
for file in ca.pem server.pem server.key; do
  [[ -f "$CERT_DIR/$file" ]] || die "$CERT_DIR/$file is missing: create it with python -m fl_vmix.deploy certs --out $CERT_DIR --hosts <this host>"
done
"$PYTHON" -m fl_vmix.deploy check-certs --ca-cert "$CERT_DIR/ca.pem" --cert "$CERT_DIR/server.pem" --key "$CERT_DIR/server.key" >&2 || exit 2

args=(--ssl-ca-certfile "$CERT_DIR/ca.pem" --ssl-certfile "$CERT_DIR/server.pem" --ssl-keyfile "$CERT_DIR/server.key"
      --enable-supernode-auth --host "$HOST" --port "$PORT")
[[ -n "${DATABASE:-}" ]] && args+=(--database "$DATABASE")
exec flower-superlink "${args[@]}" "$@"
