"""The data dir and every file the agent writes are its user's alone.

Rules that live here:
- The agent runs with umask 0077 (`restrict_umask`, first thing at start), so
  whatever it creates, SQLite's ``-wal``/``-shm`` included, is 0600 or 0700.
  Child processes (event handlers) get the operator's umask back
  (`child_umask`): they are the operator's scripts, as under serf.
- The data dir and everything in it must belong to the agent's user. An entry
  owned by another uid is a start-up error (OpenSSH's StrictModes): that user
  can read it, or could have planted it, whatever its mode.
- Looser modes left by an older version or a copy are tightened at start
  (directories 0700, files lose every group/other bit), one log line per
  fix. Symlinks are neither followed nor changed: only the owner could have
  made one under a dir that is now 0700.
- Nothing here encrypts: file modes are what keep the gossip keyring from
  other local users (see docs/security.md for what they do not stop).
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..logs import log

__all__ = [
    "AGENT_UMASK",
    "DataDirError",
    "ModeFix",
    "child_umask",
    "create_private_file",
    "open_private_append",
    "prepare_data_dir",
    "restrict_umask",
    "write_private_file",
]

_log = logging.getLogger("meshnode.datadir")

# Group and other get nothing: the data dir holds the gossip keyring.
AGENT_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
_PERMISSION_BITS = 0o7777
# Setuid, setgid, sticky and every group/other bit.
_LOOSE_BITS = 0o7077

# The umask the agent was started with, once `restrict_umask` replaced it.
_inherited_umask: int | None = None


class DataDirError(Exception):
    """The data dir (or a file the agent writes) is not safely the agent's (one line)."""


@dataclass(frozen=True, slots=True)
class ModeFix:
    """A mode tightened at start: what, from, to."""

    path: Path
    old_mode: int
    new_mode: int


def restrict_umask() -> int:
    """Set the process umask to `AGENT_UMASK`; the umask it had before."""
    global _inherited_umask
    previous = os.umask(AGENT_UMASK)
    if _inherited_umask is None:
        _inherited_umask = previous
    return previous


def child_umask() -> int:
    """The umask for a child process: the operator's, or -1 (inherit) when never restricted."""
    return -1 if _inherited_umask is None else _inherited_umask


def prepare_data_dir(path: Path) -> list[ModeFix]:
    """Create `path` 0700 or make an existing one private; the fixes made (each logged).

    Raises `DataDirError` when `path` is not a directory or when it or any
    entry under it belongs to another user.
    """
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        top = os.stat(path)
    except FileExistsError:
        raise DataDirError(f"the data dir {path} is not a directory") from None
    except OSError as exc:
        raise DataDirError(f"cannot create the data dir {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(top.st_mode):
        raise DataDirError(f"the data dir {path} is not a directory")
    _check_owner(path, top)
    fixes: list[ModeFix] = []
    # The top first: once it is 0700, no other user can change what is under it.
    _tighten(path, top, fixes)
    _walk(path, fixes)
    for fix in fixes:
        log(
            _log,
            "warning",
            "tightened a mode in the data dir",
            path=str(fix.path),
            old_mode=f"{fix.old_mode:04o}",
            new_mode=f"{fix.new_mode:04o}",
        )
    return fixes


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists.

    SQLite gives ``-wal`` and ``-shm`` the mode of the database file, so a
    database created this way stays private whatever the umask.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, mode 0600 whatever the umask.

    Written to a sibling temporary file, fsynced and renamed over `path`, so
    a crash leaves the old content or the new, never half of either.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # a leftover temporary file kept its mode
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def open_private_append(path: Path) -> IO[str]:
    """Open `path` to append text: created 0600, an existing regular file made private.

    Raises `DataDirError` when the file belongs to another user, `OSError`
    when it cannot be opened.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        # A terminal, /dev/stdout or a pipe is the operator's choice, not ours to chmod.
        if stat.S_ISREG(st.st_mode):
            _check_owner(path, st)
            new_mode = _private_mode(st.st_mode)
            if new_mode is not None:
                os.fchmod(fd, new_mode)
                log(
                    _log,
                    "warning",
                    "tightened the mode of a file the agent writes",
                    path=str(path),
                    old_mode=f"{stat.S_IMODE(st.st_mode):04o}",
                    new_mode=f"{new_mode:04o}",
                )
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def _walk(directory: Path, fixes: list[ModeFix]) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise DataDirError(f"cannot list {directory}: {exc.strerror or exc}") from None
    for entry in entries:
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since the listing
        except OSError as exc:
            raise DataDirError(f"cannot stat {path}: {exc.strerror or exc}") from None
        _check_owner(path, st)
        if stat.S_ISLNK(st.st_mode):
            continue
        _tighten(path, st, fixes)
        if stat.S_ISDIR(st.st_mode):
            _walk(path, fixes)


def _private_mode(mode: int) -> int | None:
    """The private mode for an entry with `mode`, None when it already is private."""
    old = stat.S_IMODE(mode)
    if stat.S_ISDIR(mode):
        return None if old == PRIVATE_DIR_MODE else PRIVATE_DIR_MODE
    return None if old & _LOOSE_BITS == 0 else old & ~_LOOSE_BITS & _PERMISSION_BITS


def _tighten(path: Path, st: os.stat_result, fixes: list[ModeFix]) -> None:
    new_mode = _private_mode(st.st_mode)
    if new_mode is None:
        return
    try:
        os.chmod(path, new_mode)
    except OSError as exc:
        raise DataDirError(f"cannot make {path} private: {exc.strerror or exc}") from None
    fixes.append(ModeFix(path, stat.S_IMODE(st.st_mode), new_mode))


def _check_owner(path: Path, st: os.stat_result) -> None:
    euid = os.geteuid()
    if st.st_uid != euid:
        raise DataDirError(
            f"{path} belongs to {_user(st.st_uid)}, but the agent runs as {_user(euid)}:"
            " chown the data dir (recursively) to the agent's user"
        )


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
