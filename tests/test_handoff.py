"""The spinning helper team (kernels/handoff.py): every task of a kernel done exactly once whatever the
number of shares, by the helper threads too, after they fell asleep, with errors carried back to the
caller, and all on the calling thread when the team is busy."""
import threading
import time

import numba
import numpy as np
import pytest

from darknetpy.kernels import handoff


@numba.njit(nogil=True)
def _count_share(flags, ticket, first_flag, flag_count, before, counts, worker, who, first, last):
    handoff.start_share(flags, ticket, first_flag, flag_count, before)
    for task in range(first, last):
        counts[task] += 1
        worker[task] = who
    handoff.finish_share(flags, ticket, first_flag, flag_count, before)


def counting_share(flags, ticket, first_flag, flag_count, before, counts, worker, first, last):
    """_count_share, marking each task with the thread that did it (the caller 0, helpers 1..)."""
    who = 0 if before else first_flag + 1
    _count_share(flags, ticket, first_flag, flag_count, before, counts, worker, who, first, last)


@pytest.mark.parametrize("shares", [2, 3])
@pytest.mark.parametrize("tasks", [2, 3, 7, 100])
def test_every_task_once_in_contiguous_runs(shares, tasks):
    counts, worker = np.zeros(tasks, np.int64), np.full(tasks, -1, np.int64)
    for _ in range(3):   # the same team again: tickets move on
        counts[:] = 0
        handoff.share_out(counting_share, (counts, worker), tasks, shares)
        assert (counts == 1).all()
    used = min(shares, tasks)
    expected = np.repeat(np.arange(used), np.diff([tasks * k // used for k in range(used + 1)]))
    np.testing.assert_array_equal(worker, expected)


def test_helpers_that_fell_asleep_are_woken(monkeypatch):
    monkeypatch.setattr(handoff, "SPIN_ROUNDS", 1)
    counts, worker = np.zeros(10, np.int64), np.zeros(10, np.int64)
    handoff.share_out(counting_share, (counts, worker), 10, 2)
    team = handoff._TEAMS[(handoff.os.getpid(), 1)]
    deadline = time.monotonic() + 5
    while not team._asleep[0] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert team._asleep[0]
    handoff.share_out(counting_share, (counts, worker), 10, 2)
    assert (counts == 2).all() and (worker[5:] == 1).all()


def test_a_helpers_error_reaches_the_caller():
    counts, worker = np.zeros(4, np.int64), np.zeros(4, np.int64)

    def failing_share(flags, ticket, first_flag, flag_count, before, *args):
        if not before:
            raise ValueError("helper failed")
        counting_share(flags, ticket, first_flag, flag_count, before, *args)
    with pytest.raises(ValueError, match="helper failed"):
        handoff.share_out(failing_share, (counts, worker), 4, 2)
    handoff.share_out(counting_share, (counts, worker), 4, 2)   # the team still works
    assert (counts[:2] == 2).all() and (counts[2:] == 1).all()


def test_the_callers_error_waits_for_the_helpers():
    counts, worker = np.zeros(4, np.int64), np.zeros(4, np.int64)

    def failing_caller(flags, ticket, first_flag, flag_count, before, *args):
        if before:
            raise ValueError("caller failed before raising the tickets")
        counting_share(flags, ticket, first_flag, flag_count, before, *args)
    with pytest.raises(ValueError, match="caller failed"):
        handoff.share_out(failing_caller, (counts, worker), 4, 2)
    np.testing.assert_array_equal(counts, [0, 0, 1, 1])   # the helper's share ran, and was waited for


def test_a_busy_team_leaves_the_work_to_the_caller():
    handoff.share_out(counting_share, (np.zeros(2, np.int64), np.zeros(2, np.int64)), 2, 2)
    team = handoff._TEAMS[(handoff.os.getpid(), 1)]
    counts, worker = np.zeros(6, np.int64), np.full(6, -1, np.int64)
    with team.busy:
        done = threading.Event()
        thread = threading.Thread(target=lambda: (handoff.share_out(counting_share, (counts, worker), 6, 2),
                                                  done.set()))
        thread.start()
        thread.join(10)
    assert done.is_set() and (counts == 1).all() and (worker == 0).all()


@numba.njit
def _publish(flags, first_flag, flag_count, ticket):
    handoff.publish(flags, first_flag, flag_count, ticket)


def test_publish_writes_exactly_its_flags():
    flags = np.zeros(5, np.int64)
    _publish(flags, 1, 3, 7)
    np.testing.assert_array_equal(flags, [0, 7, 7, 7, 0])
    _publish(flags, 4, 0, 9)
    np.testing.assert_array_equal(flags, [0, 7, 7, 7, 0])


def test_a_callers_share_raises_the_tickets_then_waits_for_the_done_marks():
    flags = np.array([0, 0, 4, 3], np.int64)   # two helpers: tickets, then done marks
    handoff.start_share(flags, 4, 0, 2, True)
    np.testing.assert_array_equal(flags, [4, 4, 4, 3])
    started = time.perf_counter()
    handoff.finish_share(flags, 4, 0, 2, True)   # helper 1 is not done: gives up after its rounds
    assert time.perf_counter() - started < 1
    flags[3] = 4
    handoff.finish_share(flags, 4, 0, 2, True)
    np.testing.assert_array_equal(flags, [4, 4, 4, 4])


def test_a_helpers_share_marks_itself_done_and_waits_for_its_next_ticket():
    flags = np.array([4, 5, 3, 3], np.int64)
    handoff.start_share(flags, 4, 0, 1, False)   # a helper raises nothing as it starts
    handoff.finish_share(flags, 4, 0, 1, False)
    handoff.finish_share(flags, 4, 1, 1, False)
    np.testing.assert_array_equal(flags, [4, 5, 4, 4])


def test_wait_for_gives_up_after_its_rounds():
    flags = np.array([3, 5], np.int64)
    assert handoff.wait_for(flags, 0, 2, 3, 1)
    assert not handoff.wait_for(flags, 0, 2, 4, 2)
    assert handoff.wait_for(flags, 1, 1, 5, 1)
