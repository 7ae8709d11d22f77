"""Neural architecture search for the multi-stream depression model: controllers, PPO, stages.

The method is Sec. III-C and Algorithm 1 of "Neural Architecture Search for depression
recognition from facial attributes". One LSTM controller per stream samples a stream
architecture decision by decision. A fusion controller, started from the stream
controllers' final states, samples the fusion module. Every sampled model is trained from
scratch and scored by its validation RMSE. A motion-average tracker keeps the running mean
of every error an architecture has received, and PPO with the clipped objective updates
the controllers with that mean (not the single trial) as the reward.

The search runs in two stages. The warm-up stage searches each stream alone (stream plus a
fixed regression head) and keeps the best few architectures per stream. The joint stage
restricts each stream controller to its kept architectures with a prefix-tree mask and
searches streams and fusion together. The final stage retrains the best joint
architectures on the whole training split with several seeds and reports development
(and, where labelled, test) errors.

Shape legend used in comments across the repository: B batch, S streams, T frames,
K frequency columns, C channels, N nodes, E edges, H hidden, D fused size.

Run it with ``python search.py --stage warmup`` and then ``python search.py --stage joint``
(or ``--stage all``); ``python search.py --help`` lists the options.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import platform
import random
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import depnas
import encode

logger = logging.getLogger("depnas.search")

# Search-stage codes that enter every derived seed, so each stage draws independent numbers.
STAGE_CODES = {"warmup": 1, "joint": 2, "final": 3, "init": 4, "sampler": 5}


class SearchError(RuntimeError):
    """A search that cannot start or continue; the message names the cause and the fix."""


# ---------------------------------------------------------------------------
# Settings as data
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """How much work a search does; one instance per ``--budget`` name."""

    name: str
    warmup_steps: int           # PPO steps per stream in the warm-up stage
    joint_steps: int            # PPO steps in the joint stage
    samples: int                # architectures sampled and trained per PPO step (N)
    ppo_epochs: int             # passes of the clipped objective over each step's samples
    child_epochs: int           # training epochs of every child network
    child_batch_size: int
    child_lr: float
    child_weight_decay: float
    child_dropout: float
    final_seeds: int            # seeds per retrained architecture in the final stage
    keep: int = 5               # architectures kept per stream after the warm-up (T-hat)
    top: int = 3                # joint architectures retrained in the final stage

    def child_budget(self) -> "depnas.ChildBudget":
        """Return the training settings of one child network."""
        return depnas.ChildBudget(
            epochs=self.child_epochs, batch_size=self.child_batch_size, lr=self.child_lr,
            weight_decay=self.child_weight_decay, dropout=self.child_dropout)


# NOTE: the paper publishes neither its step counts nor its child training settings, so
# these numbers are ours. smoke only exercises every stage (about 30 s for both stages on
# two shared CPU cores). default aims at about a quarter of an hour on two CPU cores with
# --workers 2; the landmark GNN children cost most (README gives the measured wall time).
# paper is an estimate of the full scale for one GPU,
# with ENAS-like controller step counts and fully trained children.
BUDGETS = {
    # Hidden: for the test suite only (not listed in --help).
    "tiny": Budget("tiny", warmup_steps=2, joint_steps=2, samples=2, ppo_epochs=2,
                   child_epochs=2, child_batch_size=32, child_lr=3e-3,
                   child_weight_decay=1e-4, child_dropout=0.1, final_seeds=2, keep=2, top=2),
    "smoke": Budget("smoke", warmup_steps=2, joint_steps=2, samples=3, ppo_epochs=2,
                    child_epochs=2, child_batch_size=32, child_lr=3e-3,
                    child_weight_decay=1e-4, child_dropout=0.1, final_seeds=2, keep=2, top=2),
    "default": Budget("default", warmup_steps=4, joint_steps=5, samples=6, ppo_epochs=4,
                      child_epochs=20, child_batch_size=16, child_lr=3e-3,
                      child_weight_decay=1e-4, child_dropout=0.2, final_seeds=3),
    "paper": Budget("paper", warmup_steps=100, joint_steps=200, samples=8, ppo_epochs=4,
                    child_epochs=100, child_batch_size=16, child_lr=1e-3,
                    child_weight_decay=1e-4, child_dropout=0.3, final_seeds=5),
}
PUBLIC_BUDGETS = ("smoke", "default", "paper")


@dataclass(frozen=True)
class ControllerSettings:
    """Controller and PPO settings shared by every budget.

    Logits are divided by ``temperature`` and squashed by ``tanh_c * tanh``, with the
    values common in ENAS controllers (Pham et al. 2018): T = 5, c = 2.5. The squash bounds
    every choice's log-odds by 2c, so the controller keeps exploring. ``clip`` is PPO's
    epsilon, 0.2 (Schulman et al. 2017).
    """

    hidden: int = 64                 # LSTM size of each stream controller (H)
    temperature: float = 5.0
    tanh_c: float = 2.5
    init_range: float = 0.1          # parameters start uniform in [-init_range, init_range]
    lr: float = 5e-3                 # Adam learning rate of the controllers
    clip: float = 0.2
    entropy_weight: float = 1e-2     # weight of the mean entropy bonus in the PPO loss
    grad_clip: float = 1.0           # maximum gradient norm per PPO update
    baseline_decay: float = 0.8      # exponential moving average of past rewards
    advantage_eps: float = 0.1       # PHQ-8 points added to the advantage std before dividing
    failure_margin: float = 1.0      # PHQ-8 points added to the worst error for a failed child


CONTROLLER = ControllerSettings()

# Validation part of the training split during the search (stratified by score).
VALIDATION_FRACTION = 0.25


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one search invocation (never changed after parsing)."""

    stage: str
    data: str | None
    budget: str
    seed: int
    device: str
    workers: int
    out: str
    resume: bool
    reward: str
    streams: tuple[str, ...]
    align: str
    on_bad_session: str
    split_seed: int = 0

    def fingerprint(self) -> dict:
        """Return the settings a checkpoint must share with the run that resumes it."""
        return {
            "seed": self.seed, "budget": self.budget, "streams": list(self.streams),
            "data": self.data or "synthetic", "reward": self.reward, "align": self.align,
            "on_bad_session": self.on_bad_session, "split_seed": self.split_seed,
            "device": self.device,
        }


def derive_seed(seed: int, *path) -> int:
    """Return a 31-bit seed that depends only on ``seed`` and the labels in ``path``.

    Labels are mixed through numpy's SeedSequence (strings via CRC-32, which, unlike
    Python's ``hash``, does not change between processes).
    """
    words = [seed]
    for part in path:
        words.append(zlib.crc32(part.encode()) if isinstance(part, str) else int(part))
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------------
# Controllers
# ---------------------------------------------------------------------------

class TokenTrie:
    """Prefix tree of complete token sequences; restricts a controller to those sequences."""

    def __init__(self, sequences):
        self.root: dict = {}
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(int(token), {})

    def allowed(self, prefix, size: int) -> list[bool]:
        """Return a mask over ``size`` choices: which tokens continue ``prefix`` in the tree."""
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                raise SearchError(f"token prefix {list(prefix)} is not in the kept architectures")
        return [index in node for index in range(size)]


