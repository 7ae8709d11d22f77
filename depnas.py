"""Search spaces, the multi-stream CNN/GNN model, child training and metrics.

depnas reproduces the multi-stream model of "Neural Architecture Search for
depression recognition from facial attributes" (CNN streams for action units,
gaze and head pose, a GNN stream for the 68 facial landmarks, and a searched
fusion module). Architectures are plain JSON-serialisable dicts, and search
spaces are data: each decision has a name and a tuple of choices, so sampling,
validating, printing and building are generic over the space.

Shape legend used in comments across the repository: B batch, S streams,
T frames, K frequency columns, C channels, N nodes, E edges, H hidden,
D fused size.

Run the model tests with ``python -m pytest test_depnas.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch


# ---------------------------------------------------------------------------
# Search spaces as data
# ---------------------------------------------------------------------------

class ArchitectureError(ValueError):
    """An architecture that does not fit its search space."""


@dataclass(frozen=True)
class Decision:
    """One categorical choice the controller makes: a name and its options."""

    name: str
    choices: tuple


@dataclass(frozen=True)
class Space:
    """A search space as a sequence of decisions.

    Token order: the ``head`` decisions, then ``depth`` (how many repeated
    blocks), then the ``per_block`` decisions once per block, then ``tail``.
    ``block_key`` is the architecture key that holds the list of blocks.
    """

    name: str
    head: tuple[Decision, ...]
    depth: Decision
    block_key: str
    per_block: tuple[Decision, ...]
    tail: tuple[Decision, ...] = ()

    def decisions(self) -> tuple[Decision, ...]:
        """Every distinct decision of the space (one decoder each in a controller)."""
        return self.head + (self.depth,) + self.per_block + self.tail


ACTIVATIONS_CNN = ("relu", "elu", "leaky_relu", "tanh")
ACTIVATIONS_GNN = ("relu", "elu", "leaky_relu", "tanh", "sigmoid", "softplus", "relu6", "identity")
CNN_OPERATIONS = ("conv3", "conv5", "conv7", "dilconv3", "sepconv5", "maxpool3", "avgpool3")
ATTENTIONS = ("const", "gcn", "gat", "sym-gat", "cos", "linear", "generalized-linear")
AGGREGATORS = ("sum", "mean", "max")
READOUTS = ("mean", "max", "sum", "attention", "region")
COMBINATIONS = ("concat", "sum", "max", "product", "attention")

CNN_SPACE = Space(
    name="cnn",
    head=(),
    depth=Decision("layers", (1, 2, 3, 4)),
    block_key="layers",
    per_block=(
        Decision("op", CNN_OPERATIONS),
        Decision("channels", (16, 32, 64, 128)),
        Decision("activation", ACTIVATIONS_CNN),
        Decision("residual", (False, True)),
    ),
)

GNN_SPACE = Space(
    name="gnn",
    head=(),
    depth=Decision("layers", (1, 2, 3)),
    block_key="layers",
    per_block=(
        Decision("attention", ATTENTIONS),
        Decision("aggregator", AGGREGATORS),
        Decision("activation", ACTIVATIONS_GNN),
        Decision("heads", (1, 2, 4, 8)),
        Decision("hidden", (8, 16, 32, 64)),
    ),
    tail=(Decision("readout", READOUTS),),
)

# The stream kind of each attribute: landmarks are a graph, the others heatmaps.
STREAM_KINDS = {"au": "cnn", "gaze": "cnn", "pose": "cnn", "landmarks": "gnn"}
STREAM_SPACES = {"cnn": CNN_SPACE, "gnn": GNN_SPACE}


def stream_space(stream: str) -> Space:
    """Return the search space of one stream (``au``, ``gaze``, ``pose`` or ``landmarks``)."""
    if stream not in STREAM_KINDS:
        raise ArchitectureError(
            f"unknown stream {stream!r}; expected one of {sorted(STREAM_KINDS)}")
    return STREAM_SPACES[STREAM_KINDS[stream]]


def fusion_space(streams: tuple[str, ...] | list[str]) -> Space:
    """Return the fusion search space for the given streams, in the given order.

    ``latent_<stream>`` picks the 1-based index of the stream layer whose output
    is fused; a choice above the sampled stream's depth is invalid and is masked
    by :func:`allowed_choices`.
    """
    latents = tuple(
        Decision(f"latent_{s}", stream_space(s).depth.choices) for s in streams)
    return Space(
        name="fusion",
        head=latents + (
            Decision("size", (16, 32, 64, 128)),
            Decision("combine", COMBINATIONS),
        ),
        depth=Decision("blocks", (1, 2, 3)),
        block_key="blocks",
        per_block=(
            Decision("hidden", (16, 32, 64, 128)),
            Decision("activation", ACTIVATIONS_CNN),
        ),
    )


def _head_value_key(decision: Decision) -> tuple[str, str | None]:
    """Map a head decision to its place in the architecture dict.

    ``latent_au`` lives at ``arch["latents"]["au"]``; other head and tail
    decisions live at ``arch[name]``.
    """
    if decision.name.startswith("latent_"):
        return "latents", decision.name[len("latent_"):]
    return decision.name, None


def decision_at(space: Space, tokens: tuple[int, ...] | list[int]) -> Decision | None:
    """Return the decision that follows ``tokens`` (choice indices so far), or None at the end."""
    position = len(tokens)
    if position < len(space.head):
        return space.head[position]
    position -= len(space.head)
    if position == 0:
        return space.depth
    depth = space.depth.choices[tokens[len(space.head)]]
    position -= 1
    if position < depth * len(space.per_block):
        return space.per_block[position % len(space.per_block)]
    position -= depth * len(space.per_block)
    if position < len(space.tail):
        return space.tail[position]
    return None


def allowed_choices(space: Space, decision: Decision, context: dict | None = None) -> list[bool]:
    """Return a mask over ``decision.choices``: which choices are valid here.

    Only the fusion ``latent_<stream>`` decisions are restricted: with
    ``context`` mapping stream names to their architectures, a layer index above
    that stream's depth is invalid. Every other choice is always allowed.
    """
    key, stream = _head_value_key(decision)
    if key != "latents" or context is None or stream not in context:
        return [True] * len(decision.choices)
    depth = len(context[stream]["layers"])
    return [choice <= depth for choice in decision.choices]


def arch_from_tokens(space: Space, tokens: tuple[int, ...] | list[int]) -> dict:
    """Build the architecture dict that a complete token sequence describes."""
    arch: dict = {}
    tokens = list(tokens)
    for decision in space.head:
        key, stream = _head_value_key(decision)
        value = decision.choices[tokens.pop(0)]
        if stream is None:
            arch[key] = value
        else:
            arch.setdefault(key, {})[stream] = value

    depth = space.depth.choices[tokens.pop(0)]
    blocks = []
    for _ in range(depth):
        blocks.append({d.name: d.choices[tokens.pop(0)] for d in space.per_block})
    arch[space.block_key] = blocks

    for decision in space.tail:
        arch[decision.name] = decision.choices[tokens.pop(0)]
    if tokens:
        raise ArchitectureError(
            f"{space.name} space: {len(tokens)} tokens left over after a complete architecture")
    return arch


def _choice_index(space: Space, decision: Decision, value, where: str) -> int:
    """Return the index of ``value`` among the decision's choices, or raise naming it."""
    for index, choice in enumerate(decision.choices):
        # bool is an int subclass: True must not match the choice 1.
        if type(choice) is type(value) and choice == value:
            return index
        if isinstance(choice, (int, float)) and not isinstance(choice, bool) \
                and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and choice == value:
            return index
    raise ArchitectureError(
        f"{space.name} architecture: {where} = {value!r} is not a choice of decision "
        f"{decision.name!r}; allowed: {list(decision.choices)}")


