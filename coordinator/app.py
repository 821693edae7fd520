"""The coordinator ServerApp: rounds of local SPSA at the sites, update averaging, checkpoints.

Each round: send the global decoder to the connected sites, wait up to ``round-timeout`` for
their updates, aggregate those that arrived (a failed or silent site is logged and skipped;
with fewer than ``min-sites`` usable updates the round is not aggregated, and said so),
evaluate, then checkpoint and rewrite the report. With ``resume = true`` a restarted
coordinator continues after the last checkpointed round with the identical decoder.

Sites are named by the names they give (terminal, report.md, rounds.json), each failure in one
line with its reason. A run that cannot start (an invalid run config, a run folder in the way,
or no site able to take part in the first round, e.g. none has data) is refused with one line
saying what to change, and ends as failed, never after rounds of failures.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import asdict
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from baps_fed.evaluation.federation_report import write_fed_report
from baps_fed.federation.audit import append_round, truncate_log
from baps_fed.federation.checkpoint import (
    CoordinatorState,
    check_run_folder,
    load_checkpoint,
    save_checkpoint,
)
from baps_fed.federation.contract import initial_theta
from baps_fed.federation.coordinator_config import REFUSAL, CoordinatorConfig
from baps_fed.federation.replica import SiteReplica
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.run_config import read_run_config
from baps_fed.federation.server_optimizer import ServerOptimizer
from baps_fed.federation.site_state import RUN_KEY
from coordinator.central_dp import CentralDP, check_central_dp
from coordinator.strategy import UpdateAveraging

logger = logging.getLogger(__name__)
app = ServerApp()

# error kinds no later round can heal (the settings are read once per site process and run)
SETUP_ERRORS = frozenset({"configuration", "data", "flower-error-1"})


class RunRefused(ValueError):
    """The coordinator will not run; the message says why and what to change."""


class _OneLineRefusal(logging.Filter):
    """Flower logs what a ServerApp raised with its traceback; a refusal is one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, RunRefused):
            record.msg, record.args = f"{REFUSAL}%s", (str(err),)
            record.exc_info, record.exc_text = None, None
        return True


_flwr_logger = logging.getLogger("flwr")  # Flower's own logger (flwr.supercore.log)
if not any(isinstance(f, _OneLineRefusal) for f in _flwr_logger.filters):
    _flwr_logger.addFilter(_OneLineRefusal())


REPLY_POLL_S = 0.2  # Flower's send_and_receive looks every 3 s: a round's wall would wait
NODES_POLL_S = 2.0  # how often to ask whether the sites still waited for are connected


def _exchange(
    grid: Grid, strategy: UpdateAveraging, messages: list[Message], timeout: float, phase: str
) -> list[Message]:
    """Send the round's messages and collect the replies as they arrive, until all are in,
    every site still waited for has left, or ``timeout`` seconds have passed."""
    replies: list[Message] = []
    if messages:
        ids = list(grid.push_messages(messages))
        node_of = {i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True)}
        waiting, start = set(ids), time.monotonic()
        nodes_checked = start
        while waiting and time.monotonic() - start < timeout:
            arrived = list(grid.pull_messages(waiting))
            replies += arrived
            waiting -= {m.metadata.reply_to_message_id for m in arrived}
            if waiting and time.monotonic() - nodes_checked >= NODES_POLL_S:
                nodes_checked = time.monotonic()
                if not {node_of[i] for i in waiting} & set(grid.get_node_ids()):
                    break  # none of them can answer any more
            if waiting:
                time.sleep(REPLY_POLL_S)
    strategy.record_failures(replies, messages, phase)
    return replies


def _start(context: Context):
    """The run's settings and starting state, every one checked before a site is asked."""
    cfg, train_cfg = read_run_config(context.run_config)
    check_central_dp(cfg, train_cfg)
    out = Path(cfg.out_dir).resolve()
    config = {"coordinator": asdict(cfg), "train": asdict(train_cfg)}
    check_run_folder(out, cfg.resume, cfg.overwrite)
    if cfg.resume:
        state = load_checkpoint(out)
        if state.config["train"] != config["train"]:
            raise ValueError(
                f"{out}: the checkpoint was made with other training settings "
                f"({state.config['train']}); resume with the same run config"
            )
        print(f"resuming after round {state.round} from {out}", flush=True)
    else:
        state = CoordinatorState(0, initial_theta(train_cfg), {}, [], config)
    return cfg, train_cfg, out, config, state


