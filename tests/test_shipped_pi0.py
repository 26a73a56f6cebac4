"""The pi_0 checkpoints shipped with the package: the presets' recipes are shipped, each with a manifest that
matches its recipe, and a rebuild of the small one from its recipe reproduces its manifest's scores."""

from __future__ import annotations

import json

import pytest

from agents.engine.reference import SMALL, ReferenceConfig, reference_policy
from agents.engine.shipped import SCORE_TOLERANCE, SHIPPED, build_reference_and_measure, read_manifest, shipped_path
from agents.harness.build import reference_config
from agents.harness.commands import SHIPPED_PI0
from agents.harness.presets import preset


def test_the_presets_pi0_and_the_small_one_ship_with_manifests_that_match_their_recipes():
    recipes = [reference_config(preset(p).policy, preset(p).env) for p in (*SHIPPED_PI0, "quick", "default")] + [SMALL]
    for rc in recipes:
        path = shipped_path(rc)
        assert path is not None, f"no shipped pi_0 for {rc}; run `refuel pi0 build`"
        m = read_manifest(path)
        assert m["key"] == rc.key() == ReferenceConfig(**m["recipe"]).key() == path.name.removeprefix("pi0-")
        assert set(m) >= {"recipe_version", "builder_sha256", "task", "torch", "transformers", "scores", "build_seconds"}
        assert len(m["scores"]["per_turn"]) == rc.max_turns and 0 <= m["scores"]["final"] <= 1


def test_a_shipped_pi0_is_what_reference_policy_loads_on_an_empty_cache(tmp_path):
    policy = reference_policy(SMALL, cache=tmp_path / "empty", log=lambda *a: None)
    assert not (tmp_path / "empty").exists()  # nothing built, nothing cached
    assert json.loads((shipped_path(SMALL) / "config.json").read_text())["hidden_size"] == policy.model.config.hidden_size


@pytest.mark.slow
def test_rebuilding_the_small_pi0_reproduces_its_manifest():
    want = read_manifest(shipped_path(SMALL))["scores"]
    got = build_reference_and_measure(SMALL)["scores"]
    print(f"\nsmall pi_0: manifest {want['per_turn']}, rebuilt {got['per_turn']} (tolerance {SCORE_TOLERANCE})")
    assert all(abs(a - b) <= SCORE_TOLERANCE for a, b in zip(got["per_turn"], want["per_turn"]))


def test_shipped_directory_holds_only_manifested_checkpoints():
    for d in SHIPPED.iterdir():
        if d.is_dir():
            assert (d / "manifest.json").is_file() and d.name.startswith("pi0-"), d
