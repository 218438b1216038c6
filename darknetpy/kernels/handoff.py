"""Handing a kernel's shares to helper threads that are already awake.

A layer of a small network takes 10-300 us; waking a sleeping thread for its second half costs 30-70 us on
this project's machines (an OpenMP team with passive workers, a Python thread pool), so most layers ran on
one thread at any thread count. A `Team` keeps helper threads that, after each share, spin for a while
(~SPIN_ROUNDS us, yielding the core to any other runnable thread between checks) before they sleep: layers
that follow each other closely hand over in a few microseconds.

The hand-over never waits for the GIL. A kernel that can be shared has a *share* function (a Numba kernel
of its own module, written as the next paragraph says) that opens with `start_share` and closes with
`finish_share`. The caller's share raises the helpers' tickets as it starts (they see them while the caller
computes, without the GIL) and, once its own part is done, waits for their done marks before it returns. A
helper's share raises its done mark and then waits, still outside the GIL, for its next ticket: a helper
comes back to Python (to pick up its next arguments) only when the caller is inside its next share, and the
caller only once the helpers are spinning inside theirs, so neither finds the other holding the GIL. When
both came back at the same moment, the one that lost slept until the other released the GIL, and a thread
woken from sleep in this VM takes tens of microseconds: an empty hand-over between two threads took 32 us
(median; 14-56 us, 10th-90th percentile), now 6-8 us (yolo-fastest-xl at 2 threads: 0.85-0.87 of the
time, one process, passes taking turns). Both waits give up after ~SPIN_ROUNDS us: the caller then waits in
Python (waking a helper that fell asleep just as its ticket was raised), the helper goes to sleep.

A share function takes (flags, ticket, first_flag, flag_count, before, *args, first, last), does tasks
first..last-1 of its kernel between start_share(flags, ticket, first_flag, flag_count, before) and
finish_share(...) with the same arguments. `flags` is its team's: the helpers' tickets, then their done
marks; `before` is true in the caller's share (first_flag, flag_count: the helpers it hands to) and false in
a helper's (first_flag: the helper).

start_share, finish_share and the intrinsics are compiled into the kernels of other modules, whose caches
do not notice edits to them (see kernels/__init__.py).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import jit
from .threads import thread_count, threads_pay

# A helper checks its ticket CHECKS_PER_ROUND times between two sched_yield calls (a round: ~1 us when no
# other thread wants the core); without work it waits SPIN_ROUNDS rounds at the end of its share
# (finish_share), as many again in Python, then sleeps.
CHECKS_PER_ROUND = 64
SPIN_ROUNDS = 60


def _is_int64_vector(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


@intrinsic
def load_acquire(typingctx, arr, index):
    """arr[index], an atomic load with acquire ordering (never hoisted out of a loop)."""
    if not (_is_int64_vector(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        offset = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load_atomic(builder.gep(data, [offset]), "acquire", 8)
    return types.int64(arr, index), codegen


@intrinsic
def publish(typingctx, flags, first_flag, flag_count, ticket):
    """flags[first_flag : first_flag + flag_count] = ticket, each an atomic store with release ordering: a
    thread that sees the ticket (load_acquire) also sees everything written before it."""
    if not (_is_int64_vector(flags) and isinstance(first_flag, types.Integer)
            and isinstance(flag_count, types.Integer) and isinstance(ticket, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        first = context.cast(builder, args[1], sig.args[1], types.intp)
        count = context.cast(builder, args[2], sig.args[2], types.intp)
        value = context.cast(builder, args[3], sig.args[3], types.int64)
        with cgutils.for_range(builder, count) as loop:
            pointer = builder.gep(data, [builder.add(first, loop.index)])
            builder.store_atomic(value, pointer, "release", 8)
        return context.get_dummy_value()
    return types.none(flags, first_flag, flag_count, ticket), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): let another runnable thread have this core (returns at once when there is none)."""
    def codegen(context, builder, sig, args):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                  "sched_yield")
        builder.call(function, [])
        return context.get_dummy_value()
    return types.none(), codegen


@jit
def wait_for(flags, first_flag, flag_count, ticket, rounds):
    """Whether flags[first_flag : first_flag + flag_count] all reached `ticket` within `rounds` rounds."""
    for _ in range(rounds):
        for _ in range(CHECKS_PER_ROUND):
            done = True
            for k in range(first_flag, first_flag + flag_count):
                if load_acquire(flags, k) < ticket:
                    done = False
                    break
            if done:
                return True
        yield_core()
    return False


@jit
def start_share(flags, ticket, first_flag, flag_count, before):
    """The opening of a share function: the caller's share (`before`) raises the helpers' tickets."""
    if before:
        publish(flags, first_flag, flag_count, ticket)


