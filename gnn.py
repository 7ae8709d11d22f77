"""The landmark graph, a hand-written message-passing layer, graph readouts and the GNN stream.

The landmark stream of depnas treats the 68 iBUG facial landmarks of a session as one graph.
Each node carries the spectral encoding of its landmark's trajectory. The landmarks of one facial
region are fully connected, and every landmark is linked to the nasal root (landmark 27), so that
messages travel between regions. The layer implements the seven attention types and three
aggregators of the GraphNAS search space (Gao et al., "GraphNAS: Graph Neural Architecture Search
with Reinforcement Learning", 2019), with attention normalised over each receiving node's incoming
edges. It runs on plain PyTorch tensors in a batched form: with 68 nodes an (N, N) score matrix
per graph and head is small, and matrix products replace scatter operations for the ``sum`` and
``mean`` aggregators. Per-feature work (the ``max`` aggregator and the ``generalized-linear``
scores) runs on the E' edges of the self-looped graph instead (1010 of the 4624 node pairs of
the landmark graph), with a segment maximum over edges grouped by target. Results are
deterministic on CPU; see ``_edge_list`` for the GPU.

Shape legend used in comments across the repository: B batch, S streams, T frames, K frequency
columns, C channels, N nodes, E edges, H hidden, D fused size.

Run ``python gnn.py`` for a summary of the landmark graph and the forward+backward time of a
2-layer GAT stream on a batch of 107 graphs. Run ``python -m pytest test_gnn.py`` for the tests.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

N_LANDMARKS = 68
NASAL_ROOT = 27

# 0-based iBUG 68-point layout; "right" and "left" are the subject's.
REGIONS: dict[str, range] = {
    "jaw": range(0, 17),
    "right_brow": range(17, 22),
    "left_brow": range(22, 27),
    "nose": range(27, 36),
    "right_eye": range(36, 42),
    "left_eye": range(42, 48),
    "mouth": range(48, 68),
}

ATTENTIONS = ("const", "gcn", "gat", "sym-gat", "cos", "linear", "generalized-linear")
AGGREGATORS = ("sum", "mean", "max")
READOUTS = ("mean", "max", "sum", "attention", "region")

# Attention types whose coefficients are fixed by the graph and need no softmax.
FIXED_ATTENTIONS = ("const", "gcn")


# ---------------------------------------------------------------------------
# The landmark graph
# ---------------------------------------------------------------------------

def landmark_edges() -> torch.Tensor:
    """Return the landmark graph as a (2, E) LongTensor of directed edges, E = 942.

    Row 0 contains the source node j and row 1 the target node i of each edge j -> i. Every
    undirected link appears in both directions and there are no self-loops (the layer adds them).

    Edge count: a region of n landmarks is a clique with n(n - 1) directed edges, which gives
    272 (jaw, 17) + 20 + 20 (brows, 5 each) + 72 (nose, 9) + 30 + 30 (eyes, 6 each)
    + 380 (mouth, 20) = 824. The nasal root 27 lies in the nose region, so the nose landmarks
    are already linked to it; each of the 68 - 9 = 59 landmarks outside the nose adds the pair
    j -> 27 and 27 -> j, which gives 118 more edges: 824 + 118 = 942.
    """
    pairs: set[tuple[int, int]] = set()
    for region in REGIONS.values():
        pairs.update((j, i) for j in region for i in region if j != i)

    for node in range(N_LANDMARKS):
        if node != NASAL_ROOT:
            pairs.add((node, NASAL_ROOT))
            pairs.add((NASAL_ROOT, node))

    ordered = sorted(pairs, key=lambda pair: (pair[1], pair[0]))   # grouped by target
    return torch.tensor(ordered, dtype=torch.long).T.contiguous()  # (2, E)


def edges_to_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Return the dense (N, N) float adjacency of an edge list: A[i, j] = 1 for each edge j -> i.

    ``edge_index`` is a (2, E) integer tensor with source nodes in row 0 and targets in row 1.
    Duplicate edges give 1, not a count.
    """
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(
            f"invalid edge_index shape {tuple(edge_index.shape)}, expected (2, E); "
            f"stack source and target node indices as two rows")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(
            f"invalid node index in edge_index: values run from {int(edge_index.min())} to "
            f"{int(edge_index.max())}, outside 0..{num_nodes - 1}; pass the graph's node count "
            f"as num_nodes")

    adjacency = torch.zeros(num_nodes, num_nodes)
    adjacency[edge_index[1], edge_index[0]] = 1.0
    return adjacency


