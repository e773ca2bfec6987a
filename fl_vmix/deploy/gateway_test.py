"""The gateway passes the Fleet API and the health probe through unchanged and nothing else reaches the SuperLink."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fl_vmix.deploy.gateway import GatewayError, allowed, create_app, upstream_client
from fl_vmix.deploy.tls import write_certificates


def upstream_app(calls: list[tuple[str, str, bytes, dict[str, str]]]) -> Starlette:
    """Stands in for the SuperLink's router: records every call that reaches it and answers with its body."""

    async def echo(request: Request) -> Response:
        body = await request.body()
        calls.append((request.method, request.url.path, body, dict(request.headers)))
        return Response(b"upstream:" + body, status_code=201, headers={"x-from": "superlink"})

    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "HEAD"])])


def through_gateway(requests: list[tuple[str, str, bytes]]) -> tuple[list[httpx.Response], list[tuple]]:
    calls: list[tuple] = []
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream_app(calls)), base_url="https://superlink")
    gateway = create_app(client)

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="https://gw") as outside:
            return [
                await outside.request(
                    method, path, content=body, headers={"x-flwr-signature": "c2ln", "content-type": "application/x"}
                )
                for method, path, body in requests
            ]

    return asyncio.run(send()), calls


def test_control_and_runtime_calls_never_reach_the_superlink() -> None:
    refused = [
        ("POST", "/v1/control/start-run", b"fab"),
        ("POST", "/v1/control/register-node", b"key"),
        ("POST", "/v1/control/list-nodes", b""),
        ("POST", "/v1/runtime/pull-task-input", b""),
        ("GET", "/docs", b""),
        ("GET", "/v1/fleet/get-fab", b""),  # the Fleet API is POST only
    ]
    responses, calls = through_gateway(refused)
    assert [r.status_code for r in responses] == [403] * len(refused)
    assert "Fleet API" in responses[0].json()["detail"] and "loopback" in responses[0].json()["detail"]
    assert calls == [], "a refused call must not reach the SuperLink"


def test_fleet_calls_and_health_pass_unchanged() -> None:
    responses, calls = through_gateway([("POST", "/v1/fleet/pull-messages", b"\x00\x01proto"), ("GET", "/health", b"")])
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].content == b"upstream:\x00\x01proto" and responses[0].headers["x-from"] == "superlink"
    assert [(m, p, b) for m, p, b, _ in calls] == [
        ("POST", "/v1/fleet/pull-messages", b"\x00\x01proto"),
        ("GET", "/health", b""),
    ]
    assert calls[0][3]["x-flwr-signature"] == "c2ln", "the SuperNode's signature headers are passed on"


def test_paths_that_could_climb_out_of_the_fleet_api_are_refused() -> None:
    assert allowed("POST", "/v1/fleet/push-messages")
    for path in ("/v1/fleet/../control/start-run", "/v1/fleet//control", "/v1/fleetx/start-run", "/v1/control/"):
        assert not allowed("POST", path), path


def test_upstream_must_be_loopback(tmp_path: Path) -> None:
    certs = write_certificates(tmp_path / "certs")
    with pytest.raises(GatewayError, match="not a loopback address"):
        upstream_client("10.0.0.5:9093", certs.ca_cert)
    with pytest.raises(GatewayError, match="does not exist"):
        upstream_client("127.0.0.1:9093", tmp_path / "missing.pem")
