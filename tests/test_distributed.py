"""Training under ``accelerate launch``: 2 processes (gloo, CPU) reach the parameters of 1 process with the
same seed and global batch, each process rolling out half of the dialogues, the main one alone writing.

Run as a script (by ``accelerate launch``), this file trains the cases below and saves what the test compares.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (this file also runs as a script)

import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytestmark = pytest.mark.slow  # learning and multi-process runs: minutes; `make test-fast` skips them

# The shares of a minibatch of 3 are uneven (2 and 1 rows), and the last minibatch of a batch of 4 or 7 kept
# pairs has 1 row, so that one process has no share of it: both paths of the gradient average are exercised.
#
# Tolerances: |parameter of 2 processes - parameter of 1| at the end. The two compute the same sums in another
# order (a process's share of a batch is padded to its own width, gradients are summed by the all-reduce), so
# gradients agree to about 1e-6 of their size. AdamW's first steps are lr * g / (|g| + eps): for the many
# entries whose gradient is as small as its rounding error (~1e-9), the step can differ by up to ~0.1 lr. With
# eps=1 and gradients << 1 the step is lr * g instead: the parameters then differ by float rounding only, and a
# gradient average off by a factor (to which AdamW is nearly blind) would show.
SMALL = dict(batch_size=8, minibatch_size=3, max_new_tokens=8)
CASES = {
    # as trained (AdamW, lr 1e-3): measured 1.2e-7, against parameter changes of 1e-2
    "refuel": dict(agent="refuel", iterations=2, tolerance=2e-4, options=dict(SMALL, batch_size=7, epochs=2, lr=1e-3)),
    # step proportional to the gradient: measured 1.2e-7, against changes of 3e-2. Stopped after iteration 1
    # and resumed by new agents (every process loads the checkpoint the main one wrote).
    "refuel-eps1": dict(agent="refuel", iterations=2, resume_at=1, eps=1.0, tolerance=1e-5,
                        options=dict(SMALL, epochs=2, lr=0.1)),
    # PPO's loss is a mean over tokens, so a process's share weighs its tokens; the value head is averaged too.
    # Measured 1.2e-7, against changes of 2e-2.
    "ppo": dict(agent="ppo", iterations=1, eps=1.0, tolerance=1e-5, options=dict(SMALL, epochs=1, lr=0.1)),
}


def run(case: str, out: Path) -> None:
    """Train one case (in this process, or in each process of a launch) and save its parameters and budget."""
    import gymnasium as gym

    import refuel_env  # noqa: F401
    from agents.base import make_agent
    from agents.engine.reference import SMALL, reference_policy
    from agents.harness.trainer import train

    spec = CASES[case]
    # the small task (4 animals, H_max = 3) and its shipped pi_0: pairs with a return difference in every batch.
    # (With no signal every gradient is rounding noise, which AdamW scales to steps of about lr: the "as trained"
    # case could then not tell 1 from 2 processes.)
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=SMALL.max_turns, task_kwargs={"n_items": SMALL.n_items})
    for iterations in (spec.get("resume_at"), spec["iterations"]):
        if iterations is None:
            continue
        agent = make_agent(spec["agent"], policy=reference_policy(SMALL, log=lambda *a: None),
                           seed=5, **spec["options"])
        for group in agent.optimizer.param_groups:
            group["eps"] = spec.get("eps", group["eps"])
        train(agent, env, iterations, out=out, progress=False, log=lambda *a: None, desc=case)
    params = {k: v.detach().cpu().clone() for k, v in agent.policy.model.state_dict().items()}
    if hasattr(agent, "value_head"):
        params.update({f"value_head.{k}": v.detach().cpu().clone() for k, v in agent.value_head.state_dict().items()})
    rank = agent.dist.rank
    torch.save(params, out / f"params.rank{rank}.pt")
    (out / f"engine.rank{rank}.json").write_text(json.dumps(agent.engine(env).stats))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2`` of this file on the CPU (ACCELERATE_USE_CPU=1: gloo)."""
    config = out / "accelerate.yaml"  # explicit, so that a user's default accelerate config cannot leak in
    config.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                      f"num_processes: {processes}\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: false\n"
                      f"main_process_port: {free_port()}\nrdzv_backend: static\nsame_network: true\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "REFUEL_DIST_TIMEOUT": "60",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), __file__, str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"accelerate launch ran past {timeout} s:\n{stdout[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout)


def test_two_processes_reach_the_parameters_of_one(reference_cache, tmp_path):
    from agents.engine.reference import SMALL

    (tmp_path / "two").mkdir()
    res = launch(tmp_path / "two")
    assert res.returncode == 0, res.stdout[-4000:]
    for case in CASES:
        run(case, tmp_path / "one" / case)
        one, two = tmp_path / "one" / case, tmp_path / "two" / case
        p1, p2a, p2b = (torch.load(d / f"params.rank{r}.pt", weights_only=True)
                        for d, r in ((one, 0), (two, 0), (two, 1)))
        init = reference_params(SMALL)
        assert p1.keys() == p2a.keys() == p2b.keys()
        for k in p2a:  # the processes hold the same parameters ...
            assert torch.equal(p2a[k], p2b[k]), k
        diff = max(float((p1[k] - p2a[k]).abs().max()) for k in p1)
        moved = max(float((p1[k] - init[k]).abs().max()) for k in init)
        tol = CASES[case]["tolerance"]
        assert moved > 20 * tol, f"{case}: training hardly moved the parameters ({moved}): the test proves nothing"
        assert diff <= tol, f"{case}: 1 and 2 processes differ by {diff} (parameters moved {moved})"
        print(f"{case}: 1 and 2 processes differ by {diff:.2g} (parameters moved {moved:.2g}; tolerance {tol:.0e})")
        # ... having each rolled out its half of the dialogues one process rolled out (same count, same tokens)
        e1 = json.loads((one / "engine.rank0.json").read_text())
        e2 = [json.loads((two / f"engine.rank{r}.json").read_text()) for r in (0, 1)]
        assert all(0 < e["dialogues"] < e1["dialogues"] for e in e2)
        for key in ("dialogues", "tokens_generated"):
            assert e2[0][key] + e2[1][key] == e1[key], key
        # the main process alone wrote the log; it is the log of one process (losses up to float sums)
        m1, m2 = (read(d / "metrics.jsonl") for d in (one, two))
        assert [r["iteration"] for r in m2] == list(range(1, CASES[case]["iterations"] + 1))
        for a, b in zip(m1, m2):
            counts = [k for k in a if k.startswith("batch/") or k in ("dialogues", "examples", "tokens_generated")]
            assert {k: a[k] for k in counts} == {k: b[k] for k in counts}
            assert np.isclose(a["loss"], b["loss"], rtol=1e-4, atol=0), (a["loss"], b["loss"])
        assert (two / "checkpoints" / "final" / "trainer_state.json").exists()
        if case == "refuel":  # a minibatch of 1 pair came up (7 pairs: 3 + 3 + 1): one process had no share of it
            assert any(r["batch/examples"] % 3 == 1 for r in m1), [r["batch/examples"] for r in m1]


def reference_params(config) -> dict:
    from agents.engine.reference import reference_policy

    return {k: v.detach().cpu() for k, v in reference_policy(config, log=lambda *a: None).model.state_dict().items()}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":  # in each process of `accelerate launch`
    torch.set_num_threads(1)
    for name in CASES:
        run(name, Path(sys.argv[1]) / name)
