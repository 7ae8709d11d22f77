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
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger("depnas")


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
        """Return every distinct decision of the space (a controller has one decoder per decision)."""
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
        value = _take_choice(space, decision, tokens)
        if stream is None:
            arch[key] = value
        else:
            arch.setdefault(key, {})[stream] = value

    depth = _take_choice(space, space.depth, tokens)
    blocks = []
    for _ in range(depth):
        blocks.append({d.name: _take_choice(space, d, tokens) for d in space.per_block})
    arch[space.block_key] = blocks

    for decision in space.tail:
        arch[decision.name] = _take_choice(space, decision, tokens)
    if tokens:
        raise ArchitectureError(
            f"{space.name} space: {len(tokens)} tokens left over after a complete architecture")
    return arch


def _take_choice(space: Space, decision: Decision, tokens: list[int]):
    """Pop the next token from ``tokens`` and return the choice it indexes, or raise naming it."""
    if not tokens:
        raise ArchitectureError(
            f"{space.name} space: token sequence ends before decision {decision.name!r}")
    token = tokens.pop(0)
    # A negative index would silently pick a choice from the end of the tuple.
    if not 0 <= token < len(decision.choices):
        raise ArchitectureError(
            f"{space.name} space: token {token} for decision {decision.name!r} is out of range; "
            f"expected 0..{len(decision.choices) - 1}")
    return decision.choices[token]


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


# ---------------------------------------------------------------------------
# Model architectures: streams plus an optional fusion part
# ---------------------------------------------------------------------------

# The canonical stream order of model identities, printing and fusion inputs.
STREAM_ORDER = ("au", "gaze", "pose", "landmarks")


def model_streams(arch: dict) -> tuple[str, ...]:
    """Return the streams of a model architecture in the canonical order (au, gaze, pose, landmarks)."""
    if not isinstance(arch, dict) or not isinstance(arch.get("streams"), dict):
        raise ArchitectureError(
            f"model architecture must be a dict with a 'streams' dict, got {arch!r}")
    unknown = sorted(set(arch["streams"]) - set(STREAM_ORDER))
    if unknown:
        raise ArchitectureError(
            f"model architecture: unknown streams {unknown}; expected some of {list(STREAM_ORDER)}")
    return tuple(s for s in STREAM_ORDER if s in arch["streams"])


def validate_model_arch(arch: dict, streams=None) -> None:
    """Raise ArchitectureError naming the stream (or fusion) and the decision that does not fit.

    A model architecture is ``{"streams": {stream: stream_arch}}`` with exactly
    one stream (trained with its warm-up head) or ``{"streams": {...},
    "fusion": fusion_arch}`` with one or more streams. With ``streams`` given,
    the architecture must contain exactly those streams.
    """
    present = model_streams(arch)
    extra = sorted(set(arch) - {"streams", "fusion"})
    if extra:
        raise ArchitectureError(
            f"model architecture: unexpected keys {extra}; allowed: 'streams', 'fusion'")
    if not present:
        raise ArchitectureError("model architecture: 'streams' is empty; give at least one stream")
    if streams is not None and set(present) != set(streams):
        raise ArchitectureError(
            f"model architecture has streams {list(present)}, expected exactly {sorted(streams)}")

    for stream in present:
        try:
            validate_arch(stream_space(stream), arch["streams"][stream])
        except ArchitectureError as error:
            raise ArchitectureError(f"stream {stream!r}: {error}") from error

    if "fusion" not in arch:
        if len(present) > 1:
            raise ArchitectureError(
                f"model architecture with streams {list(present)} has no 'fusion' part; "
                f"several streams need one")
        return
    try:
        validate_arch(fusion_space(present), arch["fusion"], context=arch["streams"])
    except ArchitectureError as error:
        raise ArchitectureError(f"fusion: {error}") from error


def model_tokens(arch: dict) -> tuple:
    """Return the canonical identity of a model architecture.

    The identity is a tuple of ``(name, token tuple)`` pairs: the streams in the
    order au, gaze, pose, landmarks (those present), then ``("fusion", tokens)``
    when the architecture has a fusion part.
    """
    validate_model_arch(arch)
    present = model_streams(arch)
    identity = [(s, arch_tokens(stream_space(s), arch["streams"][s])) for s in present]
    if "fusion" in arch:
        identity.append(("fusion", arch_tokens(fusion_space(present), arch["fusion"])))
    return tuple(identity)


