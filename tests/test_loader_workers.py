"""Loader worker processes end with their trainer, however it ends (issue 11): a SIGKILLed trainer (the OOM
killer's way) cannot shut its pool down, so the workers must notice on their own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from test_training import make_dataset

TRAINER = textwrap.dedent("""
    import multiprocessing, sys, time
    from darknetpy.config import NetConfig, SectionReader, parse_cfg_text, read_data_file
    from darknetpy.data import BatchLoader, ClassificationDataset

    if __name__ == "__main__":
        text = "[net]\\nbatch=4\\nwidth=8\\nheight=8\\nchannels=3\\ncenter=1\\n"
        net = NetConfig.from_section(SectionReader(parse_cfg_text(text).sections[0], "<test>"))
        dataset = ClassificationDataset(read_data_file(sys.argv[1]), net, train=True, seed=1)
        loader = BatchLoader(dataset, seed=1, workers=2, backend="process")
        loader.next_batch()  # the workers are up and have run their initialiser
        print(" ".join(str(child.pid) for child in multiprocessing.active_children()), flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_worker_outlives_a_sigkilled_trainer(tmp_path):
    data = make_dataset(tmp_path / "ds", count=8)
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    proc = subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True)
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in workers if _alive(pid)]
        assert survivors == [], f"workers {survivors} outlived their SIGKILLed trainer"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        for pid in workers:  # never leave a process behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