def arch_tokens(space: Space, arch: dict) -> tuple[int, ...]:
    """Return the canonical token tuple (choice indices) of ``arch``; raise if it does not fit."""
    if not isinstance(arch, dict):
        raise ArchitectureError(
            f"{space.name} architecture must be a dict, got {type(arch).__name__}")
    tokens: list[int] = []
    for decision in space.head:
        key, stream = _head_value_key(decision)
        container = arch.get(key) if stream is not None else arch
        name = stream if stream is not None else key
        if not isinstance(container, dict) or name not in container:
            raise ArchitectureError(
                f"{space.name} architecture: missing decision {decision.name!r}")
        tokens.append(_choice_index(space, decision, container[name], decision.name))

    blocks = arch.get(space.block_key)
    if not isinstance(blocks, list):
        raise ArchitectureError(
            f"{space.name} architecture: missing list {space.block_key!r}")
    tokens.append(_choice_index(space, space.depth, len(blocks), f"len({space.block_key})"))
    for index, block in enumerate(blocks):
        for decision in space.per_block:
            where = f"{space.block_key}[{index}].{decision.name}"
            if not isinstance(block, dict) or decision.name not in block:
                raise ArchitectureError(f"{space.name} architecture: missing decision {where}")
            tokens.append(_choice_index(space, decision, block[decision.name], where))

    for decision in space.tail:
        if decision.name not in arch:
            raise ArchitectureError(
                f"{space.name} architecture: missing decision {decision.name!r}")
        tokens.append(_choice_index(space, decision, arch[decision.name], decision.name))
    return tuple(tokens)