class Controller(nn.Module):
    """LSTM controller that samples the decisions of one search space in order.

    At every decision the LSTM cell reads the embedding of the previous choice. Before the
    first decision it reads a learned start vector or a given input. A decoder per decision
    turns the hidden state into logits, which are divided by the temperature, squashed by
    ``c * tanh`` and masked (invalid choices get -inf). After the last decision the cell
    reads that choice's embedding once more, so the final state depends on every choice.
    """

    def __init__(self, space: depnas.Space, hidden: int, settings: ControllerSettings = CONTROLLER):
        super().__init__()
        self.space = space
        self.hidden = hidden
        self.settings = settings
        decisions = space.decisions()
        self.cell = nn.LSTMCell(hidden, hidden)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embeddings = nn.ModuleDict(
            {d.name: nn.Embedding(len(d.choices), hidden) for d in decisions})
        self.decoders = nn.ModuleDict(
            {d.name: nn.Linear(hidden, len(d.choices)) for d in decisions})
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -settings.init_range, settings.init_range)

    def log_probabilities(self, name: str, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return masked log-probabilities (B, choices) of decision ``name`` from hidden (B, H)."""
        raw = self.decoders[name](h) / self.settings.temperature
        squashed = self.settings.tanh_c * torch.tanh(raw)
        return torch.log_softmax(squashed.masked_fill(~mask, float("-inf")), dim=-1)

    def unroll(self, rows: int, mask_fn, tokens=None, generator=None, state=None) -> dict:
        """Sample (``tokens`` None) or score ``rows`` token sequences, batched.

        ``mask_fn(row, decision, prefix)`` returns the allowed-choice mask of one row.
        ``state`` is an optional (h, c, x) triple of (B, H) tensors; otherwise the LSTM
        starts from zeros and the learned start input. Returns the token lists, the
        log-probability and entropy per row (B,), and the final (h, c), each (B, H).
        """
        h, c, x = self._initial_state(rows, state)
        prefixes = [[] for _ in range(rows)]
        live = [True] * rows
        log_prob = torch.zeros(rows)
        entropy = torch.zeros(rows)
        while any(live):
            h, c = self._advance(x, h, c, live)
            groups = self._group_rows(prefixes, live)
            x = torch.zeros(rows, self.hidden)
            for name, members in groups.items():
                step = self._decide(name, members, h, prefixes, mask_fn, tokens, generator)
                index = torch.tensor(members)
                log_prob = log_prob.index_add(0, index, step["log_prob"])
                entropy = entropy.index_add(0, index, step["entropy"])
                x = x.index_copy(0, index, self.embeddings[name](step["choice"]))
                for row, choice in zip(members, step["choice"].tolist()):
                    prefixes[row].append(choice)
            live = [alive and any(row in m for m in groups.values())
                    for row, alive in enumerate(live)]
        return {"tokens": prefixes, "log_prob": log_prob, "entropy": entropy, "h": h, "c": c}

    def _initial_state(self, rows: int, state):
        if state is not None:
            return state
        zeros = torch.zeros(rows, self.hidden)
        return zeros, zeros, self.start.expand(rows, self.hidden)

    def _advance(self, x, h, c, live):
        """Run one LSTM step; rows that finished keep their final state."""
        h_new, c_new = self.cell(x, (h, c))
        keep = torch.tensor(live).unsqueeze(1)
        return torch.where(keep, h_new, h), torch.where(keep, c_new, c)

    def _group_rows(self, prefixes, live) -> dict[str, list[int]]:
        """Group the rows that still have a decision to make by that decision's name."""
        groups: dict[str, list[int]] = {}
        for row, prefix in enumerate(prefixes):
            decision = depnas.decision_at(self.space, prefix) if live[row] else None
            if decision is not None:
                groups.setdefault(decision.name, []).append(row)
        return dict(sorted(groups.items()))

    def _decide(self, name, members, h, prefixes, mask_fn, tokens, generator) -> dict:
        """Sample or score decision ``name`` for the rows ``members``."""
        decision = depnas.decision_at(self.space, prefixes[members[0]])
        mask = torch.tensor([mask_fn(row, decision, prefixes[row]) for row in members])
        log_probs = self.log_probabilities(name, h[members], mask)
        if tokens is None:
            choice = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
        else:
            choice = torch.tensor([tokens[row][len(prefixes[row])] for row in members])
            if not mask.gather(1, choice.unsqueeze(1)).all():
                raise SearchError(f"a stored architecture makes a masked choice at {name!r}")
        probs = log_probs.exp()
        plogp = (probs * log_probs.masked_fill(~mask, 0.0)).sum(dim=1)
        return {"choice": choice, "log_prob": log_probs.gather(1, choice.unsqueeze(1)).squeeze(1),
                "entropy": -plogp}


@dataclass(frozen=True)
class Sample:
    """One sampled architecture as token tuples: per stream, and the fusion (or None)."""

    streams: tuple[tuple[str, tuple[int, ...]], ...]
    fusion: tuple[int, ...] | None = None

    def key(self) -> tuple[int, ...]:
        """Return the flat token tuple that identifies the architecture (streams, then fusion)."""
        flat: list[int] = []
        for _, tokens in self.streams:
            flat.extend(tokens)
        return tuple(flat) + (self.fusion or ())

    def to_state(self) -> dict:
        return {"streams": [[s, list(t)] for s, t in self.streams],
                "fusion": None if self.fusion is None else list(self.fusion)}

    @staticmethod
    def from_state(state: dict) -> "Sample":
        streams = tuple((s, tuple(int(v) for v in t)) for s, t in state["streams"])
        fusion = None if state["fusion"] is None else tuple(int(v) for v in state["fusion"])
        return Sample(streams, fusion)


class Policy(nn.Module):
    """The stream controllers (one per stream) and, in the joint stage, the fusion controller.

    The joint probability of an architecture is the product of the stream controllers'
    probabilities and the fusion controller's conditional probability, so its log is the
    sum and its gradient reaches every controller. The fusion controller's hidden size is
    the sum of the stream controllers'. Its initial hidden and cell states are the stream
    controllers' concatenated final states, and its first input is their concatenated
    final hidden states (the stream embeddings e_m of Algorithm 1).
    """

    def __init__(self, spaces: dict[str, depnas.Space], fusion: depnas.Space | None = None,
                 settings: ControllerSettings = CONTROLLER):
        super().__init__()
        self.stream_names = tuple(spaces)
        self.streams = nn.ModuleDict(
            {name: Controller(space, settings.hidden, settings) for name, space in spaces.items()})
        fused_hidden = settings.hidden * len(spaces)
        self.fusion = None if fusion is None else Controller(fusion, fused_hidden, settings)
        self.tries: dict[str, TokenTrie] = {}

    def restrict(self, stream: str, sequences) -> None:
        """Allow only the given complete token sequences for ``stream``."""
        self.tries[stream] = TokenTrie(sequences)

    def sample(self, count: int, generator: torch.Generator) -> tuple[list[Sample], dict]:
        """Sample ``count`` architectures; return them and their log-probabilities (no grad)."""
        with torch.no_grad():
            outputs = self._unroll(count, None, generator)
        samples = self._samples(outputs, count)
        return samples, outputs

    def log_prob(self, samples: list[Sample]) -> dict:
        """Recompute log-probabilities and entropies of stored samples under current parameters.

        Returns ``log_prob`` and ``entropy`` (B,) summed over every controller, and
        ``parts``: controller name -> its own (B,) log-probability.
        """
        tokens = {name: [dict(s.streams)[name] for s in samples] for name in self.stream_names}
        if self.fusion is not None:
            tokens["fusion"] = [s.fusion for s in samples]
        return self._unroll(len(samples), tokens, None)

    def _unroll(self, rows: int, tokens, generator) -> dict:
        parts = {}
        for name in self.stream_names:
            given = None if tokens is None else tokens[name]
            parts[name] = self.streams[name].unroll(rows, self._stream_mask(name), given, generator)
        if self.fusion is not None:
            state = self._fusion_state([parts[name] for name in self.stream_names])
            contexts = self._contexts({name: parts[name]["tokens"] for name in self.stream_names})
            mask_fn = self._fusion_mask(contexts)
            given = None if tokens is None else tokens["fusion"]
            parts["fusion"] = self.fusion.unroll(rows, mask_fn, given, generator, state)
        log_prob = sum(out["log_prob"] for out in parts.values())
        entropy = sum(out["entropy"] for out in parts.values())
        return {"log_prob": log_prob, "entropy": entropy, "outputs": parts,
                "parts": {name: out["log_prob"] for name, out in parts.items()}}

    def _fusion_state(self, finals):
        h = torch.cat([out["h"] for out in finals], dim=1)      # (B, S*H)
        c = torch.cat([out["c"] for out in finals], dim=1)      # (B, S*H)
        return h, c, h

    def _stream_mask(self, name: str):
        trie = self.tries.get(name)

        def mask(row, decision, prefix):
            if trie is None:
                return [True] * len(decision.choices)
            return trie.allowed(prefix, len(decision.choices))
        return mask

    def _contexts(self, stream_tokens: dict) -> list[dict]:
        """Return per row the stream architectures that the fusion latent masks depend on."""
        rows = len(next(iter(stream_tokens.values())))
        return [{name: depnas.arch_from_tokens(self.streams[name].space, stream_tokens[name][row])
                 for name in self.stream_names} for row in range(rows)]

    def _fusion_mask(self, contexts):
        space = self.fusion.space

        def mask(row, decision, prefix):
            return depnas.allowed_choices(space, decision, contexts[row])
        return mask

    def _samples(self, outputs: dict, count: int) -> list[Sample]:
        parts = outputs["outputs"]
        samples = []
        for row in range(count):
            streams = tuple((name, tuple(parts[name]["tokens"][row])) for name in self.stream_names)
            fusion = tuple(parts["fusion"]["tokens"][row]) if self.fusion is not None else None
            samples.append(Sample(streams, fusion))
        return samples


def model_arch(sample: Sample, policy: Policy) -> dict:
    """Return the depnas model architecture (``{"streams": ..., "fusion": ...}``) of a sample."""
    arch = {"streams": {name: depnas.arch_from_tokens(policy.streams[name].space, tokens)
                        for name, tokens in sample.streams}}
    if sample.fusion is not None:
        arch["fusion"] = depnas.arch_from_tokens(policy.fusion.space, sample.fusion)
    return arch


def format_sample(sample: Sample, policy: Policy) -> str:
    """Return a compact one-line text of a sample, e.g. ``au[conv3,32,relu,False] fusion[...]``."""
    arch = model_arch(sample, policy)
    parts = [f"{name}[{depnas.format_arch(policy.streams[name].space, a)}]"
             for name, a in arch["streams"].items()]
    if "fusion" in arch:
        parts.append(f"fusion[{depnas.format_arch(policy.fusion.space, arch['fusion'])}]")
    return " ".join(parts)


# ---------------------------------------------------------------------------
# Motion-average tracker and PPO
# ---------------------------------------------------------------------------

class MotionAverage:
    """Running mean of every validation error each architecture (token tuple) has received.

    Failed trials are counted separately and never enter the mean; an architecture that
    ever failed is ranked after every architecture that never failed.
    """

    def __init__(self):
        self.sums: dict[tuple, float] = {}
        self.counts: dict[tuple, int] = {}
        self.failures: dict[tuple, int] = {}

    def update(self, key: tuple, error: float) -> float:
        """Add one validation error for ``key``; return the new mean."""
        self.sums[key] = self.sums.get(key, 0.0) + float(error)
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.mean(key)

    def fail(self, key: tuple) -> None:
        self.failures[key] = self.failures.get(key, 0) + 1

    def mean(self, key: tuple) -> float:
        return self.sums[key] / self.counts[key]

    def ranked(self) -> list[tuple]:
        """Return keys with at least one error, best (lowest mean, never failed) first."""
        return sorted(self.counts, key=lambda k: (self.failures.get(k, 0) > 0, self.mean(k), k))

    def distinct(self) -> int:
        return len(set(self.counts) | set(self.failures))

    def state(self) -> dict:
        keys = sorted(set(self.counts) | set(self.failures))
        return {"entries": [[list(k), self.sums.get(k, 0.0), self.counts.get(k, 0),
                             self.failures.get(k, 0)] for k in keys]}

    @staticmethod
    def from_state(state: dict) -> "MotionAverage":
        tracker = MotionAverage()
        for key, total, count, failures in state["entries"]:
            key = tuple(int(v) for v in key)
            if count:
                tracker.sums[key], tracker.counts[key] = float(total), int(count)
            if failures:
                tracker.failures[key] = int(failures)
        return tracker


def scale_advantages(advantages: np.ndarray, eps: float = CONTROLLER.advantage_eps) -> np.ndarray:
    """Divide advantages by (their std + eps) when there are at least two; keep every sign.

    No mean is subtracted: the baseline already centres the rewards, and subtracting
    the batch mean would turn an above-baseline architecture's positive advantage
    negative whenever its batch happened to be good.
    """
    advantages = np.asarray(advantages, dtype=np.float64)
    if advantages.size < 2:
        return advantages.copy()
    return advantages / (advantages.std() + eps)


def clipped_objective(ratio: torch.Tensor, advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """Return PPO's min(rho * r, g(eps, r)), g(eps, r) = (1 + eps) r if r >= 0 else (1 - eps) r.

    This equals min(rho * r, clip(rho, 1 - eps, 1 + eps) * r) for every rho > 0.
    """
    bound = torch.where(advantage >= 0, (1 + clip) * advantage, (1 - clip) * advantage)
    return torch.minimum(ratio * advantage, bound)


class PolicySearch:
    """One PPO search: a policy, its optimiser, a tracker, the baseline and the history.

    ``step`` samples ``samples`` architectures, gets their validation errors from an
    ``evaluate(samples, step) -> list[result]`` callable (results as depnas.train_child
    returns them), updates the tracker, computes advantages and runs the PPO epochs.
    """

    def __init__(self, policy: Policy, generator: torch.Generator, samples: int,
                 ppo_epochs: int, reward: str = "motion", settings: ControllerSettings = CONTROLLER):
        self.policy = policy
        self.generator = generator
        self.samples = samples
        self.ppo_epochs = ppo_epochs
        self.reward = reward
        self.settings = settings
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=settings.lr)
        self.tracker = MotionAverage()
        self.baseline: float | None = None
        self.worst: float | None = None
        self.steps_done = 0

    def step(self, evaluate) -> list[dict]:
        """Run one PPO step; return one record per sampled architecture."""
        samples, sampled = self.policy.sample(self.samples, self.generator)
        results = evaluate(samples, self.steps_done)
        errors = self._reward_errors(samples, results)
        advantages = self._advantages(errors, results)
        self._update(samples, sampled["log_prob"], advantages)
        records = self._records(samples, sampled, results, errors, advantages)
        self.steps_done += 1
        return records

    def _reward_errors(self, samples, results) -> list[float]:
        """Update the tracker and return D per sample (failed: worst error so far + margin)."""
        for sample, result in zip(samples, results):
            if result["ok"]:
                self.tracker.update(sample.key(), result["val_rmse"])
                self.worst = max(self.worst or 0.0, result["val_rmse"])
            else:
                self.tracker.fail(sample.key())
        # NOTE: until a child succeeds, the PHQ-8 range (24 points) is used as the worst error.
        penalty = (self.worst if self.worst is not None else 24.0) + self.settings.failure_margin
        errors = []
        for sample, result in zip(samples, results):
            if not result["ok"]:
                errors.append(penalty)
            elif self.reward == "motion":
                errors.append(self.tracker.mean(sample.key()))
            else:
                errors.append(float(result["val_rmse"]))
        return errors

    def _advantages(self, errors, results) -> np.ndarray:
        """Return scaled advantages b - D and move the baseline b towards this step's mean D.

        The baseline averages successful children only, so it never exceeds the worst
        error seen, and a failed child's advantage is below every successful one's.
        """
        ok_errors = [e for e, r in zip(errors, results) if r["ok"]]
        if self.baseline is None and ok_errors:
            self.baseline = float(np.mean(ok_errors))
        if self.baseline is None:
            return np.zeros(len(errors))
        advantages = scale_advantages(self.baseline - np.asarray(errors), self.settings.advantage_eps)
        if ok_errors:
            decay = self.settings.baseline_decay
            self.baseline = decay * self.baseline + (1 - decay) * float(np.mean(ok_errors))
        return advantages

    def _update(self, samples, old_log_prob, advantages) -> None:
        """Run the PPO epochs: clipped objective plus an entropy bonus, Adam, norm clipping."""
        advantage = torch.as_tensor(advantages, dtype=torch.float32)
        old_log_prob = old_log_prob.detach()
        for _ in range(self.ppo_epochs):
            scored = self.policy.log_prob(samples)
            ratio = torch.exp(scored["log_prob"] - old_log_prob)
            objective = clipped_objective(ratio, advantage, self.settings.clip).mean()
            loss = -(objective + self.settings.entropy_weight * scored["entropy"].mean())
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.settings.grad_clip)
            self.optimizer.step()

    def _records(self, samples, sampled, results, errors, advantages) -> list[dict]:
        records = []
        for index, (sample, result) in enumerate(zip(samples, results)):
            key = sample.key()
            records.append({
                "index": index, "sample": sample, "result": result,
                "motion_average": self.tracker.mean(key) if key in self.tracker.counts else None,
                "count": self.tracker.counts.get(key, 0), "reward_error": errors[index],
                "advantage": float(advantages[index]), "baseline": self.baseline,
                "entropy": float(sampled["entropy"][index]),
                "log_prob": float(sampled["log_prob"][index]),
            })
        return records

    def state(self) -> dict:
        """Return everything needed to continue this search (tensors, dicts, lists, numbers)."""
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "tracker": self.tracker.state(), "baseline": self.baseline, "worst": self.worst,
                "steps_done": self.steps_done}

    def load_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker = MotionAverage.from_state(state["tracker"])
        self.baseline, self.worst = state["baseline"], state["worst"]
        self.steps_done = int(state["steps_done"])


