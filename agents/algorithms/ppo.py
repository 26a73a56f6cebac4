"""PPO, token-level, over the assistant tokens of whole multi-turn dialogues.

Each assistant token is an action; user turns are the environment's transitions. Per-token reward:
``-kl_coef * (ln pi_old - ln pi_ref)``, plus the judge's score at the horizon on the dialogue's last
assistant token. Advantages by GAE (gamma, lam) along the assistant tokens of each dialogue, whitened
over the batch; a value head (a linear layer on the policy's last hidden state) is the critic.

    pg_loss = mean( max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) ),   r = pi / pi_old per token
    vf_loss = 0.5 * mean( max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2) )
    loss = pg_loss + vf_coef * vf_loss

TRL no longer ships a PPO trainer. Token log-probabilities come from the policy's memory-safe scoring
(:mod:`agents.engine.scoring`), at the turn tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..base import Agent, AgentConfig, Batch, register_agent
from ..engine.chat import EncodedTurns, TemplateError
from ..engine.distributed import cat_rows, sum_stats


@dataclass
class PPOConfig(AgentConfig):
    gamma: float = 1.0
    """Discount along assistant tokens."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Clipping of the probability ratio."""
    clip_range_value: float = 0.2
    """Clipping of the value update."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    kl_coef: float = 0.05
    """Per-token KL penalty to the reference policy."""
    whiten_advantages: bool = True
    """Normalise advantages over the batch."""
    epochs: int = 2


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates along the masked positions of each row.

    ``rewards``, ``values``, ``mask``: [N, T]. Positions with mask 0 are skipped (the next action's value
    is bootstrapped across them); after the last action the value is 0.
    """
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # the advantage of each row's next action
    next_value = torch.zeros_like(rewards[:, 0])  # and its value
    for t in reversed(range(rewards.shape[1])):  # all rows at once, right to left
        on = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        here = delta + gamma * lam * last
        adv[:, t] = torch.where(on, here, adv[:, t])
        last = torch.where(on, here, last)
        next_value = torch.where(on, values[:, t], next_value)
    return adv


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp(min=1)


