"""The data dir is the agent user's alone: modes, ownership, umask; unit and real processes.

An unprivileged user is played by ``nobody`` running ``cat`` (tests run as
root). The data dirs live under a world-traversable parent, and each test
first shows that ``nobody`` can read a 0644 file there: a failed read is the
data dir's doing, not pytest's 0700 tmp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshnode.events.handler import EventHandlerRunner
from meshnode.events.user_events import UserEvent
from meshnode.intentions.audit import AuditLog
from meshnode.store import datadir
from meshnode.store.datadir import DataDirError, ModeFix, prepare_data_dir, restrict_umask
from meshnode.store.persist import Persistence
from meshnode.testutil import Cluster, wait_for

NOBODY = 65534
OPERATOR_UMASK = 0o022


def readable_by_nobody(path: Path) -> bool:
    """True when the unprivileged user ``nobody`` can read `path`."""
    out = subprocess.run(
        ["cat", str(path)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return out.returncode == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """Relative path -> mode of `root` ("." ) and everything under it."""
    found = {".": mode(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = mode(path)
    return found


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A 0755 directory in /tmp that ``nobody`` can traverse, with a proof that it can."""
    base = Path(tempfile.mkdtemp(prefix="meshnode-datadir-", dir="/tmp"))
    try:
        base.chmod(0o755)
        control = base / "control"
        control.write_text("readable\n")
        control.chmod(0o644)
        assert readable_by_nobody(control), "the test cannot tell a private file from a path"
        yield base
    finally:
        shutil.rmtree(base)


