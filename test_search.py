"""Tests of search.py: controllers, the motion-average tracker, PPO, stages and the command line.

The controller and PPO tests use a fake evaluator that trains nothing. The command-line
tests run real searches on the synthetic cohort in subprocesses, with the hidden ``tiny``
budget and, once, the ``smoke`` budget. Run with ``python -m pytest test_search.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import depnas
import search

ROOT = os.path.dirname(os.path.abspath(__file__))

# Four architectures: one depth choice, two binary decisions per block.
SMALL = depnas.Space(
    name="small", head=(), depth=depnas.Decision("layers", (1,)), block_key="layers",
    per_block=(depnas.Decision("a", (0, 1)), depnas.Decision("b", (0, 1))))

# Variable-length architectures: one or two blocks of two three-way decisions.
MEDIUM = depnas.Space(
    name="medium", head=(), depth=depnas.Decision("layers", (1, 2)), block_key="layers",
    per_block=(depnas.Decision("a", (0, 1, 2)), depnas.Decision("b", (0, 1, 2))))


@pytest.fixture(autouse=True)
def one_thread():
    """Run the controller tests on one torch thread, as the search does; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_sample(a: int, b: int) -> search.Sample:
    return search.Sample((("x", (0, a, b)),))


def make_search(space=SMALL, samples=8, ppo_epochs=4, seed=0, reward="motion"):
    torch.manual_seed(seed)
    policy = search.Policy({"x": space})
    generator = torch.Generator().manual_seed(seed)
    return search.PolicySearch(policy, generator, samples, ppo_epochs, reward)


def probability(policy: search.Policy, sample: search.Sample) -> float:
    with torch.no_grad():
        return float(policy.log_prob([sample])["log_prob"].exp())


def fake_evaluator(errors: dict, default: float = 6.0, failing=()):
    """Return an evaluate(samples, step) that scores samples from a table, failing some."""
    def evaluate(samples, step):
        results = []
        for sample in samples:
            if sample.key() in failing:
                results.append({"ok": False, "val_rmse": None, "reason": "fake failure"})
            else:
                results.append({"ok": True, "val_rmse": errors.get(sample.key(), default)})
        return results
    return evaluate


# ---------------------------------------------------------------------------
# PPO with a fake evaluator
# ---------------------------------------------------------------------------

def test_ppo_prefers_lower_error():
    good, bad = small_sample(0, 0), small_sample(1, 1)
    run = make_search()
    before_good = probability(run.policy, good)
    evaluate = fake_evaluator({good.key(): 5.0, bad.key(): 7.0})
    for _ in range(30):
        run.step(evaluate)
    assert probability(run.policy, good) > probability(run.policy, bad)
    assert probability(run.policy, good) > before_good


def test_failed_child_never_best():
    failing = small_sample(1, 0)
    run = make_search()
    before = probability(run.policy, failing)
    evaluate = fake_evaluator({small_sample(0, 0).key(): 6.5, small_sample(0, 1).key(): 5.5},
                              failing={failing.key()})
    failed_seen = 0
    for _ in range(30):
        records = run.step(evaluate)
        ok = [r for r in records if r["result"]["ok"]]
        for record in records:
            if record["result"]["ok"] or not ok:
                continue
            failed_seen += 1
            assert record["advantage"] < min(r["advantage"] for r in ok)
            assert record["reward_error"] > max(r["reward_error"] for r in ok)
    assert failed_seen > 0
    assert probability(run.policy, failing) <= before


def test_failure_penalty_is_worst_plus_margin():
    run = make_search(samples=4)
    fails = small_sample(1, 1)
    evaluate = fake_evaluator({}, default=6.0, failing={fails.key()})
    records = []
    for _ in range(50):
        records = run.step(evaluate)
        if any(not r["result"]["ok"] for r in records):
            break
    assert any(not r["result"]["ok"] for r in records)
    penalties = {r["reward_error"] for r in records if not r["result"]["ok"]}
    assert penalties == {6.0 + search.CONTROLLER.failure_margin}


def test_scale_advantages_keeps_signs():
    negative = np.array([-3.0, -1.0, -0.5, -0.01])
    assert np.all(search.scale_advantages(negative) < 0)
    mixed = np.array([-2.0, 0.5, 1.5])
    assert np.array_equal(np.sign(search.scale_advantages(mixed)), np.sign(mixed))