# ---------------------------------------------------------------------------
# Data: search splits and the worker-side child training
# ---------------------------------------------------------------------------

# Search streams that are not depnas streams: the landmark CNN of the CNN-versus-GNN
# comparison. depnas builds a CNN for the stream names au, gaze and pose only, so this
# stream trains as a CNN stream named "au" whose input is the landmark heatmap.
ALIASES = {"landmarks_cnn": ("au", "landmarks_heatmap")}


def model_stream(stream: str) -> tuple[str, str]:
    """Return (depnas stream name, feature key) of a search stream."""
    return ALIASES.get(stream, (stream, stream))


def search_space(stream: str) -> depnas.Space:
    """Return the search space of a search stream (``landmarks_cnn`` uses the CNN space)."""
    return depnas.stream_space(model_stream(stream)[0])


def landmark_heatmap(nodes: np.ndarray, k: int) -> np.ndarray:
    """Reshape landmark node features (P, N, 2*D*K) into a CNN heatmap (P, 2*D*N, K).

    Each node's features are [amplitude of x, y(, z); phase of x, y(, z)], K columns
    each. The heatmap's rows are the amplitudes of x0..x67, y0..y67 (then z), then the
    phases in the same order, which is the [amplitude; phase] layout of the other CNN
    attributes with C = D*N landmark coordinates as channels.
    """
    count, nodes_n, width = nodes.shape
    dims = width // (2 * k)
    if dims * 2 * k != width:
        raise SearchError(f"landmark features have {width} columns per node; expected 2*D*{k}")
    blocks = nodes.reshape(count, nodes_n, 2, dims, k)            # (P, N, amp/phase, D, K)
    return blocks.transpose(0, 2, 3, 1, 4).reshape(count, 2 * dims * nodes_n, k)


def stratified_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Return a boolean mask (P,) marking a validation part stratified by score.

    Participants sorted by score (ties by position) are cut into round(P * fraction)
    consecutive groups, and one participant per group, drawn with ``seed``, goes to
    validation, so both parts cover the whole score range.
    """
    count = len(labels)
    groups = max(1, int(round(count * fraction)))
    order = np.lexsort((np.arange(count), labels))
    rng = np.random.default_rng(seed)
    mask = np.zeros(count, dtype=bool)
    for group in np.array_split(order, groups):
        mask[group[rng.integers(len(group))]] = True
    return mask


@dataclass
class SearchData:
    """The labelled training split, dev and test, and the rows of the search's two parts."""

    splits: dict[str, depnas.Split]          # train, dev, test: features of every stream
    search_rows: dict[str, np.ndarray]       # search_train, search_val: rows of splits["train"]
    participants: dict[str, list[str]]       # the five parts above -> participant ids
    streams: tuple[str, ...]                 # depnas streams present and requested
    k: int                                   # frequency columns per spectrum (K)
    description: str
    identity: str                            # hash of participants, splits and labels

    def size(self, name: str) -> int:
        return len(self.participants[name])


