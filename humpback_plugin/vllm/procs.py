"""Process-group bookkeeping for servers we start detached: is a pid alive (and still the
same process), which processes are in a group, and stopping a group for good."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"

# ----------------------------------------------------------------- process helpers


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    # Field 22 (starttime); together with the pid it identifies a process even
    # after pid reuse.
    st = proc_stat(pid)
    return int(st[19]) if st else None


def is_alive(pid: int) -> bool:
    st = proc_stat(pid)
    if st is not None:
        return st[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # non-Linux fallback: only tells whether any member exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for d in proc.iterdir():
        if d.name.isdigit():
            st = proc_stat(int(d.name))
            if st and int(st[2]) == pgid and st[0] != "Z":
                members.append(int(d.name))
    return members


# Popen objects of servers started by this process, so stop_server can reap them
# (otherwise they would linger as zombies until we exit).
CHILDREN: dict[int, subprocess.Popen] = {}


def reap(pid: int) -> None:
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        CHILDREN.pop(pid, None)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A currently free TCP port on ``host`` (tiny race until the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone (or not ours)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace: float) -> bool:
    """SIGINT the group, then SIGTERM, then SIGKILL; True when nothing is left. A paused
    group (SIGSTOP) is continued after each signal, so that it can act on it."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
            os.killpg(pgid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        except PermissionError:
            # The group leader may be gone and the pgid reused; never signal others.
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pgid)
            if not group_members(pgid):
                reap(pgid)
                return True
            time.sleep(0.2)
    reap(pgid)
    return not group_members(pgid)
