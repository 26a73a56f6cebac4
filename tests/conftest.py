"""Shared test fixtures.

- torch runs on ONE thread in tests (the CI machine has 2 cores, and tests run beside other work);
- ``tiny_reference``: a small pi_0 built once per test session (a few seconds), cached in a temporary
  ``REFUEL_ENV_CACHE`` that stays set for the session, so that nothing touches ``~/.cache`` and any
  ``reference_policy(tiny_reference_config)`` call in a test loads it from that cache.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import pytest
import torch

torch.set_num_threads(1)

# about 7 s to build on one thread; it already asks questions and guesses (so rewards differ between responses)
TINY_REFERENCE = dict(n_items=8, max_turns=4, noise=0.0, vocab_size=640, hidden_size=32, num_layers=2, num_heads=2,
                      n_dialogues=300, epochs=4, lr=1e-2, batch_size=16, seed=0)


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory):
    """A temporary pi_0 cache, set as $REFUEL_ENV_CACHE for the whole session.

    With ``$REFUEL_TEST_PI0_CACHE`` set (``make mutation``: one short pytest session per mutant), the pi_0
    checkpoints found there are copied in first and any built in the session are kept there, so the tiny pi_0 is
    built once, not once per session; nothing else of that folder is shared between sessions."""
    import shutil

    path = tmp_path_factory.mktemp("refuel_env_cache")
    keep = os.environ.get("REFUEL_TEST_PI0_CACHE")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for d in Path(keep).glob("pi0-*"):
            if (d / "config.json").exists():
                shutil.copytree(d, path / d.name)
    old = os.environ.get("REFUEL_ENV_CACHE")
    os.environ["REFUEL_ENV_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("REFUEL_ENV_CACHE", None)
    else:
        os.environ["REFUEL_ENV_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_reference_config(reference_cache):
    """The ReferenceConfig of the tiny pi_0 (guess-item, 8 items, H_max = 4)."""
    from agents.engine.reference import ReferenceConfig

    return ReferenceConfig(**TINY_REFERENCE)


@pytest.fixture(scope="session")
def tiny_reference(tiny_reference_config, reference_cache):
    """A small pi_0 Policy (built once per session; each call of reference_policy loads a fresh copy)."""
    import shutil

    from agents.engine.reference import reference_policy

    policy = reference_policy(tiny_reference_config, cache=reference_cache, log=lambda *a: None)
    keep = os.environ.get("REFUEL_TEST_PI0_CACHE")
    name = f"pi0-{tiny_reference_config.key()}"
    clean = os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats")  # never keep a pi_0 built by a mutant
    if keep and clean and not (Path(keep) / name / "config.json").exists():
        tmp = Path(keep) / f"{name}.tmp{os.getpid()}"
        shutil.copytree(reference_cache / name, tmp, dirs_exist_ok=True)
        try:
            os.replace(tmp, Path(keep) / name)
        except OSError:  # another session kept it first
            shutil.rmtree(tmp, ignore_errors=True)
    return policy



# ------------------------------------------------------------------------------------------ make mutation
# mutmut runs, for each mutant, the selected tests that call the mutated function; the env core is called by
# nearly every test, so each mutated module runs only the tests of its own layer (issue #13: `make mutation`
# within 60 minutes on 2 cores). (test files, whether tests that load a model are kept)
ENV_TESTS = {"test_env.py", "test_env_contract.py", "test_env_fast_paths.py", "test_env_properties.py", "test_vector.py",
             "test_bad_inputs.py",
             "test_guess_item.py", "test_multiagent.py", "test_sb3.py", "test_rows.py", "test_evaluate.py"}
AGENT_TESTS = {"test_losses.py", "test_rows.py", "test_accumulation.py", "test_evaluate.py",
               "test_export.py", "test_trainer.py", "test_device.py", "test_engine_contract.py"}
MUTATION_TESTS = {
    "refuel_env.core": (ENV_TESTS, False),
    "agents.engine.chat": ({"test_losses.py", "test_rows.py", "test_open_chat.py", "test_accumulation.py",
                            "test_export.py", "test_engine_contract.py"}, True),
    "*": (AGENT_TESTS, True),  # the algorithms and the rollout engine
}
MODEL_FIXTURES = {"tiny_reference", "tiny_reference_config", "tiny"}


def pytest_collection_modifyitems(config, items):
    import re

    m = re.match(r"^(.*?)\.x[_\u01c1]", os.environ.get("MUTANT_UNDER_TEST", ""))
    if not m:  # not a mutant's run (``mutmut``'s trampolines name the mutant in $MUTANT_UNDER_TEST)
        return
    files, models = MUTATION_TESTS.get(m.group(1), MUTATION_TESTS["*"])
    keep = [it for it in items
            if it.path.name in files and (models or not MODEL_FIXTURES & set(getattr(it, "fixturenames", ())))]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[it for it in items if it not in keep])
        items[:] = keep
