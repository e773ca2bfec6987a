"""The server's strategy: a Flower strategy from the experiment, wrapped by :class:`RecordingStrategy`.

``RecordingStrategy`` wraps any Flower strategy the way Flower's DP wrappers do (it is a
``Strategy`` that holds another and delegates to it): replies are aggregated in partition order (so
floating-point sums, and thus metrics, are reproducible), every client's metrics and failures go to
the run's recorder, and a round with too few successful clients stops the run. A resumed run starts
at a later round (:meth:`RecordingStrategy.start` with ``first_round``): Flower's own round loop runs
unchanged and counts from 1, and the wrapper shifts every round number it passes on, so the wrapped
strategy, the clients and the recorder see the run's real rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, PrivacySpent
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedProx, Result, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_vmix.apps.dp import UNIFORM_WEIGHT_KEY, wrap_central_dp
from fl_vmix.experiment import Experiment
from fl_vmix.factory import build_privacy
from fl_vmix.privacy.training_level import CentralDP
from fl_vmix.recording import RunRecorder

logger = logging.getLogger("fl_vmix.server")

STRATEGIES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM}
PARTITION_KEY = "partition-id"


def aggregate_without_partition(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Weighted mean of client metrics; the partition id is a label, not a metric."""
    aggregated = aggregate_metricrecords(records, weighting_key)
    if PARTITION_KEY in aggregated:
        del aggregated[PARTITION_KEY]
    return aggregated


def build_strategy(experiment: Experiment) -> Strategy:
    """The experiment's Flower strategy (FedAvg, FedProx or FedAvgM), DP-wrapped for central DP."""
    kwargs: dict[str, Any] = dict(
        fraction_train=experiment.fraction_train,
        fraction_evaluate=experiment.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if experiment.fraction_evaluate > 0 else 0,
        min_available_nodes=experiment.num_clients,
        train_metrics_aggr_fn=aggregate_without_partition,
        evaluate_metrics_aggr_fn=aggregate_without_partition,
        **experiment.strategy.params,
    )
    base = STRATEGIES[experiment.strategy.name]
    if experiment.privacy.method == CentralDP.name:
        method = build_privacy(experiment.privacy, None)
        assert isinstance(method, CentralDP)  # the registry maps the name to this class
        # Flower's accountant needs FedAvg's own aggregation with equal client weights.
        return wrap_central_dp(base(**kwargs, weighted_by_key=UNIFORM_WEIGHT_KEY), method, experiment.num_clients)
    return base(**kwargs)


def _partition_of(msg: Message) -> int:
    if msg.has_error():
        return 1 << 30
    for record in msg.content.metric_records.values():
        if PARTITION_KEY in record:
            return int(cast(int, record[PARTITION_KEY]))
    return 1 << 30


class RecordingStrategy(Strategy):
    """Records every round of the wrapped ``strategy`` and stops the run on too many failures."""

    def __init__(self, strategy: Strategy, recorder: RunRecorder, min_success_fraction: float) -> None:
        if not 0 <= min_success_fraction <= 1:
            raise ValueError(f"min_success_fraction must be in [0, 1], got {min_success_fraction}")
        self.strategy, self.recorder, self.min_success_fraction = strategy, recorder, min_success_fraction
        self.round_offset = 0  # rounds before this attempt of the run (a resumed run's checkpoint round)
        # Each phase's messages, per (round, phase); the grid gives them their ids as it sends them. A reply missing
        # when the round's timeout ends is a failure too (Flower's loop passes on only the replies that came).
        self._sent: dict[tuple[int, str], list[Message]] = {}

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop (``Strategy.start``) over rounds ``first_round`` to ``num_rounds``.

        ``initial_arrays`` are the global weights before ``first_round``. ``evaluate_fn`` receives the
        run's round numbers; a resumed run skips its round-0 evaluation (done in the first attempt).
        """
        if not 1 <= first_round <= num_rounds:
            raise ValueError(f"first_round={first_round} must lie in 1..num_rounds={num_rounds}")
        self.round_offset = offset = first_round - 1
        shifted: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
        if evaluate_fn is not None:
            function = evaluate_fn

            def shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                if server_round == 0 and offset:
                    return None
                return function(server_round + offset, arrays)

        if offset:
            logger.info("resuming after round %d: Flower's round counter below starts again at 1", offset)
        return super().start(grid, initial_arrays, num_rounds - offset, timeout, train_config, evaluate_config, shifted)

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.strategy!r})"

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.recorder.start_round(server_round)
        return self._sending(server_round, "train", self.strategy.configure_train(server_round, arrays, config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        return self._sending(server_round, "eval", self.strategy.configure_evaluate(server_round, arrays, config, grid))

    def _sending(self, server_round: int, phase: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._sent[server_round, phase] = messages
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        arrays, metrics = self.strategy.aggregate_train(server_round, self._record(server_round, "train", replies))
        self.recorder.record_aggregate(server_round, "train", dict(metrics) if metrics else {})
        spent = self.privacy_spent()
        if spent is not None:
            self.recorder.record_server_dp(server_round, spent.epsilon, spent.delta, spent.num_releases)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        metrics = self.strategy.aggregate_evaluate(server_round, self._record(server_round, "eval", replies))
        self.recorder.record_aggregate(server_round, "evaluate", dict(metrics) if metrics else {})
        return metrics

    def privacy_spent(self) -> PrivacySpent | None:
        """The wrapped strategy's cumulative DP guarantee (Flower's DP wrappers account it), else None."""
        spent = getattr(self.strategy, "privacy_spent", None)
        return cast("PrivacySpent | None", spent()) if callable(spent) else None

    def _record(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[Message]:
        ordered = sorted(replies, key=_partition_of)
        sent = self._sent.pop((server_round, phase), None)
        # The node a reply answers for: the SuperLink itself signs the error it returns for an unavailable node.
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent or ()}

        def node(reply: Message) -> int:
            return node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

        ok = [m for m in ordered if not m.has_error()]
        errors = [f"node {node(m)}: {m.error.reason}" for m in ordered if m.has_error()]
        answered = {m.metadata.reply_to_message_id for m in ordered}
        errors += [
            f"node {m.metadata.dst_node_id}: no reply before the round's timeout (engine.round_timeout_s); a "
            "SuperNode that crashed and came back loses the message it had taken"
            for m in sent or ()
            if m.metadata.message_id not in answered
        ]
        expected = len(sent) if sent is not None else len(ordered)
        metrics = [dict(next(iter(m.content.metric_records.values()))) for m in ok if m.content.metric_records]
        self.recorder.record_replies(server_round, phase, metrics, errors)
        for error in errors:
            logger.warning("round %d %s failed on %s", server_round, phase, error)
        if expected and len(ok) < self.min_success_fraction * expected:
            self.recorder.flush()
            raise RuntimeError(
                f"round {server_round}: only {len(ok)} of {expected} clients succeeded in {phase} "
                f"(min_success_fraction={self.min_success_fraction}); first error: {errors[0] if errors else '?'}"
            )
        return ordered
