#!/usr/bin/env python3
"""Fuzz darknetpy's input readers against the hardening contract, and kill training at random moments.

The contract: every bad input ends in one DarknetError subclass whose str() is `file[:line]: message` on one
line (cfg errors name the line when there is one) — never another exception type, never a hang, never a crash.

Targets (hypothesis strategies; tests/test_fuzz.py runs a bounded, derandomised share of the same ones):

  cfg-text   parse_cfg_text on generated cfg-like text (headers, options, comments, junk, odd line ends)
  cfg-bytes  parse_cfg on files of random bytes and text in odd encodings
  network    network_from_text on [net] + random registry sections with random keys and values, then
             flops(), summary(), a weights save/load round trip and, for cheap nets, a zero-input forward
  corpus     the same on cfgs from ../shared/cfg-corpus (and cfg/) with lines deleted, duplicated,
             swapped or numbers changed, built at 8..64 pixels
  weights    read_weights on valid files of a few small networks, truncated, extended, with mutated
             headers (judged by the header rule of spec §5 as README states it), non-finite values,
             random bytes or unreadable paths; a valid header and size with finite values must load,
             anything else must be a WeightsError
  data       .data files, train/valid list files and labels files (odd keys, integers beyond Python's
             4,300-digit conversion limit, empty lists, missing images, more labels than classes, labels
             matching no path) through ClassificationDataset and the names readers
  cli        `darknetpy predict/detect/partial` in-process with generated option values and output paths
             (--out onto files, unwritable or missing folders, --names short or empty, list files as
             IMAGE, partial onto its own input): exit 0 or 2, one stderr line naming a file, nothing on
             stdout before an error, the inputs untouched

The strategies and checks are in tests/strategies.py (shared with the CI run in tests/test_fuzz.py).

Usage (from the repository root):

    python tools/fuzz.py --minutes 5                    # random campaign over every target, prints counts
    python tools/fuzz.py --minutes 2 --targets network,corpus
    python tools/fuzz.py --kill 20                      # SIGKILL `darknetpy train` at 20 random moments

The campaign runs each target in a child process so that a hang (no progress for --hang-seconds) or a
crash (a signal, e.g. a Numba kernel writing out of bounds) is recorded with the input that caused it;
the worker is then restarted. Failures are grouped by signature (exception type and innermost darknetpy
frame); each signature keeps its first, hypothesis-shrunk, input.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
for _folder in (ROOT, ROOT / "tests"):  # the strategies and checks live with the tests that run them in CI
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from darknetpy.errors import DarknetError, DarknetWarning  # noqa: E402
from strategies import (CORPUS_DIR, ContractViolation, Outcome, address_space, check_cfg_bytes,  # noqa: E402
                        check_cfg_text, check_cli, check_corpus, check_data_files, check_network, check_weights,
                        cfg_file_bytes, cfg_texts, cli_cases, corpus_cases, corpus_files, data_file_cases,
                        memory_headroom, network_cfgs, ram_dir, scratch_dir, weights_cases)

TARGETS = ("cfg-text", "cfg-bytes", "network", "corpus", "weights", "data", "cli")

#: a campaign worker that has grown this much (Numba compilations, allocator fragmentation) hands over to a
#: fresh one, so that late inputs do not fail for lack of headroom
WORKER_RECYCLE_GROWTH = 2 << 30


# ==== failure bookkeeping ========================================================================================
def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside hypothesis's wrappers (FlakyFailure and other exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def signature(exc: BaseException) -> str:
    """Exception type and the innermost frame inside darknetpy (or this file for contract violations)."""
    exc = _leaf(exc)
    if isinstance(exc, ContractViolation):
        return f"ContractViolation[{exc.kind}]"
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for frame in reversed(frames):
        if f"{os.sep}darknetpy{os.sep}" in frame.filename:
            where = f"{Path(frame.filename).relative_to(ROOT)}:{frame.lineno} in {frame.name}"
            if isinstance(exc, MemoryError):  # one finding whichever array of the function failed
                where = f"{Path(frame.filename).relative_to(ROOT)} in {frame.name}"
            break
    return f"{type(exc).__name__} at {where}"


@dataclass
class TargetStats:
    tried: int = 0
    errors: int = 0       # inputs refused with a well-formed DarknetError
    accepted: int = 0     # parsed / built / loaded
    forwarded: int = 0    # networks that also ran a forward pass
    nonfinite: int = 0    # forwards of a zero input whose output had NaN or inf (Darknet-like, not a failure)
    failing_inputs: int = 0
    failures: dict[str, dict] = field(default_factory=dict)  # signature -> {"error", "input"}

    def merge(self, other: "TargetStats") -> None:
        for name in ("tried", "errors", "accepted", "forwarded", "nonfinite", "failing_inputs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for sig, info in other.failures.items():
            self.failures.setdefault(sig, info)


def target_runner(target: str, folder: str, corpus_dir: Path | None = CORPUS_DIR
                  ) -> tuple[st.SearchStrategy, Callable[[Any], Outcome]]:
    """The strategy and the check function of one target."""
    if target == "cfg-text":
        return cfg_texts(), check_cfg_text
    if target == "cfg-bytes":
        return cfg_file_bytes(), lambda data: check_cfg_bytes(data, folder)
    if target == "network":
        return network_cfgs(), check_network
    if target == "corpus":
        texts = tuple((p.name, p.read_text(encoding="utf-8", errors="replace")) for p in corpus_files(corpus_dir))
        return corpus_cases(texts), check_corpus
    if target == "weights":
        return weights_cases(), lambda case: check_weights(case, folder)
    if target == "data":
        return data_file_cases(), lambda case: check_data_files(case, folder)
    if target == "cli":
        return cli_cases(), lambda case: check_cli(case, folder)
    raise ValueError(f"unknown target {target!r}")


def record(stats: TargetStats, outcome: Outcome) -> None:
    if outcome.status == "error":
        stats.errors += 1
    else:
        stats.accepted += 1
    if outcome.status == "forward":
        stats.forwarded += 1
        stats.nonfinite += outcome.nonfinite


# ==== the campaign ===============================================================================================
def run_worker(target: str, seconds: float, state_path: Path, seed: int | None) -> None:
    """Fuzz one target until `seconds` pass, writing counts to `state_path` (JSON) as it goes and the input
    under test to `state_path`.current so the parent can name the input of a hang or crash."""
    warnings.simplefilter("ignore", DarknetWarning)
    # temporary files go under the parent's state folder, which it removes even after killing this worker
    tempfile.tempdir = str(state_path.parent)
    current_path = Path(f"{state_path}.current")
    stats = TargetStats()
    deadline = time.monotonic() + seconds
    last_save = 0.0
    rng = random.Random(seed)

    def save() -> None:
        tmp = Path(f"{state_path}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(stats)))
        os.replace(tmp, state_path)

    class TimeUp(BaseException):
        """Ends hypothesis's run at once (it lets BaseExceptions through without shrinking)."""

    start_size = address_space() or 0
    with memory_headroom():
        folder = scratch_dir()
        strategy, check = target_runner(target, folder)
        stash: dict[str, dict] = {}  # signature -> the latest failing input (the shrunk one, in the end)

        while time.monotonic() < deadline:
            @settings(max_examples=10**9, deadline=None, database=None, derandomize=False,
                      phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
                      report_multiple_bugs=False)
            @given(strategy)
            def prop(case):
                nonlocal last_save
                if time.monotonic() >= deadline:
                    raise TimeUp
                stats.tried += 1
                shown = repr(case)
                with open(current_path, "w") as fh:
                    fh.write(shown)
                try:
                    outcome = check(case)
                except Exception as exc:  # noqa: BLE001 - every non-DarknetError is the finding
                    # hypothesis keeps failing exceptions while it shrinks: drop the frames' locals (the
                    # network and its arrays) so that memory does not run out for the next inputs
                    traceback.clear_frames(exc.__traceback__)
                    sig = signature(exc)
                    stats.failing_inputs += 1
                    if sig in stats.failures:
                        return  # known this run: keep fuzzing instead of shrinking it again
                    stash[sig] = {"error": f"{type(exc).__name__}: {exc}"[:600], "input": shown[:4000]}
                    raise
                record(stats, outcome)
                now = time.monotonic()
                if now - last_save > 1.0:
                    last_save = now
                    save()
                    if (address_space() or 0) - start_size > WORKER_RECYCLE_GROWTH:
                        raise TimeUp  # the parent starts a fresh worker for the time that is left

            prop = _seeded(prop, rng.getrandbits(64))
            try:
                prop()
            except TimeUp:
                break
            except Exception as exc:  # noqa: BLE001
                leaf = _leaf(exc)
                sig = signature(leaf)
                stats.failures.setdefault(sig, stash.get(sig) or {"error": f"{type(leaf).__name__}: {leaf}"[:600],
                                                                  "input": "?"})
                save()
        for sig, info in stash.items():  # time ran out while hypothesis was still shrinking these
            stats.failures.setdefault(sig, info)
    save()


