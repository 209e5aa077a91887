"""Export folders written atomically: built in a temporary folder owned by this process (a later run removes it
if this one is killed) that replaces ``out`` only when complete; a non-empty ``out`` is replaced only when asked."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from itda_core.errors import ITDAError
from itda_core.leftovers import current_owner, owned_folder, remove_stale


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing non-empty ``out`` unless ``overwrite``."""
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    if out.is_file() or out.is_symlink() or any(out.iterdir()):
        raise ITDAError(f"{out} exists and is not empty: pass overwrite=True to replace it")


def remove(path: Path) -> None:
    """Remove a file or folder if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` (named after this process, so a later run removes it if this one is
    killed) that replaces ``out`` when the block succeeds; on failure ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, f".{out.name}.*-h*")
    tmp = owned_folder(out.parent, f".{out.name}.tmp-")
    try:
        yield tmp
        check_out(out, overwrite)
        old = out.parent / f".{out.name}.old-{current_owner().tag}"
        if out.exists() or out.is_symlink():
            os.replace(out, old)
        os.replace(tmp, out)
        remove(old)
    finally:
        remove(tmp)