def format_model_arch(arch: dict) -> str:
    """Return a one-line form of a model architecture, e.g. ``au: conv3,32,relu,False ; fusion: ...``."""
    present = model_streams(arch)
    parts = [f"{s}: {format_arch(stream_space(s), arch['streams'][s])}" for s in present]
    if "fusion" in arch:
        parts.append(f"fusion: {format_arch(fusion_space(present), arch['fusion'])}")
    return " ; ".join(parts)


# ---------------------------------------------------------------------------
# CNN stream
# ---------------------------------------------------------------------------

ACTIVATION_MODULES = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}


def _pool_then_project(pool: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    # A pool keeps the channel count, so a 1x1 convolution reaches the chosen channels.
    return nn.Sequential(pool, nn.Conv1d(in_channels, out_channels, 1))


# Operation name -> constructor (in_channels, out_channels). Every operation keeps
# the length K (stride 1, same padding).
CNN_OPERATION_BUILDERS = {
    "conv3": lambda c_in, c_out: nn.Conv1d(c_in, c_out, 3, padding=1),
    "conv5": lambda c_in, c_out: nn.Conv1d(c_in, c_out, 5, padding=2),
    "conv7": lambda c_in, c_out: nn.Conv1d(c_in, c_out, 7, padding=3),
    "dilconv3": lambda c_in, c_out: nn.Conv1d(c_in, c_out, 3, padding=2, dilation=2),
    "sepconv5": lambda c_in, c_out: nn.Sequential(
        nn.Conv1d(c_in, c_in, 5, padding=2, groups=c_in),  # depthwise
        nn.Conv1d(c_in, c_out, 1)),                         # pointwise
    "maxpool3": lambda c_in, c_out: _pool_then_project(
        nn.MaxPool1d(3, stride=1, padding=1), c_in, c_out),
    "avgpool3": lambda c_in, c_out: _pool_then_project(
        nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False), c_in, c_out),
}


