"""``itda demo`` stopped from outside (a service manager's SIGTERM, a closed terminal's SIGHUP, even SIGKILL) stops
its dashboard child too: it once left Streamlit serving :8501 as an orphan, so the next ``make demo`` found the
port taken. The demo runs in a subprocess with a cheap child (a sleeping Python) and a fake store build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Runs `itda demo` with the dashboard replaced by a sleeping child that writes its pid, and the store build by
# one that records its phase (and, for phase "build", never ends).
DRIVER = r"""
import sys, time, types
from dataclasses import dataclass
from pathlib import Path

pidfile, phase, store = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
marker = Path(str(pidfile) + ".phase")

import itda_core.cli.dashboard as dash

write_pid = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
sleeper = [sys.executable, "-c", write_pid]
dash.serve_command_line = lambda store, port=8501, address="localhost": sleeper


@dataclass
class DemoConfig:
    store: object
    device: str = "auto"
    rebuild: bool = False


class Report:
    def summary(self):
        return "built"


def build_demo(config):
    while not pidfile.exists():  # the dashboard child is up
        time.sleep(0.05)
    marker.write_text(phase)
    if phase == "build":
        time.sleep(600)
    return Report()


fake = types.ModuleType("itda_core.jobs.demo")
fake.DemoConfig, fake.build_demo = DemoConfig, build_demo
import itda_core.store  # the real package, then the fake build in place of its demo module
sys.modules["itda_core.jobs.demo"] = fake
from itda_core.cli.app import main

sys.argv = ["itda", "demo", "--store", store]
main()
"""


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` holds ``text`` (the demo reached that point), failing if the demo ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip() == text:
            return
        assert proc.poll() is None, f"the demo ended early (exit {proc.returncode})"
        time.sleep(0.05)
    raise AssertionError(f"the demo did not reach {text!r}")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether ``pid`` stops running within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
@pytest.mark.parametrize(
    ("phase", "sig"),
    [("build", signal.SIGTERM), ("serve", signal.SIGTERM), ("build", signal.SIGHUP), ("build", signal.SIGKILL)],
)
def test_stopping_the_demo_stops_its_dashboard(tmp_path, phase, sig):
    pidfile = tmp_path / "child.pid"
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen([sys.executable, "-c", DRIVER, str(pidfile), phase, str(tmp_path / "itda.duckdb")],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    child = None
    try:
        _wait_for(Path(str(pidfile) + ".phase"), phase, demo)
        child = int(pidfile.read_text())
        assert _running(child)
        demo.send_signal(sig)
        code = demo.wait(timeout=60)
        assert code != 0
        assert _gone(child), f"the dashboard child {child} outlived `itda demo` stopped by {sig.name}"
        if sig != signal.SIGKILL:
            assert code == 128 + sig, (tmp_path / "demo.log").read_text()[-2000:]
    finally:
        if demo.poll() is None:
            demo.kill()
        if child is not None and _running(child):  # only the child this test started
            os.kill(child, signal.SIGKILL)
        log.close()
