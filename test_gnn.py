"""Tests for gnn.py: the landmark graph, the layer against loop-based oracles, invariances, streams.

Run with ``python -m pytest test_gnn.py``.
"""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import depnas
import gnn

SOFTMAX_ATTENTIONS = [a for a in gnn.ATTENTIONS if a not in gnn.FIXED_ATTENTIONS]
LAYER_CASES = list(itertools.product(gnn.ATTENTIONS, gnn.AGGREGATORS))

# A hand-made directed graph (source, target) with different in-degrees: node 1 receives from
# 0, 2 and 3, node 2 already has a self-loop, and node 4 has no neighbours at all.
SMALL_EDGES = torch.tensor([[0, 1, 2, 3, 1, 0, 2],
                            [1, 0, 1, 1, 2, 3, 2]])
SMALL_NODES = 5


def small_adjacency(dtype=torch.float64):
    return gnn.edges_to_adjacency(SMALL_EDGES, SMALL_NODES).to(dtype)


def make_layer(attention, aggregator, heads=2, concat=True, seed=0, in_features=3, hidden=4):
    """Build a float64 layer whose parameters, bias included, are all random and nonzero."""
    torch.manual_seed(seed)
    layer = gnn.GraphConv(in_features, hidden, heads=heads, attention=attention,
                          aggregator=aggregator, concat=concat).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    return layer


# ---------------------------------------------------------------------------
# Landmark graph
# ---------------------------------------------------------------------------

def expected_landmark_adjacency():
    """Build the landmark adjacency with numpy: region blocks plus row and column 27."""
    adjacency = np.zeros((68, 68))
    for region in gnn.REGIONS.values():
        adjacency[region.start:region.stop, region.start:region.stop] = 1.0
    adjacency[27, :] = 1.0
    adjacency[:, 27] = 1.0
    np.fill_diagonal(adjacency, 0.0)
    return adjacency


def test_edges_count():
    edges = gnn.landmark_edges()
    assert edges.shape == (2, 942)
    assert edges.dtype == torch.long


def test_edges_unique_no_self_loops():
    pairs = set(map(tuple, gnn.landmark_edges().T.tolist()))
    assert len(pairs) == 942
    assert all(source != target for source, target in pairs)


def test_edges_symmetric():
    pairs = set(map(tuple, gnn.landmark_edges().T.tolist()))
    assert pairs == {(target, source) for source, target in pairs}


def test_edges_link_every_node_to_nasal_root():
    pairs = set(map(tuple, gnn.landmark_edges().T.tolist()))
    for node in range(68):
        if node != 27:
            assert (node, 27) in pairs
            assert (27, node) in pairs


def test_edges_regions_are_cliques():
    pairs = set(map(tuple, gnn.landmark_edges().T.tolist()))
    for name, region in gnn.REGIONS.items():
        for source, target in itertools.permutations(region, 2):
            assert (source, target) in pairs, f"{name}: {source} -> {target} missing"


def test_edges_none_between_regions_except_root():
    region_of = {node: name for name, region in gnn.REGIONS.items() for node in region}
    for source, target in gnn.landmark_edges().T.tolist():
        if 27 not in (source, target):
            assert region_of[source] == region_of[target]


def test_regions_cover_landmarks_once():
    nodes = sorted(node for region in gnn.REGIONS.values() for node in region)
    assert nodes == list(range(68))


def test_adjacency_matches_edges():
    adjacency = gnn.landmark_adjacency()
    source, target = gnn.landmark_edges()
    assert adjacency.shape == (68, 68)
    assert torch.all(adjacency[target, source] == 1)
    assert adjacency.sum() == 942


def test_adjacency_matches_numpy_construction():
    np.testing.assert_array_equal(gnn.landmark_adjacency().numpy(), expected_landmark_adjacency())


def test_edges_to_adjacency_rows_are_targets():
    adjacency = gnn.edges_to_adjacency(torch.tensor([[0], [2]]), 3)
    assert adjacency[2, 0] == 1
    assert adjacency.sum() == 1


def test_edges_to_adjacency_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"expected \(2, E\)"):
        gnn.edges_to_adjacency(torch.tensor([[0, 1, 2]]), 3)


def test_edges_to_adjacency_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside 0..2"):
        gnn.edges_to_adjacency(torch.tensor([[0], [3]]), 3)


# ---------------------------------------------------------------------------
# Layer against a loop-based oracle
# ---------------------------------------------------------------------------

