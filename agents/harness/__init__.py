"""The experiment harness: configuration and presets, the one place that builds env, policy, pi_0 and agent,
validation and the dry-run plan, the trainer, evaluation, the comparison benchmark, its report, and the
``refuel`` command."""
