#!/usr/bin/env bash
# Start the fl_vmix SuperLink: TLS on its one HTTPS port (Fleet, Control and Runtime APIs) and SuperNode
# authentication (only SuperNodes whose public key was registered may connect).
#
#   CERT_DIR=certs HOST=0.0.0.0 PORT=8000 scripts/deploy/start_superlink.sh [more flower-superlink flags]
#
# CERT_DIR  folder written by `python -m fl_vmix.deploy certs --out CERT_DIR --hosts <this host's name/IP>`
#           (ca.pem, server.pem, server.key); the certificate must name the address SuperNodes dial.
# HOST      address to bind (default 0.0.0.0: all interfaces; 127.0.0.1 for loopback only).
# PORT      the SuperLink's port (default 8000); open it in the firewall for SuperNodes and `flwr run`.
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
HOST=${HOST:-0.0.0.0}
PORT=${PORT:-8000}
for file in ca.pem server.pem server.key; do
  [[ -f "$CERT_DIR/$file" ]] || die "$CERT_DIR/$file is missing: create it with python -m fl_vmix.deploy certs --out $CERT_DIR --hosts <this host>"
done
"$PYTHON" -m fl_vmix.deploy check-certs --ca-cert "$CERT_DIR/ca.pem" --cert "$CERT_DIR/server.pem" --key "$CERT_DIR/server.key" >&2 || exit 2

args=(--ssl-ca-certfile "$CERT_DIR/ca.pem" --ssl-certfile "$CERT_DIR/server.pem" --ssl-keyfile "$CERT_DIR/server.key"
      --enable-supernode-auth --host "$HOST" --port "$PORT")
[[ -n "${DATABASE:-}" ]] && args+=(--database "$DATABASE")
exec flower-superlink "${args[@]}" "$@"
