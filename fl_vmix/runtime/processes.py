"""Find and stop the processes Flower starts, by PID (never by name: other runs may share the machine)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pids_with_cmdline(fragment: str) -> list[int]:
    """PIDs (other than ours) whose command line contains ``fragment``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def process_state(pid: int) -> str:
    """The one-letter state from /proc (``Z`` also for a process that is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def alive(pid: int) -> bool:
    return process_state(pid) not in ("Z", "X")


def stop_processes(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        remaining = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                remaining.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while remaining and time.monotonic() < deadline:
            remaining = [p for p in remaining if alive(p)]
            time.sleep(0.1)
        if not remaining:
            return


def stop_local_superlink(control_port: int) -> list[int]:
    """Stop the managed SuperLink bound to ``control_port`` and everything it spawned."""
    roots = pids_with_cmdline(f"--control-api-address 127.0.0.1:{control_port}")
    pids = sorted({p for root in roots for p in [root, *descendants(root)]})
    stop_processes(pids)
    return pids
