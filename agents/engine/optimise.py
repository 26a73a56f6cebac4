"""The optimisation step every agent shares: minibatches, gradient accumulation, clipping, skipping of
non-finite steps, the learning-rate schedule, and the multi-process gradient average.

:class:`Optimising` is a mixin of :class:`agents.base.Agent`; it expects ``self.config`` (an
:class:`~agents.base.AgentConfig`), ``self.optimizer``, ``self.dist``, ``self.rng``, ``self.skipped`` and
``self.parameters()``.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Optimising:
    _steps = (0, 1)  # (optimiser steps taken in this update, steps it will take): the lr schedule

    def minibatches(self, n: int):
        """Global indices of each minibatch (the same on every process; see :meth:`optimise` for splitting one)."""
        mb = max(1, self.config.minibatch_size)
        self._steps = (0, self.config.epochs * -(-n // mb))
        for _ in range(self.config.epochs):
            perm = self.rng.permutation(n)
            for i in range(0, n, mb):
                yield perm[i:i + mb]

    def micro_batches(self, rows):
        """``rows`` (this process's share of a minibatch) in chunks of ``micro_batch_size``."""
        k = self.config.micro_batch_size or max(len(rows), 1)
        return [rows[i:i + k] for i in range(0, len(rows), k)] or [rows]

    def lr_now(self) -> float:
        """The learning rate of the next optimiser step (see ``lr_schedule``)."""
        c = self.config
        if c.lr_schedule == "constant":
            return c.lr
        step, total = self._steps
        warm = int(c.warmup_ratio * total)
        if step < warm:
            return c.lr * (step + 1) / (warm + 1)
        return c.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    def accumulate_step(self, parts, weight: float = 1.0) -> dict | None:
        """One optimiser step on a minibatch given as micro-batches (gradient accumulation).

        ``parts`` yields ``(loss, fraction, info)`` per micro-batch: its mean loss, its fraction of what this
        process's share of the minibatch loss averages over (rows, or tokens), and scalar metrics. Each
        micro-batch is backpropagated before the next is computed (a generator keeps one micro-batch's
        activations alive at a time); ``weight`` is as in :meth:`optimise`."""
        self.optimizer.zero_grad(set_to_none=True)
        total, agg = 0.0, {}
        scale = weight * self.dist.world_size if self.dist.enabled else 1.0
        for loss, fraction, info in parts:
            scaled = loss * (fraction * scale)
            self.dist.backward(scaled) if self.dist.enabled else scaled.backward()
            total = total + loss.detach() * fraction
            for k, v in info.items():
                agg[k] = agg.get(k, 0.0) + float(v) * fraction
        return self.optimise(torch.as_tensor(total), weight, agg, backward_done=True)

    def optimise(self, loss: torch.Tensor, weight: float = 1.0, info: dict | None = None,
                 backward_done: bool = False) -> dict | None:
        """One gradient step; a non-finite loss (or gradient) is skipped and counted, never applied.

        Returns the minibatch's ``loss`` and ``info`` values as floats, or None when the step was skipped.

        One process: ``loss`` is the minibatch's loss (``weight`` is 1). Under a multi-process launch each process
        passes the mean loss over its share of the minibatch (:meth:`Distributed.share`, forwarded through
        :meth:`wrapped`) and ``weight`` = its share's fraction of what the minibatch's loss averages over (rows,
        or tokens); the step then equals one process's step on the whole minibatch, and the values returned are
        the whole minibatch's. A process with no share passes a zero loss that touches the parameters (e.g.
        ``logp.sum() * 0``) and weight 0, so that every process takes part in the gradient average.
        """
        info = info or {}
        if self.config.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_now()
        self._steps = (self._steps[0] + 1, self._steps[1])
        if not self.dist.enabled:
            if not torch.isfinite(loss):
                self.skipped["nonfinite_loss"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if not backward_done:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
            if not torch.isfinite(gn):
                self.skipped["nonfinite_loss"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # the gradients' memory is free until the next backward
            return {"loss": float(loss.detach()), **{k: float(v) for k, v in info.items()}}
        # every process runs the backward (DDP averages the gradients of all of them), then they agree on skipping
        if not backward_done:
            self.optimizer.zero_grad(set_to_none=True)
            self.dist.backward(loss * (weight * self.dist.world_size))
        gn = self.dist.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
        keys = sorted(info)
        mine = [float(loss.detach()), *(float(info[k]) for k in keys)]
        table = self.dist.all_gather_floats([x * weight if weight else 0.0 for x in mine] + [float(gn)])
        norms = table[:, -1]
        if np.all(np.isfinite(norms)) and not np.allclose(norms, norms[0], rtol=1e-5, atol=0):
            raise RuntimeError(f"the processes' gradient norms differ ({norms.tolist()}): the update did not run its "
                               "forward passes through agent.wrapped(module), so DDP did not average the gradients")
        values = table[:, :-1].sum(0)
        if not (np.isfinite(values[0]) and np.all(np.isfinite(norms))):
            self.skipped["nonfinite_loss"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return dict(zip(["loss", *keys], values.tolist()))