@jit
def finish_share(flags, ticket, first_flag, flag_count, before):
    """The close of a share function, `flags` being a team's (tickets, then done marks): the caller's share
    waits for its helpers' done marks, a helper's share raises its own and waits for its next ticket -- both
    for a while, spinning outside the GIL, so that neither thread comes back to Python while the other is
    there (see the module docstring)."""
    helpers = flags.shape[0] // 2
    if before:
        wait_for(flags, helpers + first_flag, flag_count, ticket, SPIN_ROUNDS)
    else:
        publish(flags, helpers + first_flag, flag_count, ticket)
        wait_for(flags, first_flag, flag_count, ticket + 1, SPIN_ROUNDS)


class Team:
    """`helpers` threads that run shares of kernels for the thread that calls `run`; one caller at a time."""

    def __init__(self, helpers: int):
        self.helpers = helpers
        self.flags = np.zeros(2 * helpers, np.int64)
        self.tickets = self.flags[:helpers]   # raised by the caller: work for helper k
        self.done = self.flags[helpers:]      # raised by helper k: its share of that ticket is done
        self.ticket = 0
        self._jobs: list[tuple | None] = [None] * helpers
        self._errors: list[BaseException | None] = [None] * helpers
        self._asleep = [False] * helpers
        self._wake = threading.Condition()
        self.busy = threading.Lock()
        for k in range(helpers):
            threading.Thread(target=self._serve, args=(k,), name=f"darknetpy-helper-{k}", daemon=True).start()

    def _serve(self, k: int) -> None:
        seen = 0
        while True:
            if self.tickets[k] <= seen and not wait_for(self.flags, k, 1, seen + 1, SPIN_ROUNDS):
                with self._wake:
                    self._asleep[k] = True
                    while self.tickets[k] <= seen:
                        self._wake.wait()
                    self._asleep[k] = False
            seen = int(self.tickets[k])
            share, args, first, last = self._jobs[k]
            try:
                share(self.flags, seen, k, 1, False, *args, first, last)
            except BaseException as exc:   # reported by `run`; the ticket must still be marked done
                self._errors[k] = exc
                self.done[k] = seen

    def run(self, share: Callable, args: tuple, tasks: int, shares: int) -> None:
        """`share` (see the module docstring) over tasks 0..tasks-1 in `shares` contiguous runs, the caller
        taking the first; returns when every run is done. shares - 1 <= helpers."""
        helpers = shares - 1
        self.ticket += 1
        ticket = self.ticket
        for k in range(helpers):
            self._jobs[k] = (share, args, tasks * (k + 1) // shares, tasks * (k + 2) // shares)
        with self._wake:
            if any(self._asleep[:helpers]):
                self.tickets[:helpers] = ticket
                self._wake.notify_all()
        # raises the helpers' tickets (again, for those that slept) inside the kernel, without the GIL
        try:
            share(self.flags, ticket, 0, helpers, True, *args, 0, tasks // shares)
        except BaseException:
            # the kernel may have failed before raising the tickets: raise them here, so that no helper is
            # still writing into the arrays once the error reaches the caller
            with self._wake:
                self.tickets[:helpers] = ticket
            self._wait_done(ticket, helpers)
            raise
        self._wait_done(ticket, helpers)
        errors = [exc for exc in self._errors[:helpers] if exc is not None]
        self._errors[:helpers] = [None] * helpers
        if errors:
            raise errors[0]

    def _wait_done(self, ticket: int, helpers: int) -> None:
        while not wait_for(self.flags, self.helpers, helpers, ticket, SPIN_ROUNDS):
            with self._wake:   # a helper that fell asleep as its ticket was raised
                self._wake.notify_all()


_TEAMS: dict[tuple[int, int], Team] = {}
_NO_FLAGS = np.zeros(1, np.int64)


def share_out_when_it_pays(share: Callable, args: tuple, tasks: int, work: int, minimum_work: int) -> None:
    """share_out over the threads when they pay for `work` (threads.threads_pay), else all of it on the
    calling thread (the share function with no flags to raise)."""
    share_out(share, args, tasks, thread_count() if threads_pay(work, tasks, minimum_work) else 1)


def share_out(share: Callable, args: tuple, tasks: int, shares: int) -> None:
    """Run `share` (see Team.run) over `tasks` tasks in `shares` runs: on the team of this process when it
    is free, else (another thread is using it) all on the calling thread."""
    shares = min(shares, tasks)
    if shares <= 1:
        share(_NO_FLAGS, 0, 0, 0, True, *args, 0, tasks)
        return
    key = (os.getpid(), shares - 1)   # a forked child has none of its parent's threads
    team = _TEAMS.get(key)
    if team is None:
        team = _TEAMS[key] = Team(shares - 1)
    if not team.busy.acquire(blocking=False):
        share(_NO_FLAGS, 0, 0, 0, True, *args, 0, tasks)
        return
    try:
        team.run(share, args, tasks, shares)
    finally:
        team.busy.release()
