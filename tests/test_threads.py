"""Thread choice: the OpenMP wait policy set before torch loads, small organisms on one thread, `--threads`."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from sim import kernels
from sim.run import main
from sim.threads import SMALL_BANK, default_threads, free_cores


def test_importing_sim_sets_a_passive_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import sim, sys, os; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"  # an explicit choice wins


def test_small_banks_take_one_thread_large_ones_the_free_cores():
    assert default_threads(1_200) == 1
    assert default_threads(SMALL_BANK) == free_cores()
    assert 1 <= free_cores() <= len(os.sched_getaffinity(0))


def test_threads_flag_sets_torch_and_the_kernels(tmp_path):
    before = torch.get_num_threads()
    try:
        assert (
            main(["--task", "arithmetic", "--steps", "2", "--threads", "2", "--quiet", "--out", str(tmp_path / "a")])
            == 0
        )
        assert torch.get_num_threads() == 2 and kernels._threads == 2
        assert main(["--task", "arithmetic", "--steps", "2", "--quiet", "--out", str(tmp_path / "b")]) == 0
        assert torch.get_num_threads() == 1  # 18 particles: one thread
    finally:
        torch.set_num_threads(before)
        kernels.set_threads(before)