def validate_arch(space: Space, arch: dict, context: dict | None = None) -> None:
    """Raise ArchitectureError naming the first decision of ``arch`` that does not fit ``space``.

    ``context`` (stream name -> stream architecture) enables the fusion check
    that each chosen latent layer exists in its stream.
    """
    tokens = arch_tokens(space, arch)
    canonical = arch_from_tokens(space, tokens)
    if canonical != _plain(arch):
        raise ArchitectureError(
            f"{space.name} architecture has keys outside the space: {arch}; "
            f"the nearest valid architecture is {canonical}")
    for position, token in enumerate(tokens):
        decision = decision_at(space, tokens[:position])
        if not allowed_choices(space, decision, context)[token]:
            raise ArchitectureError(
                f"{space.name} architecture: {decision.name} = {decision.choices[token]!r} "
                f"points past the last layer of that stream "
                f"({len(context[decision.name[len('latent_'):]]['layers'])} layers)")


def _plain(arch: dict) -> dict:
    """Return ``arch`` after a JSON round trip, so tuples and lists compare equal."""
    return json.loads(json.dumps(arch))


def sample_arch(space: Space, generator: np.random.Generator, context: dict | None = None) -> dict:
    """Sample an architecture uniformly decision by decision, using ``generator`` only."""
    tokens: list[int] = []
    while (decision := decision_at(space, tokens)) is not None:
        allowed = np.flatnonzero(allowed_choices(space, decision, context))
        tokens.append(int(allowed[generator.integers(len(allowed))]))
    return arch_from_tokens(space, tokens)


def format_arch(space: Space, arch: dict) -> str:
    """Return a one-line, human-readable form of ``arch`` (``|`` between blocks)."""
    head = [f"{d.name}={_lookup_head(arch, d)}" for d in space.head]
    blocks = [
        ",".join(str(block[d.name]) for d in space.per_block)
        for block in arch[space.block_key]
    ]
    tail = [f"{d.name}={arch[d.name]}" for d in space.tail]
    return " ".join(head + ["|".join(blocks)] + tail)


def _lookup_head(arch: dict, decision: Decision):
    key, stream = _head_value_key(decision)
    return arch[key] if stream is None else arch[key][stream]
