"""Tests of the synthetic DAIC-WOZ cohort: round trip through the reader, determinism,
labels and splits, the failure model, the writer, and a learnable but imperfect signal.

Run: ``python -m pytest test_synthetic.py``
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import numpy as np
import pytest

import encode
import synthetic

SMALL = dict(seed=5, n_participants=24, duration=(20.0, 30.0))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small cohort in memory, and the same cohort written and read back."""
    cohort = synthetic.make_cohort(**SMALL)
    root = tmp_path_factory.mktemp("daic")
    synthetic.write_daic(cohort, root)
    cohort.tables = dict(cohort.tables)  # simulate each session once for the tests below
    return cohort, encode.load_cohort(root), root


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def python_format(value: float, decimals: int) -> str:
    """Reference formatting with Python's printf, without a sign on zero."""
    if np.isnan(value):
        return "-1.#IND"
    text = "%.*f" % (decimals, value)
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


# ---------------------------------------------------------------------------
# Round trip through the reader
# ---------------------------------------------------------------------------

def test_round_trip_labels_and_splits(small):
    cohort, read, _ = small
    assert read.labels == cohort.labels
    assert read.splits == cohort.splits
    assert read.skipped == {}


def test_round_trip_sessions(small):
    cohort, read, _ = small
    assert sorted(read.sessions) == sorted(cohort.sessions)
    for pid, in_memory in cohort.sessions.items():
        back = read.sessions[pid]
        assert back.channels == in_memory.channels, pid
        assert back.frames_kept == in_memory.frames_kept, pid
        assert back.frames_dropped == in_memory.frames_dropped, pid
        assert back.drop_reasons == in_memory.drop_reasons, pid
        for attr, values in in_memory.attributes.items():
            assert np.array_equal(back.attributes[attr], values), (pid, attr)


def test_round_trip_raw_tables(small):
    cohort, _, root = small
    for kind in synthetic.FILE_KINDS:
        path = root / "300_P" / f"300_CLNF_{kind}.txt"
        table = encode.read_table(path)
        assert table.columns == cohort.tables["300"][kind].columns
        assert np.array_equal(table.values, cohort.tables["300"][kind].values, equal_nan=True)


def test_written_headers_exact(small):
    _, _, root = small
    first_lines = {kind: (root / "301_P" / f"301_CLNF_{kind}.txt").read_text().split("\n", 1)[0]
                   for kind in synthetic.FILE_KINDS}
    assert first_lines["pose"] == "frame, timestamp, confidence, success, Tx, Ty, Tz, Rx, Ry, Rz"
    assert first_lines["AUs"].endswith("AU26_r, AU04_c, AU12_c, AU15_c, AU23_c, AU28_c, AU45_c")
    assert first_lines["gaze"].endswith("x_h0, y_h0, z_h0, x_h1, y_h1, z_h1")
    assert first_lines["features"].split(", ")[4:6] == ["x0", "x1"]
    assert first_lines["features3D"].split(", ")[-1] == "Z67"


def test_written_split_files(small):
    cohort, _, root = small
    train = (root / "train_split_Depression_AVEC2017.csv").read_text().splitlines()
    assert train[0].startswith("Participant_ID,PHQ8_Binary,PHQ8_Score,Gender,PHQ8_NoInterest")
    for line in train[1:]:
        fields = [int(x) for x in line.split(",")]
        assert sum(fields[4:]) == fields[2], line
        assert fields[1] == int(fields[2] >= 10), line
    test = (root / "test_split_Depression_AVEC2017.csv").read_text().splitlines()
    assert test[0] == "participant_ID,Gender"
    full = (root / "full_test_split.csv").read_text().splitlines()
    assert full[0] == "Participant_ID,PHQ_Binary,PHQ_Score,Gender"
    assert len(full) == len(test) == 1 + sum(s == "test" for s in cohort.splits.values())


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------

def test_same_seed_same_bytes(small, tmp_path):
    _, _, root = small
    synthetic.write_daic(synthetic.make_cohort(**SMALL), tmp_path)
    assert file_hashes(tmp_path) == file_hashes(root)


def test_other_seed_other_bytes(tmp_path):
    options = dict(n_participants=9, duration=(20.0, 25.0))
    synthetic.write_daic(synthetic.make_cohort(seed=1, **options), tmp_path / "a")
    synthetic.write_daic(synthetic.make_cohort(seed=2, **options), tmp_path / "b")
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    session_files = [name for name in a if name.endswith(".txt")]
    assert all(a[name] != b.get(name) for name in session_files)


def test_smaller_cohort_same_people():
    big, small = synthetic.draw_labels(0, 189), synthetic.draw_labels(0, 30)
    assert small["ids"] == big["ids"][:30]
    assert all(small["labels"][pid] == big["labels"][pid] for pid in small["ids"])
    assert all(small["latent"][pid] == big["latent"][pid] for pid in small["ids"])