def oracle_layer(layer, x, edges, nodes):
    """Compute the layer with explicit loops over graphs, heads, nodes and neighbours."""
    neighbours = [{i} | {j for j, t in edges.T.tolist() if t == i} for i in range(nodes)]
    hidden = layer.out_features
    batch_outputs = []
    for b in range(x.shape[0]):
        heads = []
        for k in range(layer.heads):
            weight = layer.lin.weight[k * hidden:(k + 1) * hidden]             # (H, F)
            z = [weight @ x[b, j] for j in range(nodes)]
            heads.append(torch.stack([
                oracle_node(layer, k, i, z, neighbours) for i in range(nodes)]))
        stacked = torch.stack(heads)                                            # (heads, N, H)
        if layer.concat:
            combined = torch.cat(list(stacked), dim=-1)
        else:
            combined = stacked.mean(dim=0)
        batch_outputs.append(combined + layer.bias)
    return torch.stack(batch_outputs)


def oracle_score(layer, k, i, j, z):
    """Return the score e_ij of head k from the attention formulas, one edge at a time."""
    kind = layer.attention_type
    if kind == "linear":
        return torch.tanh(torch.dot(layer.att_source[k], z[j]))
    a_t, a_s = layer.att_target[k], layer.att_source[k]
    if kind == "cos":
        return torch.sum((a_t * z[i]) * (a_s * z[j]))
    if kind == "generalized-linear":
        return torch.dot(layer.att_general[k], torch.tanh(a_t * z[i] + a_s * z[j]))

    def gat(target, source):
        return F.leaky_relu(torch.dot(a_t, z[target]) + torch.dot(a_s, z[source]), 0.2)
    if kind == "sym-gat":
        return gat(i, j) + gat(j, i)
    return gat(i, j)


def oracle_node(layer, k, i, z, neighbours):
    """Return the output of head k at node i: weights over neighbours(i), then aggregation."""
    sources = sorted(neighbours[i])
    kind = layer.attention_type
    if kind == "const":
        alpha = {j: torch.tensor(1.0, dtype=torch.float64) for j in sources}
    elif kind == "gcn":
        alpha = {j: torch.tensor(1.0 / math.sqrt(len(neighbours[i]) * len(neighbours[j])),
                                 dtype=torch.float64) for j in sources}
    else:
        exp = {j: torch.exp(oracle_score(layer, k, i, j, z)) for j in sources}
        total = sum(exp.values())
        alpha = {j: exp[j] / total for j in sources}

    messages = [alpha[j] * z[j] for j in sources]
    if layer.aggregator == "sum":
        return sum(messages)
    if layer.aggregator == "mean":
        return sum(messages) / len(sources)
    return torch.stack(messages).max(dim=0).values


