"""Temporary folders that name their owner, so that a later run can remove the ones a killed process left.

A killed ``itda index`` leaves its activation spills (``.itda-index-*``), a killed save its ``.NAME.tmp-*``
folder, and a kill between :meth:`ITDA.save`'s two renames leaves the previous dictionary only as
``.NAME.old-*``. Each such folder's name carries its owner, ``h<host>.<pid>.<start>`` (a hash of the host
name, the process id and the process start time in centiseconds), written atomically with the folder
itself. A folder is stale when its owner is gone: same host, and no process with that id, or one that
started at another time (the id was reused). Folders of another host, or of a live owner, are never touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_PATTERN = r"h(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.(?P<start>\d+)"
INDEX_PREFIX = ".itda-index-"
_START_SLACK = 100  # centiseconds: start times read twice may differ by rounding


def host_tag() -> str:
    """Eight hex digits naming this machine (folder names stay short and free of odd characters)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in centiseconds since the epoch; None when it does not exist or cannot
    be read."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a declared dependency
        return _proc_start(pid)
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # pragma: no cover - e.g. access denied
        return None


def _proc_start(pid: int) -> int | None:  # pragma: no cover - used only without psutil
    """Process start time from /proc (Linux), in centiseconds since the epoch."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return round((boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")) * 100)
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def _pid_exists(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """The process that made a temporary folder: host tag, process id and start time (0 = not recorded)."""

    host: str
    pid: int
    start: int

    @property
    def tag(self) -> str:
        return f"h{self.host}.{self.pid}.{self.start}"

    def alive(self) -> bool:
        """True unless the owner is provably gone (a folder of another host always counts as alive)."""
        if self.host != host_tag():
            return True
        if self.pid == os.getpid():
            return True
        if not _pid_exists(self.pid):
            return False
        started = process_start(self.pid)
        return not (self.start and started is not None and abs(started - self.start) > _START_SLACK)


def current_owner() -> Owner:
    """This process as an owner (read again after a fork, since the pid changes)."""
    return Owner(host_tag(), os.getpid(), process_start(os.getpid()) or 0)


def owner_in(name: str) -> Owner | None:
    """The owner recorded in a temporary folder's name, or None when the name records none."""
    match = re.search(OWNER_PATTERN, name)
    if match is None:
        return None
    return Owner(match["host"], int(match["pid"]), int(match["start"]))


def owned_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><owner>-<random>`` that names this process as its owner."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{current_owner().tag}-", dir=parent))


def _legacy_owner(name: str) -> Owner | None:
    """Saves before owners were recorded named the old folder ``.NAME.old-<pid>`` (this host, no start time)."""
    match = re.fullmatch(r"\..+\.old-(\d+)", name)
    return Owner(host_tag(), int(match[1]), 0) if match else None


def folder_owner(folder: Path) -> Owner | None:
    """Who made a leftover folder (from its name), or None if its name does not say."""
    return owner_in(folder.name) or _legacy_owner(folder.name)


def stale(folder: Path) -> bool:
    """Whether ``folder`` names an owner and that owner is gone."""
    owner = folder_owner(folder)
    return owner is not None and not owner.alive()


def remove_stale(parent: Path, pattern: str) -> list[Path]:
    """Remove the folders in ``parent`` matching the glob ``pattern`` whose owner is gone; returns them.
    Folders without a recorded owner, of a live owner or of another host are left alone."""
    removed = []
    try:
        candidates = sorted(parent.glob(pattern))
    except OSError:
        return removed
    for folder in candidates:
        if folder.is_dir() and not folder.is_symlink() and stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
                log.info("removed %s, left by a process that is gone", folder)
    return removed


def remove_stale_spills(store: Path) -> list[Path]:
    """Remove the ``.itda-index-*`` activation spills beside ``store`` that killed index runs left."""
    return remove_stale(Path(store).parent, f"{INDEX_PREFIX}*")