def test_scale_advantages_single_unscaled():
    assert search.scale_advantages(np.array([-4.0]))[0] == -4.0


def test_scale_advantages_divides_by_std():
    values = np.array([-3.0, -1.0, 2.0])
    expected = values / (values.std() + search.CONTROLLER.advantage_eps)
    assert np.allclose(search.scale_advantages(values), expected)


def test_ppo_batch_of_one_finite():
    torch.manual_seed(1)
    policy = search.Policy({"au": depnas.stream_space("au")})
    run = search.PolicySearch(policy, torch.Generator().manual_seed(1), samples=1, ppo_epochs=4)
    errors = iter([6.0, 3.0, 9.0, 4.0, 5.0])
    for _ in range(5):
        run.step(lambda samples, step: [{"ok": True, "val_rmse": next(errors)}])
    for name, parameter in policy.named_parameters():
        assert torch.isfinite(parameter).all(), name


def test_constant_reward_keeps_entropy():
    run = make_search(space=MEDIUM, samples=4, ppo_epochs=2)
    evaluate = fake_evaluator({}, default=6.0)
    for _ in range(200):
        run.step(evaluate)
    samples, sampled = run.policy.sample(64, torch.Generator().manual_seed(5))
    maximum = sum(_max_entropy(s) for s in samples)
    ratio = float(sampled["entropy"].sum()) / maximum
    assert ratio > 0.95


def _max_entropy(sample: search.Sample) -> float:
    """Return the entropy of uniform choices along a MEDIUM sample's decisions."""
    tokens = sample.streams[0][1]
    return math.log(2) + (len(tokens) - 1) * math.log(3)


def test_log_prob_matches_sampling():
    streams = ("au", "landmarks")
    torch.manual_seed(0)
    policy = search.Policy({s: depnas.stream_space(s) for s in streams}, depnas.fusion_space(streams))
    samples, sampled = policy.sample(6, torch.Generator().manual_seed(3))
    scored = policy.log_prob(samples)
    assert torch.allclose(scored["log_prob"], sampled["log_prob"], atol=1e-5)
    assert torch.allclose(scored["entropy"], sampled["entropy"], atol=1e-5)


def test_log_prob_batched_equals_single():
    torch.manual_seed(0)
    policy = search.Policy({"landmarks": depnas.stream_space("landmarks")})
    samples, _ = policy.sample(5, torch.Generator().manual_seed(4))
    batched = policy.log_prob(samples)["log_prob"]
    single = torch.cat([policy.log_prob([s])["log_prob"] for s in samples])
    assert torch.allclose(batched, single, atol=1e-5)


def test_clipped_objective_matches_clip_form():
    ratio = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5])
    advantage = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -2.0])
    expected = torch.minimum(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage)
    assert torch.allclose(search.clipped_objective(ratio, advantage, 0.2), expected)


# ---------------------------------------------------------------------------
# Controllers: masks and gradients
# ---------------------------------------------------------------------------

def test_masked_sampling_yields_kept():
    space = depnas.stream_space("au")
    rng = np.random.default_rng(0)
    kept = {depnas.arch_tokens(space, depnas.sample_arch(space, rng)) for _ in range(4)}
    torch.manual_seed(0)
    policy = search.Policy({"au": space})
    policy.restrict("au", kept)
    samples, _ = policy.sample(200, torch.Generator().manual_seed(0))
    assert {s.streams[0][1] for s in samples} <= kept