def prepare_data(encoded, requested: tuple[str, ...], split_seed: int, description: str) -> SearchData:
    """Build the search and evaluation splits from an encoded cohort.

    Unlabelled training participants are left out of the search (logged). Streams the
    data lacks (landmarks in E-DAIC) are left out with a logged message.
    """
    streams = _present_streams(encoded, requested, description)
    labels = np.asarray(encoded.labels, dtype=np.float64)
    splits = np.asarray(encoded.splits)
    participants = np.asarray(encoded.participants)
    k = int(encoded.params["k"])

    train_rows = _labelled_training_rows(splits, labels, description)
    validation = stratified_validation(labels[train_rows], VALIDATION_FRACTION, split_seed)
    search_rows = {"search_train": np.flatnonzero(~validation), "search_val": np.flatnonzero(validation)}
    rows = {"train": train_rows, "dev": np.flatnonzero(splits == "dev"),
            "test": np.flatnonzero(splits == "test")}
    names = {name: participants[index].tolist() for name, index in rows.items()}
    names.update({name: participants[train_rows[index]].tolist() for name, index in search_rows.items()})

    full = depnas.Split({s: np.asarray(encoded.features[s]) for s in streams}, labels)
    if "landmarks" in streams:
        landmark_heatmap(full.features["landmarks"][:1], k)      # raises on a wrong width
    identity = zlib.crc32(json.dumps([participants.tolist(), splits.tolist(),
                                      np.nan_to_num(labels, nan=-1).tolist()]).encode())
    return SearchData(
        splits={name: full.select(index) for name, index in rows.items()},
        search_rows=search_rows, participants=names, streams=streams, k=k,
        description=description, identity=f"{identity:08x}")


def _present_streams(encoded, requested: tuple[str, ...], description: str) -> tuple[str, ...]:
    """Return the requested streams that the data has; log each one it lacks."""
    streams = tuple(s for s in requested if s in encoded.features)
    for missing in sorted(set(requested) - set(streams)):
        logger.info("data has no %s features (%s); the %s stream is left out",
                    missing, description, missing)
    if not streams:
        raise SearchError(f"none of the streams {list(requested)} is in the data ({description}); "
                          f"it has {sorted(encoded.features)}")
    return streams


def _labelled_training_rows(splits: np.ndarray, labels: np.ndarray, description: str) -> np.ndarray:
    """Return the rows of labelled training participants; log how many have no score."""
    train_rows = np.flatnonzero((splits == "train") & np.isfinite(labels))
    unlabelled = int(np.sum((splits == "train") & ~np.isfinite(labels)))
    if unlabelled:
        logger.info("%d training participants have no score and are left out", unlabelled)
    if len(train_rows) < 8:
        raise SearchError(f"only {len(train_rows)} labelled training participants in {description}; "
                          f"the search needs at least 8")
    return train_rows


def split_view(split: depnas.Split, features: dict[str, str], k: int, rows=None) -> depnas.Split:
    """Return the model's view of ``split``: depnas stream -> features under key ``features[stream]``.

    The key ``landmarks_heatmap`` is the landmark heatmap, built here from the node features.
    ``rows`` optionally selects participants.
    """
    if rows is not None:
        split = depnas.Split({key: x[rows] for key, x in split.features.items()}, split.labels[rows])
    view = {}
    for model, key in features.items():
        if key == "landmarks_heatmap":
            view[model] = landmark_heatmap(split.features["landmarks"], k)
        else:
            view[model] = split.features[key]
    return depnas.Split(view, split.labels)


# The data and device of this process's child trainings (set once per worker process).
_WORKER: dict = {}


def _init_worker(data: SearchData, device: str) -> None:
    """Keep the data in this process and use one torch thread, so results do not depend on --workers."""
    torch.set_num_threads(1)
    _WORKER["data"] = data
    _WORKER["device"] = device


def _exit_with_parent() -> None:
    """Exit this worker process once its parent is gone (a killed search leaves no workers)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init_pool_worker(data: SearchData, device: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Only the parent process reports Ctrl-C.
    _exit_with_parent()
    _init_worker(data, device)


def run_job(job: dict) -> dict:
    """Train one child (``kind`` "child") or one final-stage model (``kind`` "fit")."""
    data, device = _WORKER["data"], _WORKER["device"]
    if job["kind"] == "child":
        train = data.splits["train"]
        parts = tuple(split_view(train, job["features"], data.k, data.search_rows[name])
                      for name in ("search_train", "search_val"))
        return depnas.train_child(job["arch"], parts, job["seed"], job["budget"], device)
    return _fit_job(job, data, device)


def _fit_job(job: dict, data: SearchData, device: str) -> dict:
    """Train on the whole training split; return predictions on dev and test (and the state)."""
    start = time.perf_counter()
    try:
        fitted = depnas.fit_model(job["arch"], split_view(data.splits["train"], job["features"], data.k),
                                  job["seed"], job["budget"], device)
        result = {"ok": True, "reason": None}
        for name in ("dev", "test"):
            view = split_view(data.splits[name], job["features"], data.k)
            result[name] = fitted.predict(view.features).tolist() if len(view) else []
        if job.get("keep_state"):
            buffer = io.BytesIO()
            torch.save(fitted.state(), buffer)
            result["state"] = buffer.getvalue()
    except Exception as error:  # a failed fit is reported in the final tables, not raised
        result = {"ok": False, "reason": f"{type(error).__name__}: {error}", "dev": [], "test": []}
    result["seconds"] = time.perf_counter() - start
    return result


class ChildRunner:
    """Runs jobs in this process (one worker) or in a pool of spawned worker processes.

    The data goes to each worker once, when the pool starts. Results come back in job
    order, and each job carries its own seed, so the number of workers does not change
    any result. A worker that dies (for example killed for lack of memory) stops the
    search with an error; the last checkpoint is intact.
    """

    def __init__(self, data: SearchData, device: str, workers: int):
        self.pool = None
        if workers > 1:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_pool_worker, initargs=(data, device))
        else:
            _init_worker(data, device)

    def run(self, jobs: list[dict]):
        """Yield each job's result in order."""
        if self.pool is None:
            yield from map(run_job, jobs)
            return
        try:
            yield from self.pool.map(run_job, jobs)
        except concurrent.futures.process.BrokenProcessPool as error:
            raise SearchError(f"a worker process died ({error}), possibly for lack of memory; "
                              f"continue with --resume, perhaps with fewer --workers") from error

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# ---------------------------------------------------------------------------
# Checkpoints and run-directory files
# ---------------------------------------------------------------------------

HISTORY_FIELDS = ("stage", "stream", "step", "index", "seed", "architecture", "ok", "reason",
                  "error", "mae", "motion_average", "count", "reward_error", "advantage",
                  "baseline", "entropy", "log_prob", "seconds")
TIMING_FIELDS = ("seconds",)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and os.replace (never half-written)."""
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def save_checkpoint(path: str, state: dict) -> None:
    """Write the search state with torch.save, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SearchError(f"cannot read the checkpoint {path}: it is truncated or not a depnas "
                          f"checkpoint ({type(error).__name__}: {error}); delete it and run "
                          f"without --resume, or pick another --out") from error
    if not isinstance(state, dict):
        raise SearchError(f"{path} is not a depnas checkpoint (it contains a {type(state).__name__}); "
                          f"delete it and run without --resume, or pick another --out")
    return state


def _warmup_error(path: str, error) -> SearchError:
    """Return the SearchError for an unreadable warm-up file, saying how to rebuild it."""
    return SearchError(f"cannot read the warm-up file {path}: it is truncated or invalid ({error}); "
                       f"rerun `python search.py --stage warmup` into this --out, with the same "
                       f"--seed, --budget, --streams and --data")


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
    """Raise SearchError naming the first setting in which a saved run differs from this one."""
    if not isinstance(saved, dict):
        raise SearchError(f"{where} has no configuration fingerprint, so it is not a depnas run "
                          f"file of this version; delete it or use another --out")
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise SearchError(
                f"{where} was written with {key}={saved.get(key)!r} but this run has "
                f"{key}={current.get(key)!r}; rerun with the same setting, or use another --out "
                f"(and no --resume) to start a new search")


def random_states(sampler: torch.Generator) -> dict:
    """Return the python, numpy, torch and sampler random states as checkpoint-safe values."""
    python_state = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "torch": torch.get_rng_state(),
        "sampler": sampler.get_state(),
    }


def restore_random_states(states: dict, sampler: torch.Generator) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state({"bit_generator": "MT19937", "state": {
        "key": states["numpy_key"].numpy().astype(np.uint32), "pos": states["numpy_pos"]}})
    torch.set_rng_state(states["torch"])
    sampler.set_state(states["sampler"])


def history_text(rows: list[dict]) -> str:
    """Return history.csv's text: one row per trained child."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in HISTORY_FIELDS})
    return buffer.getvalue()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return value


def library_versions() -> dict:
    """Return the versions of Python and the libraries the results depend on."""
    import scipy
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "platform": platform.platform()}


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Estimates the time left in a loop of ``total`` units from the mean time per unit so far."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.start, self.started = total, done, time.perf_counter(), done

    def skip(self, units: int) -> None:
        """Count units finished before this process started (they do not enter the rate)."""
        self.done += units
        self.started += units

    def advance(self) -> str:
        """Count one finished unit; return ``i/total, ~time left``."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        rate = elapsed / max(1, self.done - self.started)
        left = rate * (self.total - self.done)
        return f"{self.done}/{self.total}, ~{format_seconds(left)} left"


