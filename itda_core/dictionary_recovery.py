"""Recovery from killed dictionary saves: put a dictionary moved aside back, remove leftovers of dead owners.

A save (:meth:`itda_core.dictionary.ITDA.save`) writes ``.NAME.tmp-<owner>-*``, moves the old dictionary to
``.NAME.old-<owner>-*`` and renames the new one into place; a kill between those steps leaves these folders.
Each names its owner (:mod:`itda_core.leftovers`), so only those of a process that is gone are touched.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from pathlib import Path

from itda_core.errors import ITDAError
from itda_core.leftovers import OWNER_PATTERN, folder_owner, remove_stale, stale

log = logging.getLogger(__name__)

_LEFTOVER = re.compile(rf"\.(?P<name>.+)\.(?:tmp|old)-(?:{OWNER_PATTERN}-[0-9a-z_]+|\d+)")
_SAVE_WAIT = 2.0  # seconds to wait for a live save to finish its second rename


def _restore(path: Path, olds: list[Path]) -> None:
    """Rename the newest of ``olds`` (complete dictionaries a save moved aside) back to ``path``."""
    newest = max(olds, key=lambda p: p.stat().st_mtime)
    try:
        os.replace(newest, path)
    except OSError as err:
        if not path.exists():
            raise ITDAError(f"{path} is missing and {newest} holds its last complete version, but it cannot be "
                            f"renamed back ({err.strerror or err}); rename it by hand") from err
    log.warning("restored %s from %s (a save was killed between its two renames)", path, newest.name)


def recover(path: str | Path) -> None:
    """Repair what killed saves of dictionary ``path`` left: put the previous dictionary back from
    ``.NAME.old-*`` when ``path`` is missing, and remove the ``.NAME.tmp-*``/``.NAME.old-*`` folders whose
    owner is gone. A live save is given a moment to finish; folders of live owners are never touched."""
    path = Path(path)
    parent = path.parent
    pattern = f".{glob.escape(path.name)}.old-*"
    deadline = time.monotonic() + _SAVE_WAIT
    while not path.exists():
        olds = [p for p in parent.glob(pattern) if p.is_dir() and folder_owner(p) is not None]
        if not olds:
            break
        dead = [p for p in olds if stale(p)]
        if dead:
            _restore(path, dead)
            break
        if time.monotonic() > deadline:
            owners = ", ".join(str(folder_owner(p).pid) for p in olds)  # type: ignore[union-attr]
            raise ITDAError(f"{path} is being replaced by a save in process {owners}, which has not finished; "
                            f"wait for it, or if it hangs, stop it and run again")
        time.sleep(0.05)
    if path.exists():
        remove_stale(parent, f".{glob.escape(path.name)}.old-*")
    remove_stale(parent, f".{glob.escape(path.name)}.tmp-*")


def recover_folder(folder: str | Path) -> None:
    """:func:`recover` every dictionary in ``folder`` that a killed save left leftovers of."""
    folder = Path(folder)
    try:
        names = {m["name"] for p in folder.glob(".*") if (m := _LEFTOVER.fullmatch(p.name))}
    except OSError:
        return
    for name in sorted(names):
        recover(folder / name)
