"""Benchmarks of depnas against reference tools, written to BENCHMARKS.md.

Each row times a depnas operation and a reference in the same run and reports their
ratio, because absolute times drift on shared machines while ratios taken side by side
hold. Every figure is the median of several repetitions, with the minimum and maximum.

| row | measure | reference | target |
| --- | --- | --- | --- |
| 1 | read and clean the five CLNF files of a 20-minute 30 fps session | numpy.loadtxt on the same files without their quirks | <= 1.3x |
| 2 | ``select`` encoding of that session | the reading time of row 1; a full-length FFT | < 10 % |
| 3 | one epoch of a 2-layer GAT stream (4 heads x 16) on 107 graphs | PyTorch Geometric's GATConv | <= 1.0x |
| 4 | child training throughput per stream and fused | float32 matrix-multiply throughput | >= 20 % |
| 5 | one warm-up step with ``--workers 2`` | the same step with ``--workers 1`` | >= 1.6x faster |
| 6 | peak resident memory of the smoke and default searches | - | <= 2 / 4 GB |
| 7 | wall time of the smoke and default searches | - | smoke < 5 min |

Row 3 needs PyTorch Geometric, which depnas never imports; install it only in the
benchmark's own environment (see BENCHMARKS.md). Without it, row 3 is reported as not
measured.

Run ``python bench.py`` for the full set (about ten minutes on two cores; add
``--default-search`` for the default-budget search in rows 6 and 7, a quarter hour more) or
``python bench.py --quick`` for every row at a tiny size, which is part of the test suite and
writes to ``.bench/`` instead of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import depnas
import encode
import gnn
import synthetic

REPOSITORY = Path(__file__).resolve().parent


@dataclass
class Figure:
    """One measured row: the depnas time and its reference, with their ratio and target."""

    row: int
    name: str
    times: list[float]
    reference_name: str
    reference_times: list[float] | None
    target: str
    unit: str = "s"
    value: float | None = None          # the figure compared with the target, when not a time ratio
    met: bool | None = None
    note: str = ""
    extra: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.reference_times or not self.times:
            return None
        return statistics.median(self.times) / statistics.median(self.reference_times)


def repeat(function, repetitions: int) -> list[float]:
    """Return the wall times in seconds of ``repetitions`` calls of ``function``."""
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def spread(times: list[float] | None, unit: str = "s") -> str:
    """Return 'median (min-max) unit' for a list of times."""
    if not times:
        return "-"
    scale, unit = (1e3, "ms") if unit == "s" and statistics.median(times) < 1 else (1.0, unit)
    values = [t * scale for t in times]
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g}) {unit}"


# ---------------------------------------------------------------------------
# Rows 1 and 2: reading and encoding one long session
# ---------------------------------------------------------------------------

def write_long_session(folder: Path, seconds: float) -> Path:
    """Write one synthetic DAIC-WOZ session of ``seconds`` at 30 fps; return its folder."""
    drawn = synthetic.draw_labels(seed=0, n_participants=synthetic.MIN_PER_SPLIT * 3)
    pid = drawn["ids"][0]
    rng = synthetic._generator(0, 0, 0, 1)
    body = synthetic.simulate_session(rng, drawn["latent"][pid], int(seconds * 30), 30.0)
    session = folder / f"{pid}_P"
    session.mkdir(parents=True, exist_ok=True)
    for kind, table in synthetic.session_tables(pid, body).items():
        synthetic.write_table(table, synthetic._decimals(kind), str(session / f"{pid}_CLNF_{kind}.txt"))
    return session


def write_clean_copies(session: Path, folder: Path) -> list[Path]:
    """Write each CLNF file with bare commas and ``nan`` for NaN tokens (numpy.loadtxt's format)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in sorted(session.glob("*_CLNF_*.txt")):
        text = path.read_bytes().replace(b", ", b",").replace(b"-1.#IND", b"nan")
        copy = folder / path.name
        copy.write_bytes(text)
        copies.append(copy)
    return copies


def bench_reading(workdir: Path, quick: bool) -> list[Figure]:
    """Rows 1 and 2: depnas's reader against numpy.loadtxt, and encoding against reading."""
    seconds, repetitions = (60.0, 3) if quick else (1200.0, 5)
    session = write_long_session(workdir / "long", seconds)
    copies = write_clean_copies(session, workdir / "long_clean")

    read = repeat(lambda: encode.load_session(session), repetitions)
    tables_only = repeat(lambda: encode.read_session_tables(session), repetitions)
    reference = repeat(lambda: [np.loadtxt(p, delimiter=",", skiprows=1) for p in copies], repetitions)
    loaded = encode.load_session(session)
    frames = len(loaded.attributes["au"])

    row1 = Figure(1, f"read + clean 5 CLNF files ({seconds / 60:.0f} min, {frames} kept frames)",
                  read, "numpy.loadtxt on the clean files", reference, "<= 1.3x")
    row1.met = row1.ratio <= 1.3
    row1.extra.append(f"parsing alone (encode.read_session_tables): {spread(tables_only)}, "
                      f"{statistics.median(tables_only) / statistics.median(reference):.2f}x loadtxt")

    encoding = repeat(lambda: encode.encode_session(loaded, align="select"), repetitions)
    series = np.concatenate([loaded.attributes[a].T for a in encode.ATTRIBUTES])   # (C, T)
    direct = repeat(lambda: np.fft.rfft(series, axis=1), repetitions)
    row2 = Figure(2, "select encoding of all attributes", encoding,
                  "reading time of row 1", read, "< 10 %")
    row2.value = 100.0 * statistics.median(encoding) / statistics.median(read)
    row2.unit = "% of reading"
    row2.met = row2.value < 10.0
    row2.extra.append(f"a full-length numpy FFT of the same {series.shape[0]} channels: {spread(direct)}")
    return [row1, row2]


# ---------------------------------------------------------------------------
# Row 3: the GNN stream against PyTorch Geometric
# ---------------------------------------------------------------------------

GAT_ARCH = {
    "layers": [
        {"attention": "gat", "aggregator": "sum", "activation": "elu", "heads": 4, "hidden": 16},
        {"attention": "gat", "aggregator": "sum", "activation": "elu", "heads": 4, "hidden": 16},
    ],
    "readout": "mean",
}


def _epoch(model: torch.nn.Module, optimiser, inputs, targets) -> None:
    """Run one full-batch training step: forward, MSE loss, backward, Adam update."""
    optimiser.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(*inputs), targets)
    loss.backward()
    optimiser.step()


