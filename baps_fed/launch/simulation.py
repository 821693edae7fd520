"""``baps-fed simulate``: N sites for R rounds on Flower's simulation runtime, on one machine.

We start a private SuperLink in simulation mode, submit the app with ``flwr run``, stream its
progress, and stop every process we started when the run ends, fails or is interrupted. The
coordinator writes the report into the output folder. As the coordinator's, the SuperLink
answers this account only and the simulation's token is in a 0600 file, not argv
(``start_superlink``'s ``private`` folder); the output folder is 0700.
"""

from __future__ import annotations

from pathlib import Path

from baps_fed.federation.scenario import Scenario, SiteFMs
from baps_fed.launch.flower_cli import flwr_run, start_superlink, write_connection
from baps_fed.launch.private_files import private_dir
from baps_fed.launch.processes import ProcessGroup, free_port


def run_simulation(
    scenario: Scenario, out: Path, fm: SiteFMs = None, cpus_per_site: int = 1
) -> int:
    """Run the scenario; returns flwr run's exit status. Everything started is stopped."""
    private_dir(out)
    home = out / "flwr_home"
    port = free_port()
    write_connection(home, f"127.0.0.1:{port}", ca_cert=None)
    federation = (
        f"num-supernodes={len(scenario.sites)} client-resources-num-cpus={cpus_per_site:g} "
        "client-resources-num-gpus=0"
    )
    with ProcessGroup() as group:
        start_superlink(
            group, home, port, out / "superlink.log", simulation=True,
            database=out / "superlink.db", private=out / "private",
        )  # fmt: skip
        print(f"SuperLink (simulation) on 127.0.0.1:{port}; logs in {out}", flush=True)
        return flwr_run(
            group, home, scenario.run_config(out, fm), out / "run.log", federation,
            superlink_log=out / "superlink.log",
        )  # fmt: skip