# ---------------------------------------------------------------------------
# Labels and splits of the default cohort
# ---------------------------------------------------------------------------

def test_default_ids():
    drawn = synthetic.draw_labels(0)
    expected = [str(i) for i in range(300, 493) if i not in (342, 394, 398, 460)]
    assert drawn["ids"] == expected
    assert len(expected) == 189


def test_default_split_sizes():
    splits = synthetic.draw_labels(0)["splits"]
    counts = {name: sum(s == name for s in splits.values()) for name in ("train", "dev", "test")}
    assert counts == {"train": 107, "dev": 35, "test": 47}


def test_default_share_depressed():
    labels = np.array(list(synthetic.draw_labels(0)["labels"].values()))
    assert 0.22 <= np.mean(labels >= 10) <= 0.38
    assert labels.min() >= 0
    assert labels.max() <= 24


def test_prior_share_depressed():
    prior = synthetic.score_prior()
    assert prior.sum() == pytest.approx(1.0)
    assert prior[10:].sum() == pytest.approx(0.30, abs=0.01)


def test_splits_stratified():
    drawn = synthetic.draw_labels(0)
    scores = {name: np.array([drawn["labels"][p] for p in drawn["ids"] if drawn["splits"][p] == name])
              for name in ("train", "dev", "test")}
    for name, values in scores.items():
        assert abs(values.mean() - scores["train"].mean()) < 1.0, name
        assert np.mean(values >= 10) > 0.15, name


def test_items_sum_to_total():
    drawn = synthetic.draw_labels(3, 60)
    for pid in drawn["ids"]:
        items = drawn["items"][pid]
        assert len(items) == 8
        assert all(0 <= i <= 3 for i in items), pid
        assert sum(items) == drawn["labels"][pid], pid


@pytest.mark.parametrize("n", [9, 24, 50, 300])
def test_split_sizes_small_cohorts(n):
    sizes = synthetic.split_sizes(n)
    assert sum(sizes.values()) == n
    assert min(sizes.values()) >= synthetic.MIN_PER_SPLIT


def test_too_few_participants_rejected():
    with pytest.raises(ValueError, match="n_participants=5"):
        synthetic.make_cohort(n_participants=5)


def test_invalid_duration_rejected():
    with pytest.raises(ValueError, match="duration"):
        synthetic.make_cohort(n_participants=9, duration=(30.0, 10.0))


# ---------------------------------------------------------------------------
# Failure model and geometry
# ---------------------------------------------------------------------------

def test_failed_frames_hold_junk(small):
    cohort, _, _ = small
    for pid, tables in cohort.tables.items():
        failed = tables["pose"].values[:, 3] == 0
        assert failed.any(), pid
        landmarks = tables["features"].values[failed, 4:]
        assert np.all(np.isnan(landmarks) | (landmarks != 0)), pid


def test_failed_share(small):
    cohort, _, _ = small
    success = np.concatenate([t["AUs"].values[:, 3] for t in cohort.tables.values()])
    assert 0.02 <= np.mean(success == 0) <= 0.08


def test_low_confidence_frames_present(small):
    cohort, _, _ = small
    low = [np.sum((t["AUs"].values[:, 3] == 1) & (t["AUs"].values[:, 2] < 0.8))
           for t in cohort.tables.values()]
    # Low-confidence stretches cover about 2 % of frames, so short sessions often have none.
    assert sum(n > 0 for n in low) >= 3


def test_reader_drops_failed_and_low_confidence(small):
    cohort, _, _ = small
    for pid, tables in cohort.tables.items():
        meta = tables["AUs"].values[:, :4]
        failed = meta[:, 3] == 0
        low = ~failed & (meta[:, 2] < 0.8)
        session = cohort.sessions[pid]
        assert session.drop_reasons["failed"] == failed.sum(), pid
        assert session.drop_reasons["low_confidence"] == low.sum(), pid
        assert session.frames_kept == len(meta) - failed.sum() - low.sum(), pid


def test_nan_only_in_failed_frames():
    cohort = synthetic.make_cohort(seed=0, n_participants=40, duration=(10.0, 12.0))
    with_nan = 0
    for pid, tables in dict(cohort.tables).items():
        for table in tables.values():
            rows = np.isnan(table.values).any(axis=1)
            assert np.all(table.values[rows, 3] == 0), (pid, table.path)
            with_nan += rows.any()
    assert with_nan > 0


def test_landmarks_project_3d(small):
    cohort, _, _ = small
    tables = cohort.tables["302"]
    ok = tables["features"].values[:, 3] == 1
    xyz = tables["features3D"].values[ok, 4:].reshape(-1, 3, 68)
    xy = tables["features"].values[ok, 4:].reshape(-1, 2, 68)
    projected = synthetic.project(xyz)
    assert np.abs(projected - xy).max() < 0.01


