"""The model and rollout machinery the algorithms share: the policy and its chat turn masks, LoRA, the
rollout engine over the env's dialogue machine, the built-in pi_0, the optimisation step, and the
multi-process helpers. Nothing here imports the algorithms or the experiment harness."""