# ---------------------------------------------------------------------------
# The search: warm-up, joint and final stages
# ---------------------------------------------------------------------------

class SearchRun:
    """Runs the requested stages in one run directory, checkpointing after every PPO step.

    ``runner`` trains children: anything with ``run(jobs)`` yielding one result per job
    in order (tests pass a fake that trains nothing).
    """

    def __init__(self, config: Config, budget: Budget, data: SearchData, runner: ChildRunner):
        self.config, self.budget, self.data, self.runner = config, budget, data, runner
        self.out = config.out
        self.sampler = torch.Generator()
        self.fingerprint = dict(config.fingerprint(), data_identity=data.identity)
        self.steps_this_process = 0
        self.state = self._initial_state()

    # -- state ---------------------------------------------------------------

    def _initial_state(self) -> dict:
        """Return the state to start from: fresh, resumed, or a warm-up kept for the joint stage."""
        path = os.path.join(self.out, "checkpoint.pt")
        fresh = {"fingerprint": self.fingerprint, "stage": "warmup", "stream": None,
                 "search": None, "warmup_done": [], "joint_done": False, "final": {},
                 "history": [], "rng": None}
        if self.config.resume:
            state = load_checkpoint(path)
            check_fingerprint(state.get("fingerprint"), self.fingerprint, path)
            logger.info("resuming from %s (stage %s, %d children trained so far)",
                        path, state["stage"], len(state["history"]))
            return state
        if self.config.stage == "joint" and os.path.exists(path):
            state = load_checkpoint(path)
            check_fingerprint(state.get("fingerprint"), self.fingerprint, path)
            fresh["history"] = [r for r in state["history"] if r["stage"] == "warmup"]
            fresh["warmup_done"] = list(state["warmup_done"])
        elif os.path.exists(path):
            logger.warning("%s exists and --resume was not given; starting the search again and "
                           "overwriting checkpoint.pt, history.csv and the stage results in %s; "
                           "to keep them, stop now and rerun with --resume, or pick another --out",
                           path, self.out)
        return fresh

    def checkpoint(self) -> None:
        """Write checkpoint.pt and history.csv; exit hard after DEPNAS_STOP_AFTER_STEPS steps."""
        self.state["rng"] = random_states(self.sampler)
        save_checkpoint(os.path.join(self.out, "checkpoint.pt"), self.state)
        atomic_write_text(os.path.join(self.out, "history.csv"), history_text(self.state["history"]))

    def _maybe_stop(self) -> None:
        """Simulate a kill right after a checkpoint (used by the resume test)."""
        stop_after = os.environ.get("DEPNAS_STOP_AFTER_STEPS")
        if stop_after and self.steps_this_process >= int(stop_after):
            logger.warning("stopping hard after %d steps (DEPNAS_STOP_AFTER_STEPS)",
                           self.steps_this_process)
            self.runner.close()
            logging.shutdown()
            os._exit(75)

    # -- one PPO search (a warm-up stream or the joint stage) ---------------

    def _run_search(self, stage: str, stream: str, policy: Policy, steps: int,
                    progress: Progress) -> PolicySearch:
        """Run (or continue) the PPO steps of one search; return the finished search."""
        search = PolicySearch(policy, self.sampler, self.budget.samples, self.budget.ppo_epochs,
                              self.config.reward)
        self._start_or_resume(search, stage, stream)
        progress.skip(search.steps_done)
        while search.steps_done < steps:
            start = time.perf_counter()
            step = search.steps_done
            records = search.step(lambda samples, k: self._evaluate(stage, stream, samples, k, policy))
            rows = [self._history_row(stage, stream, step, r, policy) for r in records]
            self.state["history"].extend(rows)
            self.state["search"] = search.state()
            self.checkpoint()
            self.steps_this_process += 1
            self._log_step(stage, stream, step, steps, rows, search,
                           time.perf_counter() - start, progress.advance())
            self._maybe_stop()
        return search

    def _start_or_resume(self, search: PolicySearch, stage: str, stream: str) -> None:
        if self.state["stage"] == stage and self.state["stream"] == stream and self.state["search"]:
            search.load_state(self.state["search"])
            restore_random_states(self.state["rng"], self.sampler)
            return
        self.sampler.manual_seed(derive_seed(self.config.seed, STAGE_CODES["sampler"], stage, stream))
        self.state.update(stage=stage, stream=stream, search=None)

    def _evaluate(self, stage, stream, samples, step, policy) -> list[dict]:
        """Train the sampled children (in order, possibly in parallel) and log failures."""
        jobs = []
        for index, sample in enumerate(samples):
            arch, features = self._child_arch(sample, policy)
            seed = derive_seed(self.config.seed, STAGE_CODES[stage], stream, step, index)
            jobs.append({"kind": "child", "arch": arch, "features": features, "seed": seed,
                         "budget": self.budget.child_budget()})
        results = list(self.runner.run(jobs))
        for index, (job, result) in enumerate(zip(jobs, results)):
            result["seed"] = job["seed"]
            if not result["ok"]:
                logger.warning("%s | %s | step %d | child %d failed: %s", stage, stream, step + 1,
                               index, result["reason"])
        return results

    def _child_arch(self, sample: Sample, policy: Policy) -> tuple[dict, dict]:
        """Return the depnas model architecture and the feature keys of its streams."""
        arch = model_arch(sample, policy)
        streams, features = {}, {}
        for name, stream_arch in arch["streams"].items():
            model_name, key = model_stream(name)
            streams[model_name], features[model_name] = stream_arch, key
        arch["streams"] = streams
        return arch, features

    def _history_row(self, stage, stream, step, record, policy) -> dict:
        result = record["result"]
        return {"stage": stage, "stream": stream, "step": step + 1, "index": record["index"],
                "seed": result.get("seed"), "architecture": format_sample(record["sample"], policy),
                "tokens": record["sample"].to_state(), "ok": bool(result["ok"]),
                "reason": result.get("reason") or "", "error": result.get("val_rmse"),
                "mae": result.get("val_mae"), "motion_average": record["motion_average"],
                "count": record["count"], "reward_error": record["reward_error"],
                "advantage": record["advantage"], "baseline": record["baseline"],
                "entropy": record["entropy"], "log_prob": record["log_prob"],
                "seconds": float(result.get("seconds") or 0.0)}

    def _log_step(self, stage, stream, step, steps, rows, search, seconds, progress) -> None:
        errors = [r["error"] for r in rows if r["ok"]]
        mean = f"{np.mean(errors):.3f}" if errors else "n/a"
        best = f"{min(errors):.3f}" if errors else "n/a"
        baseline = f"{search.baseline:.3f}" if search.baseline is not None else "n/a"
        entropy = np.mean([r["entropy"] for r in rows])
        failed = len(rows) - len(errors)
        logger.info(
            "%s | %s | step %d/%d | mean error %s | best %s | baseline %s | entropy %.2f | "
            "distinct %d | failed %d | %.1f s | %s", stage, stream, step + 1, steps, mean, best,
            baseline, entropy, search.tracker.distinct(), failed, seconds, progress)

    # -- warm-up stage -------------------------------------------------------

    def warmup_streams(self) -> tuple[str, ...]:
        """Return the streams searched alone: the requested ones, plus the landmark CNN."""
        extra = ("landmarks_cnn",) if "landmarks" in self.data.streams else ()
        return self.data.streams + extra

    def run_warmup(self) -> None:
        """Search each stream alone and keep its best architectures (warmup/<stream>.json)."""
        os.makedirs(os.path.join(self.out, "warmup"), exist_ok=True)
        streams = self.warmup_streams()
        progress = Progress(len(streams) * self.budget.warmup_steps)
        for stream in streams:
            if stream in self.state["warmup_done"]:
                logger.info("warmup | %s | already finished", stream)
                progress.skip(self.budget.warmup_steps)
                continue
            policy = self._new_policy({stream: search_space(stream)}, None, "warmup", stream)
            search = self._run_search("warmup", stream, policy, self.budget.warmup_steps, progress)
            self._save_warmup(stream, search)
            self.state["warmup_done"].append(stream)
            self.state["search"] = None
            self.checkpoint()

    def _new_policy(self, spaces, fusion, stage: str, stream: str) -> Policy:
        """Build controllers with initial weights drawn from a seed of their own."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.config.seed, STAGE_CODES["init"], stage, stream))
            return Policy(spaces, fusion)

    def _save_warmup(self, stream: str, search: PolicySearch) -> None:
        """Write warmup/<stream>.json (kept architectures) and warmup/<stream>.pt (controller)."""
        space = search_space(stream)
        kept = []
        for rank, key in enumerate(search.tracker.ranked()[:self.budget.keep], start=1):
            arch = depnas.arch_from_tokens(space, key)
            kept.append({"rank": rank, "architecture": arch, "tokens": list(key),
                         "text": depnas.format_arch(space, arch),
                         "motion_average": search.tracker.mean(key),
                         "count": search.tracker.counts[key]})
        if not kept:
            raise SearchError(f"every child of the {stream} warm-up failed (see log.txt); "
                              f"nothing to keep for the joint stage")
        controller = os.path.join("warmup", f"{stream}.pt")
        buffer = io.BytesIO()
        torch.save(search.policy.streams[stream].state_dict(), buffer)
        atomic_write_bytes(os.path.join(self.out, controller), buffer.getvalue())
        write_json(os.path.join(self.out, "warmup", f"{stream}.json"), {
            "stream": stream, "space": space.name, "kept": kept, "controller": controller,
            "steps": search.steps_done, "distinct": search.tracker.distinct(),
            "fingerprint": self.fingerprint})
        logger.info("warmup | %s | kept %d architectures; best %s (motion average %.3f over %d)",
                    stream, len(kept), kept[0]["text"], kept[0]["motion_average"], kept[0]["count"])

    def load_warmup(self, stream: str) -> dict:
        """Read warmup/<stream>.json, checking that it belongs to this configuration."""
        path = os.path.join(self.out, "warmup", f"{stream}.json")
        if not os.path.exists(path):
            raise SearchError(
                f"no warm-up result for stream {stream!r}: {path} does not exist; run "
                f"`python search.py --stage warmup` with the same --out, --seed, --budget, "
                f"--streams and --data first (or use --stage all)")
        try:
            with open(path, encoding="utf-8") as handle:
                warmup = json.load(handle)
        except (OSError, ValueError) as error:   # JSONDecodeError and UnicodeDecodeError are ValueErrors.
            raise _warmup_error(path, error) from error
        if not isinstance(warmup, dict) or not {"fingerprint", "controller", "kept"} <= set(warmup):
            raise _warmup_error(path, "the fingerprint, controller or kept field is missing")
        check_fingerprint(warmup.get("fingerprint"), self.fingerprint, path)
        return warmup

    def load_warmup_controller(self, warmup: dict) -> dict:
        """Read the controller weights that warmup/<stream>.json names."""
        path = os.path.join(self.out, warmup["controller"])
        try:
            return torch.load(path, weights_only=True)
        except Exception as error:   # torch raises several error types for a damaged file.
            raise _warmup_error(path, error) from error

    # -- joint stage ---------------------------------------------------------

    def run_joint(self) -> None:
        """Search streams and fusion together, each stream restricted to its kept architectures."""
        warmups = {s: self.load_warmup(s) for s in self.data.streams}
        spaces = {s: search_space(s) for s in self.data.streams}
        label = "+".join(self.data.streams)      # the history's stream column for joint rows
        policy = self._new_policy(spaces, depnas.fusion_space(self.data.streams), "joint", label)
        for stream, warmup in warmups.items():
            policy.streams[stream].load_state_dict(self.load_warmup_controller(warmup))
            policy.restrict(stream, [tuple(k["tokens"]) for k in warmup["kept"]])
        if not self.state["joint_done"]:
            progress = Progress(self.budget.joint_steps)
            search = self._run_search("joint", label, policy, self.budget.joint_steps, progress)
            self._save_top(search, policy)
            self.state.update(joint_done=True, search=None, stage="final")
            self.checkpoint()

    def _save_top(self, search: PolicySearch, policy: Policy) -> None:
        """Write joint/top.json: the best joint architectures by motion-average error."""
        top = []
        for rank, key in enumerate(search.tracker.ranked()[:self.budget.top], start=1):
            sample = self._sample_for_key(key, policy)
            top.append({"rank": rank, "architecture": model_arch(sample, policy),
                        "tokens": sample.to_state(), "text": format_sample(sample, policy),
                        "motion_average": search.tracker.mean(key),
                        "count": search.tracker.counts[key]})
        if not top:
            raise SearchError("every child of the joint stage failed (see log.txt); nothing to retrain")
        os.makedirs(os.path.join(self.out, "joint"), exist_ok=True)
        write_json(os.path.join(self.out, "joint", "top.json"),
                   {"top": top, "distinct": search.tracker.distinct(), "fingerprint": self.fingerprint})
        self.state["top"] = top
        for entry in top:
            logger.info("joint | top %d | motion average %.3f over %d | %s", entry["rank"],
                        entry["motion_average"], entry["count"], entry["text"])

    def _sample_for_key(self, key: tuple, policy: Policy) -> Sample:
        """Find the stored sample whose flat token tuple is ``key`` in this stage's history."""
        for row in reversed(self.state["history"]):
            sample = Sample.from_state(row["tokens"])
            if row["stage"] == "joint" and sample.key() == key:
                return sample
        raise SearchError(f"architecture {list(key)} is not in the joint history")

    # -- final stage ---------------------------------------------------------

    def run_final(self) -> None:
        """Retrain the top joint and the best warm-up architectures with several seeds; report."""
        os.makedirs(os.path.join(self.out, "final"), exist_ok=True)
        jobs = self._final_jobs()
        remaining = [job for job in jobs if job["id"] not in self.state["final"]]
        progress = Progress(len(jobs), len(jobs) - len(remaining))
        for job, result in zip(remaining, self.runner.run(remaining)):
            state_bytes = result.pop("state", None)
            if state_bytes is not None:
                atomic_write_bytes(os.path.join(self.out, "final", "model.pt"), state_bytes)
            self.state["final"][job["id"]] = result
            self.state["stage"] = "final"
            self.checkpoint()
            dev = self._metrics(result, "dev")
            if not result["ok"]:
                logger.warning("final | %s | seed %d | fit failed: %s | %s", job["id"], job["seed"],
                               result["reason"], progress.advance())
                continue
            logger.info("final | %s | seed %d | dev RMSE %s | %.1f s | %s", job["id"], job["seed"],
                        f"{dev[0]:.3f}" if dev else "n/a (no labelled dev participants)",
                        result["seconds"], progress.advance())
        write_report(self, jobs)
        self.state["stage"] = "done"
        self.checkpoint()

    def final_seeds(self) -> list[int]:
        return [derive_seed(self.config.seed, STAGE_CODES["final"], k)
                for k in range(self.budget.final_seeds)]

    def top(self) -> list[dict]:
        """Return the joint stage's top architectures (from the state or joint/top.json)."""
        if self.state.get("top"):
            return self.state["top"]
        path = os.path.join(self.out, "joint", "top.json")
        with open(path) as handle:
            return json.load(handle)["top"]

    def _final_jobs(self) -> list[dict]:
        """List every final-stage fit: each top joint architecture and each stream's best, per seed."""
        models = []
        for entry in self.top():
            features = {s: s for s in entry["architecture"]["streams"]}
            models.append((f"fused-{entry['rank']}", entry["architecture"], features))
        for stream in self.warmup_streams():
            best = self.load_warmup(stream)["kept"][0]
            model_name, key = model_stream(stream)
            models.append((f"stream-{stream}", {"streams": {model_name: best["architecture"]}},
                           {model_name: key}))
        jobs = []
        for name, arch, features in models:
            for index, seed in enumerate(self.final_seeds()):
                jobs.append({"kind": "fit", "id": f"{name}/seed{index}", "model": name,
                             "seed_index": index, "seed": seed, "arch": arch, "features": features,
                             "budget": self.budget.child_budget(),
                             "keep_state": name == "fused-1" and index == 0})
        return jobs

    def _metrics(self, result: dict, split: str) -> tuple[float, float] | None:
        """Return (RMSE, MAE) of a final fit on the labelled participants of ``split``."""
        labels = self.data.splits[split].labels
        labelled = np.isfinite(labels)
        if not result["ok"] or not labelled.any():
            return None
        predictions = np.asarray(result[split])[labelled]
        return depnas.rmse(predictions, labels[labelled]), depnas.mae(predictions, labels[labelled])

    def run(self) -> None:
        """Run the stages that the configuration requests."""
        if self.config.stage in ("warmup", "all"):
            self.run_warmup()
        if self.config.stage in ("joint", "all"):
            self.run_joint()
            self.run_final()


