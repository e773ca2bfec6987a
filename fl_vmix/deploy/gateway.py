"""The SuperLink's public face: a TLS reverse proxy that passes only the Fleet API on.

Flower 1.42 serves its Fleet (SuperNodes), Control (``flwr run``, ``flwr supernode register``) and
Runtime (ServerApp) APIs on one HTTPS port, and the open-source Control API authenticates no one (its
only account plugin, OIDC, is in Flower Enterprise). Whoever reaches that port with the CA certificate
(every data owner has it) could register a SuperNode key or submit a run whose ClientApp then runs on
every SuperNode. So ``scripts/deploy/start_superlink.sh`` binds the SuperLink to 127.0.0.1 and
``scripts/deploy/start_gateway.sh`` runs this proxy on the public address: it forwards ``/v1/fleet/...``
(every Fleet call is signed by a registered SuperNode key, which the SuperLink checks) and ``GET /health``
to the SuperLink, and answers everything else with 403 without contacting it. Control and Runtime calls
therefore come only from processes on the SuperLink host (the operator, and the ServerApp Flower starts).

It is built from Flower's own dependencies: uvicorn serves TLS with the SuperLink's certificate, httpx
talks TLS to the loopback SuperLink and verifies it with the same CA.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fl_vmix.runtime.connection import split_address

FLEET_PREFIX = "/v1/fleet/"
HEALTH_PATH = "/health"
# Hop-by-hop headers (RFC 9110 section 7.6.1) and those httpx recomputes for the forwarded body.
_DROP_REQUEST = {"host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
REFUSED = (
    "this address serves only the Fleet API (SuperNodes). The Control API (flwr run, flwr supernode register) "
    "listens on the SuperLink host's loopback address only: run flwr there, or through `ssh -L` to it"
)


class GatewayError(ValueError):
    """A gateway setting that cannot work; says how to fix it."""


def allowed(method: str, path: str) -> bool:
    """Only the Fleet API and the health probe pass; the Control and Runtime APIs never do."""
    if path == HEALTH_PATH:
        return method in ("GET", "HEAD")
    # A path like /v1/fleet/../control/start-run is normalised by no one before the SuperLink routes it
    # literally, but refuse it anyway so the rule never depends on the upstream's routing.
    return method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path and "//" not in path


def create_app(client: httpx.AsyncClient) -> Starlette:
    """The proxy as an ASGI app; ``client`` has the SuperLink as its base URL."""

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not allowed(request.method, path):
            return JSONResponse({"detail": f"{request.method} {path} refused: {REFUSED}"}, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST]
        try:
            upstream = await client.request(
                request.method,
                path,
                params=request.url.query or None,
                headers=headers,
                content=await request.body(),
            )
        except httpx.TransportError as err:
            return JSONResponse(
                {"detail": f"the SuperLink behind this gateway is unreachable ({type(err).__name__}: {err})"},
                status_code=502,
            )
        out = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _DROP_RESPONSE]
        response = Response(content=upstream.content, status_code=upstream.status_code)
        response.raw_headers = [
            *[(k.encode("latin-1"), v.encode("latin-1")) for k, v in out],
            (b"content-length", str(len(upstream.content)).encode()),
        ]
        return response

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def upstream_client(upstream: str, ca_cert: Path, timeout_s: float = 300.0) -> httpx.AsyncClient:
    """An httpx client for the loopback SuperLink, verifying its certificate with ``ca_cert``."""
    host, port = split_address(upstream)
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise GatewayError(
            f"upstream {upstream!r} is not a loopback address: the SuperLink behind the gateway must listen on "
            "127.0.0.1 only (start_superlink.sh's default), or its Control API is open to the network again"
        )
    if not Path(ca_cert).is_file():
        raise GatewayError(f"CA certificate {ca_cert} does not exist: use the certs folder of start_superlink.sh")
    context = ssl.create_default_context(cafile=str(ca_cert))
    return httpx.AsyncClient(
        base_url=f"https://{host}:{port}",
        verify=context,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
    )


def serve(listen: str, upstream: str, cert_dir: Path) -> None:
    """Run the gateway until SIGTERM/SIGINT: TLS with ``cert_dir``'s server.pem on ``listen``."""
    import uvicorn

    from fl_vmix.deploy.tls import CA_CERT, SERVER_CERT, SERVER_KEY

    host, port = split_address(listen)
    if split_address(upstream)[1] == port and host in ("0.0.0.0", "::"):
        raise GatewayError(f"listen {listen} and upstream {upstream} share port {port}: give them different ports")
    client = upstream_client(upstream, cert_dir / CA_CERT)
    uvicorn.run(
        create_app(client),
        host=host,
        port=port,
        ssl_certfile=str(cert_dir / SERVER_CERT),
        ssl_keyfile=str(cert_dir / SERVER_KEY),
        log_level="warning",
        access_log=False,
    )
