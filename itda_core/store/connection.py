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
writer's transaction is closed. Intent files of dead processes (a killed writer) are ignored and removed,
and readers hold back for a fresh intent only (:data:`YIELD_WINDOW`): a writer still waiting after that is
blocked by someone else (a read-only session left open), and readers stalling behind it would help nobody.

A connection that has to wait says so once (who holds the lock, when DuckDB names the process, and for how
long it will wait), so a wait is never silent.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from itda_core.errors import ITDAError
from itda_core.store.schema import check_schema

DEFAULT_STORE = Path("data/itda.duckdb")
ENV_STORE = "ITDA_STORE"  # the environment variable naming the store the dashboard shows (``itda serve`` sets it)

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


YIELD_WINDOW = 2.0  # seconds a reader holds back for a writer's intent after it was announced
WRITABLE_TIMEOUT = 10.0  # seconds `itda train --store` waits for the write lock before training
_HOLDER = re.compile(r"held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def _stderr(line: str) -> None:
    """Default notice: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Retry:
    """Backoff for a locked store: first sleep, cap, total time before giving up, and the one-line notice
    given once the wait has lasted ``notice_after`` seconds (None: say nothing)."""

    timeout: float = 30.0
    first_delay: float = 0.005
    max_delay: float = 0.2
    notice: Callable[[str], None] | None = _stderr
    notice_after: float = 0.0


def is_lock_error(err: BaseException) -> bool:
    """True for DuckDB's "file locked by another process (or connection)" errors: worth a retry."""
    return isinstance(err, duckdb.Error) and any(marker in str(err) for marker in _RETRYABLE)


def lock_holder(err: BaseException) -> str:
    """Who holds the lock, as DuckDB's error names it ("PID 123 (/usr/bin/python3)"), else a vaguer phrase."""
    match = _HOLDER.search(str(err))
    if match:
        return f"PID {match['pid']} ({match['program']})"
    if "different configuration" in str(err):
        return "another connection in this process"
    return "another process"


def _open(path: Path, read_only: bool, retry: Retry) -> duckdb.DuckDBPyConnection:
    """duckdb.connect with backoff while another process holds a conflicting lock."""
    start = time.monotonic()
    deadline = start + retry.timeout
    delay = retry.first_delay
    told = retry.notice is None
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as err:
            if not is_lock_error(err):
                raise store_error(path, err) from err
            now = time.monotonic()
            if now >= deadline:
                who = "being written" if read_only else "in use"
                raise StoreBusy(
                    f"store {path} was {who} by {lock_holder(err)} for more than {retry.timeout:.0f} s; close "
                    "that session (a read-only one counts for writers) or try again when it finishes"
                ) from err
            if not told and now - start >= retry.notice_after:
                told = True
                retry.notice(f"store {path} is locked by {lock_holder(err)}; waiting up to "
                             f"{max(0.0, deadline - now):.0f} s more for it (Ctrl-C to stop)")
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


def writer_waiting(path: Path, window: float | None = None) -> bool:
    """True while another live process announced a write to this store less than ``window`` seconds ago
    (default :data:`YIELD_WINDOW`); intents of dead processes are removed."""
    window = YIELD_WINDOW if window is None else window
    waiting = False
    for intent in _intent_files(path):
        try:
            pid = int(intent.name.rsplit(".", 1)[1])
            age = time.time() - intent.stat().st_mtime
        except (ValueError, OSError):
            continue
        if pid == os.getpid():
            continue
        if not _alive(pid):
            intent.unlink(missing_ok=True)
        elif age < window:
            waiting = True
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
    """A read-only connection for one page or query (waits while a writer commits, saying so after 1 s);
    closed on exit."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(
            f"no store at {path}; build one with `itda demo-build` or `itda train --store {path}`"
        )
    start = time.monotonic()
    _yield_to_writers(path, start + timeout / 2)
    con = _open(path, True, Retry(timeout=max(1.0, timeout - (time.monotonic() - start)), notice_after=1.0))
    try:
        check_schema(con, str(path), writable=False)
        yield con
    except duckdb.Error as err:  # a query on a damaged file, or any other DuckDB failure: one line
        raise store_error(path, err) from err
    finally:
        con.close()


@contextmanager
def connect_write(
    path: str | Path = DEFAULT_STORE, timeout: float = 600.0, notice: Callable[[str], None] | None = _stderr
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection (creating the file and schema if needed), held only for one transaction; a
    wait for the lock is announced once through ``notice``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    intent = path.with_name(f"{path.name}.write-intent.{os.getpid()}")
    intent.touch()
    try:
        con = _open(path, False, Retry(timeout=timeout, notice=notice))
        try:
            check_schema(con, str(path), writable=True)
            yield con
        except duckdb.Error as err:  # the transaction has rolled back; say what happened in one line
            raise store_error(path, err) from err
        finally:
            con.close()
    finally:
        intent.unlink(missing_ok=True)


def check_writable(
    path: str | Path, timeout: float | None = None, notice: Callable[[str], None] | None = _stderr
) -> None:
    """Fail fast, before slow work, unless the store can be written now: its folder and file are writable
    and the write lock is free within ``timeout`` s (default :data:`WRITABLE_TIMEOUT`); creates or migrates it."""
    path = Path(path)
    timeout = WRITABLE_TIMEOUT if timeout is None else timeout
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the folder of store {path}: {err.strerror}; use another --store") from err
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"store {path} is not writable (permissions of it or its folder); use another --store")
    try:
        with connect_write(path, timeout=timeout, notice=notice):
            pass
    except StoreBusy as err:
        raise StoreBusy(f"{err}; nothing was trained yet") from err


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