def _seeded(test: Callable, seed: int) -> Callable:
    from hypothesis import seed as hypothesis_seed
    return hypothesis_seed(seed)(test)


def run_campaign(minutes: float, targets: list[str], hang_seconds: float, out_dir: Path,
                 seed: int | None) -> dict[str, TargetStats]:
    """Run each target in a watched child process for an equal share of `minutes`."""
    totals = {t: TargetStats() for t in targets}
    share = minutes * 60.0 / len(targets)
    for index, target in enumerate(targets):
        end = time.monotonic() + share
        restart = broken = 0
        while time.monotonic() < end - 1.0 and broken < 3:
            state = out_dir / f"{target}.{restart}.json"
            current = Path(f"{state}.current")
            log = Path(f"{state}.stderr")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target,
                   "--seconds", f"{end - time.monotonic():.1f}", "--state", str(state)]
            if seed is not None:
                cmd += ["--seed", str(seed * 1000 + index * 100 + restart)]
            with open(log, "w") as err:  # a file, not a pipe: a full pipe would stall the worker
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
                stalled = None
                while proc.poll() is None:
                    time.sleep(0.5)
                    stamp = current.stat().st_mtime if current.exists() else None
                    if stamp is not None and time.time() - stamp > hang_seconds:
                        stalled = current.read_text()
                        proc.kill()
                        proc.wait()
            stats = TargetStats(**json.loads(state.read_text())) if state.exists() else TargetStats()
            last_input = current.read_text()[:4000] if current.exists() else "?"
            if stalled is not None:
                stats.failing_inputs += 1
                stats.failures.setdefault(f"hang (no progress for {hang_seconds:g} s)",
                                          {"error": "killed by the watchdog", "input": stalled[:4000]})
            elif proc.returncode != 0:
                what = (f"crash (signal {-proc.returncode})" if proc.returncode < 0
                        else f"worker exit {proc.returncode}")
                stats.failing_inputs += 1
                stats.failures.setdefault(what, {"error": log.read_text()[-1500:], "input": last_input})
                broken = broken + 1 if proc.returncode > 0 else 0
            totals[target].merge(stats)
            restart += 1
    return totals