def test_gaze_unit_vectors(small):
    cohort, _, _ = small
    gaze = cohort.tables["303"]["gaze"].values
    vectors = gaze[gaze[:, 3] == 1, 4:].reshape(-1, 4, 3)
    assert np.abs(np.linalg.norm(vectors, axis=2) - 1.0).max() < 1e-5


def test_session_channels(small):
    cohort, _, _ = small
    shapes = {attr: x.shape[1] for attr, x in cohort.sessions["300"].attributes.items()}
    assert shapes == {"au": 14, "gaze": 12, "pose": 6, "landmarks": 136}


# ---------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------

def test_format_rows_matches_printf():
    rng = np.random.default_rng(7)
    values = rng.normal(0.0, 10.0, (500, 8)) * 10.0 ** rng.integers(-3, 6, (1, 8))
    values[rng.random(values.shape) < 0.02] = np.nan
    decimals = np.array([0, 1, 2, 3, 4, 5, 6, 3])
    for c, d in enumerate(decimals):
        values[:, c] = np.round(values[:, c], d)
    expected = "".join(", ".join(python_format(v, int(d)) for v, d in zip(row, decimals)) + "\n"
                       for row in values)
    assert synthetic.format_rows(values, decimals).decode() == expected


def test_format_rows_reads_back():
    values = np.array([[1.0, -0.5, np.nan, 123456.789], [2.0, 0.0, 3.25, -0.001]])
    decimals = np.array([0, 2, 2, 3])
    text = b"a, b, c, d\n" + synthetic.format_rows(values, decimals)
    table = encode.read_table(text, "rows.txt")
    assert np.array_equal(table.values, values, equal_nan=True)


# ---------------------------------------------------------------------------
# Planted signal and oracle
# ---------------------------------------------------------------------------

def test_latent_directions():
    drawn = synthetic.draw_labels(0)
    scores = np.array([drawn["labels"][p] for p in drawn["ids"]])
    for b in synthetic.BEHAVIOURS:
        values = np.array([drawn["latent"][p][b.name] for p in drawn["ids"]])
        assert np.sign(np.corrcoef(values, scores)[0, 1]) == np.sign(b.loading), b.name


def test_oracle_beats_linear_fit():
    n = 3000
    people = [synthetic.draw_participant(11, i) for i in range(n)]
    ids = [str(i) for i in range(n)]
    cohort = types.SimpleNamespace(labels={p: float(x["score"]) for p, x in zip(ids, people)},
                                   splits=dict.fromkeys(ids, "dev"),
                                   latent={p: x["latent"] for p, x in zip(ids, people)})
    effects = np.array([synthetic.behaviour_effects(x["latent"]) for x in people])
    design = np.column_stack([np.ones(n), effects])
    scores = np.array([x["score"] for x in people], dtype=float)
    fitted = design @ np.linalg.lstsq(design, scores, rcond=None)[0]
    linear = np.sqrt(np.mean((fitted - scores) ** 2))
    oracle = synthetic.oracle_rmse(cohort, "dev")
    assert oracle < linear
    assert oracle > 1.5


def ridge_dev_rmse(features: np.ndarray, labels: np.ndarray, train: np.ndarray,
                   dev: np.ndarray) -> float:
    """Dual-form ridge on train-standardised features, penalty chosen by 5-fold CV."""
    mean, sd = features[train].mean(0), features[train].std(0)
    z = (features - mean) / np.where(sd > 0, sd, 1.0) / np.sqrt(features.shape[1])

    def predict(fit, at, penalty):
        kernel = z[fit] @ z[fit].T
        offset = labels[fit].mean()
        alpha = np.linalg.solve(kernel + penalty * np.eye(len(fit)), labels[fit] - offset)
        return z[at] @ z[fit].T @ alpha + offset

    rows = np.flatnonzero(train)
    folds = np.array_split(np.random.default_rng(0).permutation(rows), 5)
    penalties = np.logspace(-2, 4, 13)
    cv = [np.mean(np.concatenate([(predict(np.setdiff1d(rows, f), f, p) - labels[f]) ** 2
                                  for f in folds])) for p in penalties]
    best = penalties[int(np.argmin(cv))]
    at = np.flatnonzero(dev)
    return float(np.sqrt(np.mean((predict(rows, at, best) - labels[at]) ** 2)))


def test_ridge_learns_default_cohort():
    encoded = encode.load_encoded()
    drawn = synthetic.draw_labels(0)
    assert encoded.participants == drawn["ids"]
    splits = np.array(encoded.splits)
    train, dev = splits == "train", splits == "dev"
    labels = encoded.labels
    features = np.concatenate([f.reshape(len(labels), -1) for f in encoded.features.values()], axis=1)

    mean_rmse = np.sqrt(np.mean((labels[dev] - labels[train].mean()) ** 2))
    ridge = ridge_dev_rmse(features, labels, train, dev)
    oracle = synthetic.oracle_rmse(types.SimpleNamespace(**drawn), "dev")
    assert ridge < 0.9 * mean_rmse
    assert oracle < ridge
