"""The FM service bills every answer at once: the metering file is written on every change, not
every ``metering_interval_s`` seconds, so an answer given just before a kill is billed."""

from __future__ import annotations

import json
import time

from baps_fed.fm.service.ledger import Ledger, MeteringWriter
from baps_fed.fm.service.tokens import ClientPolicy


def _images_billed(path) -> int:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return -1
    return doc["clients"].get("hospital-a", {}).get("images", 0)


def test_a_settled_call_is_on_disk_long_before_the_interval(tmp_path):
    metering = tmp_path / "metering.json"
    ledger = Ledger(metering, "tiny")
    writer = MeteringWriter(ledger, interval_s=3600.0)  # the interval alone would never write
    writer.start()
    try:
        policy = ClientPolicy(name="hospital-a")
        ledger.admit(policy, 5)
        ledger.settle("hospital-a", 5, 0.1, ok=True)
        deadline = time.monotonic() + 5
        while _images_billed(metering) != 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _images_billed(metering) == 5  # no stop(), no signal: as a SIGKILL finds it
    finally:
        writer.stop()
    assert _images_billed(metering) == 5