def print_report(totals: dict[str, TargetStats], seconds: float, file=sys.stdout) -> None:
    print(f"\nfuzz campaign: {seconds / 60:.1f} minutes", file=file)
    print(f"{'target':<10} {'inputs':>9} {'refused':>9} {'accepted':>9} {'forward':>8} {'nonfinite':>9} "
          f"{'failing':>8} {'unique':>6}", file=file)
    all_inputs = all_failing = all_unique = 0
    for target, s in totals.items():
        print(f"{target:<10} {s.tried:>9} {s.errors:>9} {s.accepted:>9} {s.forwarded:>8} {s.nonfinite:>9} "
              f"{s.failing_inputs:>8} {len(s.failures):>6}", file=file)
        all_inputs += s.tried
        all_failing += s.failing_inputs
        all_unique += len(s.failures)
    print(f"{'total':<10} {all_inputs:>9} {'':>9} {'':>9} {'':>8} {'':>9} {all_failing:>8} {all_unique:>6}",
          file=file)
    for target, s in totals.items():
        for sig, info in s.failures.items():
            print(f"\n[{target}] {sig}\n  error: {info['error']}\n  input: {info['input']}", file=file)


# ==== SIGKILL during training ====================================================================================
def kill_trials(trials: int, seed: int | None, workdir: Path | None = None, verbose: bool = True) -> dict:
    """Train the tiny classifier of tests/test_training.py, SIGKILL it at random moments (resuming from the
    last checkpoint each time) and check that every file in the backup folder is whole after each kill."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_training import TINY_CFG, make_dataset  # the tiny cfg and dataset the training tests use

    import darknetpy

    rng = random.Random(seed)
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="dnkill-")) if own else workdir
    counts = {"trials": 0, "killed_running": 0, "exited_before_kill": 0, "checkpoints_checked": 0,
              "stale_temp_files": 0, "failures": []}
    try:
        data = make_dataset(root / "ds")
        cfg = root / "tiny.cfg"
        cfg.write_text(TINY_CFG.format(batch=4, subdivisions=1, max_batches=10**6))
        backup_dir = root / "backup"
        backup = backup_dir / "tiny.backup"
        last_seen = 0
        stale: set[str] = set()
        for trial in range(trials):
            counts["trials"] += 1
            cmd = [sys.executable, "-m", "darknetpy", "train", str(cfg), str(data), "--seed", str(trial),
                   "--checkpoint-every", "1", "--workers", str(rng.choice((1, 2)))]
            if backup.exists():
                cmd += ["--weights", str(backup)]
            # before the first batch, early batches, and well into training
            delay = rng.choice((rng.uniform(0.05, 1.5), rng.uniform(1.5, 4.0), rng.uniform(4.0, 8.0)))
            log = root / "train.stderr"
            with open(log, "w") as err:
                proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=err,
                                        start_new_session=True)
                time.sleep(delay)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)  # the training process only, as the OOM killer would
                    counts["killed_running"] += 1
                else:
                    counts["exited_before_kill"] += 1
                    counts["failures"].append(f"trial {trial}: exited {proc.returncode} before the kill: "
                                              f"{log.read_text().strip()[-400:]}")
                proc.wait()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its data-loading children, orphaned now
            problems = check_backup_folder(backup_dir, cfg, last_seen)
            temp_files = {p.name for p in backup_dir.glob(".*.tmp")} if backup_dir.exists() else set()
            counts["stale_temp_files"] += len(temp_files - stale)
            stale |= temp_files
            if backup.exists():
                counts["checkpoints_checked"] += 1
                try:
                    last_seen = darknetpy.load(cfg, backup).seen
                except DarknetError as exc:
                    problems.append(f"backup does not load: {exc}")
            for problem in problems:
                counts["failures"].append(f"trial {trial} (killed after {delay:.2f} s): {problem}")
            if verbose:
                print(f"trial {trial:2d}: killed after {delay:5.2f} s, backup seen={last_seen}"
                      + (f"  PROBLEMS: {problems}" if problems else ""), flush=True)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return counts


def check_backup_folder(folder: Path, cfg: Path, previous_seen: int) -> list[str]:
    """Every checkpoint loads, `seen` never goes backwards, metrics.csv parses, chart.png is a whole PNG."""
    import csv
    import darknetpy
    problems: list[str] = []
    if not folder.exists():
        return problems
    for weights in sorted(folder.glob("tiny*.weights")) + sorted(folder.glob("tiny.backup")):
        try:
            seen = darknetpy.load(cfg, weights).seen
        except DarknetError as exc:
            problems.append(f"{weights.name} does not load: {exc}")
            continue
        if weights.name == "tiny.backup" and seen < previous_seen:
            problems.append(f"tiny.backup went back from seen={previous_seen} to {seen}")
    metrics = folder / "metrics.csv"
    if metrics.exists():
        try:
            rows = list(csv.DictReader(metrics.open(newline="")))
            for row in rows:
                int(row["batch"]), float(row["loss"])
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            problems.append(f"metrics.csv is damaged: {exc!r}")
    chart = folder / "chart.png"
    if chart.exists():
        data = chart.read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or not data.endswith(b"IEND\xaeB`\x82"):
            problems.append(f"chart.png is not a whole PNG ({len(data)} bytes)")
    return problems


# ==== command line ===============================================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=0.0, help="length of the random fuzz campaign")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--kill", type=int, default=0, metavar="N", help="SIGKILL training at N random moments")
    parser.add_argument("--seed", type=int, help="seed the workers' random generation (default: fresh each run; "
                                                   "how far each worker gets still depends on timing)")
    parser.add_argument("--hang-seconds", type=float, default=60.0,
                        help="an input that makes no progress this long is a hang (default 60)")
    parser.add_argument("--json", help="also write the counts and failures to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(args.worker, args.seconds, Path(args.state), args.seed)
        return 0
    if not args.minutes and not args.kill:
        parser.error("give --minutes and/or --kill")
    report: dict[str, Any] = {}
    status = 0
    if args.minutes:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            parser.error(f"unknown targets: {', '.join(unknown)}")
        if "corpus" in targets and not CORPUS_DIR.is_dir():
            print(f"note: {CORPUS_DIR} is absent; the corpus target mutates cfg/ only", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="dnfuzz-state-", dir=ram_dir()) as out_dir:
            start = time.monotonic()
            totals = run_campaign(args.minutes, targets, args.hang_seconds, Path(out_dir), args.seed)
            print_report(totals, time.monotonic() - start)
        report["campaign"] = {t: dataclasses.asdict(s) for t, s in totals.items()}
        status = 1 if any(s.failures for s in totals.values()) else 0
    if args.kill:
        counts = kill_trials(args.kill, args.seed)
        print(f"\nSIGKILL trials: {counts['trials']} (killed while running: {counts['killed_running']}, "
              f"exited first: {counts['exited_before_kill']}), checkpoints verified: "
              f"{counts['checkpoints_checked']}, stale temp files: {counts['stale_temp_files']}, "
              f"failures: {len(counts['failures'])}")
        for failure in counts["failures"]:
            print(f"  {failure}")
        report["kill"] = counts
        status = status or (1 if counts["failures"] else 0)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