def run_rounds(grid: Grid, context: Context) -> CoordinatorState:
    try:
        cfg, train_cfg, out, config, state = _start(context)
    except (ValueError, OSError) as err:  # a setting or a folder: one line, no traceback
        raise RunRefused(f"refused the run: {err}") from None
    print(
        f"coordinator: {cfg.rounds} round{'s' * (cfg.rounds != 1)}, each with at least "
        f"{cfg.min_sites} site{'s' * (cfg.min_sites != 1)}; "
        f"report: {out / 'report.md'}",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    torn = truncate_log(out, state.round)  # a fresh run starts a fresh audit log
    if torn:
        print(f"{out}: {torn}", flush=True)
    # the run's name at the sites (their state files): kept across restarts, new for a new run
    state.config = {**config, RUN_KEY: state.config.get(RUN_KEY) or secrets.token_hex(8)}
    round_config = ConfigRecord({RUN_KEY: state.config[RUN_KEY]})
    aggregator = RoundAggregator(
        ServerOptimizer(cfg.server_optimizer(), state.optimizer),
        state.theta,
        train_cfg,
        {n: SiteReplica.from_arrays(n, a) for n, a in state.replicas.items()},
        cfg.aggregation,  # type: ignore[arg-type]
        cfg.trim_fraction,
        cfg.krum_malicious,
        SiteReplica.from_arrays("consensus", state.consensus) if state.consensus else None,
        equal_weights=cfg.central_dp != "off",
        min_updates=cfg.min_sites,
    )
    strategy = UpdateAveraging(
        aggregator,
        min_train_nodes=cfg.min_sites,
        min_evaluate_nodes=cfg.min_sites,
        min_available_nodes=cfg.min_sites,
    )
    # what the rounds talk to: the strategy, or Flower's DP wrapper around it
    central_dp = CentralDP(strategy, cfg, state.history) if cfg.central_dp != "off" else None
    driver = central_dp.wrapper if central_dp else strategy
    first = state.round + 1
    for rnd in range(first, cfg.rounds + 1):
        t0 = time.perf_counter()
        strategy.start_round()
        messages = list(driver.configure_train(rnd, strategy.global_arrays(), round_config, grid))
        replies = _exchange(grid, strategy, messages, cfg.round_timeout, "train")
        if rnd == first and replies and all(m.has_error() for m in replies):
            if set(strategy.error_kinds) <= SETUP_ERRORS:
                raise RunRefused(
                    f"refused the run: no site could take part in round {rnd}: "
                    + "; ".join(aggregator.failures)
                    + ". Fix each site's settings (its node config or log says which) and "
                    "start the run again"
                )
        arrays, train_metrics = driver.aggregate_train(rnd, replies)
        if central_dp:
            train_metrics = central_dp.after_train(strategy, arrays, train_metrics, replies)
        state.audit_head = append_round(
            out, rnd, strategy.round_uploads, aggregator.theta, state.audit_head
        )
        if arrays is None:
            logger.warning("round %d: not aggregated; the global decoder is unchanged", rnd)
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            messages = list(
                driver.configure_evaluate(rnd, strategy.global_arrays(), round_config, grid)
            )
            strategy.aggregate_evaluate(
                rnd, _exchange(grid, strategy, messages, cfg.round_timeout, "evaluate")
            )
        state.history.append(
            {
                "round": rnd,
                "seconds": time.perf_counter() - t0,
                "train": aggregator.site_train,
                "evaluate": strategy.site_evaluate,
                "aggregated": arrays is not None,
                "aggregate": dict(train_metrics) if train_metrics is not None else {},
                "failures": aggregator.failures,
            }
        )
        state.round, state.theta = rnd, aggregator.theta
        state.optimizer = aggregator.optimizer.state
        state.replicas = {n: r.to_arrays() for n, r in aggregator.replicas.items()}
        state.consensus = aggregator.consensus.to_arrays()
        save_checkpoint(out, state)
        write_fed_report(out, state.history, state.config)
        _print_round(state.history[-1])
    return state


def _print_round(entry: dict) -> None:
    """One line for the round, then one line per site that failed or declined, with why."""
    parts = [
        f"{site} {m['dice']:.3f} (zero-shot {m['zero-shot-dice']:.3f})"
        for site, m in sorted(entry["evaluate"].items())
    ]
    trained = sorted(entry["train"])
    done = "; ".join(parts) or (f"trained: {', '.join(trained)}" if trained else "no site trained")
    print(f"round {entry['round']} ({entry['seconds']:.0f} s): {done}", flush=True)
    for failure in entry["failures"]:
        print(f"  round {entry['round']}, {failure}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    state = run_rounds(grid, context)
    cfg = CoordinatorConfig.from_run_config(dict(context.run_config))
    out = Path(cfg.out_dir).resolve()
    why = f"(why: each round's failures, above and in {out / 'report.md'})"
    if not any(e["train"] for e in state.history):  # no site ever trained: not a success
        raise RunRefused(
            f"the run failed: no site trained in any of its {state.round} rounds {why}"
        )
    # never min-sites usable updates ("aggregate" for a run folder of an older version)
    if not any(e.get("aggregated", e["aggregate"]) for e in state.history):
        raise RunRefused(
            f"the run failed: none of its {state.round} rounds had the {cfg.min_sites} usable "
            f"updates min-sites asks for, so the global decoder never changed {why}"
        )
    print(f"done after round {state.round}; report: {out / 'report.md'}", flush=True)
