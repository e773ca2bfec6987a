#!/usr/bin/env bash
# Start the SuperLink's public gateway: HTTPS on LISTEN, forwarding only the Fleet API (SuperNodes' calls,
# each signed with a registered SuperNode key) and GET /health to the SuperLink on loopback. Control API
# calls (flwr run, flwr supernode register) and Runtime API calls get 403 here: they work only on the
# SuperLink host itself. Run it on the SuperLink host next to scripts/deploy/start_superlink.sh.
#
#   CERT_DIR=certs LISTEN=0.0.0.0:8000 UPSTREAM=127.0.0.1:9093 scripts/deploy/start_gateway.sh
#
# CERT_DIR  the SuperLink's certificate folder (ca.pem, server.pem, server.key): the gateway presents the same
#           certificate, so it must name the address SuperNodes dial (certs --hosts ...).
# LISTEN    public HOST:PORT (default 0.0.0.0:8000); open this port (only) in the firewall for SuperNodes.
# UPSTREAM  the SuperLink's loopback HOST:PORT (default 127.0.0.1:9093, start_superlink.sh's default).
# PYTHON    interpreter of the environment with fl_vmix installed (default: python on PATH).
#
# The script execs the gateway: its PID is the gateway's; stop it with `kill <pid>` (SIGTERM).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=_env.sh
source "$HERE/_env.sh"

CERT_DIR=${CERT_DIR:?set CERT_DIR to the SuperLink certificate folder (python -m fl_vmix.deploy certs --out CERT_DIR)}
LISTEN=${LISTEN:-0.0.0.0:8000}
UPSTREAM=${UPSTREAM:-127.0.0.1:9093}
for file in ca.pem server.pem server.key; do
  [[ -f "$CERT_DIR/$file" ]] || die "$CERT_DIR/$file is missing: create it with python -m fl_vmix.deploy certs --out $CERT_DIR --hosts <this host>"
done
"$PYTHON" -m fl_vmix.deploy check-certs --ca-cert "$CERT_DIR/ca.pem" --cert "$CERT_DIR/server.pem" --key "$CERT_DIR/server.key" >&2 || exit 2
exec "$PYTHON" -m fl_vmix.deploy gateway --listen "$LISTEN" --upstream "$UPSTREAM" --cert-dir "$CERT_DIR"