def gradients(output, inputs, weight):
    return torch.autograd.grad((output * weight).sum(), inputs)


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("attention,aggregator", LAYER_CASES)
def test_layer_matches_oracle(attention, aggregator, concat):
    layer = make_layer(attention, aggregator, concat=concat)
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64, requires_grad=True)
    expected = oracle_layer(layer, x, SMALL_EDGES, SMALL_NODES)
    actual = layer(x, small_adjacency())
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)

    weight = torch.randn_like(expected)
    inputs = [x] + list(layer.parameters())
    for got, want in zip(gradients(actual, inputs, weight), gradients(expected, inputs, weight)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("attention,aggregator", LAYER_CASES)
def test_layer_gradcheck(attention, aggregator):
    layer = make_layer(attention, aggregator, heads=2, hidden=2)
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(1, SMALL_NODES, 3, dtype=torch.float64, requires_grad=True)
    adjacency = small_adjacency()

    def call(x, *parameters):
        return torch.func.functional_call(layer, dict(zip(names, parameters)), (x, adjacency))
    parameters = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(call, (x, *parameters))


# ---------------------------------------------------------------------------
# Edge form against the dense (B, heads, N, N, H) formulas
# ---------------------------------------------------------------------------

def random_graph(nodes=12, density=0.3, seed=1):
    """Return a random directed (N, N) float64 adjacency without self-loops."""
    generator = torch.Generator().manual_seed(seed)
    adjacency = (torch.rand(nodes, nodes, generator=generator) < density).double()
    return adjacency.fill_diagonal_(0.0)


def dense_projection(layer, x):
    """Return the per-head projections z (B, heads, N, H) of the layer."""
    batch, nodes, _ = x.shape
    return (x @ layer.lin.weight.T).view(batch, nodes, layer.heads, -1).transpose(1, 2)


@pytest.mark.parametrize("attention", gnn.ATTENTIONS)
def test_max_matches_dense_formula(attention):
    layer = make_layer(attention, "max", heads=3, in_features=5, hidden=6)
    adjacency = random_graph()
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    mask = (adjacency != 0) | torch.eye(12, dtype=torch.bool)
    messages = layer.attention(x, adjacency)[..., None] * dense_projection(layer, x)[:, :, None]
    messages = messages.masked_fill(~mask[:, :, None], float("-inf"))   # (B, heads, N, N, H)
    top_two = messages.topk(2, dim=3).values
    assert bool((top_two[:, :, :, 0] > top_two[:, :, :, 1]).all())      # no ties
    expected = messages.amax(dim=3).permute(0, 2, 1, 3).flatten(2) + layer.bias
    torch.testing.assert_close(layer(x, adjacency), expected, rtol=1e-12, atol=1e-12)


def test_general_scores_match_dense_formula():
    layer = make_layer("generalized-linear", "sum", heads=3, in_features=5, hidden=6)
    adjacency = random_graph()
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    mask = (adjacency != 0) | torch.eye(12, dtype=torch.bool)
    z = dense_projection(layer, x)
    target = z * layer.att_target[:, None, :]
    source = z * layer.att_source[:, None, :]
    pair = torch.tanh(target[:, :, :, None, :] + source[:, :, None, :, :])   # (B, heads, N, N, H)
    scores = torch.einsum("bkijh,kh->bkij", pair, layer.att_general)
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(layer.attention(x, adjacency), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attention", ["gat", "generalized-linear"])
def test_max_deterministic_mode_repeats(attention):
    layer = make_layer(attention, "max")
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(layer(x, small_adjacency()).sum(), x)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("attention", gnn.ATTENTIONS)
def test_layer_parameters_all_used(attention):
    layer = make_layer(attention, "sum")
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64)
    layer(x, small_adjacency()).sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None, name


# ---------------------------------------------------------------------------
# Normalisation, self-loops and isolated nodes
# ---------------------------------------------------------------------------

def self_loop_mask():
    return (small_adjacency() != 0) | torch.eye(SMALL_NODES, dtype=torch.bool)


@pytest.mark.parametrize("attention", SOFTMAX_ATTENTIONS)
def test_attention_rows_sum_to_one(attention):
    layer = make_layer(attention, "sum")
    alpha = layer.attention(torch.randn(2, SMALL_NODES, 3, dtype=torch.float64), small_adjacency())
    assert alpha.shape == (2, 2, SMALL_NODES, SMALL_NODES)
    ones = torch.ones(2, 2, SMALL_NODES, dtype=torch.float64)
    torch.testing.assert_close(alpha.sum(dim=-1), ones)


@pytest.mark.parametrize("attention", gnn.ATTENTIONS)
def test_attention_zero_off_graph(attention):
    layer = make_layer(attention, "sum")
    alpha = layer.attention(torch.randn(2, SMALL_NODES, 3, dtype=torch.float64), small_adjacency())
    assert torch.all(alpha[..., ~self_loop_mask()] == 0)


def test_attention_normalised_over_receiving_node():
    """With zero attention vectors gat weighs every incoming edge of node i by 1 / in-degree(i)."""
    layer = make_layer("gat", "sum")
    with torch.no_grad():
        layer.att_target.zero_()
        layer.att_source.zero_()
    x = torch.randn(1, SMALL_NODES, 3, dtype=torch.float64)
    alpha = layer.attention(x, small_adjacency())[0, 0]

    mask = self_loop_mask().double()
    in_degree = mask.sum(dim=1)                                    # [2, 4, 2, 2, 1]
    torch.testing.assert_close(alpha, mask / in_degree[:, None])
    assert alpha[1, 0] == 0.25                                     # node 1 has 4 incoming edges
    assert alpha[0, 1] == 0.5                                      # node 0 has 2
    assert alpha.sum(dim=0)[0] != 1                  # a sender's weights need not sum to 1


def test_gcn_weights_use_degrees_with_self_loops():
    layer = make_layer("gcn", "sum")
    x = torch.randn(1, SMALL_NODES, 3, dtype=torch.float64)
    alpha = layer.attention(x, small_adjacency())[0, 0]
    mask = self_loop_mask().double()
    degree = mask.sum(dim=1)
    torch.testing.assert_close(alpha, mask / torch.sqrt(degree[:, None] * degree[None, :]))


def test_existing_self_loop_not_doubled():
    layer = make_layer("const", "sum")
    alpha = layer.attention(torch.randn(1, SMALL_NODES, 3, dtype=torch.float64), small_adjacency())
    assert alpha[0, 0, 2, 2] == 1


@pytest.mark.parametrize("attention,aggregator", LAYER_CASES)
def test_isolated_node_keeps_own_projection(attention, aggregator):
    layer = make_layer(attention, aggregator)
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64)
    out = layer(x, small_adjacency())
    projection = x[:, 4] @ layer.lin.weight.T                      # (B, heads * H)
    torch.testing.assert_close(out[:, 4], projection + layer.bias)