def kl_rewards(logp_old: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor,
               kl_coef: float) -> torch.Tensor:
    """Per-token rewards [N, T]: ``-kl_coef * (ln pi_old - ln pi_ref)`` on every assistant token, plus the judge's
    score at the horizon on each dialogue's last assistant token."""
    rewards = -kl_coef * (logp_old - logp_ref) * mask
    last = mask.shape[1] - 1 - torch.argmax(mask.flip(1), dim=1)  # last assistant token of each dialogue
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores.to(rewards.device)
    return rewards


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate ``mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))`` over the masked tokens, and the
    ratio r = pi / pi_old."""
    ratio = torch.exp(logp - logp_old)
    return masked_mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)), mask), ratio


def value_loss(v: torch.Tensor, v_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> torch.Tensor:
    """``0.5 * mean(max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2))`` over the masked tokens."""
    v_clip = v_old + (v - v_old).clamp(-clip_range_value, clip_range_value)
    return 0.5 * masked_mean(torch.maximum((v - returns) ** 2, (v_clip - returns) ** 2), mask)


@register_agent("ppo")
class PPOAgent(Agent):
    name = "ppo"
    Config = PPOConfig
    data_parallel = True

    def setup(self) -> None:
        hidden = self.policy.model.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1).to(self.policy.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def parameters(self):
        return super().parameters() + list(self.value_head.parameters())

    def modules(self):
        return super().modules() + [self.value_head]

    def extra_state(self) -> dict:
        return {"value_head": self.value_head.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.value_head.load_state_dict(state["value_head"])

    def _forward(self, enc, train: bool = False):
        policy, head = (self.policy.model, self.value_head)
        if train:  # an update's forward passes: through the DDP wrappers under a multi-process launch
            policy, head = self.wrapped(policy), self.wrapped(head)
        lp, hidden = self.policy.token_logprobs(enc, policy, self.config.temperature, return_hidden=True,
                                               turns_only=True)  # 0 off the turns, where the mask drops it
        values = head(hidden[:, :-1].float()).squeeze(-1)
        return lp, values

    def collect(self, env) -> Batch:
        c = self.config
        eng = self.engine(env)
        before = dict(eng.stats)
        self.policy.model.eval()
        states = eng.dialogues(c.batch_size, self.policy, self.rng, self.sampling)
        keep, errors = [], 0
        for i, s in enumerate(states):
            try:
                self.policy.chat.encode_dialogues([s.messages])
                keep.append(i)
            except TemplateError:
                errors += 1
        scores = np.array([states[i].scores[-1] for i in keep], dtype=float)
        finite = np.isfinite(scores)
        keep = [k for k, f in zip(keep, finite) if f]
        stats = {**self.budget(eng, before), "examples": len(keep), "template_errors": errors,
                 "nonfinite_returns": int((~finite).sum()),
                 "mean_return": float(np.mean([s.scores[-1] for s in states])) if states else float("nan")}
        data = None
        if keep:
            enc, _ = self.policy.chat.encode_dialogues([states[i].messages for i in keep])
            data = self.advantages(enc, torch.tensor(scores[finite], dtype=torch.float32))
            data["kl_sum"], data["kl"] = float(data["kl_sum"]), float(data["kl"])
        if self.dist.enabled:
            data, stats = self.gather_dialogues(data, stats, [s.scores[-1] for s in states])
        if data is None:
            return Batch({}, stats)
        enc, old, values, returns, adv, mask = (data[k] for k in ("enc", "old", "values", "returns", "adv", "mask"))
        if c.whiten_advantages:
            mu, sd = masked_mean(adv, mask), masked_mean((adv - masked_mean(adv, mask)) ** 2, mask).sqrt()
            adv = (adv - mu) / (sd + 1e-8) * mask
        data = {"enc": enc, "old": old, "values": values, "returns": returns, "adv": adv, "mask": mask,
                "kl": data["kl"]}
        return Batch(data, stats)

    @torch.no_grad()
    def advantages(self, enc: EncodedTurns, scores: torch.Tensor) -> dict:
        """pi_t's token log-probabilities and values, the per-token rewards (judge score at the end, KL penalty to
        pi_ref), GAE advantages and returns of dialogues ``enc`` that scored ``scores``; on the policy's device."""
        c = self.config
        old, values = self._forward(enc)
        ref = self.ref_policy.token_logprobs(enc, temperature=c.temperature, turns_only=True)
        mask = enc.turn_mask[:, 1:].float().to(old.device)
        rewards = kl_rewards(old, ref, mask, scores, c.kl_coef)
        adv = gae(rewards, values, mask, c.gamma, c.lam)
        return {"enc": enc, "old": old, "values": values, "returns": adv + values, "adv": adv, "mask": mask,
                "kl_sum": ((old - ref) * mask).sum(), "kl": masked_mean(old - ref, mask)}

    def gather_dialogues(self, data: dict | None, stats: dict, scores: list) -> tuple[dict | None, dict]:
        """Every process's dialogues, in rank order, on every process (before whitening, which is global)."""
        to_cpu = None if data is None else {k: v.cpu() if torch.is_tensor(v) else v for k, v in data.items()}
        parts = self.dist.gather((to_cpu, stats, scores))
        stats = sum_stats([p[1] for p in parts])
        every = [x for p in parts for x in p[2]]
        stats["mean_return"] = float(np.mean(every)) if every else float("nan")
        ds = [p[0] for p in parts if p[0] is not None]
        if not ds:
            return None, stats
        dev = self.policy.device
        out = {"enc": EncodedTurns.cat([d["enc"] for d in ds], self.policy.tokenizer.pad_token_id)}
        out.update({k: cat_rows([d[k] for d in ds]).to(dev) for k in ("old", "values", "returns", "adv", "mask")})
        out["kl"] = sum(d["kl_sum"] for d in ds) / max(float(out["mask"].sum()), 1.0)
        return out, stats

    def minibatch_losses(self, d: dict, rows, tokens: float, has_share: bool):
        """(loss, fraction of the share's tokens, info) of each micro-batch of ``rows``."""
        c = self.config
        for chunk in self.micro_batches(rows):
            idx_t = torch.as_tensor(chunk)
            enc = d["enc"].select(idx_t)
            width = enc.input_ids.shape[1] - 1
            old, v_old, ret, adv, m = (d[k][idx_t][:, :width] for k in ("old", "values", "returns", "adv", "mask"))
            lp, v = self._forward(enc, train=True)
            pg, ratio = policy_loss(lp, old, adv, m, c.clip_range)
            vf = value_loss(v, v_old, ret, m, c.clip_range_value)
            loss = pg + c.vf_coef * vf
            info = {"pg_loss": pg.detach(), "vf_loss": vf.detach(),
                    "clipfrac": masked_mean(((ratio - 1).abs() > c.clip_range).float(), m),
                    "approx_kl": masked_mean(old - lp.detach(), m)}
            if not has_share:  # nothing of this minibatch here: a zero that still joins the gradient average
                loss = lp.sum() * 0.0 + v.sum() * 0.0
            share = float(enc.turn_mask[:, 1:].sum())  # = m.sum(), counted on the host (no device sync)
            yield loss, (share / tokens if tokens else 1.0), info

    def update(self, batch: Batch) -> dict[str, float]:
        n, d = len(batch), batch.data
        if n == 0:
            self.skipped["empty_batches"] += 1
            return {"loss": float("nan"), "skipped_empty_batches": self.skipped["empty_batches"]}
        self.policy.model.train()
        logs = {"loss": [], "pg_loss": [], "vf_loss": [], "clipfrac": [], "approx_kl": []}
        for idx in self.minibatches(n):
            mine = self.dist.share(idx)  # one process: the whole minibatch
            rows = mine if len(mine) else idx[:1]
            tokens = float(d["mask"][torch.as_tensor(rows)].sum())
            weight = 1.0  # the loss is a mean over tokens: a process's share weighs its tokens' fraction
            if self.dist.enabled:
                weight = tokens / float(d["mask"][torch.as_tensor(idx)].sum()) if len(mine) else 0.0
            out = self.accumulate_step(self.minibatch_losses(d, rows, tokens, bool(len(mine))), weight)
            if out:
                for k in logs:
                    logs[k].append(out[k])
        self.policy.model.eval()
        return {**{k: float(np.mean(v)) if v else float("nan") for k, v in logs.items()}, "dialogues": n,
                "kl_to_ref": d["kl"], "skipped_nonfinite_loss": self.skipped["nonfinite_loss"]}