class DepnasGAT(torch.nn.Module):
    """The depnas landmark stream with its warm-up head (dropout, linear)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.stream = gnn.GNNStream(GAT_ARCH, in_features)
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(self.stream.out_features, 1))

    def forward(self, x):
        return self.head(self.stream(x)[0]).squeeze(-1)


def pyg_gat(in_features: int) -> torch.nn.Module | None:
    """Build the same network from PyTorch Geometric's GATConv, or return None without it."""
    try:
        from torch_geometric.nn import GATConv, global_mean_pool
    except ImportError:
        return None

    class PygGAT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GATConv(in_features, 16, heads=4, concat=True)
            self.conv2 = GATConv(64, 16, heads=4, concat=False)
            self.head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

        def forward(self, x, edge_index, batch):
            x = torch.nn.functional.elu(self.conv1(x, edge_index))
            x = torch.nn.functional.elu(self.conv2(x, edge_index))
            return self.head(global_mean_pool(x, batch)).squeeze(-1)

    return PygGAT()


def bench_gnn(quick: bool) -> list[Figure]:
    """Row 3: one training epoch of the 2-layer GAT stream, depnas against PyG."""
    graphs, features, repetitions = (16, 480, 3) if quick else (107, 480, 10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(graphs, gnn.N_LANDMARKS, features, generator=generator)     # (B, N, F)
    y = torch.randn(graphs, generator=generator)
    torch.manual_seed(0)
    ours = DepnasGAT(features)
    ours_optimiser = torch.optim.Adam(ours.parameters(), lr=1e-3)
    _epoch(ours, ours_optimiser, (x,), y)   # warm-up run, not timed
    times = repeat(lambda: _epoch(ours, ours_optimiser, (x,), y), repetitions)

    theirs = pyg_gat(features)
    figure = Figure(3, f"GNN epoch, 2 x gat 4x16, {graphs} graphs of 68 nodes", times,
                    "PyTorch Geometric GATConv", None, "<= 1.0x")
    if theirs is None:
        figure.note = "not measured: torch_geometric is not installed in this environment"
        return [figure]

    edges = gnn.landmark_edges()                                                # (2, E)
    offsets = torch.arange(graphs).repeat_interleave(edges.shape[1]) * gnn.N_LANDMARKS
    batched_edges = edges.repeat(1, graphs) + offsets                           # (2, B*E)
    batch = torch.arange(graphs).repeat_interleave(gnn.N_LANDMARKS)
    flat = x.reshape(graphs * gnn.N_LANDMARKS, features)                       # (B*N, F)
    optimiser = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    _epoch(theirs, optimiser, (flat, batched_edges, batch), y)
    figure.reference_times = repeat(lambda: _epoch(theirs, optimiser, (flat, batched_edges, batch), y),
                                    repetitions)
    figure.met = figure.ratio <= 1.0
    return [figure]


# ---------------------------------------------------------------------------
# Row 4: child training throughput against matrix-multiply throughput
# ---------------------------------------------------------------------------

CNN_ARCH = {"layers": [
    {"op": "conv5", "channels": 64, "activation": "relu", "residual": False},
    {"op": "conv3", "channels": 64, "activation": "relu", "residual": True},
]}
FUSED_ARCH = {
    "streams": {"au": CNN_ARCH, "gaze": CNN_ARCH, "pose": CNN_ARCH, "landmarks": GAT_ARCH},
    "fusion": {"latents": {"au": 2, "gaze": 2, "pose": 2, "landmarks": 2}, "size": 64,
               "combine": "concat", "blocks": [{"hidden": 64, "activation": "relu"}]},
}


def matmul_throughput(size: int, repetitions: int) -> tuple[float, list[float]]:
    """Return the median float32 matmul rate in FLOP/s and the times of an n x n product."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.mm(a, b)
    times = repeat(lambda: torch.mm(a, b), repetitions)
    return 2.0 * size ** 3 / statistics.median(times), times


def training_flops(arch: dict, train: depnas.Split, budget: depnas.ChildBudget) -> float:
    """Count the floating-point operations of one training epoch (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    one_epoch = depnas.ChildBudget(**{**budget.__dict__, "epochs": 1})
    counter = FlopCounterMode(display=False)
    with counter:
        depnas.fit_model(arch, train, seed=0, budget=one_epoch)
    return float(counter.get_total_flops())


def bench_training(quick: bool, budget: depnas.ChildBudget, train: depnas.Split) -> list[Figure]:
    """Row 4: achieved FLOP/s of child training against the machine's matmul FLOP/s."""
    repetitions = 2 if quick else 3
    peak, peak_times = matmul_throughput(512 if quick else 2048, 5 if quick else 10)
    models = {stream: {"streams": {stream: GAT_ARCH if stream == "landmarks" else CNN_ARCH}}
              for stream in encode.ATTRIBUTES}
    models["fused"] = FUSED_ARCH

    figures = []
    for name, arch in models.items():
        flops = training_flops(arch, train, budget) * budget.epochs
        times = repeat(lambda: depnas.fit_model(arch, train, seed=0, budget=budget), repetitions)
        figure = Figure(4, f"child training, {name} ({budget.epochs} epochs, {len(train)} participants)",
                        times, "float32 matmul", None, ">= 20 %")
        figure.value = 100.0 * flops / statistics.median(times) / peak
        figure.unit = "% of matmul FLOP/s"
        figure.met = figure.value >= 20.0
        figure.extra.append(f"{flops / statistics.median(times) / 1e9:.2f} GFLOP/s achieved, "
                            f"matmul {peak / 1e9:.1f} GFLOP/s ({spread(peak_times)})")
        figures.append(figure)
    return figures


# ---------------------------------------------------------------------------
# Row 5: parallel children
# ---------------------------------------------------------------------------

def warmup_jobs(stream: str, count: int, budget: depnas.ChildBudget) -> list[dict]:
    """Return the child jobs of one warm-up step: ``count`` random architectures of ``stream``."""
    generator = np.random.default_rng(0)
    space = depnas.stream_space(stream)
    return [{"kind": "child", "arch": {"streams": {stream: depnas.sample_arch(space, generator)}},
             "features": {stream: stream}, "seed": index, "budget": budget}
            for index in range(count)]


def time_step(data, jobs: list[dict], workers: int, repetitions: int) -> list[float]:
    """Return the times of running ``jobs`` through a started pool of ``workers`` processes."""
    import search

    runner = search.ChildRunner(data, "cpu", workers)
    try:
        list(runner.run(jobs[:workers]))         # start-up of the worker processes, not timed
        return repeat(lambda: list(runner.run(jobs)), repetitions)
    finally:
        runner.close()
        torch.set_num_threads(os.cpu_count() or 1)


def bench_workers(quick: bool, budget: depnas.ChildBudget, data) -> list[Figure]:
    """Row 5: one warm-up step of 8 landmark children with two worker processes against one."""
    jobs = warmup_jobs("landmarks", 4 if quick else 8, budget)
    repetitions = 1 if quick else 3
    one = time_step(data, jobs, 1, repetitions)
    two = time_step(data, jobs, 2, repetitions)
    figure = Figure(5, f"warm-up step, {len(jobs)} landmark children, --workers 2", two,
                    "the same step with --workers 1", one, ">= 1.6x faster")
    figure.value = statistics.median(one) / statistics.median(two)
    figure.unit = "x faster"
    figure.met = figure.value >= 1.6
    return [figure]


# ---------------------------------------------------------------------------
# Rows 6 and 7: whole searches, wall time and peak memory
# ---------------------------------------------------------------------------

def tree_rss(pid: int) -> int:
    """Return the summed resident memory in bytes of a process and all its descendants (Linux /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_search(arguments: list[str], out: Path) -> tuple[float, int]:
    """Run ``search.py`` with ``arguments``; return its wall time and peak tree memory (bytes)."""
    command = [sys.executable, str(REPOSITORY / "search.py"), *arguments, "--out", str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}:\n"
                           f"{process.stderr.read()[-2000:]}")
    return seconds, peak


def bench_searches(quick: bool, default_search: bool, workdir: Path) -> list[Figure]:
    """Rows 6 and 7: wall time and peak memory of whole searches, both stages.

    The default search (with ``default_search``) keeps its run directory in
    ``runs/bench-default``.
    """
    if quick:
        plans = [("tiny", ["--budget", "tiny", "--streams", "au"], 2.0, 300.0)]
    else:
        plans = [("smoke", ["--budget", "smoke"], 2.0, 300.0)]
    if default_search:
        plans.append(("default", ["--budget", "default", "--workers", "2"], 4.0, None))
    figures = []
    for name, arguments, memory_limit_gb, time_limit in plans:
        out = REPOSITORY / "runs" / "bench-default" if name == "default" else workdir / f"search-{name}"
        seconds, peak = run_search(["--stage", "all", *arguments], out)
        memory = Figure(6, f"peak resident memory, {name} search ({' '.join(arguments)})", [],
                        "-", None, f"<= {memory_limit_gb:.0f} GB")
        memory.value, memory.unit = peak / 1e9, "GB"
        memory.met = memory.value <= memory_limit_gb
        wall = Figure(7, f"wall time, {name} search, both stages ({' '.join(arguments)})", [seconds],
                      "-", None, "< 5 min" if time_limit else "-")
        wall.met = seconds < time_limit if time_limit else None
        figures += [memory, wall]
    return figures


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def machine_description() -> list[str]:
    """Return lines naming the CPU, core count, memory, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory_text = f"{memory:.0f} GiB"
    except (ValueError, OSError):
        memory_text = "unknown"
    try:
        import torch_geometric
        pyg = torch_geometric.__version__
    except ImportError:
        pyg = "not installed"
    import scipy
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores visible, torch uses {torch.get_num_threads()} threads",
        f"- memory: {memory_text}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, torch_geometric {pyg}",
        f"- operating system: {platform.platform()}",
    ]


def figure_cells(figure: Figure) -> list[str]:
    """Return the table cells of one figure: row, measure, time, reference, result, target, met."""
    if figure.value is not None:
        result = f"{figure.value:.3g} {figure.unit}"
    elif figure.ratio is not None:
        result = f"{figure.ratio:.2f}x"
    else:
        result = spread(figure.times)
    met = {True: "yes", False: "**no**", None: "-"}[figure.met]
    if figure.note:
        met = figure.note
    reference = figure.reference_name
    if figure.reference_times:
        reference += f": {spread(figure.reference_times)}"
    return [str(figure.row), figure.name, spread(figure.times), reference, result, figure.target, met]


def write_report(figures: list[Figure], path: Path, command: str, seconds: float) -> None:
    """Write the benchmark table, the machine and the command to ``path`` (Markdown)."""
    lines = [
        "# depnas benchmarks",
        "",
        f"Written by `{command}` in {seconds / 60:.1f} minutes. Times are medians of the "
        "repetitions with (min-max); each reference ran in the same process, right beside "
        "the measure, so the ratio holds even where absolute times drift.",
        "",
        "## Machine",
        "",
        *machine_description(),
        "",
        "## Figures",
        "",
        "| row | measure | time | reference | result | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for figure in figures:
        lines.append("| " + " | ".join(figure_cells(figure)) + " |")
    details = [f"- row {f.row}, {f.name}: {line}" for f in figures for line in f.extra]
    if details:
        lines += ["", "## Details", "", *details]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def training_data(quick: bool) -> tuple[depnas.Split, "search.SearchData"]:
    """Return the search's training part and the search data of the synthetic cohort (tiny when quick)."""
    import search

    if quick:
        cohort = synthetic.make_cohort(seed=0, n_participants=24,
                                       duration=(20.0, 25.0))
        encoded = encode.encode_cohort(cohort)
    else:
        encoded = encode.load_encoded()
    data = search.prepare_data(encoded, encode.ATTRIBUTES, split_seed=0, description="synthetic")
    return data.splits["train"].select(data.search_rows["search_train"]), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure depnas against reference tools and "
                                                 "write the results as Markdown.")
    parser.add_argument("--quick", action="store_true",
                        help="every row at a tiny size, in well under a minute (default: full sizes)")
    parser.add_argument("--default-search", action="store_true",
                        help="also run the default-budget search for rows 6 and 7, about a "
                             "quarter hour on 2 CPU cores (default: smoke search only)")
    parser.add_argument("--out", default=None,
                        help="Markdown file to write (default: BENCHMARKS.md, or "
                             ".bench/BENCHMARKS-quick.md with --quick)")
    args = parser.parse_args(argv)
    out = Path(args.out or (".bench/BENCHMARKS-quick.md" if args.quick else "BENCHMARKS.md"))
    out.parent.mkdir(parents=True, exist_ok=True)

    import search

    start = time.perf_counter()
    budget = search.BUDGETS["tiny" if args.quick else "default"].child_budget()
    train, data = training_data(args.quick)
    figures = []
    with tempfile.TemporaryDirectory(prefix="depnas-bench-") as workdir:
        figures += bench_reading(Path(workdir), args.quick)
        figures += bench_gnn(args.quick)
        figures += bench_training(args.quick, budget, train)
        figures += bench_workers(args.quick, budget, data)
        figures += bench_searches(args.quick, args.default_search, Path(workdir))
    command = " ".join(["python bench.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(figures, out, command, time.perf_counter() - start)
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