def test_masked_probabilities_sum_to_one():
    space = depnas.stream_space("landmarks")
    rng = np.random.default_rng(1)
    kept = sorted({depnas.arch_tokens(space, depnas.sample_arch(space, rng)) for _ in range(5)})
    torch.manual_seed(0)
    policy = search.Policy({"landmarks": space})
    policy.restrict("landmarks", kept)
    with torch.no_grad():
        log_prob = policy.log_prob([search.Sample((("landmarks", k),)) for k in kept])["log_prob"]
    assert float(log_prob.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_fusion_gradient_reaches_streams():
    streams = ("au", "gaze", "landmarks")
    torch.manual_seed(0)
    policy = search.Policy({s: depnas.stream_space(s) for s in streams}, depnas.fusion_space(streams))
    samples, _ = policy.sample(4, torch.Generator().manual_seed(0))
    policy.log_prob(samples)["parts"]["fusion"].sum().backward()
    for stream in streams:
        gradient = policy.streams[stream].cell.weight_hh.grad
        assert gradient is not None, stream
        assert float(gradient.abs().sum()) > 0, stream


def test_fusion_hidden_is_stream_sum():
    streams = ("au", "pose", "landmarks")
    policy = search.Policy({s: depnas.stream_space(s) for s in streams}, depnas.fusion_space(streams))
    assert policy.fusion.hidden == 3 * search.CONTROLLER.hidden


def test_fusion_latents_within_depth():
    streams = ("au", "landmarks")
    torch.manual_seed(0)
    policy = search.Policy({s: depnas.stream_space(s) for s in streams}, depnas.fusion_space(streams))
    samples, _ = policy.sample(50, torch.Generator().manual_seed(2))
    for sample in samples:
        arch = search.model_arch(sample, policy)
        depnas.validate_model_arch(arch)
        for stream in streams:
            assert arch["fusion"]["latents"][stream] <= len(arch["streams"][stream]["layers"])


# ---------------------------------------------------------------------------
# Tracker, state and data helpers
# ---------------------------------------------------------------------------

def test_tracker_mean_of_all_errors():
    tracker = search.MotionAverage()
    received = [5.0, 7.5, 6.25, 4.0]
    for error in received:
        tracker.update((1, 2), error)
    tracker.update((3,), 9.0)
    tracker.fail((1, 2))
    assert tracker.mean((1, 2)) == pytest.approx(np.mean(received))
    assert tracker.counts[(1, 2)] == len(received)


def test_tracker_ranks_failed_last():
    tracker = search.MotionAverage()
    tracker.update((1,), 4.0)
    tracker.fail((1,))
    tracker.update((2,), 6.0)
    assert tracker.ranked() == [(2,), (1,)]


def test_tracker_state_round_trip():
    tracker = search.MotionAverage()
    tracker.update((1, 0), 5.0)
    tracker.update((1, 0), 6.0)
    tracker.fail((2,))
    restored = search.MotionAverage.from_state(tracker.state())
    assert restored.state() == tracker.state()


def test_search_state_resumes_identically(tmp_path):
    evaluate = fake_evaluator({small_sample(0, 1).key(): 5.0}, default=6.0)
    straight = make_search(space=MEDIUM, samples=4)
    for _ in range(6):
        straight.step(evaluate)

    first = make_search(space=MEDIUM, samples=4)
    for _ in range(3):
        first.step(evaluate)
    path = str(tmp_path / "state.pt")
    search.save_checkpoint(path, {"search": first.state(), "sampler": first.generator.get_state()})
    saved = search.load_checkpoint(path)
    resumed = make_search(space=MEDIUM, samples=4, seed=99)
    resumed.load_state(saved["search"])
    resumed.generator.set_state(saved["sampler"])
    for _ in range(3):
        resumed.step(evaluate)
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name


def test_landmark_heatmap_layout():
    k, dims = 3, 2
    nodes = np.arange(2 * 68 * 2 * dims * k, dtype=float).reshape(2, 68, 2 * dims * k)
    heatmap = search.landmark_heatmap(nodes, k)
    for part in range(2):                       # 0 amplitude, 1 phase
        for coordinate in range(dims):          # 0 x, 1 y
            for node in range(68):
                row = part * dims * 68 + coordinate * 68 + node
                columns = slice((part * dims + coordinate) * k, (part * dims + coordinate + 1) * k)
                assert np.array_equal(heatmap[:, row], nodes[:, node, columns])


def test_stratified_validation_covers_range():
    labels = np.repeat(np.arange(20.0), 5)[np.random.default_rng(0).permutation(100)]
    mask = search.stratified_validation(labels, 0.25, seed=3)
    assert mask.sum() == 25
    assert labels[mask].min() <= 1.0
    assert labels[mask].max() >= 18.0
    assert np.array_equal(mask, search.stratified_validation(labels, 0.25, seed=3))


def fake_encoded(with_landmarks: bool, k: int = 4):
    """Return an encoded-cohort stand-in: 40 participants, 24 of them training, one unlabelled."""
    rng = np.random.default_rng(0)
    count = 40
    features = {"au": rng.normal(size=(count, 6, k)), "gaze": rng.normal(size=(count, 4, k))}
    if with_landmarks:
        features["landmarks"] = rng.normal(size=(count, 68, 4 * k))
    labels = rng.integers(0, 25, size=count).astype(float)
    labels[3] = np.nan
    splits = ["train"] * 24 + ["dev"] * 8 + ["test"] * 8
    return types.SimpleNamespace(participants=[str(300 + i) for i in range(count)],
                                 features=features, labels=labels, splits=splits,
                                 params={"k": k})


def test_prepare_data_without_landmarks(caplog):
    with caplog.at_level("INFO", logger="depnas.search"):
        data = search.prepare_data(fake_encoded(False), ("au", "landmarks"), 0, "no-landmark data")
    assert data.streams == ("au",)
    assert "no landmarks features" in caplog.text


def test_prepare_data_search_parts():
    data = search.prepare_data(fake_encoded(True), ("au", "gaze", "landmarks"), 0, "fake")
    assert "303" not in data.participants["train"]
    assert len(data.participants["train"]) == 23
    parts = data.participants["search_train"] + data.participants["search_val"]
    assert sorted(parts) == sorted(data.participants["train"])
    assert len(data.participants["search_val"]) == round(23 * search.VALIDATION_FRACTION)


def test_split_view_builds_heatmap():
    data = search.prepare_data(fake_encoded(True), ("au", "landmarks"), 0, "fake")
    view = search.split_view(data.splits["dev"], {"au": "landmarks_heatmap"}, data.k, rows=[0, 2])
    expected = search.landmark_heatmap(data.splits["dev"].features["landmarks"][[0, 2]], data.k)
    assert np.array_equal(view.features["au"], expected)
    assert np.array_equal(view.labels, data.splits["dev"].labels[[0, 2]])


def test_derive_seed_depends_on_every_label():
    seeds = {search.derive_seed(0, 1, "au", 0, 0), search.derive_seed(0, 1, "au", 0, 1),
             search.derive_seed(0, 1, "au", 1, 0), search.derive_seed(0, 1, "gaze", 0, 0),
             search.derive_seed(1, 1, "au", 0, 0)}
    assert len(seeds) == 5


def test_parse_streams_canonical_order():
    assert search.parse_streams("landmarks,au") == ("au", "landmarks")
    with pytest.raises(search.SearchError, match="nose"):
        search.parse_streams("au,nose")


# ---------------------------------------------------------------------------
# Command line (subprocesses on the synthetic cohort)
# ---------------------------------------------------------------------------

def run_cli(*args, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "DEPNAS_STOP_AFTER_STEPS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, "search.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def history_without_timing(out) -> list[dict]:
    with open(os.path.join(out, "history.csv")) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for field in search.TIMING_FIELDS:
            row.pop(field)
    return rows


def read_text(out, *parts) -> str:
    with open(os.path.join(out, *parts)) as handle:
        return handle.read()


TINY = ("--stage", "all", "--budget", "tiny", "--streams", "au,gaze")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An uninterrupted tiny search with one worker."""
    out = str(tmp_path_factory.mktemp("tiny") / "run")
    completed = run_cli(*TINY, "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_cli_rerun_with_workers_identical(tiny_run, tmp_path):
    """A second run with the same seed, now on two worker processes, repeats the first exactly."""
    out = str(tmp_path / "workers")
    completed = run_cli(*TINY, "--workers", "2", "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert history_without_timing(out) == history_without_timing(tiny_run)
    assert read_text(out, "final", "predictions.csv") == read_text(tiny_run, "final", "predictions.csv")


def test_cli_resume_after_kill(tiny_run, tmp_path):
    out = str(tmp_path / "resumed")
    stopped = run_cli(*TINY, "--out", out, env_extra={"DEPNAS_STOP_AFTER_STEPS": "3"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "final", "report.md"))
    resumed = run_cli(*TINY, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert history_without_timing(out) == history_without_timing(tiny_run)
    assert read_text(out, "final", "predictions.csv") == read_text(tiny_run, "final", "predictions.csv")


def test_cli_resume_other_config(tiny_run):
    completed = run_cli(*TINY, "--out", tiny_run, "--resume", "--seed", "5")
    assert completed.returncode == 2
    assert "seed" in completed.stderr


def test_cli_joint_without_warmup(tmp_path):
    completed = run_cli("--stage", "joint", "--budget", "tiny", "--streams", "au",
                        "--out", str(tmp_path / "nowarmup"))
    assert completed.returncode == 2
    assert "--stage warmup" in completed.stderr


def test_cli_data_without_sessions(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    completed = run_cli("--data", str(empty), "--budget", "tiny", "--out", str(tmp_path / "out"))
    assert completed.returncode == 2
    assert str(empty) in completed.stderr


def test_cli_smoke_outputs(tmp_path):
    out = str(tmp_path / "smoke")
    for stage in ("warmup", "joint"):
        completed = run_cli("--stage", stage, "--budget", "smoke", "--workers", "2", "--out", out)
        assert completed.returncode == 0, completed.stderr[-3000:]
    expected = ["config.json", "log.txt", "history.csv", "checkpoint.pt", "joint/top.json",
                "final/report.md", "final/predictions.csv", "final/model.pt"]
    expected += [f"warmup/{s}.json" for s in ("au", "gaze", "pose", "landmarks", "landmarks_cnn")]
    for name in expected:
        assert os.path.exists(os.path.join(out, name)), name

    state = torch.load(os.path.join(out, "final", "model.pt"), weights_only=True)
    depnas.validate_model_arch(state["arch"])
    stages = {row["stage"] for row in history_without_timing(out)}
    assert stages == {"warmup", "joint"}
    report = read_text(out, "final", "report.md")
    assert "optimistic" in report
    assert "Table III" in report
    config = json.loads(read_text(out, "config.json"))
    assert config["budget"]["name"] == "smoke"


# ---------------------------------------------------------------------------
# Damaged inputs and interrupts
# ---------------------------------------------------------------------------

def test_main_out_is_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    assert search.main(["--budget", "tiny", "--out", str(taken)]) == 2
    assert str(taken) in capsys.readouterr().err


def test_main_out_under_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    assert search.main(["--budget", "tiny", "--out", str(taken / "run")]) == 2
    assert "writable directory" in capsys.readouterr().err


def test_main_interrupt_exit_status(tmp_path, monkeypatch):
    def interrupted(config, argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(search, "run_search", interrupted)
    out = tmp_path / "run"
    assert search.main(["--budget", "tiny", "--out", str(out)]) == 130
    assert "--resume to continue" in (out / "log.txt").read_text()


def _damaged_checkpoints(tmp_path) -> dict:
    """Write an empty, a half-written, a garbage and a foreign checkpoint; return their paths."""
    whole = tmp_path / "whole.pt"
    search.save_checkpoint(str(whole), {"fingerprint": {"seed": 0}, "history": list(range(100))})
    data = whole.read_bytes()
    paths = {}
    for name, content in (("empty", b""), ("half", data[:len(data) // 2]),
                          ("garbage", b"\x00not a checkpoint\xff" * 8)):
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["foreign"] = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], paths["foreign"])
    return paths


@pytest.mark.parametrize("kind", ["empty", "half", "garbage", "foreign"])
def test_load_checkpoint_damaged(tmp_path, kind):
    path = _damaged_checkpoints(tmp_path)[kind]
    with pytest.raises(search.SearchError, match="not a depnas checkpoint"):
        search.load_checkpoint(str(path))


def test_main_resume_damaged_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    assert search.main(["--budget", "tiny", "--out", str(out), "--resume"]) == 2
    assert "delete it" in (out / "log.txt").read_text()


def test_main_resume_checkpoint_without_fingerprint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"history": []}, out / "checkpoint.pt")
    assert search.main(["--budget", "tiny", "--out", str(out), "--resume"]) == 2
    assert "no configuration fingerprint" in (out / "log.txt").read_text()


def test_rerun_warning_names_outputs(tmp_path, caplog):
    (tmp_path / "checkpoint.pt").write_bytes(b"old")
    config = types.SimpleNamespace(resume=False, stage="all")
    run = types.SimpleNamespace(config=config, fingerprint={}, out=str(tmp_path))
    with caplog.at_level("WARNING", logger=search.logger.name):
        search.SearchRun._initial_state(run)
    assert "history.csv" in caplog.text
    assert "--resume" in caplog.text


def _copy_run(source: str, target) -> str:
    shutil.copytree(source, target)
    return str(target)


@pytest.mark.parametrize("name,content", [("au.pt", b"\x80\x02trunc"), ("au.json", b"{\"kept\": [")])
def test_cli_joint_damaged_warmup(tiny_run, tmp_path, name, content):
    out = _copy_run(tiny_run, tmp_path / "damaged")
    with open(os.path.join(out, "warmup", name), "wb") as handle:
        handle.write(content)
    completed = run_cli(*TINY[2:], "--stage", "joint", "--out", out)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert f"warmup/{name}" in completed.stderr
