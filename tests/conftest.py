"""Shared test fixtures.

- torch runs on ONE thread in tests (the CI machine has 2 cores, and tests run beside other work);
- ``tiny_reference``: a small pi_0 built once per test session (a few seconds), cached in a temporary
  ``REFUEL_ENV_CACHE`` that stays set for the session, so that nothing touches ``~/.cache`` and any
  ``reference_policy(tiny_reference_config)`` call in a test loads it from that cache.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import pytest
import torch

torch.set_num_threads(1)

# about 7 s to build on one thread; it already asks questions and guesses (so rewards differ between responses)
TINY_REFERENCE = dict(n_items=8, max_turns=4, noise=0.0, vocab_size=640, hidden_size=32, num_layers=2, num_heads=2,
                      n_dialogues=300, epochs=4, lr=1e-2, batch_size=16, seed=0)


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory):
    """A temporary pi_0 cache, set as $REFUEL_ENV_CACHE for the whole session."""
    path = tmp_path_factory.mktemp("refuel_env_cache")
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
    from agents.engine.reference import reference_policy

    return reference_policy(tiny_reference_config, cache=reference_cache, log=lambda *a: None)