@pytest.fixture
def operator_umask(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The common operator umask 022, and the agent's saved umask forgotten after the test."""
    monkeypatch.setattr(datadir, "_inherited_umask", None)
    old = os.umask(OPERATOR_UMASK)
    try:
        yield OPERATOR_UMASK
    finally:
        os.umask(old)


def test_a_fresh_data_dir_is_created_0700_without_fixes(
    open_parent: Path, operator_umask: int
) -> None:
    path = open_parent / "var" / "meshnode"
    assert prepare_data_dir(path) == []
    assert mode(path) == 0o700
    assert prepare_data_dir(path) == []  # and a second start finds nothing to fix


def test_loose_modes_are_tightened_and_reported(open_parent: Path, operator_umask: int) -> None:
    data = open_parent / "data"
    (data / "ca").mkdir(parents=True)
    data.chmod(0o755)
    (data / "ca").chmod(0o775)
    files = {
        "meshnode.db": 0o644,
        "meshnode.db-wal": 0o666,
        "ca/kek.secret": 0o640,
        "ca/tool": 0o4755,
        "private": 0o600,
        "readonly": 0o400,
    }
    for name, file_mode in files.items():
        (data / name).write_text("secret\n")
        (data / name).chmod(file_mode)
    assert readable_by_nobody(data / "meshnode.db")

    fixes = prepare_data_dir(data)

    assert sorted(fixes, key=lambda f: str(f.path)) == [
        ModeFix(data, 0o755, 0o700),
        ModeFix(data / "ca", 0o775, 0o700),
        ModeFix(data / "ca/kek.secret", 0o640, 0o600),
        ModeFix(data / "ca/tool", 0o4755, 0o700),
        ModeFix(data / "meshnode.db", 0o644, 0o600),
        ModeFix(data / "meshnode.db-wal", 0o666, 0o600),
    ]
    assert modes_under(data) == {
        ".": 0o700,
        "ca": 0o700,
        "meshnode.db": 0o600,
        "meshnode.db-wal": 0o600,
        "ca/kek.secret": 0o600,
        "ca/tool": 0o700,
        "private": 0o600,
        "readonly": 0o400,
    }
    assert not readable_by_nobody(data / "meshnode.db")


def test_a_symlink_in_the_data_dir_is_not_followed(open_parent: Path) -> None:
    outside = open_parent / "shared.conf"
    outside.write_text("x\n")
    outside.chmod(0o644)
    data = open_parent / "data"
    data.mkdir(mode=0o700)
    (data / "link").symlink_to(outside)
    assert prepare_data_dir(data) == []
    assert mode(outside) == 0o644


def test_a_data_dir_of_another_user_is_refused(open_parent: Path) -> None:
    data = open_parent / "data"
    data.mkdir(mode=0o755)
    os.chown(data, NOBODY, NOBODY)
    with pytest.raises(DataDirError, match=r"belongs to uid 65534 \(nobody\), but the agent runs"):
        prepare_data_dir(data)
    assert mode(data) == 0o755  # refused before anything was changed


def test_a_file_of_another_user_in_the_data_dir_is_refused(open_parent: Path) -> None:
    data = open_parent / "data"
    (data / "ca").mkdir(parents=True, mode=0o700)
    planted = data / "ca" / "kek.secret"
    planted.write_bytes(b"k" * 32)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(DataDirError, match=r"kek\.secret belongs to uid 65534"):
        prepare_data_dir(data)


def test_a_data_dir_that_is_a_file_is_refused(open_parent: Path) -> None:
    (open_parent / "data").write_text("")
    with pytest.raises(DataDirError, match="is not a directory"):
        prepare_data_dir(open_parent / "data")


def test_sqlite_files_are_private_whatever_the_umask(
    open_parent: Path, operator_umask: int
) -> None:
    data = open_parent / "data"
    data.mkdir(mode=0o700)
    with Persistence.open(data / "meshnode.db") as db:
        db.save_keyring([b"k" * 32], b"k" * 32)
        names = sorted(p.name for p in data.iterdir())
        assert names == ["meshnode.db", "meshnode.db-shm", "meshnode.db-wal"]
        assert {name: mode(data / name) for name in names} == dict.fromkeys(names, 0o600)
        data.chmod(0o755)  # even with an open directory, the keyring is not readable
        assert not any(readable_by_nobody(data / name) for name in names)


def test_audit_log_is_created_private_and_an_old_one_tightened(
    open_parent: Path, operator_umask: int
) -> None:
    fresh = open_parent / "audit.jsonl"
    AuditLog(fresh).close()
    assert mode(fresh) == 0o600

    old = open_parent / "old-audit.jsonl"
    old.write_text('{"Event":"connect"}\n')
    old.chmod(0o644)
    audit = AuditLog(old)
    audit.record("connect", "db-sidecar-proxy", "web", "db", True, "allow")
    audit.close()
    assert mode(old) == 0o600
    assert len(old.read_text().splitlines()) == 2  # appended, nothing lost


def test_audit_log_to_a_device_keeps_the_device_mode() -> None:
    before = mode(Path("/dev/null"))
    AuditLog(Path("/dev/null")).close()
    assert mode(Path("/dev/null")) == before == 0o666


def test_audit_log_of_another_user_is_refused(open_parent: Path) -> None:
    path = open_parent / "audit.jsonl"
    path.write_text("")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(DataDirError, match=r"audit\.jsonl belongs to uid 65534"):
        AuditLog(path)


async def test_event_handlers_run_with_the_operators_umask(
    open_parent: Path, operator_umask: int
) -> None:
    out = open_parent / "handler-out"
    restrict_umask()
    runner = EventHandlerRunner("web1", lambda: [])
    with trio.fail_after(10):
        code = await runner.run_one(f"umask > {out}", UserEvent("id1", "deploy", b"", 1, "web1"))
    assert code == 0
    assert out.read_text().strip() == "0022"
    assert mode(out) == 0o644
    assert os.umask(0o077) == 0o077  # the agent itself stays private


# Real agents: ``meshnode agent`` processes on loopback.


@pytest.fixture
def cluster(open_parent: Path) -> Iterator[Cluster]:
    c = Cluster(open_parent)
    yield c  # pytest runs the rest after a failed test too
    c.stop_all()


def stop_gracefully(agent_proc: subprocess.Popen[bytes]) -> None:
    agent_proc.send_signal(signal.SIGTERM)
    agent_proc.wait(15)


def test_agent_keeps_its_data_dir_and_every_file_private(cluster: Cluster) -> None:
    agent = cluster.agent(1).start("-signer")
    data = agent.data_dir
    # A signer bootstraps the CA: its root key and the key-encryption secret land in ca/.
    wait_for(lambda: any((data / "ca").glob("root-*.key")), 20.0, "the root key on disk")
    agent.cli("kv", "put", "greeting", "hello")

    modes = modes_under(data)
    assert {"meshnode.db", "meshnode.db-wal", "meshnode.db-shm", "ca/kek.secret"} <= set(modes)
    loose = {
        name: f"{m:04o}"
        for name, m in modes.items()
        if m != (0o700 if (data / name).is_dir() else 0o600)
    }
    assert loose == {}
    for name in ("meshnode.db", "meshnode.db-wal", "ca/kek.secret"):
        assert not readable_by_nobody(data / name), name


def test_agent_tightens_an_old_data_dir_and_logs_each_fix(cluster: Cluster) -> None:
    agent = cluster.agent(1).start()
    agent.cli("kv", "put", "greeting", "hello")
    assert agent.proc is not None
    stop_gracefully(agent.proc)
    # As an older meshnode (umask 022) left it.
    data = agent.data_dir
    data.chmod(0o755)
    old_files = sorted(p.name for p in data.iterdir())
    for name in old_files:
        (data / name).chmod(0o644)
    assert readable_by_nobody(data / "meshnode.db")

    agent.start()

    assert modes_under(data)["."] == 0o700
    assert all(mode(data / name) == 0o600 for name in old_files)
    assert not readable_by_nobody(data / "meshnode.db")
    lines = [line for line in agent.log_text().splitlines() if "tightened a mode" in line]
    assert f"path={data} old_mode=0755 new_mode=0700" in lines[0]
    for name in old_files:
        assert sum(f"path={data / name} old_mode=0644 new_mode=0600" in x for x in lines) == 1
    assert len(lines) == 1 + len(old_files)
    assert agent.cli("kv", "get", "greeting").stdout.strip() == "hello"


def test_agent_refuses_a_data_dir_of_another_user(cluster: Cluster) -> None:
    agent = cluster.agent(1)
    agent.data_dir.mkdir(mode=0o700)
    os.chown(agent.data_dir, NOBODY, NOBODY)
    agent.start(wait=False)
    assert agent.proc is not None
    assert agent.proc.wait(30) == 1
    errors = [line for line in agent.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert (
        f"{agent.data_dir} belongs to uid 65534 (nobody), but the agent runs as uid 0"
        in (errors[0])
    )
    assert list(agent.data_dir.iterdir()) == []
