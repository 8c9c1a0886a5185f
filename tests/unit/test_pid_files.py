"""The launcher's pid files tell a live service from a later process that got its pid."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flywheel.core.config import Settings
from flywheel.stack import launcher

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path):
    s = Settings(home=tmp_path)
    s.run_dir.mkdir(parents=True)
    return s


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_service_is_found_by_its_start_token(settings, sleeper):
    launcher._write_pid_file(settings, "svc", sleeper.pid)
    assert launcher._pid_file(settings, "svc").read_text().split()[1].startswith("ticks:")
    assert launcher._running_pid(settings, "svc") == sleeper.pid


def test_a_pid_whose_start_token_differs_is_another_process(settings, sleeper):
    launcher._pid_file(settings, "svc").write_text(f"{sleeper.pid}\nticks:1\n")
    assert launcher._running_pid(settings, "svc") is None


def test_the_token_ignores_the_pid_files_age(settings, sleeper):
    """The old check compared the process's creation time (boot time from the wall clock, plus
    ticks) with the pid file's mtime: a clock step made a live service look like a reused pid."""
    import os

    launcher._write_pid_file(settings, "svc", sleeper.pid)
    path = launcher._pid_file(settings, "svc")
    os.utime(path, (path.stat().st_atime - 3600, path.stat().st_mtime - 3600))  # as if written an hour early
    assert launcher._running_pid(settings, "svc") == sleeper.pid


def test_a_dead_pid_is_not_running(settings):
    launcher._pid_file(settings, "svc").write_text("999999999\n")
    assert launcher._running_pid(settings, "svc") is None



def test_children_of_a_dead_service_are_found_and_stopped(settings):
    """The leader exits, its child lives on in its process group: the launcher finds the group
    and stops it, whatever the child's environment says (Airflow's api-server overwrites its own)."""
    import os
    import signal
    import time

    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(60)']); print(p.pid, flush=True)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]})
    launcher._write_pid_file(settings, "svc", leader.pid)
    child = int(leader.stdout.readline())
    leader.wait(timeout=30)
    try:
        assert launcher._running_pid(settings, "svc") is None
        group = launcher._service_group(settings, "svc")
        assert group == leader.pid
        launcher._signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while launcher._group_members(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not launcher._group_members(group)
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
