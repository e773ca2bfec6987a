"""What a client keeps across a restart of its run: DP-SGD's accountant history, per round, in a file.

Within one Flower run a node keeps its accountant in ``context.state`` (:mod:`fl_vmix.apps.dp`). A
resumed run is a new Flower run, with empty node state, so the client also writes its history after
every round it trains to a file of its own, and a resumed client reads the entry of the last round
before the one it is asked to train. Keyed by round, a client whose run stopped after it trained a
round the server had not checkpointed yet still continues from the right round.

The client, not the server, keeps this: the accountant bounds the client's own privacy loss, and a
client should not rely on the server to tell it how much it has spent. The file lives where the node
keeps its own things:

* a node config ``state-dir='...'``, else ``<data-path>/state`` (Deployment Engine: the node's
  exported folder), under ``<run uid>/``;
* in simulation, under the run folder the server names (``<run>/client_state/<run uid>/``).

The server sends the run's uid (:data:`RUN_UID_KEY`; a resumed run keeps its uid) and, in simulation,
the folder (:data:`STATE_DIR_KEY`) in every train message's config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fl_vmix.training.dp_sgd import AccountantHistory

RUN_UID_KEY = "fl_vmix.run-uid"
STATE_DIR_KEY = "fl_vmix.state-dir"


class ClientStateStore:
    """One client's per-round DP-SGD accountant histories in ``<folder>/partition-<id>.json``."""

    def __init__(self, folder: Path, partition_id: int) -> None:
        self.path = Path(folder) / f"partition-{int(partition_id)}.json"

    def _entries(self) -> dict[int, Any]:
        try:
            return {int(k): v for k, v in json.loads(self.path.read_text()).items()}
        except FileNotFoundError:
            return {}

    def history_before(self, server_round: int) -> AccountantHistory | None:
        """The history after the last round before ``server_round`` that this client trained, if any."""
        entries = self._entries()
        earlier = [r for r in entries if r < server_round]
        if not earlier:
            return None
        return tuple((float(a), float(b), int(c)) for a, b, c in entries[max(earlier)])

    def save(self, server_round: int, history: AccountantHistory) -> None:
        entries = {r: v for r, v in self._entries().items() if r < server_round}
        entries[server_round] = [list(step) for step in history]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(entries.items())}))
        os.replace(tmp, self.path)


def state_store(node_config: dict[str, Any], config: dict[str, Any], partition_id: int) -> ClientStateStore | None:
    """This node's store for the run the server names, or None where the run names none (an older server)."""
    run_uid = config.get(RUN_UID_KEY)
    if not isinstance(run_uid, str) or not run_uid.isalnum():
        return None
    if "state-dir" in node_config:
        base = Path(str(node_config["state-dir"])).expanduser()
    elif "data-path" in node_config:
        base = Path(str(node_config["data-path"])).expanduser() / "state"
    elif isinstance(config.get(STATE_DIR_KEY), str):
        base = Path(str(config[STATE_DIR_KEY]))
    else:
        return None
    return ClientStateStore(base / run_uid, partition_id)
