"""The nodes a run has: how many, which partition each holds, and node lists in partition order.

**How many.** ``flwr run .`` on its own starts Flower's default local federation (2 SuperNodes),
whatever ``num_clients`` says; a strategy that waits for ``num_clients`` nodes would wait forever.
:func:`fit_to_federation` waits until ``num_clients`` nodes are connected or the federation stops
growing, then runs with the nodes that exist and says so (the run's ``config.json`` records the
number it ran with). In simulation every node's partition comes from the node count, so this is the
same experiment on fewer (or more) partitions.

**Which partition.** Flower names nodes by random 64-bit ids, new in every simulation, and samples
them with ``random.sample`` over the grid's node list. With ``fraction_train < 1`` the same seed thus
picked other partitions in every run (and after a resume). :class:`PartitionOrderedGrid` asks each
node its partition once (a Flower ``query`` message) and lists node ids in partition order, so the
seeded sample picks the same partitions in every run, on every machine and across a resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fl_vmix.experiment import Experiment

logger = logging.getLogger("fl_vmix.server")

PARTITION_QUERY = "fl_vmix.partition"  # the query message's group; the reply's metric is "partition-id"
SETTLE_S = 5.0  # a simulation registers all its nodes at start: no new node for this long means no more come


def wait_for_nodes(grid: Grid, wanted: int, wait_s: float, settle_s: float, poll_s: float = 0.5) -> list[int]:
    """The connected node ids: as soon as ``wanted`` are connected, else once ``settle_s`` passed without a
    new node or ``wait_s`` passed in all (with at least one node); RuntimeError when none came in ``wait_s``."""
    start = last_change = time.monotonic()
    nodes: list[int] = []
    while True:
        current = sorted(grid.get_node_ids())
        if current != nodes:
            nodes, last_change = current, time.monotonic()
        now = time.monotonic()
        if len(nodes) >= wanted or (nodes and (now - last_change >= settle_s or now - start >= wait_s)):
            return nodes
        if not nodes and now - start >= wait_s:
            raise RuntimeError(
                f"no node connected within {wait_s:.0f} s: start the SuperNodes (Deployment Engine), or give the "
                "simulation nodes: flwr run . --federation-config 'num-supernodes=N'"
            )
        time.sleep(poll_s)


def federation_nodes(grid: Grid, experiment: Experiment) -> list[int]:
    """Wait for the experiment's nodes as its engine can provide them: a simulation registers all its nodes
    at once (no new one after ``SETTLE_S``); SuperNodes may join for ``engine.wait_nodes_s``."""
    engine = experiment.engine
    if engine.name == "simulation":
        return wait_for_nodes(grid, experiment.num_clients, wait_s=60.0, settle_s=SETTLE_S)
    wait_s = engine.wait_nodes_s or 0.0
    return wait_for_nodes(grid, experiment.num_clients, wait_s=max(wait_s, SETTLE_S), settle_s=max(wait_s, SETTLE_S))


def fit_to_federation(experiment: Experiment, nodes: int) -> Experiment:
    """The experiment on the ``nodes`` nodes the federation has, with a warning when that is not ``num_clients``."""
    if nodes == experiment.num_clients:
        return experiment
    logger.warning(
        "the federation has %d node(s) but the experiment asks for num_clients=%d: running with %d clients. "
        "For %d, launch with `python -m fl_vmix num_clients=%d` or give Flower's launcher the size: "
        "flwr run . --federation-config 'num-supernodes=%d'",
        nodes,
        experiment.num_clients,
        nodes,
        experiment.num_clients,
        experiment.num_clients,
        experiment.num_clients,
    )
    return experiment.replace(num_clients=nodes)


def query_partitions(grid: Grid, node_ids: Iterable[int], timeout_s: float = 600.0) -> dict[int, int]:
    """node id -> partition id, as each node answers a query (nodes that fail to answer are left out)."""
    messages = [
        Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node, group_id=PARTITION_QUERY)
        for node in node_ids
    ]
    partitions = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        if reply.has_error() or not reply.content.metric_records:
            continue
        record = next(iter(reply.content.metric_records.values()))
        if "partition-id" in record:
            partitions[reply.metadata.src_node_id] = int(record["partition-id"])  # type: ignore[arg-type]
    return partitions


class PartitionOrderedGrid(Grid):
    """Flower's grid with node ids listed in partition order (unknown nodes last); all else delegated."""

    def __init__(self, grid: Grid, partitions: dict[int, int]) -> None:
        self.grid, self.partitions = grid, dict(partitions)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.grid.get_node_ids(), key=lambda node: (self.partitions.get(node, 1 << 62), node))

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


def ordered_grid(grid: Grid, experiment: Experiment, node_ids: list[int]) -> Grid:
    """The grid the strategy samples from: in partition order when it samples (a fraction below 1)."""
    if experiment.fraction_train >= 1.0 and experiment.fraction_evaluate in (0.0, 1.0):
        return grid  # every node takes part: the order does not matter (replies are sorted by partition)
    partitions = query_partitions(grid, node_ids)
    logger.info("node partitions (for reproducible sampling): %s", sorted(partitions.values()))
    return PartitionOrderedGrid(grid, partitions)