# ---------------------------------------------------------------------------
# Final report, predictions and figures
# ---------------------------------------------------------------------------

def _spread(values: list[float]) -> str:
    """Return ``mean ± sd`` (sample standard deviation over seeds), or n/a."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def model_scores(run: SearchRun, jobs: list[dict]) -> dict[str, dict]:
    """Collect per model: per-seed (RMSE, MAE) on dev and test, and failure reasons."""
    scores: dict[str, dict] = {}
    for job in jobs:
        result = run.state["final"][job["id"]]
        entry = scores.setdefault(job["model"], {"dev": [], "test": [], "failed": [], "job": job})
        if not result["ok"]:
            entry["failed"].append(f"seed {job['seed_index']}: {result['reason']}")
        for split in ("dev", "test"):
            metrics = run._metrics(result, split)
            if metrics is not None:
                entry[split].append(metrics)
    return scores


def _score_cells(entry: dict, labelled_test: bool) -> list[str]:
    cells = [_spread([m[0] for m in entry["dev"]]), _spread([m[1] for m in entry["dev"]])]
    if labelled_test:
        cells += [_spread([m[0] for m in entry["test"]]), _spread([m[1] for m in entry["test"]])]
    return cells


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_report(run: SearchRun, jobs: list[dict]) -> None:
    """Write final/report.md, final/predictions.csv and, with matplotlib, the figures."""
    scores = model_scores(run, jobs)
    labelled_test = bool(np.isfinite(run.data.splits["test"].labels).any())
    metric_header = ["dev RMSE", "dev MAE"] + (["test RMSE", "test MAE"] if labelled_test else [])
    lines = _report_intro(run)
    lines += _fused_section(run, scores, metric_header, labelled_test)
    lines += _stream_section(run, scores, metric_header, labelled_test)
    lines += _landmark_section(scores, metric_header, labelled_test)
    lines += _seed_section(scores)
    lines += _examples_section(run, jobs)
    if write_figures(run, jobs):
        lines += ["Figures: `learning_curve.png` (mean and std of the sampled architectures' "
                  "validation errors per controller step) and `predicted_vs_true.png`.", ""]
    else:
        lines += ["No figures: matplotlib is not installed.", ""]
    atomic_write_text(os.path.join(run.out, "final", "report.md"), "\n".join(lines) + "\n")
    atomic_write_text(os.path.join(run.out, "final", "predictions.csv"), predictions_text(run, jobs))
    logger.info("final | report written to %s", os.path.join(run.out, "final", "report.md"))


def _report_intro(run: SearchRun) -> list[str]:
    sizes = {name: run.data.size(name) for name in run.data.participants}
    labelled = {name: int(np.isfinite(split.labels).sum()) for name, split in run.data.splits.items()}
    return [
        "# depnas search report", "",
        f"Data: {run.data.description}. Streams: {', '.join(run.data.streams)}. "
        f"Budget: {run.budget.name}. Seed: {run.config.seed}. Reward: {run.config.reward} "
        f"(motion = running mean of every validation error of an architecture).", "",
        f"The search trained children on {sizes['search_train']} and validated them on "
        f"{sizes['search_val']} participants of the training split (stratified by score, split "
        f"seed {run.config.split_seed}). The final models below are trained on all "
        f"{sizes['train']} training participants with {run.budget.final_seeds} seeds and "
        f"evaluated on the development split ({labelled['dev']} labelled of {sizes['dev']}) and the "
        f"test split ({labelled['test']} labelled of {sizes['test']}); the search never saw either. "
        f"Errors are PHQ-8 points, mean ± standard deviation over seeds.", "",
        "Architectures read as comma-separated decisions per layer, layers separated by `|`: "
        "a CNN layer is `operation,channels,activation,residual`; a GNN layer is "
        "`attention,aggregator,activation,heads,hidden per head`, then the readout; the fusion "
        "part gives each stream's fused layer (1-based), the fused size D, the first block's "
        "combination, then `hidden,activation` per block.", ""]


def _fused_section(run, scores, metric_header, labelled_test) -> list[str]:
    rows = []
    for entry in run.top():
        name = f"fused-{entry['rank']}"
        mark = "selected" if entry["rank"] == 1 else ""
        rows.append([entry["rank"], mark, f"{entry['motion_average']:.3f} ({entry['count']})"]
                    + _score_cells(scores[name], labelled_test) + [f"`{entry['text']}`"])
    train_mean = float(np.mean(run.data.splits["train"].labels))
    constant = {"dev": [], "test": []}
    for split in ("dev", "test"):
        labels = run.data.splits[split].labels
        labels = labels[np.isfinite(labels)]
        if len(labels):
            constant[split].append((depnas.rmse(np.full(len(labels), train_mean), labels),
                                    depnas.mae(np.full(len(labels), train_mean), labels)))
    rows.append(["-", "baseline", "-"] + _score_cells(constant, labelled_test)
                + [f"predict the training mean, {train_mean:.2f}"])
    lines = ["## Fused models (as Table I)", ""]
    lines += _table(["rank", "", "search motion average (trials)"] + metric_header
                    + ["architecture"], rows)
    return lines + [""] + _optimism_note(run, scores) + [""]


def _optimism_note(run, scores) -> list[str]:
    """Say which candidate the search selected and how optimistic the best-of-three on dev is."""
    dev_means = {name: np.mean([m[0] for m in entry["dev"]])
                 for name, entry in scores.items() if name.startswith("fused-") and entry["dev"]}
    lines = ["The selected model is rank 1: the lowest search-time motion-average validation "
             "error, chosen before any development score was computed."]
    if dev_means:
        best = min(dev_means, key=dev_means.get)
        same = " (here the selected model)" if best == "fused-1" else ""
        lines.append(
            f"The best of the {len(dev_means)} candidates on the development split is {best}{same}, "
            f"RMSE {dev_means[best]:.2f}. Quoting the best candidate is optimistic, because it picks "
            f"the model on the split that scores it; the paper reports its best of three this way.")
    return lines


def _stream_section(run, scores, metric_header, labelled_test) -> list[str]:
    rows = []
    for stream in run.data.streams:
        entry = scores[f"stream-{stream}"]
        rows.append([stream] + _score_cells(entry, labelled_test)
                    + [f"`{depnas.format_arch(search_space(stream), _stream_arch(entry))}`"])
    rows.append(["fusion (selected)"] + _score_cells(scores["fused-1"], labelled_test)
                + ["rank 1 above"])
    lines = ["## Per stream (as Table II)", "",
             "Each stream's best warm-up architecture (lowest motion-average validation error), "
             "retrained with the final seeds.", ""]
    return lines + _table(["stream"] + metric_header + ["architecture"], rows) + [""]


def _stream_arch(entry: dict) -> dict:
    return next(iter(entry["job"]["arch"]["streams"].values()))


def _landmark_section(scores, metric_header, labelled_test) -> list[str]:
    if "stream-landmarks_cnn" not in scores:
        return ["## Landmarks: CNN versus GNN (as Table III)", "",
                "Not run: the data has no landmark stream.", ""]
    rows = [["single stream", "CNN"] + _score_cells(scores["stream-landmarks_cnn"], labelled_test),
            ["single stream", "GNN"] + _score_cells(scores["stream-landmarks"], labelled_test),
            ["fusion", "GNN"] + _score_cells(scores["fused-1"], labelled_test)]
    lines = ["## Landmarks: CNN versus GNN (as Table III)", "",
             "The CNN reads the landmark heatmap (2*D*68, K): amplitudes of x0..x67, y0..y67, then "
             "the phases in the same order; its architecture comes from its own warm-up search.", ""]
    lines += _table(["model", "landmark stream"] + metric_header, rows)
    # NOTE: the fused model with a CNN landmark stream (Table III, fusion CNN row) is not
    # trained, because depnas's fusion model builds a GNN for the landmark stream.
    return lines + ["", "The fused model with a CNN landmark stream is not trained "
                    "(the fusion model builds a GNN for the landmark stream).", ""]


def _seed_section(scores) -> list[str]:
    rows = []
    for name, entry in scores.items():
        per_seed = ", ".join(f"{m[0]:.2f}" for m in entry["dev"]) or "n/a"
        rows.append([name, per_seed, "; ".join(entry["failed"]) or "none"])
    return ["## Spread over seeds", ""] + _table(["model", "dev RMSE per seed", "failed fits"], rows) + [""]


def _examples_section(run, jobs, count: int = 8) -> list[str]:
    """Show a few development participants' true scores and the selected model's predictions."""
    labels = run.data.splits["dev"].labels
    participants = run.data.participants["dev"]
    predictions = _mean_predictions(run, jobs, "fused-1", "dev")
    if predictions is None or not len(labels):
        return ["## Example predictions", "", "No development predictions (every fit failed).", ""]
    order = np.argsort(labels, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, min(count, len(order))).astype(int)]
    rows = [[participants[i], "n/a" if not np.isfinite(labels[i]) else f"{labels[i]:.0f}",
             f"{predictions[i]:.2f}"] for i in picks]
    lines = ["## Example predictions (development split, selected model, mean over seeds)", ""]
    return lines + _table(["participant", "PHQ-8", "predicted"], rows) + [""]


def _mean_predictions(run, jobs, model: str, split: str) -> np.ndarray | None:
    values = [run.state["final"][j["id"]][split] for j in jobs
              if j["model"] == model and run.state["final"][j["id"]]["ok"]]
    return np.mean(np.asarray(values), axis=0) if values else None


def predictions_text(run: SearchRun, jobs: list[dict]) -> str:
    """Return final/predictions.csv: one row per participant, split, model and seed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["participant", "split", "true_score", "model", "selected", "seed_index",
                     "seed", "prediction"])
    for job in jobs:
        result = run.state["final"][job["id"]]
        if not result["ok"]:
            continue
        for split in ("dev", "test"):
            labels = run.data.splits[split].labels
            for participant, label, value in zip(run.data.participants[split], labels, result[split]):
                writer.writerow([participant, split, "" if not np.isfinite(label) else f"{label:g}",
                                 job["model"], "yes" if job["model"] == "fused-1" else "no",
                                 job["seed_index"], job["seed"], f"{value:.4f}"])
    return buffer.getvalue()