def test_layer_rejects_adjacency_size():
    layer = make_layer("gat", "sum")
    with pytest.raises(ValueError, match=r"expected \(4, 4\)"):
        layer(torch.randn(1, 4, 3, dtype=torch.float64), small_adjacency())


def test_layer_rejects_feature_size():
    layer = make_layer("gat", "sum")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        layer(torch.randn(1, SMALL_NODES, 7, dtype=torch.float64), small_adjacency())


def test_layer_rejects_unknown_attention():
    with pytest.raises(ValueError, match="unknown attention 'dot'"):
        gnn.GraphConv(3, 4, attention="dot")


def test_dropout_only_in_training():
    layer = make_layer("gat", "sum")
    layer.dropout = 0.5
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64)
    reference = make_layer("gat", "sum").eval()
    layer.eval()
    torch.testing.assert_close(layer(x, small_adjacency()), reference(x, small_adjacency()))
    layer.train()
    assert not torch.allclose(layer(x, small_adjacency()), reference(x, small_adjacency()))


@pytest.mark.parametrize("attention", ["const", "gat"])
def test_dropout_mask_per_graph(attention):
    layer = make_layer(attention, "sum")
    layer.dropout = 0.5
    x = torch.randn(1, SMALL_NODES, 3, dtype=torch.float64).expand(2, -1, -1)
    out = layer(x, small_adjacency())
    assert not torch.equal(out[0], out[1])


# ---------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("attention,aggregator", LAYER_CASES)
def test_layer_permutation_equivariant(attention, aggregator):
    layer = make_layer(attention, aggregator)
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64)
    adjacency = small_adjacency()
    order = torch.tensor([3, 0, 4, 1, 2])                          # new node n is old node order[n]

    out = layer(x, adjacency)
    permuted = layer(x[:, order], adjacency[order][:, order])
    torch.testing.assert_close(permuted, out[:, order])


@pytest.mark.parametrize("kind", ["mean", "max", "sum", "attention"])
def test_readout_permutation_invariant(kind):
    torch.manual_seed(0)
    readout = gnn.Readout(kind, 6).double()
    h = torch.randn(3, 68, 6, dtype=torch.float64)
    order = torch.randperm(68)
    torch.testing.assert_close(readout(h[:, order]), readout(h))


def test_readout_region_means():
    readout = gnn.Readout("region", 6).double()
    h = torch.randn(3, 68, 6, dtype=torch.float64)
    expected = torch.cat([h[:, list(r)].mean(dim=1) for r in gnn.REGIONS.values()], dim=1)
    assert readout.out_features == 42
    torch.testing.assert_close(readout(h), expected)


