"""What a hospital's terminal says, for real: ``baps-fed site`` processes against a real
coordinator (SuperLink, TLS, node authentication) on 127.0.0.1, plus the log reading and the
connection probe on their own. Every process is stopped by PID, pass or fail."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from baps_fed.cli import main
from baps_fed.launch.certs import make_pilot_certs
from baps_fed.launch.processes import ProcessGroup, free_port
from baps_fed.launch.site import SiteSettings, supervise_site
from baps_fed.launch.site_terminal import (
    PLAIN_TO_TLS,
    TLS_TO_PLAIN,
    WRONG_CA,
    LogWatcher,
    SiteTerminal,
    probe,
)
from tests.launch.waiting import wait_for

BAPS_FED = [sys.executable, "-m", "baps_fed.cli"]


def _watch(tmp_path: Path, lines: list[str]) -> tuple[LogWatcher, list[str]]:
    said: list[str] = []
    terminal = SiteTerminal("hospital-a", "127.0.0.1:1", tls=True)
    terminal.say = said.append  # type: ignore[method-assign]
    terminal.connection_failed = lambda: said.append("connection failed")  # type: ignore[method-assign]
    log = tmp_path / "supernode.log"
    log.write_text("old line from an earlier start: Connection successful\n")
    watcher = LogWatcher(log, terminal)
    with open(log, "a") as f:
        f.write("".join(f"\x1b[92mINFO \x1b[0m:      {line}\n" for line in lines))
    watcher.poll()
    return watcher, said


def test_flowers_log_lines_become_causes(tmp_path):
    watcher, said = _watch(
        tmp_path,
        ["Starting Flower SuperNode", "SSL/TLS handshake error detected.", "Exit Code: 305",
         "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"],
    )  # fmt: skip
    assert watcher.tail() == WRONG_CA and said == []  # only this start's lines count
    watcher, _ = _watch(tmp_path, ["[SSL: WRONG_VERSION_NUMBER] wrong version number"])
    assert watcher.tail() == TLS_TO_PLAIN
    watcher, said = _watch(tmp_path, ["[code: 2004] Failed to activate SuperNode."])
    assert watcher.not_registered
    watcher, said = _watch(tmp_path, ["Connection attempt failed, retrying in 0.3 seconds"] * 3)
    assert said == ["connection failed"] and watcher.failures == 3  # said once, counted each
    # connected: Flower says so only by logging the node's ID (its "Connection successful"
    # comes only after failed tries, and before the node is accepted)
    watcher, said = _watch(tmp_path, ["Connection successful after 2.05 seconds and 3 tries."])
    assert said == [] and not watcher.connected
    watcher, said = _watch(tmp_path, ["SuperNode ID: 1319275125", "Connection successful af"])
    assert said == [
        "connected to the coordinator at 127.0.0.1:1; waiting for a run",
        "connected again to the coordinator at 127.0.0.1:1",
    ]
    watcher, said = _watch(tmp_path, [
        "Traceback (most recent call last):",
        "ssl.SSLError: no start line: cadata does not contain a certificate (_ssl.c:4020)",
        "SuperNode terminated gracefully.",
    ])  # fmt: skip
    assert watcher.failed and "its TLS setup failed (no start line" in watcher.tail()
    watcher, _ = _watch(tmp_path, ["Exit Code: 303", "Node authentication needs TLS."])
    assert "Exit Code: 303: Node authentication needs TLS." in watcher.tail()


def test_the_probe_tells_nothing_listening_from_tls_spoken_to_a_plain_site(tmp_path):
    port = free_port()
    assert "nothing answers at" in probe(f"127.0.0.1:{port}", tls=False)
    certs = tmp_path / "certs"
    make_pilot_certs(certs, [], ["hospital-a"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)

        def handshake():
            conn, _ = server.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=handshake, daemon=True)
        thread.start()
        assert probe(f"127.0.0.1:{server.getsockname()[1]}", tls=False) == PLAIN_TO_TLS
        thread.join(timeout=10)


def test_a_ca_that_is_no_certificate_is_refused_before_anything_loads(tmp_path, capsys):
    """``baps-fed site`` checks --ca (and --key) first: one line, exit 2, no FM or data
    loaded (before, a CA that was no certificate left the site "ready" and silent)."""
    not_a_cert = tmp_path / "ca.crt"
    not_a_cert.write_text("this is not a certificate\n")
    base = ["site", "--superlink", "127.0.0.1:1", "--name", "hospital-a", "--data", "fundus",
            "--out", str(tmp_path / "site")]  # fmt: skip
    # the real command, as typed
    done = subprocess.run(
        BAPS_FED + [*base, "--ca", str(not_a_cert)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line
    assert f"--ca {not_a_cert}: not a PEM certificate (no start line" in done.stderr
    assert "ready" not in done.stdout and "cannot start" not in done.stdout  # nothing loaded
    make_pilot_certs(tmp_path / "certs", [], ["hospital-a"])
    for flags, said in [
        (["--ca", str(tmp_path / "no.crt")], f"--ca {tmp_path / 'no.crt'}: no such file"),
        (["--ca", str(tmp_path / "certs" / "ca.crt"), "--key", str(tmp_path / "no-key")],
         f"--key {tmp_path / 'no-key'}: no such file"),
    ]:  # fmt: skip
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert said in err and err.strip().count("\n") == 0, err


def test_a_supernode_that_fails_on_tls_and_hangs_is_stopped_and_said(tmp_path):
    """Flower's SuperNode given a CA that is no certificate logs ssl.SSLError and stays
    alive; the site says why, stops it (by PID) and ends with a nonzero status."""
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    said: list[str] = []
    terminal = SiteTerminal("hospital-a", f"127.0.0.1:{free_port()}", tls=True)
    terminal.say = said.append  # type: ignore[method-assign]
    settings = SiteSettings(terminal.superlink, {"site-name": "hospital-a", "data": "fundus"},
                            tmp_path / "site", ca_cert=bad)  # fmt: skip
    result: dict = {}
    with ProcessGroup() as group:
        thread = threading.Thread(
            target=lambda: result.update(status=supervise_site(settings, group, terminal=terminal)),
            daemon=True,
        )
        thread.start()
        thread.join(timeout=180)
        assert not thread.is_alive(), "the site hung"
        assert group.pids() == []  # its SuperNode was stopped
    assert result["status"] != 0
    assert any("its SuperNode failed and hung, so it was stopped: its TLS setup failed (no "
               "start line" in line for line in said), said  # fmt: skip
    # the site's folder, its node config (which names the data) and the SuperNode's log
    folder = tmp_path / "site"
    assert {"node_config.toml", "supernode.log"} <= {p.name for p in folder.iterdir()}
    assert all(p.stat().st_mode & 0o077 == 0 for p in [folder, *folder.rglob("*")])


def _start(group: ProcessGroup, name: str, folder: Path, args: list[str]) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return group.start(name, BAPS_FED + args, dict(os.environ), folder / "out.log")


def _site_args(name: str, port: int, folder: Path, fm: str, *tls: str) -> list[str]:
    return ["site", "--superlink", f"127.0.0.1:{port}", "--name", name, "--data", "fundus",
            "--n", "12", "--fm", fm, "--threads", "1", "--out", str(folder), *tls]  # fmt: skip


def _said(folder: Path) -> str:
    return (folder / "out.log").read_text(errors="replace")


def test_a_site_says_why_it_cannot_take_part_and_a_pilot_runs_to_its_end(tmp_path, fm_spec):
    """Bad data path, wrong CA, TLS mismatch: each site's terminal names the cause and what to
    do; then two good sites train, report each round, and exit when the run has ended."""
    certs, other = tmp_path / "certs", tmp_path / "other-ca"
    make_pilot_certs(certs, [], ["hospital-a", "hospital-b"])
    make_pilot_certs(other, [], ["hospital-a"])
    port = free_port()
    good = {n: ["--ca", str(certs / "ca.crt"), "--key", str(certs / "nodes" / n)]
            for n in ("hospital-a", "hospital-b")}  # fmt: skip
    with ProcessGroup() as group:
        bad_data = _site_args("hospital-x", port, tmp_path / "x", fm_spec, "--insecure")
        bad_data[bad_data.index("fundus")] = str(tmp_path / "DOE_JOHN_1970")
        missing = _start(group, "bad data", tmp_path / "x", bad_data)
        coordinator = _start(group, "coordinator", tmp_path / "c", [
            "coordinator", "--out", str(tmp_path / "c" / "run"), "--certs", str(certs),
            "--register", str(certs / "nodes" / "hospital-a.pub"),
            str(certs / "nodes" / "hospital-b.pub"), "--port", str(port), "--rounds", "2",
            "--local-steps", "1", "--config", "batch-size=2", "sp-avg=2",
        ])  # fmt: skip
        assert missing.wait(timeout=120) == 2
        said = _said(tmp_path / "x")
        assert "hospital-x: cannot start:" in said and "DOE_JOHN_1970" in said, said
        wait_for(lambda: b"Fleet API on" in (tmp_path / "c" / "out.log").read_bytes(), 120,
                 "the coordinator")  # fmt: skip

        wrong_ca = ["--ca", str(other / "ca.crt"), "--key", str(certs / "nodes" / "hospital-a")]
        wrong = _start(group, "wrong CA", tmp_path / "w", _site_args(
            "hospital-a", port, tmp_path / "w", fm_spec, *wrong_ca))  # fmt: skip
        plain = _start(group, "insecure", tmp_path / "p", _site_args(
            "hospital-b", port, tmp_path / "p", fm_spec, "--insecure"))  # fmt: skip
        assert wrong.wait(timeout=120) != 0
        assert WRONG_CA in _said(tmp_path / "w"), _said(tmp_path / "w")
        wait_for(lambda: PLAIN_TO_TLS in _said(tmp_path / "p"), 120, "the TLS mismatch")
        group.stop_one(plain)

        sites = [
            _start(group, n, tmp_path / n, _site_args(n, port, tmp_path / n, fm_spec, *tls))
            for n, tls in good.items()
        ]
        assert coordinator.wait(timeout=420) == 0, _said(tmp_path / "c")
        for name, site in zip(good, sites, strict=True):
            assert site.wait(timeout=180) == 0  # it left once the run had ended
            said = _said(tmp_path / name)
            assert re.search(rf"site {name}: round 2 trained: .* FM queries", said), said
            assert re.search(rf"site {name}: round 2 evaluated: Dice \d\.\d+", said), said
            assert f"site {name}: the run has ended; exiting" in said
            assert f"site {name}: connected to the coordinator at 127.0.0.1:{port}" in said
        report = (tmp_path / "c" / "run" / "report.md").read_text()
        assert "hospital-a" in report and "hospital-b" in report
        assert "offline" not in _said(tmp_path / "c")  # every site's last reply arrived