def landmark_adjacency() -> torch.Tensor:
    """Return the (68, 68) float adjacency of the landmark graph, A[i, j] = 1 for an edge j -> i."""
    return edges_to_adjacency(landmark_edges(), N_LANDMARKS)


def _self_loop_mask(adjacency: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Return the boolean (N, N) mask of the graph plus a self-loop at every node (A + I)."""
    if adjacency.dim() != 2 or adjacency.shape != (num_nodes, num_nodes):
        raise ValueError(
            f"invalid adjacency shape {tuple(adjacency.shape)}, expected ({num_nodes}, "
            f"{num_nodes}) for the {num_nodes} nodes of x; build it with edges_to_adjacency")
    eye = torch.eye(num_nodes, dtype=torch.bool, device=adjacency.device)
    return (adjacency != 0) | eye


# ---------------------------------------------------------------------------
# Message passing
# ---------------------------------------------------------------------------

class GraphConv(nn.Module):
    r"""Message-passing layer with GraphNAS attention types and aggregators, in batched form.

    Each head :math:`k` projects the node features, :math:`z_j = W^{(k)} x_j`, and node
    :math:`i` aggregates the weighted messages of its in-neighbours and of itself:

    .. math::
        x_i^{\prime(k)} = \bigoplus_{j \in \hat{\mathcal{N}}(i)} \alpha_{ij}^{(k)} z_j,
        \qquad \hat{\mathcal{N}}(i) = \{ j : A_{ij} \ne 0 \} \cup \{ i \}

    with :math:`\bigoplus` one of the aggregators

    * ``sum``:  :math:`\sum_j \alpha_{ij} z_j`, in matrix form :math:`X' = \alpha Z`;
    * ``mean``: :math:`\frac{1}{\hat d_i} \sum_j \alpha_{ij} z_j`, i.e.
      :math:`X' = \hat D^{-1} \alpha Z`, where :math:`\hat d_i = |\hat{\mathcal{N}}(i)|`
      is the in-degree counting the self-loop and :math:`\hat D = \mathrm{diag}(\hat d)`;
    * ``max``:  :math:`\max_j \alpha_{ij} z_j`, elementwise over features, taken over
      :math:`\hat{\mathcal{N}}(i)` only (non-neighbours are masked, not treated as zeros).

    The coefficients :math:`\alpha_{ij}` come from the attention type. With
    :math:`a_t, a_s, g \in \mathbb{R}^H` learned per head (:math:`a_t` meets the target
    :math:`i`, :math:`a_s` the source :math:`j`; GraphNAS calls them :math:`a_l` and
    :math:`a_r`) and :math:`\odot` the elementwise product, the scores are

    * ``const``: :math:`\alpha_{ij} = 1` (no normalisation);
    * ``gcn``: :math:`\alpha_{ij} = 1 / \sqrt{\hat d_i \hat d_j}` (no further normalisation),
      so ``gcn`` with ``sum`` is :math:`X' = \hat D^{-1/2} \hat A \hat D^{-1/2} X W`, the
      GCN propagation rule;
    * ``gat``: :math:`e_{ij} = \mathrm{LeakyReLU}(a_t^\top z_i + a_s^\top z_j)`;
    * ``sym-gat``: :math:`e_{ij} = e^{gat}_{ij} + e^{gat}_{ji}`, the ``gat`` score of both
      directions (:math:`e^{gat}_{ji}` is evaluated by the formula even where the reverse
      edge is absent);
    * ``cos``: :math:`e_{ij} = (a_t \odot z_i)^\top (a_s \odot z_j)`, a cosine-like product
      without length normalisation;
    * ``linear``: :math:`e_{ij} = \tanh(a_s^\top z_j)`, a score of the source only;
    * ``generalized-linear``: :math:`e_{ij} = g^\top \tanh(a_t \odot z_i + a_s \odot z_j)`,
      i.e. :math:`g^\top \tanh(W_t x_i + W_s x_j)` with :math:`W_t = \mathrm{diag}(a_t) W`
      and :math:`W_s = \mathrm{diag}(a_s) W`.

    For the five score types the coefficients are a softmax over the **receiving** node's
    incoming edges, :math:`\alpha_{ij} = \exp(e_{ij}) / \sum_{m \in \hat{\mathcal{N}}(i)}
    \exp(e_{im})`, so the weights into each node sum to 1. Dropout, when set, zeroes
    coefficients after normalisation during training (with ``max``, a dropped coefficient
    gives a zero message that still takes part in the maximum). Heads are concatenated
    (``concat=True``, output ``heads * out_features``) or averaged (output ``out_features``),
    and the bias is added after that.

    NOTE: the GraphNAS reference code (``pyg_gnn_layer.py`` in github.com/GraphNAS/GraphNAS)
    differs in three ways, and depnas follows the formulas above. Its softmax runs over
    ``edge_index[0]``, the sending node. Its ``mean`` and ``max`` aggregators first pass every
    message through a two-layer linear map of width 128. Its ``linear`` score uses
    :math:`(a_l + a_r)^\top z_j`, which is :math:`a_s^\top z_j` with :math:`a_s = a_l + a_r`.

    A node without in-neighbours keeps its self-loop: every attention type gives it
    :math:`\alpha_{ii} = 1` and it outputs its own projection :math:`W x_i` plus the bias.

    Args:
        in_features: size F of each input node feature vector.
        out_features: size H of each head's output.
        heads: number of attention heads (default 1).
        attention: one of ``ATTENTIONS`` (default ``"gat"``).
        aggregator: one of ``AGGREGATORS`` (default ``"sum"``).
        concat: concatenate the heads if True (default), average them if False.
        dropout: dropout probability on the coefficients :math:`\alpha` (default 0).
        negative_slope: LeakyReLU slope of the ``gat`` and ``sym-gat`` scores (default 0.2).
        bias: add a learned bias (default True).

    Shapes:
        input: node features (B, N, F) and an adjacency (N, N) whose entry [i, j] is nonzero
        when an edge j -> i exists (row = target i, column = source j); build it from a
        (2, E) edge index (row 0 source, row 1 target) with :func:`edges_to_adjacency`.
        Self-loops are added by the layer; existing ones are kept, not doubled.

        output: (B, N, heads * H) when ``concat`` else (B, N, H).

    ``generalized-linear`` scores and ``max`` aggregation work on the edge list of the
    self-looped mask, a (B, heads, E', H) tensor, instead of all (B, heads, N, N, H) node pairs.
    """

    def __init__(self, in_features: int, out_features: int, heads: int = 1,
                 attention: str = "gat", aggregator: str = "sum", concat: bool = True,
                 dropout: float = 0.0, negative_slope: float = 0.2, bias: bool = True):
        super().__init__()
        _check_choice("attention", attention, ATTENTIONS)
        _check_choice("aggregator", aggregator, AGGREGATORS)
        self.in_features, self.out_features, self.heads = in_features, out_features, heads
        self.attention_type, self.aggregator, self.concat = attention, aggregator, concat
        self.dropout, self.negative_slope = dropout, negative_slope

        self.lin = nn.Linear(in_features, heads * out_features, bias=False)
        shape = (heads, out_features)
        uses_target = attention in ("gat", "sym-gat", "cos", "generalized-linear")
        uses_source = attention not in FIXED_ATTENTIONS
        uses_general = attention == "generalized-linear"
        self.att_target = nn.Parameter(torch.empty(shape)) if uses_target else None
        self.att_source = nn.Parameter(torch.empty(shape)) if uses_source else None
        self.att_general = nn.Parameter(torch.empty(shape)) if uses_general else None
        size = heads * out_features if concat else out_features
        self.bias = nn.Parameter(torch.empty(size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw Glorot-uniform weights and attention vectors; zero the bias."""
        nn.init.xavier_uniform_(self.lin.weight)
        bound = math.sqrt(6.0 / (self.out_features + 1))   # Glorot for an (H, 1) vector
        for vector in (self.att_target, self.att_source, self.att_general):
            if vector is not None:
                nn.init.uniform_(vector, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Return the new node features (B, N, heads * H) or (B, N, H); see the class docstring."""
        z, mask = self._prepare(x, adjacency)                  # (B, heads, N, H), (N, N)
        alpha = self._coefficients(z, mask)                     # (B, heads, N, N) or (N, N)
        if self.training and self.dropout > 0:
            # Expand the shared (N, N) weights of const and gcn so that each graph and head
            # draws its own dropout mask.
            alpha = F.dropout(alpha.expand(z.shape[0], self.heads, -1, -1), self.dropout)
        out = self._aggregate(alpha, z, mask)                   # (B, heads, N, H)

        if self.concat:
            batch, heads, nodes, hidden = out.shape
            out = out.permute(0, 2, 1, 3).reshape(batch, nodes, heads * hidden)
        else:
            out = out.mean(dim=1)                               # (B, N, H)
        return out if self.bias is None else out + self.bias

    def attention(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Return the coefficients alpha (B, heads, N, N) before dropout.

        alpha[b, k, i, j] weighs the edge j -> i in head k of graph b.
        """
        z, mask = self._prepare(x, adjacency)
        alpha = self._coefficients(z, mask)
        return alpha.expand(z.shape[0], self.heads, -1, -1)

    def _prepare(self, x: torch.Tensor, adjacency: torch.Tensor):
        """Check shapes; return the per-head projections (B, heads, N, H) and the self-loop mask."""
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"GraphConv expects node features of shape (B, N, {self.in_features}), "
                f"got {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for one graph")
        batch, nodes, _ = x.shape
        mask = _self_loop_mask(adjacency, nodes)

        z = self.lin(x).view(batch, nodes, self.heads, self.out_features)
        return z.transpose(1, 2), mask                          # (B, heads, N, H)

    def _coefficients(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return alpha, (N, N) for const and gcn, else (B, heads, N, N) normalised per row i."""
        if self.attention_type == "const":
            return mask.to(z.dtype)
        if self.attention_type == "gcn":
            adjacency = mask.to(z.dtype)
            scale = adjacency.sum(dim=1).rsqrt()               # (N,) 1 / sqrt(d_i)
            return scale[:, None] * adjacency * scale[None, :]

        # The additive -inf mask is one precomputed (N, N) bias shared by every graph and head.
        scores = self._scores(z, mask) + _mask_bias(mask, z.dtype)
        return torch.softmax(scores, dim=-1)                    # each row i sums to 1

    def _scores(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the unnormalised scores e (B, heads, N, N), e[..., i, j] for the edge j -> i."""
        nodes = z.shape[2]
        source = z * self.att_source[:, None, :]                # (B, heads, N, H): a_s * z_j
        if self.attention_type == "linear":
            score = torch.tanh(source.sum(dim=-1))              # (B, heads, N)
            return score[:, :, None, :].expand(-1, -1, nodes, -1)

        target = z * self.att_target[:, None, :]                # (B, heads, N, H): a_t * z_i
        if self.attention_type == "cos":
            return target @ source.transpose(-1, -2)
        if self.attention_type == "generalized-linear":
            return self._general_scores(target, source, mask)

        scores = target.sum(dim=-1)[..., :, None] + source.sum(dim=-1)[..., None, :]
        scores = F.leaky_relu(scores, self.negative_slope)     # (B, heads, N, N)
        if self.attention_type == "sym-gat":
            scores = scores + scores.transpose(-1, -2)
        return scores

    def _aggregate(self, alpha: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Combine the weighted messages alpha_ij z_j over each node's neighbours and itself."""
        if self.aggregator == "sum":
            return alpha @ z                                    # (B, heads, N, H)
        if self.aggregator == "mean":
            degree = mask.sum(dim=1).to(z.dtype)                # (N,) in-degree with self-loop
            return (alpha @ z) / degree[:, None]

        # One message alpha_e z_source per edge e of the self-looped graph, grouped by target.
        nodes = mask.shape[0]
        targets, sources = _edge_list(mask)                     # (E',), (E',)
        weights = alpha.flatten(-2).index_select(-1, targets * nodes + sources)
        messages = weights[..., None] * z.index_select(2, sources)   # (B, heads, E', H)

        # Every node has its self-loop, so every segment has at least one message.
        lengths = torch.bincount(targets, minlength=nodes)      # (N,) in-degree with self-loop
        lengths = lengths.expand(*messages.shape[:2], nodes).contiguous()
        return torch.segment_reduce(messages, "max", lengths=lengths, axis=2)  # (B, heads, N, H)

    def _general_scores(self, target: torch.Tensor, source: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
        """Return generalized-linear scores (B, heads, N, N), computed on edges, -inf elsewhere.

        ``target`` and ``source`` are a_t * z and a_s * z, each (B, heads, N, H).
        """
        nodes = mask.shape[0]
        targets, sources = _edge_list(mask)                     # (E',), (E',)
        pair = torch.tanh(target.index_select(2, targets) + source.index_select(2, sources))
        edge_scores = torch.einsum("bkeh,kh->bke", pair, self.att_general)  # (B, heads, E')

        scores = edge_scores.new_full((*edge_scores.shape[:2], nodes * nodes), float("-inf"))
        scores = scores.index_copy(-1, targets * nodes + sources, edge_scores)
        return scores.view(*edge_scores.shape[:2], nodes, nodes)


def _edge_list(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (target, source) node indices of the nonzero pairs of an (N, N) mask.

    The pairs come in row-major order, so they are grouped by target and sorted within a target,
    as ``torch.segment_reduce`` needs.

    ``torch.segment_reduce`` is chosen over ``scatter_reduce`` and ``index_reduce`` with "amax":
    on CPU with one thread it took 0.38 s for one forward+backward of the (32, 8, 1010, 64)
    landmark messages against 0.55 s (``index_reduce``) and 0.95 s (``scatter_reduce``). The
    torch documentation marks both scatter ops as possibly nondeterministic on CUDA and does not
    list ``segment_reduce`` among the ops that ``torch.use_deterministic_algorithms`` checks;
    under that setting it runs without error on CPU.

    NOTE: the determinism of ``torch.segment_reduce`` on CUDA, forward and backward, is not
    documented and has not been tested here; the maximum itself does not depend on the order
    of reduction, so only the backward could differ.
    """
    targets, sources = mask.nonzero(as_tuple=True)
    return targets, sources


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return an (N, N) tensor that is 0 on edges and self-loops and -inf elsewhere."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, float("-inf"))


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")


# ---------------------------------------------------------------------------
# Readouts and the stream
# ---------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,      # slope 0.01, the PyTorch default
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "relu6": nn.ReLU6,
    "identity": nn.Identity,
}


class Readout(nn.Module):
    r"""Graph readout: node features (B, N, H) -> one vector per graph (B, out_features).

    * ``mean``, ``max``, ``sum``: reduce over nodes, out_features = H.
    * ``attention``: gated softmax pooling, :math:`r = \sum_n \beta_n h_n` with
      :math:`\beta = \mathrm{softmax}_n(w^\top h_n + b)`, out_features = H.
    * ``region``: the mean of each region's nodes, concatenated in the order of ``regions``
      (the 7 facial regions by default), out_features = len(regions) * H.
    """

    def __init__(self, kind: str, features: int, regions: dict[str, range] | None = None):
        super().__init__()
        _check_choice("readout", kind, READOUTS)
        self.kind = kind
        self.gate = nn.Linear(features, 1) if kind == "attention" else None
        self.out_features = features

        if kind == "region":
            regions = REGIONS if regions is None else regions
            nodes = max(max(region) for region in regions.values()) + 1
            pooling = torch.zeros(len(regions), nodes)          # (R, N) row r averages region r
            for row, region in enumerate(regions.values()):
                pooling[row, list(region)] = 1.0 / len(region)
            self.register_buffer("pooling", pooling, persistent=False)
            self.out_features = len(regions) * features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return h.mean(dim=1)
        if self.kind == "max":
            return h.amax(dim=1)
        if self.kind == "sum":
            return h.sum(dim=1)
        if self.kind == "attention":
            beta = torch.softmax(self.gate(h), dim=1)           # (B, N, 1)
            return (beta * h).sum(dim=1)

        if h.shape[1] != self.pooling.shape[1]:
            raise ValueError(
                f"region readout expects {self.pooling.shape[1]} nodes, got {h.shape[1]}; "
                f"pass the regions of this graph to Readout")
        return (self.pooling @ h).flatten(1)                    # (B, R, H) -> (B, R * H)


class GNNStream(nn.Module):
    """The landmark stream: GraphConv layers on the landmark graph, then a readout.

    ``arch`` is a GNN-space architecture, for example
    ``{"layers": [{"attention": "gat", "aggregator": "sum", "activation": "elu", "heads": 4,
    "hidden": 16}], "readout": "mean"}``. Layer l applies GraphConv and then its activation.
    Hidden layers concatenate their heads (heads * hidden features per node); the last layer
    averages them (hidden features). ``dropout`` is the attention dropout of every layer.

    forward(x (B, 68, F)) returns (readout (B, out_features), [layer outputs (B, N, H_l)]);
    every layer output is a candidate latent for fusion.
    """

    def __init__(self, arch: dict, in_features: int, dropout: float = 0.0):
        super().__init__()
        # Imported here, not at the top, so that depnas may import this module at its top.
        import depnas
        depnas.validate_arch(depnas.GNN_SPACE, arch)

        self.convs, self.activations = nn.ModuleList(), nn.ModuleList()
        self.layer_features: list[int] = []
        features = in_features
        for index, layer in enumerate(arch["layers"]):
            last = index == len(arch["layers"]) - 1
            self.convs.append(GraphConv(
                features, layer["hidden"], heads=layer["heads"], attention=layer["attention"],
                aggregator=layer["aggregator"], concat=not last, dropout=dropout))
            self.activations.append(ACTIVATIONS[layer["activation"]]())
            features = layer["hidden"] if last else layer["heads"] * layer["hidden"]
            self.layer_features.append(features)

        self.readout = Readout(arch["readout"], features)
        self.out_features = self.readout.out_features
        self.in_features = in_features
        self.register_buffer("adjacency", landmark_adjacency(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.dim() != 3 or x.shape[1:] != (N_LANDMARKS, self.in_features):
            raise ValueError(
                f"GNNStream expects landmark features of shape (B, {N_LANDMARKS}, "
                f"{self.in_features}), got {tuple(x.shape)}")
        outputs = []
        for conv, activation in zip(self.convs, self.activations):
            x = activation(conv(x, self.adjacency))             # (B, N, H_l)
            outputs.append(x)
        return self.readout(x), outputs


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

BENCH_ARCH = {
    "layers": [
        {"attention": "gat", "aggregator": "sum", "activation": "elu", "heads": 4, "hidden": 16},
        {"attention": "gat", "aggregator": "sum", "activation": "elu", "heads": 4, "hidden": 16},
    ],
    "readout": "mean",
}


def time_stream(arch: dict, batch: int = 107, in_features: int = 480, repeats: int = 20,
                device: str = "cpu") -> list[float]:
    """Time forward+backward passes of a GNNStream on random input; return the sorted seconds."""
    torch.manual_seed(0)
    stream = GNNStream(arch, in_features).to(device)
    x = torch.randn(batch, N_LANDMARKS, in_features, device=device)
    seconds = []
    for _ in range(repeats + 2):                                # two warm-up passes
        start = time.perf_counter()
        readout, _ = stream(x)
        readout.sum().backward()
        if device != "cpu":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device for the timing (default cpu)")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes (default 20)")
    parser.add_argument("--batch", type=int, default=107,
                        help="graphs per pass (default 107, the synthetic training split)")
    args = parser.parse_args()

    edges = landmark_edges()
    print(f"landmark graph: {N_LANDMARKS} nodes, {edges.shape[1]} directed edges, "
          f"regions {', '.join(f'{name} {len(r)}' for name, r in REGIONS.items())}")
    seconds = time_stream(BENCH_ARCH, batch=args.batch, repeats=args.repeats, device=args.device)
    print(f"2-layer gat stream, 4 heads x 16 hidden, batch {args.batch} x 68 nodes x 480 features, "
          f"{args.device}, {torch.get_num_threads()} threads: forward+backward "
          f"median {seconds[len(seconds) // 2] * 1000:.1f} ms, "
          f"min {seconds[0] * 1000:.1f} ms over {len(seconds)} passes")


if __name__ == "__main__":
    main()
