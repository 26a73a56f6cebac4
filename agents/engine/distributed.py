"""Data-parallel training over several processes, through Hugging Face ``accelerate``.

    accelerate launch --multi_gpu --num_processes 4 -m agents.cli train --agent refuel --out runs/refuel
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m agents.cli train ...  # CPU, gloo

Under a multi-process launch (``WORLD_SIZE > 1``: ``accelerate launch``, ``torchrun``) every agent gets the
process's :class:`Accelerated` (one ``accelerate.Accelerator`` per process); otherwise the single-process
:class:`Distributed`, whose every method is the identity (no ``accelerate``, no process group, nothing
added to a step), so one process computes exactly what it computed before this module existed.

How one iteration with a global batch of B splits over W processes, so that it computes what one process
computes with the same seed and B (up to the order of float sums):

- collection: every process draws the same random numbers from the agent's generator (horizons, branch
  turns, episode seeds, one sampling seed per generation call) and rolls out its contiguous block of the B
  dialogues. A generation call samples row j (among the rows of all processes) with ``seed + j``, as
  one process does; a process learns the offset of its rows from one all-gather of a count per call;
- the collected data (token ids, log-probabilities, returns: small) are gathered onto every process;
- update: every minibatch (the same global permutation on every process) is split over the processes.
  A process's loss is the mean over its share times ``W * share / minibatch`` (rows for the pair losses,
  tokens for PPO's token-normalised loss), and DDP averages the gradients over the processes: the result
  is the gradient of the global minibatch's mean loss. Clipping then sees the global gradient, and every
  process takes the same step;
- the trainer: the main process alone writes logs and checkpoints, evaluates and shows progress.

Supported: accelerate's DDP configurations (multi-GPU, multi-CPU, ...), mixed precision "no" or "bf16".
Not supported: DeepSpeed and FSDP (they shard the parameters every process generates with; see
:meth:`Accelerated.check`), fp16 (its loss scaler would skip steps behind the agents' own skip logic).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import numpy as np
import torch


class Distributed:
    """One process: the identity everywhere (the default)."""

    enabled = False
    rank = 0
    world_size = 1
    is_main = True

    def block(self, n: int) -> tuple[int, int]:
        """[lo, hi): this process's contiguous share of n global items."""
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        return lo, hi

    def offset(self, k: int) -> tuple[int, int]:
        """(rows of the processes before this one, rows of all processes), when this one has k rows."""
        return 0, k

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This process's part of a minibatch of global indices."""
        return idx

    def gather(self, obj: Any) -> list:
        """``obj`` of every process, in rank order."""
        return [obj]

    def all_gather_floats(self, values: Sequence[float]) -> np.ndarray:
        """[world_size, len(values)]: every process's values."""
        return np.asarray([values], dtype=np.float64)

    def prepare(self, *objs):
        """Modules and optimiser made ready for data-parallel training (here: unchanged)."""
        return objs

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def barrier(self) -> None:
        pass

    @contextlib.contextmanager
    def main_process_first(self):
        """The main process runs the block first (e.g. building a cache), the others after it."""
        yield

    def process_seed(self, seed: int) -> int:
        """A seed for a random stream private to this process (``seed`` itself on the main process)."""
        return seed


class Accelerated(Distributed):
    """W processes, through one ``accelerate.Accelerator`` (DDP)."""

    enabled = True

    def __init__(self):
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        # `accelerate launch --multi_gpu` (torchrun) on a machine without an accelerator gives processes that do
        # not know they are on a CPU, and so would not join a process group: tell accelerate.
        has = getattr(torch, "accelerator", None)  # torch >= 2.6
        cpu = not (has.is_available() if has is not None else torch.cuda.is_available())
        # the other processes wait in a collective while the main one evaluates: give them time (NCCL's default
        # is 10 minutes); $REFUEL_DIST_TIMEOUT in seconds
        timeout = timedelta(seconds=float(os.environ.get("REFUEL_DIST_TIMEOUT", 7200)))
        self.accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        self.check()
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device

    def check(self) -> None:
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.num_processes != int(os.environ.get("WORLD_SIZE", acc.num_processes)):
            raise RuntimeError(f"accelerate sees {acc.num_processes} processes but WORLD_SIZE is "
                               f"{os.environ['WORLD_SIZE']}; launch with `accelerate launch` (see the README)")
        if acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise NotImplementedError(
                f"accelerate is configured for {acc.distributed_type.value}, which shards the parameters; every "
                "process of a refuel-env agent generates its rollouts with the whole policy, so only DDP "
                "configurations (multi-GPU, multi-CPU) are supported: run `accelerate config` and choose plain "
                "multi-GPU, or launch with --multi_gpu")
        if acc.mixed_precision == "fp16":
            raise NotImplementedError("mixed precision fp16 is not supported (its loss scaler would skip steps "
                                      "behind the agents' own skipping of non-finite steps); use bf16 or no")

    def offset(self, k: int) -> tuple[int, int]:
        counts = self.accelerator.gather(torch.tensor([k], device=self.device)).tolist()
        return int(sum(counts[: self.rank])), int(sum(counts))

    def share(self, idx: np.ndarray) -> np.ndarray:
        return np.array_split(np.asarray(idx), self.world_size)[self.rank]

    def gather(self, obj: Any) -> list:
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_gather_floats(self, values: Sequence[float]) -> np.ndarray:
        t = torch.tensor([list(values)], dtype=torch.float64, device=self.device)
        return self.accelerator.gather(t).cpu().numpy()

    def prepare(self, *objs):
        return self.accelerator.prepare(*objs)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        return self.accelerator.clip_grad_norm_(params, max_norm)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def main_process_first(self):
        with self.accelerator.main_process_first():
            yield

    def process_seed(self, seed: int) -> int:
        return seed if self.rank == 0 else int(np.random.default_rng([seed, self.rank]).integers(2**31))


SINGLE = Distributed()
_current: Distributed | None = None


def current() -> Distributed:
    """This process's :class:`Distributed`: :class:`Accelerated` under a multi-process launch, else the identity."""
    global _current
    if _current is None:
        _current = Accelerated() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else SINGLE
    return _current


def cat_rows(tensors: Sequence[torch.Tensor], pad: float | int = 0) -> torch.Tensor:
    """Concatenate along rows; tensors of 2 or more dimensions are right-padded with ``pad`` to the widest."""
    tensors = list(tensors)
    if tensors[0].dim() >= 2:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=pad)
                   for t in tensors]
    return torch.cat(tensors)


def sum_stats(parts: Sequence[dict]) -> dict:
    """The per-process budget and drop counts of one batch, summed (numbers only; the rest from the first that
    has the key). A key that only some processes report (a turn only they drew) counts 0 in the others."""
    out = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, v)
    for k, v in out.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = type(v)(sum(p.get(k, 0) for p in parts))
    return out
