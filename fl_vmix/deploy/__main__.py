"""``python -m fl_vmix.deploy``: prepare and check a Flower Deployment Engine federation.

Operator (SuperLink host):
    python -m fl_vmix.deploy export --out fed/ num_clients=3 dataset.data_fraction=0.05   # per-client data folders
    python -m fl_vmix.deploy certs --out certs/ --hosts superlink.example.org 10.0.0.5    # CA + SuperLink certificate
    python -m fl_vmix.deploy connection --name fl-vmix --address 127.0.0.1:9093 --root-cert certs/ca.pem
    python -m fl_vmix.deploy gateway --listen 0.0.0.0:8000 --upstream 127.0.0.1:9093 --cert-dir certs
    python -m fl_vmix.deploy check-superlink --connection fl-vmix
Data owner (its own SuperNode host):
    python -m fl_vmix.deploy keygen client-0/client.key                                  # its VisualMixer key
    python -m fl_vmix.deploy auth-keys --out auth/ --n 1                                 # its SuperNode key pair
    python -m fl_vmix.deploy check-node --data-path client-0 --key-file client-0/client.key

Every setup problem exits with status 2 and a message that names the fix.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fl_vmix.deploy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="write each client's partition to DIR/client-<i>/ (no keys)")
    export.add_argument("--out", type=Path, required=True, help="output folder (client-<i>/ inside)")
    export.add_argument(
        "--with-keys",
        action="store_true",
        help="also write client-<i>/client.key: only for a trial where the operator owns every node (the operator "
        "then holds every key, and VisualMixer hides nothing from the operator)",
    )
    export.add_argument(
        "overrides", nargs="*", help="Hydra overrides, as for python -m fl_vmix (num_clients=3 dataset=cifar10 ...)"
    )

    gateway = sub.add_parser(
        "gateway",
        help="serve the SuperLink's Fleet API (only) on a public address; Control and Runtime stay on loopback",
    )
    gateway.add_argument("--listen", required=True, help="public HOST:PORT SuperNodes dial (e.g. 0.0.0.0:8000)")
    gateway.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT (e.g. 127.0.0.1:9093)")
    gateway.add_argument("--cert-dir", type=Path, required=True, help="folder with ca.pem, server.pem, server.key")

    keygen = sub.add_parser(
        "keygen", help="on the data owner's own host: create its VisualMixer key file (32 random bytes, mode 0600)"
    )
    keygen.add_argument("path", type=Path)

    certs = sub.add_parser("certs", help="create a CA and a SuperLink TLS certificate (ca.pem, server.pem, server.key)")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument(
        "--hosts",
        nargs="*",
        default=[],
        help="names/IPs SuperNodes and flwr use to reach the SuperLink (127.0.0.1 and localhost are always added)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")

    auth = sub.add_parser("auth-keys", help="create SuperNode authentication key pairs DIR/supernode-<i>{,.pub}")
    auth.add_argument("--out", type=Path, required=True)
    auth.add_argument("--n", type=int, required=True, help="number of SuperNodes")
    auth.add_argument("--overwrite", action="store_true", help="replace existing keys (they must be registered again)")

    conn = sub.add_parser("connection", help="write a SuperLink connection into $FLWR_HOME/config.toml")
    conn.add_argument("--name", default="fl-vmix")
    conn.add_argument("--address", required=True, help="SuperLink HOST:PORT (its one HTTPS port)")
    group = conn.add_mutually_exclusive_group(required=True)
    group.add_argument("--root-cert", type=Path, help="ca.pem that signed the SuperLink certificate")
    group.add_argument(
        "--insecure", action="store_true", help="plain HTTP (only for a SuperLink started with --insecure)"
    )
    conn.add_argument("--default", action="store_true", help="also make it the default connection")
    conn.add_argument("--probe", action="store_true", help="check that the SuperLink answers through this connection")

    node = sub.add_parser(
        "check-node", help="check a SuperNode host: data folder, key, auth key, CA (run before flower-supernode)"
    )
    node.add_argument("--data-path", type=Path, required=True)
    node.add_argument("--key-file", type=Path, default=None, help="default: DATA_PATH/client.key")
    node.add_argument("--auth-key", type=Path, default=None, help="SuperNode authentication private key")
    node.add_argument("--ca-cert", type=Path, default=None, help="root certificate used to verify the SuperLink")
    node.add_argument(
        "--superlink", default=None, help="also probe the SuperLink at HOST:PORT (needs --ca-cert or --insecure)"
    )
    node.add_argument("--insecure", action="store_true")
    node.add_argument("--print-node-config", action="store_true", help="print only the --node-config value on success")

    link = sub.add_parser("check-superlink", help="probe a SuperLink (reachable, TLS trusted, answering)")
    link.add_argument("--connection", default=None, help="name in $FLWR_HOME/config.toml")
    link.add_argument("--address", default=None)
    link.add_argument("--root-cert", type=Path, default=None)
    link.add_argument("--insecure", action="store_true")
    link.add_argument("--timeout", type=float, default=5.0)

    chk = sub.add_parser("check-certs", help="check a CA / server certificate pair (dates, chain, key, host)")
    chk.add_argument("--ca-cert", type=Path, required=True)
    chk.add_argument("--cert", type=Path, default=None)
    chk.add_argument("--key", type=Path, default=None)
    chk.add_argument("--host", default=None)
    return parser


def _export(args: argparse.Namespace) -> None:
    from fl_vmix.deploy.export import export_federation
    from fl_vmix.experiment import compose

    experiment = compose(args.overrides)
    start = time.perf_counter()
    clients = export_federation(experiment, args.out, write_keys=args.with_keys)
    title = (
        f"{experiment.dataset.name} x {experiment.num_clients} clients ({experiment.partition.scheme}, "
        f"data_fraction={experiment.dataset.data_fraction}) in {time.perf_counter() - start:.1f} s"
    )
    table = Table(title=title)
    for column in ("client", "folder", "train", "test", "data.npz", "key"):
        table.add_column(column)
    for c in clients:
        table.add_row(
            str(c.partition_id),
            str(c.folder),
            str(c.train),
            str(c.test),
            f"{c.size_bytes / 2**20:.1f} MiB",
            "none: the owner runs keygen"
            if c.key_file is None
            else f"{c.key_file.name} ({'new' if c.new_key else 'kept'})",
        )
    console.print(table)
    if args.with_keys:
        err_console.print(
            "[bold red]WARNING:[/] --with-keys wrote every client's VisualMixer key on this machine. Whoever holds a "
            "key can undo that client's obfuscation, so these nodes' images are NOT hidden from you (the operator) "
            "or from anyone who reads this folder. Use it only for a trial where you own every node; real data owners "
            "create their own key on their own host: python -m fl_vmix.deploy keygen <client-i>/client.key",
            highlight=False,
        )
    stale = [c.folder / "client.key" for c in clients if c.key_file is None and (c.folder / "client.key").exists()]
    if stale:
        err_console.print(
            f"[yellow]warning:[/] {len(stale)} folder(s) still hold a client.key from an earlier export, which this "
            f"machine generated ({escape(str(stale[0]))} ...): delete them before copying, and let each owner run "
            "keygen",
            highlight=False,
        )
    console.print(
        "Copy each client-<i> folder to its own SuperNode host only. There its owner creates the VisualMixer key "
        "(python -m fl_vmix.deploy keygen client-<i>/client.key) and a SuperNode key pair (python -m fl_vmix.deploy "
        "auth-keys --out auth --n 1, sending you only auth/supernode-0.pub), then runs "
        "scripts/deploy/start_supernode.sh."
    )


def _gateway(args: argparse.Namespace) -> None:
    from fl_vmix.deploy.gateway import serve

    err_console.print(
        f"gateway: Fleet API only on https://{args.listen} -> SuperLink {args.upstream}; Control and Runtime calls "
        "are refused here",
        highlight=False,
    )
    serve(args.listen, args.upstream, args.cert_dir)


def _keygen(args: argparse.Namespace) -> None:
    from fl_vmix.apps.keys import create_key_file

    existed = args.path.exists()
    create_key_file(args.path)
    console.print(f"{args.path}: {'kept the existing key' if existed else 'new 32-byte key (mode 0600)'}")


def _certs(args: argparse.Namespace) -> None:
    from fl_vmix.deploy.tls import write_certificates

    paths = write_certificates(args.out, args.hosts, days=args.days)
    console.print(f"CA: {paths.ca_cert} (key {paths.ca_key}: keep it offline)")
    console.print(
        f"SuperLink: {paths.server_cert} + {paths.server_key} for {', '.join(paths.hosts)}, valid until "
        f"{paths.not_after:%Y-%m-%d} UTC"
    )
    console.print("Give ca.pem (only) to every SuperNode host and to the machine that runs `flwr run`.")


def _auth_keys(args: argparse.Namespace) -> None:
    from fl_vmix.deploy.auth import write_auth_keys

    pairs = write_auth_keys(args.out, args.n, overwrite=args.overwrite)
    for private, public in pairs:
        console.print(f"{private} (private, 0600: stays on this host)  {public} (send it to the operator)")
    console.print(
        "Run this on the SuperNode's own host; the operator registers the public keys on the SuperLink host: "
        "scripts/deploy/register_supernodes.sh <connection> " + " ".join(str(p) for _, p in pairs)
    )


def _connection(args: argparse.Namespace) -> None:
    from fl_vmix.runtime.connection import probe_superlink, write_connection

    path = write_connection(args.name, args.address, args.root_cert, args.insecure, default=args.default)
    console.print(f"wrote [superlink.{args.name}] address={args.address} to {path}", markup=False)
    if args.probe:
        latency = probe_superlink(args.address, args.root_cert, args.insecure)
        console.print(f"SuperLink answered in {latency * 1000:.0f} ms")


def _check_node(args: argparse.Namespace) -> None:
    from fl_vmix.deploy.preflight import check_node, node_config_string
    from fl_vmix.runtime.connection import SuperLinkUnreachable, probe_superlink

    key_file = args.key_file or args.data_path / "client.key"
    report = check_node(args.data_path, key_file, auth_key=args.auth_key, ca_cert=args.ca_cert)
    latency = None
    if args.superlink:
        try:
            latency = probe_superlink(args.superlink, args.ca_cert, args.insecure)
        except SuperLinkUnreachable as err:  # start order is free: flower-supernode keeps retrying
            err_console.print(
                f"[yellow]warning:[/] {escape(str(err))}; the SuperNode will keep trying to connect", highlight=False
            )
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False)
    if args.print_node_config:
        print(node_config_string(args.data_path, key_file))
        return
    console.print(
        f"node ready: partition {report.partition_id}/{report.num_partitions}, {report.train} train + {report.test} "
        "test images, "
        f"{report.classes} classes, loads in {report.load_ms:.1f} ms; key {report.key_bytes} bytes"
        + (f"; SuperLink {args.superlink} answered in {latency * 1000:.0f} ms" if latency is not None else "")
    )
    print(f'--node-config "{node_config_string(args.data_path, key_file)}"')


def _check_superlink(args: argparse.Namespace) -> None:
    from fl_vmix.runtime.connection import (
        ConnectionSetupError,
        probe_superlink,
        read_connection,
    )

    if args.connection:
        entry = read_connection(args.connection)
        address, root, insecure = entry["address"], entry.get("root-certificates"), bool(entry.get("insecure", False))
    elif args.address:
        address, root, insecure = args.address, args.root_cert, args.insecure
    else:
        raise ConnectionSetupError("give --connection NAME or --address HOST:PORT (with --root-cert or --insecure)")
    latency = probe_superlink(address, root, insecure, timeout_s=args.timeout)
    console.print(
        f"SuperLink {address} answered over {'HTTP' if insecure else 'verified HTTPS'} in {latency * 1000:.0f} ms"
    )


def _check_certs(args: argparse.Namespace) -> None:
    from fl_vmix.deploy.tls import check_certificates

    hosts = check_certificates(args.ca_cert, args.cert, args.key, args.host)
    console.print("certificates OK" + (f"; server certificate names {', '.join(hosts)}" if hosts else ""))


COMMANDS = {
    "export": _export,
    "gateway": _gateway,
    "keygen": _keygen,
    "certs": _certs,
    "auth-keys": _auth_keys,
    "connection": _connection,
    "check-node": _check_node,
    "check-superlink": _check_superlink,
    "check-certs": _check_certs,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ValueError as err:  # every setup error of fl_vmix is a ValueError naming its fix
        err_console.print(f"[bold red]{args.command}:[/] {escape(str(err))}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
