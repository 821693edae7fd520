"""Flower's SuperLink for ``baps-fed coordinator``: every API answers the coordinator's own
account only (``baps_fed/launch/peer_account.py`` says why Flower 1.42 needs this).

Run as ``python -m coordinator.superlink`` with ``flower-superlink``'s own arguments: it
parses them, builds the SuperLink's app and serves it exactly as ``flower-superlink`` does
(Flower 1.42's ``_run_superlink_http_api``), with ``SameAccountOnly`` in front of it.
Started by ``baps_fed/launch/private_superlink.py``.
"""

from __future__ import annotations

import logging

import uvicorn
from flwr.supercore.http_logging import get_uvicorn_log_config
from flwr.supercore.logger import console_handler
from flwr.superlink.cli.flower_superlink import (
    SuperLinkLifespan,
    _parse_superlink_lifespan_config,
)
from flwr.superlink.main import create_app

from baps_fed.launch.peer_account import SameAccountOnly


def main() -> None:
    config = _parse_superlink_lifespan_config()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    app = SameAccountOnly(create_app(config, SuperLinkLifespan))
    print(f"SuperLink on {config.host}:{config.port}: the coordinator's account only", flush=True)
    uvicorn.run(
        app=app,
        host=config.host,
        port=config.port,
        reload=False,
        access_log=True,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        workers=1,  # as Flower's: its lifespan starts servers that one process must own
    )


if __name__ == "__main__":
    main()
