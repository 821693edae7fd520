"""The coordinator ServerApp: rounds of local SPSA at the sites, update averaging, checkpoints.

Each round: send the global decoder to the connected sites, wait up to ``round-timeout`` for
their updates, aggregate those that arrived (a failed or silent site is logged and skipped),
evaluate, then checkpoint and rewrite the report. With ``resume = true`` a restarted
coordinator continues after the last checkpointed round with the identical decoder.
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
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.replica import SiteReplica
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.run_config import read_run_config
from baps_fed.federation.server_optimizer import ServerOptimizer
from baps_fed.federation.site_state import RUN_KEY
from coordinator.central_dp import CentralDP, check_central_dp
from coordinator.strategy import UpdateAveraging

logger = logging.getLogger(__name__)
app = ServerApp()


def _exchange(
    grid: Grid, strategy: UpdateAveraging, messages: list[Message], timeout: float, phase: str
) -> list[Message]:
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    strategy.record_failures(replies, messages, phase)
    return replies


def run_rounds(grid: Grid, context: Context) -> CoordinatorState:
    cfg, train_cfg = read_run_config(context.run_config)
    check_central_dp(cfg, train_cfg)
    out = Path(cfg.out_dir)
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
    for rnd in range(state.round + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        strategy.start_round()
        messages = list(driver.configure_train(rnd, strategy.global_arrays(), round_config, grid))
        replies = _exchange(grid, strategy, messages, cfg.round_timeout, "train")
        arrays, train_metrics = driver.aggregate_train(rnd, replies)
        if central_dp:
            train_metrics = central_dp.after_train(strategy, arrays, train_metrics, replies)
        state.audit_head = append_round(
            out, rnd, strategy.round_uploads, aggregator.theta, state.audit_head
        )
        if arrays is None:
            logger.warning("round %d: no usable update; the global decoder is unchanged", rnd)
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
    out = Path(CoordinatorConfig.from_run_config(dict(context.run_config)).out_dir)
    print(f"done after round {state.round}; report: {out / 'report.md'}", flush=True)