def write_figures(run: SearchRun, jobs: list[dict]) -> bool:
    """Draw the learning curves and predicted-versus-true scores; return False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; no figures written (pip install matplotlib)")
        return False
    _learning_curve_figure(run, plt)
    _prediction_figure(run, jobs, plt)
    return True


def _learning_curve_figure(run: SearchRun, plt) -> None:
    """Plot the mean (and std) validation error of the sampled architectures per step (as Fig. 4)."""
    from matplotlib.ticker import MaxNLocator

    series: dict[str, dict[int, list[float]]] = {}
    for row in run.state["history"]:
        if row["ok"]:
            label = f"warm-up {row['stream']}" if row["stage"] == "warmup" else "joint"
            series.setdefault(label, {}).setdefault(row["step"], []).append(row["error"])
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, steps in series.items():
        order = sorted(steps)
        axis.errorbar(order, [np.mean(steps[s]) for s in order], yerr=[np.std(steps[s]) for s in order],
                      marker="o", capsize=3, label=label)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("controller step")
    axis.set_ylabel("validation RMSE (PHQ-8)")
    axis.set_title("Sampled architectures per step: mean and std", fontsize="medium")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(os.path.join(run.out, "final", "learning_curve.png"), dpi=120)
    plt.close(figure)


def _prediction_figure(run: SearchRun, jobs: list[dict], plt) -> None:
    """Plot the selected model's development predictions against the true scores (as Fig. 3)."""
    predictions = _mean_predictions(run, jobs, "fused-1", "dev")
    labels = run.data.splits["dev"].labels
    labelled = np.isfinite(labels)
    if predictions is None or not labelled.any():
        return
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.scatter(labels[labelled], predictions[labelled], s=18)
    axis.plot([0, 24], [0, 24], color="grey", linewidth=1)
    axis.set_xlabel("true PHQ-8")
    axis.set_ylabel("predicted PHQ-8")
    error = depnas.rmse(predictions[labelled], labels[labelled])
    axis.set_title(f"Selected model, development split, mean over seeds (RMSE {error:.2f})",
                   fontsize="small")
    figure.tight_layout()
    figure.savefig(os.path.join(run.out, "final", "predicted_vs_true.png"), dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Search a multi-stream CNN/GNN depression model with per-stream LSTM "
                    "controllers, PPO and the motion-average reward.")

    parser.add_argument("--stage", choices=("warmup", "joint", "all"), default="all",
                        help="warmup: search each stream alone; joint: joint search then the "
                             "final stage (needs the warm-up in --out); all: both (default: all)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="DAIC-WOZ or E-DAIC root directory (default: the synthetic cohort)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                        metavar="{" + ",".join(PUBLIC_BUDGETS) + "}",
                        help="search size: smoke (about 30 s on 2 CPU cores, checks that "
                             "everything runs), default (about a quarter hour on 2 CPU cores "
                             "with --workers 2), paper (full scale for one GPU, many hours) "
                             "(default: default)")

    parser.add_argument("--seed", type=int, default=0,
                        help="run seed, a non-negative integer (default: 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where children train; auto picks cuda when available (default: auto)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that train children in parallel, one torch thread "
                             "each; results do not depend on it (default: 1)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="run directory (default: runs/<data>-<budget>-seed<seed>, plus "
                             "-single for --reward single and the streams when not all four)")

    parser.add_argument("--resume", action="store_true",
                        help="continue from DIR/checkpoint.pt (default: start again)")
    parser.add_argument("--reward", choices=("motion", "single"), default="motion",
                        help="controller reward: motion = running mean of every validation error "
                             "of the architecture, single = this trial's error (default: motion)")
    parser.add_argument("--streams", default=",".join(encode.ATTRIBUTES),
                        help="comma-separated streams out of au,gaze,pose,landmarks "
                             "(default: all four)")

    parser.add_argument("--align", choices=("select", "resample"), default="select",
                        help="spectral frequency alignment (default: select)")
    parser.add_argument("--on-bad-session", choices=("error", "skip"), default="error",
                        help="a session with too few usable frames stops the run or is skipped "
                             "and listed (default: error)")
    return parser


def parse_streams(text: str) -> tuple[str, ...]:
    """Parse ``--streams`` into the canonical order au, gaze, pose, landmarks."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(encode.ATTRIBUTES))
    if unknown or not names or len(set(names)) != len(names):
        raise SearchError(f"--streams {text!r} is invalid; give distinct names out of "
                          f"{','.join(encode.ATTRIBUTES)}, e.g. --streams au,landmarks")
    return tuple(s for s in encode.ATTRIBUTES if s in names)


def default_out(data: str | None, budget: str, seed: int, reward: str, streams: tuple) -> str:
    """Return runs/<data>-<budget>-seed<seed>[-single][-<streams>]."""
    data_name = "synthetic" if data is None else os.path.basename(os.path.normpath(data))
    name = f"{data_name}-{budget}-seed{seed}"
    if reward != "motion":
        name += f"-{reward}"
    if streams != tuple(encode.ATTRIBUTES):
        name += "-" + "+".join(streams)
    return os.path.join("runs", name)


def make_config(args: argparse.Namespace) -> Config:
    """Validate the parsed arguments and build the frozen configuration."""
    if args.seed < 0:
        raise SearchError(f"--seed {args.seed} is negative; give a non-negative integer")
    if args.workers < 1:
        raise SearchError(f"--workers {args.workers} is below 1; give 1 or more processes")
    if args.data is not None and not os.path.isdir(args.data):
        raise SearchError(f"--data {args.data} is not a directory; give a DAIC-WOZ or E-DAIC root")
    streams = parse_streams(args.streams)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SearchError("--device cuda given but torch finds no CUDA device; use --device cpu")
    data = None if args.data is None else os.path.abspath(args.data)
    out = args.out or default_out(args.data, args.budget, args.seed, args.reward, streams)
    return Config(stage=args.stage, data=data, budget=args.budget, seed=args.seed, device=device,
                  workers=args.workers, out=out, resume=args.resume, reward=args.reward,
                  streams=streams, align=args.align, on_bad_session=args.on_bad_session)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"


def setup_logging(out: str) -> list[logging.Handler]:
    """Log INFO and above to the console and to <out>/log.txt (appended); return the handlers."""
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr),
                logging.FileHandler(os.path.join(out, "log.txt"), encoding="utf-8")]
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    return handlers


def load_data(config: Config) -> SearchData:
    """Load and encode the cohort (cached by encode.load_encoded), then build the splits."""
    start = time.perf_counter()
    encoded = load_encoded_isolated(config)
    if not len(encoded.participants):
        raise SearchError(f"no sessions found in {config.data}; give a DAIC-WOZ or E-DAIC root")
    description = "synthetic cohort" if config.data is None else config.data
    data = prepare_data(encoded, config.streams, config.split_seed, description)
    logger.info("data | %s | %d participants | streams %s | %.1f s", description,
                len(encoded.participants), ",".join(data.streams), time.perf_counter() - start)
    return data


def load_encoded_isolated(config: Config):
    """Run encode.load_encoded in a short-lived process and return its encoded cohort.

    Building and encoding the synthetic cohort peaks at about 1 GB, which the allocator
    keeps after it is freed. In a process of its own that memory returns to the system
    when the process exits, so the search (and every worker it starts) stays small.
    """
    context = multiprocessing.get_context("spawn")
    log_path = os.path.join(config.out, "log.txt")
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=_log_to_run, initargs=(log_path,)) as pool:
        future = pool.submit(encode.load_encoded, config.data, align=config.align,
                             on_bad_session=config.on_bad_session)
        return future.result()


def _log_to_run(log_path: str) -> None:
    """Send this process's log records to the console and the run's log.txt, as the parent does."""
    _exit_with_parent()
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.FileHandler(log_path, encoding="utf-8")):
        handler.setFormatter(formatter)
        root.addHandler(handler)


def write_config(config: Config, budget: Budget, data: SearchData, argv: list[str]) -> None:
    write_json(os.path.join(config.out, "config.json"), {
        "config": dataclasses.asdict(config), "budget": dataclasses.asdict(budget),
        "controller": dataclasses.asdict(CONTROLLER), "validation_fraction": VALIDATION_FRACTION,
        "streams_used": list(data.streams), "data_identity": data.identity,
        "split_sizes": {name: data.size(name) for name in data.participants},
        "argv": argv, "versions": library_versions(), "seed": config.seed})


def check_run_directory(config: Config) -> None:
    """Fail early, before the data is loaded, on a run directory that cannot serve this stage."""
    path = os.path.join(config.out, "checkpoint.pt")
    if config.resume:
        if not os.path.exists(path):
            raise SearchError(f"--resume given but {path} does not exist; "
                              f"run without --resume to start the search")
        saved = load_checkpoint(path).get("fingerprint")
        if isinstance(saved, dict):
            # The data identity is known only after loading the data; it is checked then.
            saved = {key: value for key, value in saved.items() if key != "data_identity"}
        check_fingerprint(saved, config.fingerprint(), path)
    warmup = os.path.join(config.out, "warmup")
    if config.stage == "joint" and not any(name.endswith(".json") for name in _listdir(warmup)):
        raise SearchError(
            f"no warm-up results in {warmup}; run `python search.py --stage warmup` with the same "
            f"--out, --seed, --budget, --streams and --data first (or use --stage all)")


def _listdir(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def run_search(config: Config, argv: list[str], runner_factory=ChildRunner) -> None:
    """Load the data, then run the configured stages in ``config.out``."""
    budget = BUDGETS[config.budget]
    check_run_directory(config)
    depnas.seed_everything(config.seed)
    torch.set_num_threads(1)
    data = load_data(config)
    write_config(config, budget, data, argv)
    logger.info("search | stage %s | budget %s | seed %d | device %s | workers %d | out %s",
                config.stage, budget.name, config.seed, config.device, config.workers, config.out)
    runner = runner_factory(data, config.device, config.workers)
    try:
        start = time.perf_counter()
        SearchRun(config, budget, data, runner).run()
        logger.info("search | finished stage %s in %s", config.stage,
                    format_seconds(time.perf_counter() - start))
    finally:
        runner.close()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for bad usage or input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        config = make_config(args)
    except SearchError as error:
        print(f"search.py: error: {error}", file=sys.stderr)
        return 2
    try:
        os.makedirs(config.out, exist_ok=True)
        handlers = setup_logging(config.out)
    except OSError as error:
        print(f"search.py: error: cannot create or write the run directory --out {config.out}: "
              f"{error}; give a writable directory that is not a file", file=sys.stderr)
        return 2
    try:
        run_search(config, argv)
    except (SearchError, encode.DataError, depnas.ArchitectureError) as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted after the last completed step; "
                     "rerun the same command with --resume to continue")
        return 130
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
    print(f"results in {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
