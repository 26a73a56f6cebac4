"""Progress bars on the pi_0 build and on evaluation, and one switch (``--no-progress``) that silences them and
Hugging Face's."""

from __future__ import annotations

import dataclasses

import gymnasium as gym

import refuel_env  # noqa: F401
from agents.engine import progress
from agents.engine.reference import reference_policy
from agents.harness.evaluate import Evaluator


def test_the_switch_turns_hugging_face_bars_off_and_back(capsys):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with progress.enabled(False):
        assert not hf_logging.is_progress_bar_enabled() and progress.bar(total=3).disable
        assert not progress.bar(True, total=3).disable  # an explicit choice wins
    assert hf_logging.is_progress_bar_enabled() and not progress.bar(total=3).disable


def test_pi0_build_and_evaluation_show_bars_unless_switched_off(tiny_reference_config, tmp_path, capsys):
    cfg = dataclasses.replace(tiny_reference_config, n_dialogues=8, epochs=1)
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4)
    for on in (True, False):
        with progress.enabled(on):
            pol = reference_policy(cfg, cache=tmp_path / str(on), log=lambda *a: None)
            Evaluator(env, pol, n_dialogues=2, examples=0, n_boot=10, desc="evaluating pi_0")(pol)
        err = capsys.readouterr().err
        for bar in ("building pi_0 (SFT)", "Loading weights", "evaluating pi_0"):
            assert (bar in err) == on, (on, bar, err[-500:])
