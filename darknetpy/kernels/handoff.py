"""Handing a kernel's shares to helper threads that are already awake.

A layer of a small network takes 10-300 us; waking a sleeping thread for its second half costs 30-70 us on
this project's machines (an OpenMP team with passive workers, a Python thread pool), so most layers ran on
one thread at any thread count. A `Team` keeps helper threads that, after each share, spin for a while
(~SPIN_ROUNDS us, yielding the core to any other runnable thread between checks) before they sleep: layers
that follow each other closely hand over in a few microseconds.

The hand-over never waits for the GIL. A kernel that can be shared has a *share* function (a Numba kernel
of its own module, written as the last paragraph says): it publishes a ticket before doing its part (the
calling thread's share: the helpers see it while the caller computes, without the GIL) or after (a helper's share: the
caller sees it done without the helper taking the GIL back). A helper picks up its arguments in Python only
once it sees its ticket, when the caller is inside its own share and holds no GIL.

A share function takes (flags, ticket, first_flag, flag_count, before, *args, first, last): it does tasks
first..last-1 of its kernel and stores `ticket` into flags[first_flag : first_flag + flag_count] with
`publish`, before the tasks if `before` (the caller's share, raising the helpers' tickets) and after them
otherwise (a helper's share, marking it done). A helper that went to sleep just as its ticket was raised is
woken by the caller once the caller's own share is done.

Intrinsics are code generators: a kernel's cache does not notice edits to them (see kernels/__init__.py).
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
# other thread wants the core) and goes to sleep after SPIN_ROUNDS rounds without work.
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


class Team:
    """`helpers` threads that run shares of kernels for the thread that calls `run`; one caller at a time."""

    def __init__(self, helpers: int):
        self.helpers = helpers
        self.tickets = np.zeros(helpers, np.int64)   # raised by the caller: work for helper k
        self.done = np.zeros(helpers, np.int64)      # raised by helper k: its share of that ticket is done
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
            if not wait_for(self.tickets, k, 1, seen + 1, SPIN_ROUNDS):
                with self._wake:
                    self._asleep[k] = True
                    while self.tickets[k] <= seen:
                        self._wake.wait()
                    self._asleep[k] = False
            seen = int(self.tickets[k])
            share, args, first, last = self._jobs[k]
            try:
                share(self.done, seen, k, 1, False, *args, first, last)
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
            share(self.tickets, ticket, 0, helpers, True, *args, 0, tasks // shares)
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
        while not wait_for(self.done, 0, helpers, ticket, SPIN_ROUNDS):
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
