"""TVM's CPU thread count as the runtime configures it (mlcpatch/threads.py)."""

from __future__ import annotations

import os

import pytest

from mlcpatch import threads


def test_user_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert threads.configure_threads() == 3
    assert os.environ["TVM_NUM_THREADS"] == "3"
    monkeypatch.delenv("TVM_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.configure_threads() == 5
    assert "TVM_NUM_THREADS" not in os.environ  # TVM reads OMP_NUM_THREADS itself


def test_default_leaves_one_physical_core_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    count = threads.configure_threads()
    assert os.environ["TVM_NUM_THREADS"] == str(count)
    # Never more threads than CPUs this process may run on, never fewer than one.
    assert 1 <= count <= len(os.sched_getaffinity(0))
    siblings = set()
    for cpu in os.sched_getaffinity(0):
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        if os.path.exists(path):
            siblings.add(open(path).read().strip())
    if siblings:  # one thread per distinct set of hyper-thread siblings (= a core), less one
        assert count == max(1, len(siblings) - 1)
