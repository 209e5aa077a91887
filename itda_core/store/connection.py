"""Opening the store: short-lived connections with retry, so a writer and readers can take turns.

DuckDB lets one process open a file read-write, or any number of processes open it read-only, never
both at once. The store therefore never keeps a connection open for long: a writer connects for one
dictionary's transaction, a reader (the dashboard) connects for one page or query. Whoever finds the
file locked sleeps a few milliseconds (doubling up to a cap, with jitter) and tries again, so that on
both sides a busy store costs a short wait, never a lock error. The same applies inside one process,
where DuckDB refuses a read-only and a read-write connection to one file at the same time.

Writers go first: a reader that keeps reconnecting (a dashboard refreshing) could otherwise hold the
lock nearly all the time and starve a writer's retries. A waiting writer drops a small intent file
(``<store>.write-intent.<pid>``); readers hold back while one exists, then take their turn once the
writer's transaction is closed. Intent files of dead processes (a killed writer) are ignored and removed.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from itda_core.errors import ITDAError
from itda_core.store.schema import check_schema

DEFAULT_STORE = Path("data/itda.duckdb")

_RETRYABLE = (
    "Could not set lock",
    "Conflicting lock",
    "different configuration than existing connections",
)


class StoreError(ITDAError):
    """A store problem the user can act on (missing file, busy for too long, wrong corpus...)."""


class StoreBusy(StoreError):
    """The store stayed locked by another process for longer than the timeout."""


class StoreDamaged(StoreError):
    """DuckDB cannot read part of the store file (cut short, overwritten, or corrupt)."""


# DuckDB errors that mean the file itself is bad (an IOException of a full or read-only disk is not).
_DAMAGE_TYPES = (duckdb.InternalException, duckdb.SerializationException, duckdb.FatalException)
_NOT_DAMAGE = ("No space left", "Permission denied", "Read-only file system", "Disk quota")
DAMAGED_HINT = (
    "restore it from a copy, or rebuild it with `itda demo-build --rebuild` (or delete the file and rerun "
    "`itda train --store`)"
)


def _first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error message, cut to ``limit`` characters."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def store_error(path: str | Path, err: duckdb.Error) -> StoreError:
    """A one-line StoreError for a DuckDB error met while using the store at ``path`` (damage, disk, other)."""
    what = _first_line(err)
    if is_lock_error(err):
        return StoreBusy(f"store {path} is locked by another process ({what}); try again when it finishes")
    if isinstance(err, duckdb.IOException) and any(marker in str(err) for marker in _NOT_DAMAGE):
        return StoreError(f"cannot write store {path}: {what}; free space or fix its permissions and run again")
    if isinstance(err, (duckdb.IOException, *_DAMAGE_TYPES)) or "invalidated" in str(err):
        return StoreDamaged(f"store {path} is damaged (DuckDB: {what}); {DAMAGED_HINT}")
    return StoreError(f"store {path} could not be read or written (DuckDB: {what}); check it with "
                      f"`itda store-info --store {path}`, and if it is damaged {DAMAGED_HINT}")


@dataclass
class Retry:
    """Backoff for a locked store: first sleep, cap, and total time before giving up."""

    timeout: float = 30.0
    first_delay: float = 0.005
    max_delay: float = 0.2


def is_lock_error(err: BaseException) -> bool:
    """True for DuckDB's "file locked by another process (or connection)" errors: worth a retry."""
    return isinstance(err, duckdb.Error) and any(marker in str(err) for marker in _RETRYABLE)


def _open(path: Path, read_only: bool, retry: Retry) -> duckdb.DuckDBPyConnection:
    """duckdb.connect with backoff while another process holds a conflicting lock."""
    deadline = time.monotonic() + retry.timeout
    delay = retry.first_delay
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as err:
            if not is_lock_error(err):
                raise store_error(path, err) from err
            if time.monotonic() >= deadline:
                who = "being written by another process" if read_only else "in use by another process"
                raise StoreBusy(
                    f"store {path} was {who} for more than {retry.timeout:.0f} s; try again when it finishes"
                ) from err
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, retry.max_delay)


def _intent_files(path: Path) -> list[Path]:
    """Write-intent files of this store."""
    return list(path.parent.glob(f"{path.name}.write-intent.*"))


def _alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def writer_waiting(path: Path) -> bool:
    """True while another live process has announced a write to this store (stale intents are removed)."""
    waiting = False
    for intent in _intent_files(path):
        try:
            pid = int(intent.name.rsplit(".", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            waiting = True
        else:
            intent.unlink(missing_ok=True)
    return waiting


def _yield_to_writers(path: Path, deadline: float) -> None:
    """Sleep while a writer waits for the lock (until ``deadline``; then try anyway)."""
    delay = 0.005
    while time.monotonic() < deadline and writer_waiting(path):
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


@contextmanager
def connect_readonly(
    path: str | Path = DEFAULT_STORE, timeout: float = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection for one page or query (waits while a writer commits); closed on exit."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(
            f"no store at {path}; build one with `itda demo-build` or `itda train --store {path}`"
        )
    start = time.monotonic()
    _yield_to_writers(path, start + timeout / 2)
    con = _open(path, True, Retry(timeout=max(1.0, timeout - (time.monotonic() - start))))
    try:
        check_schema(con, str(path), writable=False)
        yield con
    except duckdb.Error as err:  # a query on a damaged file, or any other DuckDB failure: one line
        raise store_error(path, err) from err
    finally:
        con.close()


@contextmanager
def connect_write(
    path: str | Path = DEFAULT_STORE, timeout: float = 600.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection (creating the file and schema if needed), held only for one transaction."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    intent = path.with_name(f"{path.name}.write-intent.{os.getpid()}")
    intent.touch()
    try:
        con = _open(path, False, Retry(timeout=timeout))
        try:
            check_schema(con, str(path), writable=True)
            yield con
        except duckdb.Error as err:  # the transaction has rolled back; say what happened in one line
            raise store_error(path, err) from err
        finally:
            con.close()
    finally:
        intent.unlink(missing_ok=True)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT; any exception (Ctrl-C included) rolls back, so the store is left as it was."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # an unusable connection is discarded by close()
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