def test_readout_region_invariant_within_regions():
    readout = gnn.Readout("region", 6).double()
    h = torch.randn(3, 68, 6, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    order = torch.cat([torch.tensor(list(r))[torch.randperm(len(r), generator=generator)]
                       for r in gnn.REGIONS.values()])
    torch.testing.assert_close(readout(h[:, order]), readout(h))


def test_readout_attention_weights_nodes():
    readout = gnn.Readout("attention", 2).double()
    with torch.no_grad():
        readout.gate.weight.copy_(torch.tensor([[1.0, 0.0]]))
        readout.gate.bias.zero_()
    h = torch.tensor([[[0.0, 1.0], [math.log(3.0), 5.0]]], dtype=torch.float64)   # gates 0, log 3
    expected = 0.25 * h[0, 0] + 0.75 * h[0, 1]
    torch.testing.assert_close(readout(h)[0], expected)


def test_readout_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown readout 'median'"):
        gnn.Readout("median", 4)


# ---------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("heads,hidden", [(1, 8), (2, 4), (8, 3)])
def test_heads_concat_shape(heads, hidden):
    layer = gnn.GraphConv(5, hidden, heads=heads, concat=True)
    assert layer(torch.randn(2, 4, 5), torch.ones(4, 4)).shape == (2, 4, heads * hidden)


@pytest.mark.parametrize("heads,hidden", [(1, 8), (2, 4), (8, 3)])
def test_heads_average_shape(heads, hidden):
    layer = gnn.GraphConv(5, hidden, heads=heads, concat=False)
    assert layer(torch.randn(2, 4, 5), torch.ones(4, 4)).shape == (2, 4, hidden)


@pytest.mark.parametrize("aggregator", gnn.AGGREGATORS)
def test_heads_average_is_mean_of_concat(aggregator):
    torch.manual_seed(0)
    concat = gnn.GraphConv(3, 4, heads=3, aggregator=aggregator, concat=True, bias=False).double()
    average = gnn.GraphConv(3, 4, heads=3, aggregator=aggregator, concat=False, bias=False).double()
    average.load_state_dict(concat.state_dict())
    x = torch.randn(2, SMALL_NODES, 3, dtype=torch.float64)

    heads = concat(x, small_adjacency()).view(2, SMALL_NODES, 3, 4)
    torch.testing.assert_close(average(x, small_adjacency()), heads.mean(dim=2))


def test_stream_layer_features():
    layer = {"attention": "gat", "aggregator": "sum", "activation": "elu"}
    arch = {"layers": [dict(layer, heads=4, hidden=16), dict(layer, heads=2, hidden=8),
                       dict(layer, heads=8, hidden=32)], "readout": "region"}
    stream = gnn.GNNStream(arch, 10)
    readout, outputs = stream(torch.randn(2, 68, 10))
    assert stream.layer_features == [64, 16, 32]
    assert [tuple(o.shape) for o in outputs] == [(2, 68, 64), (2, 68, 16), (2, 68, 32)]
    assert stream.out_features == 7 * 32
    assert readout.shape == (2, 7 * 32)


# ---------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------

def test_stream_random_architectures():
    generator = np.random.default_rng(0)
    x = torch.randn(2, 68, 480)
    for index in range(100):
        arch = depnas.sample_arch(depnas.GNN_SPACE, generator)
        stream = gnn.GNNStream(arch, 480)
        readout, outputs = stream(x)
        name = depnas.format_arch(depnas.GNN_SPACE, arch)

        last = arch["layers"][-1]["hidden"]
        width = 7 * last if arch["readout"] == "region" else last
        assert stream.out_features == width, name
        assert readout.shape == (2, width), name
        assert [o.shape[2] for o in outputs] == stream.layer_features, name
        assert all(o.shape[:2] == (2, 68) for o in outputs), name
        assert torch.isfinite(readout).all(), name
        if index % 10 == 0:
            readout.sum().backward()
            assert all(torch.isfinite(p.grad).all() for p in stream.parameters()), name


def test_stream_spaces_match_depnas():
    assert gnn.ATTENTIONS == depnas.ATTENTIONS
    assert gnn.AGGREGATORS == depnas.AGGREGATORS
    assert gnn.READOUTS == depnas.READOUTS
    assert tuple(gnn.ACTIVATIONS) == depnas.ACTIVATIONS_GNN


def test_stream_rejects_invalid_arch():
    arch = dict(gnn.BENCH_ARCH, readout="median")
    with pytest.raises(depnas.ArchitectureError, match="readout"):
        gnn.GNNStream(arch, 480)


def test_stream_rejects_wrong_node_count():
    stream = gnn.GNNStream(gnn.BENCH_ARCH, 12)
    with pytest.raises(ValueError, match=r"\(B, 68, 12\)"):
        stream(torch.randn(2, 60, 12))


def test_stream_same_seed_same_result():
    x = torch.randn(3, 68, 20)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        stream = gnn.GNNStream(gnn.BENCH_ARCH, 20)
        results.append((stream.state_dict(), stream(x)[0]))
    for name, tensor in results[0][0].items():
        assert torch.equal(tensor, results[1][0][name]), name
    assert torch.equal(results[0][1], results[1][1])


def test_stream_forward_twice_identical():
    torch.manual_seed(0)
    arch = dict(gnn.BENCH_ARCH, readout="attention")
    stream = gnn.GNNStream(arch, 20)
    x = torch.randn(3, 68, 20)
    first, first_layers = stream(x)
    second, second_layers = stream(x)
    assert torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(first_layers, second_layers))


def test_stream_state_has_no_graph():
    stream = gnn.GNNStream(gnn.BENCH_ARCH, 20)
    assert "adjacency" not in stream.state_dict()


def test_command_line_summary():
    command = [sys.executable, "gnn.py", "--repeats", "1", "--batch", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "68 nodes, 942 directed edges" in result.stdout
    assert "over 1 passes" in result.stdout