class CNNLayer(nn.Module):
    """One searched 1-D CNN layer: operation, optional residual, then activation.

    With ``residual`` the previous layer's output (the stream input for layer
    1) is added before the activation, through a 1x1 convolution when the
    channel counts differ.

    NOTE: no batch normalisation, because batches are small (32 of about 85
    training participants, and an epoch's last batch can be far smaller) and
    their statistics would be noisy. The inputs are standardised per feature
    instead, and a stream is at most 4 layers deep.
    """

    def __init__(self, layer: dict, in_channels: int):
        super().__init__()
        out_channels = layer["channels"]
        self.operation = CNN_OPERATION_BUILDERS[layer["op"]](in_channels, out_channels)
        self.activation = ACTIVATION_MODULES[layer["activation"]]()
        self.skip = None
        if layer["residual"]:
            self.skip = (nn.Identity() if in_channels == out_channels
                         else nn.Conv1d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.operation(x)                          # (B, C_out, K)
        if self.skip is not None:
            y = y + self.skip(x)
        return self.activation(y)


class CNNStream(nn.Module):
    """The CNN stream of a heatmap attribute: input (B, 2C, K), one output per layer (B, C_l, K)."""

    def __init__(self, arch: dict, in_channels: int):
        super().__init__()
        validate_arch(CNN_SPACE, arch)
        self.layer_channels = [layer["channels"] for layer in arch["layers"]]
        inputs = [in_channels] + self.layer_channels[:-1]
        self.layers = nn.ModuleList(
            CNNLayer(layer, c_in) for layer, c_in in zip(arch["layers"], inputs))
        self.out_channels = self.layer_channels[-1]

    def forward(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Return the outputs of the first ``depth`` layers (all layers by default)."""
        outputs = []
        for layer in self.layers[:depth]:
            x = layer(x)                               # (B, C_l, K)
            outputs.append(x)
        return outputs


class CNNHead(nn.Module):
    """Warm-up regression head of a CNN stream: global average pool, dropout, linear -> (B,)."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=2)                         # (B, C, K) -> (B, C)
        return self.linear(self.dropout(pooled)).squeeze(1)


class GNNHead(nn.Module):
    """Warm-up regression head of the GNN stream: dropout, linear on the readout -> (B,).

    The readout, which pools the nodes, is part of the searched GNN stream.
    """

    def __init__(self, features: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(features, 1)

    def forward(self, readout: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(readout)).squeeze(1)   # (B, H) -> (B,)


# ---------------------------------------------------------------------------
# Fusion module
# ---------------------------------------------------------------------------

def average_pool_matrix(length: int, size: int) -> torch.Tensor:
    """Return the (length, size) matrix M with ``x @ M`` equal to adaptive average pooling of x.

    Output bin i averages inputs floor(i*L/D) .. ceil((i+1)*L/D) - 1, the bins
    of ``torch.nn.functional.adaptive_avg_pool1d``.
    """
    matrix = torch.zeros(length, size)
    for i in range(size):
        start = (i * length) // size
        end = ((i + 1) * length + size - 1) // size
        matrix[start:end, i] = 1.0 / (end - start)
    return matrix


class AveragePool(nn.Module):
    """Adaptive average pooling of flat vectors (B, L) -> (B, D), deterministic on CPU and CUDA.

    torch's adaptive_avg_pool1d has a nondeterministic CUDA backward, so this
    module reshapes and averages when D divides L (equal bins) and otherwise
    multiplies by the fixed averaging matrix of ``average_pool_matrix``.
    """

    def __init__(self, length: int, size: int):
        super().__init__()
        self.length, self.size = length, size
        # Not persistent: the matrix follows from the two sizes.
        matrix = average_pool_matrix(length, size) if length % size else None
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix is not None:
            return x @ self.matrix                                  # (B, L) -> (B, D)
        return x.view(len(x), self.size, -1).mean(dim=2)            # (B, D, L/D) -> (B, D)


class FusionModule(nn.Module):
    """Fuse one chosen latent per stream and regress the score.

    Each latent (B, C_l, K) or (B, N, H_l) is flattened and average-pooled to
    length D; the first block combines the S pooled latents (concat -> S*D; sum,
    max, product -> D; attention: a learned score per stream latent, softmax
    over streams, weighted sum -> D); each block then applies Linear to its
    hidden size and its activation; the head is dropout and linear -> (B,).
    """

    def __init__(self, arch: dict, latent_lengths: dict[str, int], dropout: float):
        super().__init__()
        self.streams = tuple(s for s in STREAM_ORDER if s in latent_lengths)
        self.combine = arch["combine"]
        size = arch["size"]
        self.pools = nn.ModuleDict(
            {s: AveragePool(latent_lengths[s], size) for s in self.streams})
        if self.combine == "attention":
            self.scores = nn.ModuleDict({s: nn.Linear(size, 1) for s in self.streams})

        width = size * len(self.streams) if self.combine == "concat" else size
        blocks = []
        for block in arch["blocks"]:
            blocks.append(nn.Sequential(nn.Linear(width, block["hidden"]),
                                        ACTIVATION_MODULES[block["activation"]]()))
            width = block["hidden"]
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, 1)

    def forward(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = [self.pools[s](latents[s].flatten(1))  # (B, L_s) -> (B, D)
                  for s in self.streams]
        fused = self._combine(pooled)                  # (B, S*D) or (B, D)
        hidden = self.blocks(fused)                    # (B, H)
        return self.linear(self.dropout(hidden)).squeeze(1)

    def _combine(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        if self.combine == "concat":
            return torch.cat(pooled, dim=1)            # (B, S*D)
        stacked = torch.stack(pooled, dim=1)           # (B, S, D)
        if self.combine == "sum":
            return stacked.sum(dim=1)
        if self.combine == "max":
            return stacked.amax(dim=1)
        if self.combine == "product":
            return stacked.prod(dim=1)
        scores = torch.cat([self.scores[s](z) for s, z in zip(self.streams, pooled)], dim=1)
        weights = torch.softmax(scores, dim=1)         # (B, S)
        return (weights.unsqueeze(2) * stacked).sum(dim=1)


# ---------------------------------------------------------------------------
# The multi-stream model
# ---------------------------------------------------------------------------

class MultiStreamModel(nn.Module):
    """Streams plus either a warm-up head (one stream) or the fusion module.

    ``input_shapes`` maps each stream to one participant's input shape: (2C, K)
    for a CNN stream, (N, F) for the landmark graph. ``forward`` takes a dict of
    tensors (B, *shape) and returns the predicted scores (B,).

    Stream layers after a stream's fused layer are built, so the parameters
    match the architecture, but they cannot affect the output: CNN streams
    skip them, the GNN stream computes them, and they never get gradients.
    The GNN readout is unused under fusion for the same reason.
    """

    def __init__(self, arch: dict, input_shapes: dict[str, tuple], dropout: float = 0.2):
        super().__init__()
        validate_model_arch(arch)
        self.streams = model_streams(arch)
        self.input_shapes = {s: _input_shape(s, input_shapes) for s in self.streams}
        self.encoders = nn.ModuleDict(
            {s: _build_stream(s, arch["streams"][s], self.input_shapes[s]) for s in self.streams})

        self.latents = None
        if "fusion" in arch:
            self.latents = dict(arch["fusion"]["latents"])
            lengths = {s: self._latent_length(s) for s in self.streams}
            self.fusion = FusionModule(arch["fusion"], lengths, dropout)
        else:
            stream = self.streams[0]
            encoder = self.encoders[stream]
            self.head = (CNNHead(encoder.out_channels, dropout) if STREAM_KINDS[stream] == "cnn"
                         else GNNHead(encoder.out_features, dropout))

    def _latent_length(self, stream: str) -> int:
        index = self.latents[stream] - 1
        encoder = self.encoders[stream]
        first, second = self.input_shapes[stream]
        if STREAM_KINDS[stream] == "cnn":
            return encoder.layer_channels[index] * second      # C_l * K
        return first * encoder.layer_features[index]          # N * H_l

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        for stream in self.streams:
            _check_batch(stream, features, self.input_shapes[stream])
        if self.latents is None:
            return self._forward_single(features)
        latents = {}
        for stream in self.streams:
            x = features[stream]
            if STREAM_KINDS[stream] == "cnn":
                # Layers after the chosen one cannot reach the output, so skip them.
                outputs = self.encoders[stream](x, depth=self.latents[stream])
            else:
                outputs = self.encoders[stream](x)[1]
            latents[stream] = outputs[self.latents[stream] - 1]
        return self.fusion(latents)

    def _forward_single(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        stream = self.streams[0]
        if STREAM_KINDS[stream] == "cnn":
            return self.head(self.encoders[stream](features[stream])[-1])
        readout, _ = self.encoders[stream](features[stream])
        return self.head(readout)


def _build_stream(stream: str, arch: dict, shape: tuple[int, int]) -> nn.Module:
    if STREAM_KINDS[stream] == "cnn":
        return CNNStream(arch, in_channels=shape[0])
    # Imported here because gnn.py builds on this module's search spaces.
    import gnn
    return gnn.GNNStream(arch, in_features=shape[1])


def _input_shape(stream: str, input_shapes: dict) -> tuple[int, int]:
    if stream not in input_shapes:
        raise ValueError(
            f"input_shapes has no entry for stream {stream!r}; give its per-participant shape, "
            f"(2C, K) or (N, F)")
    shape = tuple(int(n) for n in input_shapes[stream])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(
            f"input shape of stream {stream!r} is {shape}; expected two positive sizes, "
            f"(2C, K) for a CNN stream or (N, F) for the landmark graph")
    return shape


def _check_batch(stream: str, features: dict, shape: tuple[int, int]) -> None:
    if stream not in features:
        raise ValueError(f"model input has no tensor for stream {stream!r}; "
                         f"it has {sorted(features)}")
    x = features[stream]
    if x.ndim != 3 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"model input for stream {stream!r} has shape {tuple(x.shape)}; "
            f"expected (B, {shape[0]}, {shape[1]}) as the model was built")


# ---------------------------------------------------------------------------
# Child training
# ---------------------------------------------------------------------------

# Feature elements whose training standard deviation is below this are only
# centred (divided by 1), e.g. phases set to exactly 0 in empty frequency bins.
STD_FLOOR = 1e-6

# Participants per forward pass when predicting.
PREDICT_BATCH = 256


@dataclass
class ChildBudget:
    """Training settings of one child network."""

    epochs: int = 60
    batch_size: int = 32           # participants per Adam step
    lr: float = 3e-3               # Adam learning rate
    weight_decay: float = 1e-4     # Adam's L2 penalty
    dropout: float = 0.2           # probability, before the final linear layer

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"ChildBudget needs epochs >= 1 and batch_size >= 1, got {self}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"ChildBudget needs lr > 0 and weight_decay >= 0, got {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ChildBudget dropout must be in [0, 1), got {self.dropout}")


@dataclass
class Split:
    """Participants' network inputs and PHQ-8 scores.

    ``features`` maps a stream to (P, 2C, K) heatmaps or (P, N, F) node
    features; ``labels`` is (P,) PHQ-8 totals.
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices) -> "Split":
        """Return the participants at ``indices`` (integer positions)."""
        indices = np.asarray(indices, dtype=np.int64)
        return Split({s: x[indices] for s, x in self.features.items()}, self.labels[indices])

    @classmethod
    def from_encoded(cls, encoded, streams=None) -> "Split":
        """Build a split from an ``encode.EncodedCohort`` (all its attributes by default)."""
        streams = list(encoded.features) if streams is None else list(streams)
        return cls({s: encoded.features[s] for s in streams}, np.asarray(encoded.labels))


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, value: float, epoch: int, curve: list[float]):
        super().__init__(f"loss became {value} at epoch {epoch}; lower the learning rate "
                         f"or raise weight_decay in the child budget")
        self.curve = curve


def seed_everything(seed: int) -> None:
    """Seed random, numpy and torch (CPU and CUDA) and switch torch to deterministic algorithms.

    Deterministic mode is process-wide, and an operation without a
    deterministic implementation then raises RuntimeError, so the model avoids
    such operations (the fusion pooling is a matmul for this reason).
    ``CUBLAS_WORKSPACE_CONFIG`` only takes effect if it is set before CUDA
    initialises, so call this function early in a process that uses CUDA.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False


def _derived_seed(seed: int, purpose: int) -> int:
    """Return a seed for one purpose (1: batch order), independent of the model-initialisation seed."""
    return int(np.random.SeedSequence([int(seed), purpose]).generate_state(1)[0])


def fit_standardisation(train: Split, streams) -> dict:
    """Fit per-feature-element means and standard deviations on ``train`` only.

    Statistics are over participants, in float64, stored as float32 tensors of
    one participant's shape. Targets are standardised too, so the network
    learns a unit-variance score.
    """
    stats = {"feature_mean": {}, "feature_std": {}}
    for stream in streams:
        x = np.asarray(train.features[stream], dtype=np.float64)       # (P, ...)
        std = x.std(axis=0)
        std = np.where(std < STD_FLOOR, 1.0, std)
        stats["feature_mean"][stream] = torch.from_numpy(x.mean(axis=0)).float()
        stats["feature_std"][stream] = torch.from_numpy(std).float()
    labels = np.asarray(train.labels, dtype=np.float64)
    label_std = float(labels.std())
    stats["label_mean"] = float(labels.mean())
    stats["label_std"] = label_std if label_std >= STD_FLOOR else 1.0
    return stats


def standardise(features: dict[str, np.ndarray], stats: dict, device) -> dict[str, torch.Tensor]:
    """Return float32 tensors on ``device``, standardised with the fitted statistics."""
    result = {}
    for stream, mean in stats["feature_mean"].items():
        x = torch.as_tensor(np.asarray(features[stream]), dtype=torch.float32)
        result[stream] = ((x - mean) / stats["feature_std"][stream]).to(device)
    return result


def check_split(split: Split, streams, name: str) -> None:
    """Raise ValueError when ``split`` lacks a stream, has mismatched sizes or non-finite values."""
    labels = np.asarray(split.labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"{name} labels have shape {labels.shape}; expected (P,) with P >= 1")
    bad = np.flatnonzero(~np.isfinite(labels))
    if len(bad):
        raise ValueError(
            f"{name} labels contain {len(bad)} non-finite values (first at position {bad[0]}); "
            f"drop unlabelled participants before training")
    for stream in streams:
        if stream not in split.features:
            raise ValueError(f"{name} split has no features for stream {stream!r}; "
                             f"it has {sorted(split.features)}")
        x = np.asarray(split.features[stream])
        if x.ndim != 3 or len(x) != len(labels):
            raise ValueError(
                f"{name} features of stream {stream!r} have shape {x.shape}; "
                f"expected ({len(labels)}, *, *), one row per label")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} features of stream {stream!r} contain non-finite values")


@dataclass
class Fitted:
    """A trained model with everything needed to predict: architecture, shapes, statistics."""

    arch: dict
    model: MultiStreamModel
    stats: dict
    dropout: float
    curve: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Return predicted PHQ-8 scores (P,) as float64 numpy."""
        for stream, shape in self.model.input_shapes.items():
            _check_batch(stream, features, shape)
        device = next(self.model.parameters()).device
        inputs = standardise(features, self.stats, device)
        count = len(next(iter(inputs.values())))
        self.model.eval()
        chunks = []
        with torch.inference_mode():
            for start in range(0, count, PREDICT_BATCH):
                batch = {s: x[start:start + PREDICT_BATCH] for s, x in inputs.items()}
                chunks.append(self.model(batch).double().cpu())
        scores = torch.cat(chunks).numpy()
        return scores * self.stats["label_std"] + self.stats["label_mean"]

    def state(self) -> dict:
        """Return tensors and plain values that ``torch.load(weights_only=True)`` reads back."""
        return {
            "arch": json.loads(json.dumps(self.arch)),
            "input_shapes": {s: list(shape) for s, shape in self.model.input_shapes.items()},
            "dropout": float(self.dropout),
            "weights": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "stats": {
                "feature_mean": {s: t.clone() for s, t in self.stats["feature_mean"].items()},
                "feature_std": {s: t.clone() for s, t in self.stats["feature_std"].items()},
                "label_mean": float(self.stats["label_mean"]),
                "label_std": float(self.stats["label_std"]),
            },
            "curve": [float(v) for v in self.curve],
            "seconds": float(self.seconds),
        }


def load_fitted(state: dict, device="cpu") -> Fitted:
    """Rebuild a Fitted from ``Fitted.state()``; the global random state is left unchanged."""
    shapes = {s: tuple(shape) for s, shape in state["input_shapes"].items()}
    # Building the modules draws initial weights, which would move the global torch generator.
    with torch.random.fork_rng(devices=[]):
        model = MultiStreamModel(state["arch"], shapes, dropout=state["dropout"])
    model.load_state_dict(state["weights"])
    stats = state["stats"]
    return Fitted(arch=state["arch"], model=model.to(device), stats=stats,
                  dropout=state["dropout"], curve=list(state["curve"]),
                  seconds=state["seconds"])


def fit_model(arch: dict, train: Split, seed: int, budget: ChildBudget | None = None,
              device="cpu") -> Fitted:
    """Train ``arch`` from scratch on ``train`` with Adam on the mean squared error.

    Features and targets are standardised with statistics of ``train`` only;
    the loss is on standardised targets and ``Fitted.predict`` returns PHQ-8
    points. Raises NonFiniteLossError when an epoch's loss is NaN or infinite.
    """
    budget = budget or ChildBudget()
    start = time.perf_counter()
    validate_model_arch(arch)
    streams = model_streams(arch)
    check_split(train, streams, "training")
    seed_everything(seed)

    stats = fit_standardisation(train, streams)
    inputs = standardise(train.features, stats, device)
    labels = torch.as_tensor(np.asarray(train.labels, dtype=np.float64))
    targets = ((labels - stats["label_mean"]) / stats["label_std"]).float().to(device)  # (P,)
    shapes = {s: tuple(x.shape[1:]) for s, x in inputs.items()}
    model = MultiStreamModel(arch, shapes, dropout=budget.dropout).to(device)

    curve = _train_epochs(model, inputs, targets, seed, budget)
    curve = [value * stats["label_std"] ** 2 for value in curve]
    return Fitted(arch=json.loads(json.dumps(arch)), model=model, stats=stats,
                  dropout=budget.dropout, curve=curve, seconds=time.perf_counter() - start)


def _train_epochs(model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                  seed: int, budget: ChildBudget) -> list[float]:
    """Run the mini-batch epochs; return the mean training loss per epoch (standardised units)."""
    device = targets.device
    # fused: one C++ call updates every parameter, in place of a Python loop over them.
    optimiser = torch.optim.Adam(model.parameters(), lr=budget.lr,
                                 weight_decay=budget.weight_decay, fused=True)
    generator = torch.Generator().manual_seed(_derived_seed(seed, 1))
    count = len(targets)
    curve: list[float] = []
    model.train()
    for epoch in range(1, budget.epochs + 1):
        order = torch.randperm(count, generator=generator).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, count, budget.batch_size):
            index = order[start:start + budget.batch_size]
            batch = {s: x.index_select(0, index) for s, x in inputs.items()}
            loss = F.mse_loss(model(batch), targets.index_select(0, index))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(index)

        # One host synchronisation per epoch; NaN or inf in any step shows in the sum.
        mean_loss = (total / count).item()
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(mean_loss, epoch, curve)
        curve.append(mean_loss)
    return curve


def train_child(arch: dict, data: tuple[Split, Split], seed: int,
                budget: ChildBudget | None = None, device="cpu") -> dict:
    """Train a child on the training part and evaluate it once on the validation part.

    Returns ``{"ok", "val_rmse", "val_mae", "reason", "curve", "seconds",
    "epochs"}`` with errors in PHQ-8 points and ``curve`` the mean training
    loss per epoch in squared PHQ-8 points. There is no early stopping on the
    validation part. A child whose loss becomes NaN or inf, or that raises
    (including CUDA out of memory), gets ``ok`` False, a reason and no errors.
    """
    start = time.perf_counter()
    result = {"ok": False, "val_rmse": None, "val_mae": None, "reason": None,
              "curve": [], "seconds": 0.0, "epochs": 0}
    try:
        train, validation = data
        fitted = fit_model(arch, train, seed, budget, device)
        result["curve"] = fitted.curve
        check_split(validation, fitted.model.streams, "validation")
        predictions = fitted.predict(validation.features)
        if not np.isfinite(predictions).all():
            raise ArithmeticError("validation predictions are not finite although the "
                                  "training loss was")
        result.update(ok=True, val_rmse=rmse(predictions, validation.labels),
                      val_mae=mae(predictions, validation.labels))
    except NonFiniteLossError as error:
        result["reason"] = str(error)
        result["curve"] = error.curve
    except Exception as error:  # a bad child must be reported, never stop the search
        result["reason"] = f"{type(error).__name__}: {error}"
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()

    result["epochs"] = len(result["curve"])
    result["seconds"] = time.perf_counter() - start
    if not result["ok"]:
        # The caller logs the failure with its own context (stage, stream, step).
        logger.debug("child failed | seed %s | %s | arch %r", seed, result["reason"], arch)
    return result


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def _paired(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both arrays to float64 and check they pair up one to one and are finite.

    Each argument must have shape (N,), (N, 1) or (1, N), so a (2, 3) against a (3, 2) array
    raises instead of pairing values from different rows.
    """
    pred = _as_vector(pred, "predictions")
    target = _as_vector(target, "targets")
    if pred.size != target.size:
        raise ValueError(f"{pred.size} predictions against {target.size} targets; "
                         f"pass one prediction per target")
    if pred.size == 0:
        raise ValueError("predictions and targets are empty; pass at least one pair")
    return pred, target


def _as_vector(values, name: str) -> np.ndarray:
    """Flatten an (N,), (N, 1) or (1, N) array to (N,) float64; raise on other shapes or NaN/inf."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or (array.ndim == 2 and 1 not in array.shape):
        raise ValueError(f"{name} have shape {array.shape}; pass shape (N,), (N, 1) or (1, N)")

    array = array.ravel()
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} contain {bad.size} NaN or infinite value(s), the first at "
                         f"position {bad[0]} ({array[bad[0]]}); remove those participants or "
                         "fix the model that produced them")
    return array


def rmse(pred, target) -> float:
    """Return the RMSE of (N,), (N, 1) or (1, N) inputs, flattened, not broadcast."""
    pred, target = _paired(pred, target)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def mae(pred, target) -> float:
    """Return the mean absolute error of (N,), (N, 1) or (1, N) inputs, flattened, not broadcast."""
    pred, target = _paired(pred, target)
    return float(np.mean(np.abs(pred - target)))
