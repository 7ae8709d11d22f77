"""Synthetic DAIC-WOZ cohort: simulated OpenFace output with a planted depression signal.

The DAIC-WOZ corpus is under an end-user licence, so depnas ships this generator to run
out of the box. ``make_cohort`` simulates, for every participant, the five CLNF files of a
DAIC-WOZ session at 30 frames per second, and cleans them with ``encode.build_session``
exactly as the reader does. ``write_daic`` writes the same tables in the DAIC-WOZ layout
(``NNN_P/NNN_CLNF_{AUs,features,features3D,gaze,pose}.txt`` plus the AVEC 2017 split
files), so reading the written folder gives back the in-memory cohort.

Cohort. The default 189 participants have the DAIC-WOZ ids (300-492 without 342, 394,
398 and 460). Splits of 107 train / 35 dev / 47 test like AVEC 2016 are assigned by
score, so that each split has a similar label spread. PHQ-8 totals come from a mixture of a
low-score gamma and a high-score normal component (mean 6.9, standard deviation 5.9,
30 % of scores at least 10), and eight item scores of 0-3 that sum to the total.

Simulation per session (camera coordinates: X right, Y down, Z away from the camera):

- action units: smiles (AU06 + AU12), brow raises (AU01 + AU02), frowns (AU04), speech
  (AU25, AU26 driven by talk turns and a 3-5 Hz syllable rhythm), and other AUs as
  nuisance events. The detector output adds a per-participant gain, offset and noise;
- blinks: eyelid closure events, visible in the eyelid landmarks and ``AU45_c``;
- head pose: slow drift, smooth sway (its time constant sets the speed), nods (pitch
  oscillations) and yaw turns;
- gaze: fixations and saccades, plus episodes of looking down, for both eyes in camera
  and head coordinates;
- landmarks: a procedural iBUG-68 mean face (mm) with a per-participant identity,
  deformed by the true AU activations and blinks, rotated and translated by the head
  pose, projected with a pinhole camera (focal length 500 px, centre (320, 240));
- tracking: confidence with low-confidence stretches (0.55-0.78) and failed stretches
  (success 0, about 3-6 % of frames, values are the true values plus large errors, as a
  lost tracker writes), jitter that grows as confidence drops, and in about one session
  in ten a few failed frames with ``-1.#IND`` tokens in the gaze and pose files.

Planted signal. Severity ``z = (PHQ-8 - 6.9) / 5.9``. A shared latent
``v = z + e0`` with ``e0 ~ N(0, 0.45^2)`` is the label noise (2.7 PHQ-8 points): the
questionnaire and behaviour disagree by that much, so no predictor reaches RMSE 0. Each
behaviour group g sees ``v_g = v + e_g`` (its own nuisance noise), and each parameter is
``base * (1 + 0.75 * tanh(u / 0.75))`` with ``u = loading * v_g + nuisance * eta`` and
``eta ~ N(0, 1)``: the loading is the relative change of the parameter per standard
deviation of severity, squashed smoothly so that every parameter stays within 25-175 %
of its base.

======================  ===========  =========  =========  ============  ===========  ================
parameter               group        base       loading    nuisance sd   group noise  seen in
======================  ===========  =========  =========  ============  ===========  ================
smile_rate              expression   2.5 /min   -0.70      0.30          0.30         au, landmarks
smile_intensity         expression   2.0 AU12   -0.45      0.20          0.30         au, landmarks
expressivity            expression   1.0        -0.60      0.15          0.30         au, landmarks
brow_rate               expression   4.0 /min   -0.45      0.30          0.30         au, landmarks
frown_rate              expression   1.0 /min   +0.30      0.35          0.30         au, landmarks
blink_rate              blink        16 /min    +0.50      0.30          0.45         landmarks
blink_duration          blink        0.25 s     +0.30      0.15          0.45         landmarks
nod_rate                head         4.0 /min   -0.50      0.30          0.45         pose, landmarks
nod_amplitude           head         0.05 rad   -0.40      0.25          0.45         pose, landmarks
head_speed              head         1.0        -0.35      0.20          0.45         pose, landmarks
head_sway               head         0.03 rad   -0.40      0.25          0.45         pose, landmarks
down_glance_rate        gaze         2.0 /min   +0.60      0.35          0.70         gaze
saccade_rate            gaze         1.5 /s     -0.40      0.20          0.70         gaze
======================  ===========  =========  =========  ============  ===========  ================

Directions: with higher severity people smile less often and less intensely, move their
face less (expressivity scales brow and other AU events), raise their brows less, frown
more, blink more often and more slowly, nod less often and less deeply, move their head
more slowly and less (``head_speed`` divides the sway time constant), look down more
often and make fewer saccades. Rates and speeds show only in the spectrum (the reader
removes medians). Landmarks see three groups, AUs the group with the least group
noise, gaze one weak group (and some head motion, because camera-coordinate gaze turns
with the head), so fusion helps and gaze is the least informative. Nuisance outside the table: face shape,
size and position, camera distance, AU detector gain and offset, speech, tracking noise
and failures.

``oracle_rmse`` is the RMSE of the Bayes posterior mean of the score given all thirteen
latent behaviour parameters, computed in closed form from the noise model above and the
score prior: the unsquashed effects u are Gaussian given the score. It estimates the
floor: in expectation no predictor that sees the sessions does better, and its value on
a finite split fluctuates.

Written precision (decimals per column group; ``frame``, ``success`` and ``AUxx_c`` are
integers): timestamp 3, confidence 5, ``AUxx_r`` 4, 2D landmarks 3 (px), 3D landmarks 3
(mm), gaze 6, pose translation 3 (mm) and rotation 5 (rad).

Shape legend: B batch, S streams, T frames, K frequency columns, C channels, N nodes,
E edges, H hidden, D fused size.

Run: ``python synthetic.py --out data/synthetic_daic --seed 0``
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import signal, stats

import encode

logger = logging.getLogger("depnas.synthetic")

EXCLUDED_IDS = (342, 394, 398, 460)
DAIC_IDS = tuple(i for i in range(300, 493) if i not in EXCLUDED_IDS)
MAX_ID = 999
SPLIT_SIZES = {"train": 107, "dev": 35, "test": 47}
MIN_PER_SPLIT = 3

FOCAL_PX = 500.0
CENTRE_PX = (320.0, 240.0)
REAL_LENGTH_S = (420.0, 1980.0)

# PHQ-8 prior: a mixture of a low-score gamma and a high-score normal component, both
# discretised to 0..24 (the outer tails go to 0 and 24).
PRIOR_LOW_SHAPE, PRIOR_LOW_SCALE = 1.4, 2.8
PRIOR_HIGH_MEAN, PRIOR_HIGH_SD, PRIOR_HIGH_WEIGHT = 14.5, 3.8, 0.28
ITEM_NAMES = ("NoInterest", "Depressed", "Sleep", "Tired", "Appetite", "Failure",
              "Concentrating", "Moving")
ITEM_WEIGHTS = np.array([1.0, 1.0, 1.4, 1.6, 1.0, 1.0, 1.1, 0.6])

# Label noise e0 and per-group nuisance noise e_g, in standard deviations of severity.
LABEL_NOISE_SD = 0.45
# Relative effects are squashed smoothly into +-BOUND of the base value, so that no
# simulated person behaves implausibly.
BOUND = 0.75
GROUP_NOISE_SD = {"expression": 0.30, "blink": 0.45, "head": 0.45, "gaze": 0.70}


@dataclass(frozen=True)
class Behaviour:
    """One latent behaviour parameter: ``base * (1 + BOUND * tanh(u / BOUND))`` with
    ``u = loading * v_group + nuisance * eta``."""

    name: str
    group: str
    base: float
    loading: float
    nuisance: float


BEHAVIOURS = (
    Behaviour("smile_rate", "expression", 2.5, -0.70, 0.30),
    Behaviour("smile_intensity", "expression", 2.0, -0.45, 0.20),
    Behaviour("expressivity", "expression", 1.0, -0.60, 0.15),
    Behaviour("brow_rate", "expression", 4.0, -0.45, 0.30),
    Behaviour("frown_rate", "expression", 1.0, 0.30, 0.35),
    Behaviour("blink_rate", "blink", 16.0, 0.50, 0.30),
    Behaviour("blink_duration", "blink", 0.25, 0.30, 0.15),
    Behaviour("nod_rate", "head", 4.0, -0.50, 0.30),
    Behaviour("nod_amplitude", "head", 0.05, -0.40, 0.25),
    Behaviour("head_speed", "head", 1.0, -0.35, 0.20),
    Behaviour("head_sway", "head", 0.03, -0.40, 0.25),
    Behaviour("down_glance_rate", "gaze", 2.0, 0.60, 0.35),
    Behaviour("saccade_rate", "gaze", 1.5, -0.40, 0.20),
)

META_COLUMNS = ["frame", "timestamp", "confidence", "success"]
AU_R = ["AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU09_r", "AU10_r", "AU12_r",
        "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU25_r", "AU26_r"]
AU_C = ["AU04_c", "AU12_c", "AU15_c", "AU23_c", "AU28_c", "AU45_c"]
GAZE_COLUMNS = ["x_0", "y_0", "z_0", "x_1", "y_1", "z_1",
                "x_h0", "y_h0", "z_h0", "x_h1", "y_h1", "z_h1"]
POSE_COLUMNS = ["Tx", "Ty", "Tz", "Rx", "Ry", "Rz"]
FILE_KINDS = ("AUs", "features", "features3D", "gaze", "pose")


def _columns(kind: str) -> list[str]:
    """Return the exact DAIC-WOZ header names of one CLNF file kind."""
    body = {
        "AUs": AU_R + AU_C,
        "features": [f"x{i}" for i in range(68)] + [f"y{i}" for i in range(68)],
        "features3D": [f"{a}{i}" for a in "XYZ" for i in range(68)],
        "gaze": GAZE_COLUMNS,
        "pose": POSE_COLUMNS,
    }[kind]
    return META_COLUMNS + body


def _decimals(kind: str) -> np.ndarray:
    """Return the written decimals per column of one file kind (0 means an integer).

    NOTE: the CLM-era tracker behind DAIC-WOZ wrote C++ stream defaults (about six
    significant digits); these files use fixed decimals per column group instead.
    """
    body = {
        "AUs": [4] * len(AU_R) + [0] * len(AU_C),
        "features": [3] * 136,
        "features3D": [3] * 204,
        "gaze": [6] * 12,
        "pose": [3, 3, 3, 5, 5, 5],
    }[kind]
    return np.array([0, 3, 5, 0] + body)


@dataclass
class SyntheticCohort(encode.Cohort):
    """A cohort with the raw tables and the latent parameters the generator used.

    ``tables`` maps participant -> CLNF file kind -> raw table (failed and low-confidence
    frames included, values rounded to the written precision); it is a ``SessionTables``
    mapping that regenerates a participant's tables on access. ``latent`` maps
    participant -> severity, group latents and behaviour parameters. ``noise_sd`` is the
    label noise in PHQ-8 points (``LABEL_NOISE_SD`` times the prior standard deviation).
    ``items`` and ``gender`` are what the split files record.
    """

    tables: Mapping[str, dict[str, encode.Table]] = field(default_factory=dict)
    latent: dict[str, dict[str, float]] = field(default_factory=dict)
    noise_sd: float = 0.0
    items: dict[str, list[int]] = field(default_factory=dict)
    gender: dict[str, int] = field(default_factory=dict)
    seed: int = 0


# ---------------------------------------------------------------------------
# Labels, latent parameters and splits
# ---------------------------------------------------------------------------

def score_prior() -> np.ndarray:
    """Return the PHQ-8 prior, probabilities of totals 0..24 (shape (25,))."""
    edges = np.concatenate([[-np.inf], np.arange(0.5, 24.0, 1.0), [np.inf]])
    low = np.diff(stats.gamma.cdf(edges, PRIOR_LOW_SHAPE, scale=PRIOR_LOW_SCALE))
    high = np.diff(stats.norm.cdf(edges, PRIOR_HIGH_MEAN, PRIOR_HIGH_SD))
    return (1.0 - PRIOR_HIGH_WEIGHT) * low + PRIOR_HIGH_WEIGHT * high


def _prior_moments() -> tuple[float, float]:
    """Return the mean and standard deviation of the score prior."""
    prior = score_prior()
    scores = np.arange(25)
    mean = float(prior @ scores)
    return mean, float(np.sqrt(prior @ (scores - mean) ** 2))


PRIOR_MEAN, PRIOR_SD = _prior_moments()


def participant_ids(n_participants: int) -> list[str]:
    """Return the ids: the DAIC-WOZ ones first, then 493, 494, ... up to 999."""
    extra = [i for i in range(493, MAX_ID + 1)]
    pool = list(DAIC_IDS) + extra
    if not MIN_PER_SPLIT * 3 <= n_participants <= len(pool):
        raise ValueError(
            f"n_participants={n_participants} is out of range: use "
            f"{MIN_PER_SPLIT * 3}..{len(pool)} (3-digit ids, at least "
            f"{MIN_PER_SPLIT} per split)")
    return [str(i) for i in pool[:n_participants]]


def _generator(seed: int, *key: int) -> np.random.Generator:
    """Return an independent PCG64 generator for one (seed, key) pair."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _draw_items(rng: np.random.Generator, total: int) -> list[int]:
    """Split a PHQ-8 total into eight item scores of 0-3 that sum to it."""
    items = np.zeros(8, dtype=int)
    for _ in range(total):
        weights = np.where(items < 3, ITEM_WEIGHTS, 0.0)
        items[rng.choice(8, p=weights / weights.sum())] += 1
    return items.tolist()


def draw_latent(rng: np.random.Generator, score: float) -> dict[str, float]:
    """Draw the severity latents and the behaviour parameters of one participant."""
    severity = (score - PRIOR_MEAN) / PRIOR_SD + LABEL_NOISE_SD * rng.standard_normal()
    latent = {"severity": float(severity)}
    for group, sd in GROUP_NOISE_SD.items():
        latent[f"group_{group}"] = float(severity + sd * rng.standard_normal())

    for b in BEHAVIOURS:
        effect = b.loading * latent[f"group_{b.group}"] + b.nuisance * rng.standard_normal()
        latent[b.name] = float(b.base * (1.0 + BOUND * np.tanh(effect / BOUND)))
    return latent


def behaviour_effects(latent: dict[str, float]) -> np.ndarray:
    """Invert the squashing: return the Gaussian effects u of the behaviour parameters."""
    squashed = (np.array([latent[b.name] / b.base for b in BEHAVIOURS]) - 1.0) / BOUND
    return BOUND * np.arctanh(np.clip(squashed, -1.0 + 1e-15, 1.0 - 1e-15))


def draw_participant(seed: int, index: int) -> dict:
    """Draw score, items, gender and latent parameters of participant number ``index``.

    Each participant has its own generator, so the first n participants of a larger
    cohort are the same people.
    """
    rng = _generator(seed, 0, index, 0)
    prior = score_prior()
    score = int(rng.choice(25, p=prior))
    return {
        "score": score,
        "items": _draw_items(rng, score),
        "gender": int(rng.random() < 0.55),
        "latent": draw_latent(rng, score),
    }


def split_sizes(n_participants: int) -> dict[str, int]:
    """Return split sizes in the AVEC 2016 proportions (107/35/47 for 189)."""
    total = sum(SPLIT_SIZES.values())
    dev = max(MIN_PER_SPLIT, round(n_participants * SPLIT_SIZES["dev"] / total))
    test = max(MIN_PER_SPLIT, round(n_participants * SPLIT_SIZES["test"] / total))
    return {"train": n_participants - dev - test, "dev": dev, "test": test}


def assign_splits(seed: int, scores: dict[str, int]) -> dict[str, str]:
    """Assign splits stratified by score: walk the participants in score order and give
    each to the split furthest below its share so far."""
    rng = _generator(seed, 1)
    ids = list(scores)
    tie_break = rng.permutation(len(ids))
    order = sorted(range(len(ids)), key=lambda i: (scores[ids[i]], tie_break[i]))

    sizes = split_sizes(len(ids))
    counts = dict.fromkeys(sizes, 0)
    splits = {}
    for rank, i in enumerate(order, start=1):
        open_splits = [s for s in sizes if counts[s] < sizes[s]]
        chosen = max(open_splits, key=lambda s: sizes[s] * rank / len(ids) - counts[s])
        counts[chosen] += 1
        splits[ids[i]] = chosen
    return splits


def draw_labels(seed: int = 0, n_participants: int = 189) -> dict:
    """Draw ids, labels, items, gender, latent parameters and splits, without sessions."""
    ids = participant_ids(n_participants)
    people = {pid: draw_participant(seed, i) for i, pid in enumerate(ids)}
    scores = {pid: p["score"] for pid, p in people.items()}
    return {
        "ids": ids,
        "labels": {pid: float(s) for pid, s in scores.items()},
        "items": {pid: p["items"] for pid, p in people.items()},
        "gender": {pid: p["gender"] for pid, p in people.items()},
        "latent": {pid: p["latent"] for pid, p in people.items()},
        "splits": assign_splits(seed, scores),
    }


# ---------------------------------------------------------------------------
# Face geometry
# ---------------------------------------------------------------------------

def mean_face() -> np.ndarray:
    """Build a plausible iBUG-68 mean face in mm, origin at the nasal root (shape (68, 3)).

    X points to the image right, Y down, Z away from the camera, so the nose tip has
    negative Z. Index 0 is the jaw point on the image left (the subject's right).
    """
    angle = np.pi * (1.0 - np.arange(17) / 16.0)
    jaw = np.stack([70.0 * np.cos(angle) * (1.0 - 0.12 * np.sin(angle)),
                    5.0 + 110.0 * np.sin(angle),
                    70.0 - 55.0 * np.sin(angle)], axis=1)

    t = np.linspace(0.0, 1.0, 5)
    brow_y = -20.0 - 6.0 * np.sin(np.pi * t)
    right_brow = np.stack([-55.0 + 43.0 * t, brow_y, 5.0 - 8.0 * t], axis=1)
    left_brow = np.stack([12.0 + 43.0 * t, brow_y, -3.0 + 8.0 * t], axis=1)

    bridge = np.stack([np.zeros(4), [0.0, 15.0, 30.0, 45.0], [0.0, -10.0, -20.0, -30.0]], axis=1)
    nostrils = np.stack([[-14.0, -7.0, 0.0, 7.0, 14.0], [52.0, 54.0, 55.0, 54.0, 52.0],
                         [-12.0, -18.0, -20.0, -18.0, -12.0]], axis=1)

    eye_x = np.array([-46.0, -37.0, -27.0, -18.0, -27.0, -37.0])
    eye_y = np.array([5.0, 0.0, 0.0, 5.0, 9.0, 9.0])
    right_eye = np.stack([eye_x, eye_y, np.full(6, 8.0)], axis=1)
    left_eye = np.stack([-eye_x[[3, 2, 1, 0, 5, 4]], eye_y[[3, 2, 1, 0, 5, 4]], np.full(6, 8.0)],
                        axis=1)

    mouth_x = [-25, -15, -6, 0, 6, 15, 25, 15, 7, 0, -7, -15, -20, -7, 0, 7, 20, 7, 0, -7]
    mouth_y = [75, 70, 68, 69, 68, 70, 75, 82, 85, 86, 85, 82, 75, 73, 73, 73, 75, 77, 77, 77]
    mouth_z = [2, -3, -6, -7, -6, -3, 2, -3, -5, -6, -5, -3, 1, -4, -5, -4, 1, -4, -5, -4]
    mouth = np.array([mouth_x, mouth_y, mouth_z], dtype=float).T

    return np.concatenate([jaw, right_brow, left_brow, bridge, nostrils, right_eye,
                           left_eye, mouth])


def _move(points: list[int], dx: float, dy: float, dz: float = 0.0) -> np.ndarray:
    """Return a (68, 3) displacement that moves ``points`` by (dx, dy, dz) mm."""
    basis = np.zeros((68, 3))
    basis[points] = (dx, dy, dz)
    return basis


# Landmark displacement (mm) per unit of true activation, for the AUs and blinks that
# move the face. Mirrored pairs move symmetrically.
DEFORMATIONS = {
    "AU01": _move([20, 21, 22, 23], 0.0, -1.6),
    "AU02": _move([17, 18, 25, 26], 0.0, -1.4),
    "AU04": _move([19, 20, 21], 0.5, 0.9) + _move([22, 23, 24], -0.5, 0.9),
    "AU05": _move([37, 38, 43, 44], 0.0, -0.5),
    "AU06": _move([40, 41, 46, 47], 0.0, -0.5) + _move([1, 2, 14, 15], 0.0, -0.4),
    "AU09": _move([31, 32, 33, 34, 35], 0.0, -0.6),
    "AU10": _move([50, 51, 52, 61, 62, 63], 0.0, -0.8),
    "AU12": _move([48, 60], -1.1, -0.9) + _move([54, 64], 1.1, -0.9)
    + _move([49, 59], -0.5, -0.4) + _move([53, 55], 0.5, -0.4),
    "AU14": _move([48, 54], 0.0, 0.0, 0.8),
    "AU15": _move([48, 60, 54, 64], 0.0, 1.0),
    "AU17": _move([7, 8, 9, 56, 57, 58], 0.0, -0.6),
    "AU20": _move([48, 60], -0.9, 0.2) + _move([54, 64], 0.9, 0.2),
    "AU25": _move([65, 66, 67], 0.0, 0.9) + _move([61, 62, 63], 0.0, -0.3),
    "AU26": _move([55, 56, 57, 58, 59, 65, 66, 67], 0.0, 1.8) + _move([6, 7, 8, 9, 10], 0.0, 1.5),
    "blink": _move([37, 38, 43, 44], 0.0, 8.5),
}


def identity_face(rng: np.random.Generator) -> np.ndarray:
    """Draw one participant's neutral face (68, 3) in mm: scale, shape modes, detail."""
    face = mean_face()
    width = np.where(np.arange(68) < 17, 1.0, 0.4)[:, None] * np.array([1.0, 0.0, 0.0])
    modes = [
        face * width * 0.06,                                   # jaw and face width
        face * np.array([0.0, 0.06, 0.0]),                     # face height
        _move(list(range(36, 42)), -2.0, 0.0) + _move(list(range(42, 48)), 2.0, 0.0),
        _move([48, 49, 59, 60], -2.0, 0.0) + _move([53, 54, 55, 64], 2.0, 0.0),
        _move(list(range(28, 36)), 0.0, 3.0, -3.0),            # nose length
        _move(list(range(17, 27)), 0.0, -3.0),                 # brow height
    ]
    coefficients = rng.standard_normal(len(modes))
    face = face + np.tensordot(coefficients, np.stack(modes), axes=1)
    face = face + 0.5 * rng.standard_normal(face.shape)
    return face * rng.normal(1.0, 0.06)


def rotation_matrices(rx: np.ndarray, ry: np.ndarray, rz: np.ndarray) -> np.ndarray:
    """Return R = Rx @ Ry @ Rz per frame, shape (T, 3, 3), angles in radians."""
    zero, one = np.zeros_like(rx), np.ones_like(rx)
    c, s = np.cos, np.sin
    r_x = np.stack([one, zero, zero, zero, c(rx), -s(rx), zero, s(rx), c(rx)], -1)
    r_y = np.stack([c(ry), zero, s(ry), zero, one, zero, -s(ry), zero, c(ry)], -1)
    r_z = np.stack([c(rz), -s(rz), zero, s(rz), c(rz), zero, zero, zero, one], -1)
    shape = rx.shape + (3, 3)
    return r_x.reshape(shape) @ r_y.reshape(shape) @ r_z.reshape(shape)


# ---------------------------------------------------------------------------
# Signal primitives (all vectorised over frames)
# ---------------------------------------------------------------------------

def ar1(rng: np.random.Generator, n_frames: int, fps: float, time_constant_s: float,
        sd: float) -> np.ndarray:
    """Return a stationary first-order autoregressive series (T,) with the given sd."""
    a = np.exp(-1.0 / (fps * time_constant_s))
    noise = rng.standard_normal(n_frames)
    start = [a * sd * rng.standard_normal()]
    series, _ = signal.lfilter([sd * np.sqrt(1.0 - a * a)], [1.0, -a], noise, zi=start)
    return series


def smooth_ar(rng: np.random.Generator, n_frames: int, fps: float, time_constant_s: float,
              sd: float) -> np.ndarray:
    """Return a smooth stationary series (T,): white noise through two first-order
    low-pass filters in cascade, after a burn-in of five time constants."""
    a = np.exp(-1.0 / (fps * time_constant_s))
    burn = int(5 * fps * time_constant_s)
    noise = rng.standard_normal(n_frames + burn)
    series = signal.lfilter([1.0], [1.0, -2.0 * a, a * a], noise)[burn:]
    return series * sd * np.sqrt((1.0 - a * a) ** 3 / (1.0 + a * a))


def onsets(rng: np.random.Generator, n_frames: int, fps: float, rate_per_min: float) -> np.ndarray:
    """Return sorted onset frames of a Poisson process with the given rate."""
    count = rng.poisson(rate_per_min * n_frames / fps / 60.0)
    return np.sort(rng.integers(0, n_frames, count))


def bump(duration_s: float, fps: float) -> np.ndarray:
    """Return a raised-cosine bump of peak 1 lasting ``duration_s`` (at least 3 frames)."""
    length = max(3, int(round(duration_s * fps)))
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(1, length + 1) / (length + 1))


def event_train(n_frames: int, starts: np.ndarray, amplitudes: np.ndarray,
                kernel: np.ndarray) -> np.ndarray:
    """Sum one kernel per event, scaled by its amplitude, into a series (T,)."""
    impulses = np.zeros(n_frames)
    np.add.at(impulses, starts, amplitudes)
    if not len(starts):
        return impulses
    return signal.fftconvolve(impulses, kernel)[:n_frames]


def events(rng: np.random.Generator, n_frames: int, fps: float, rate_per_min: float,
           amplitude: float, duration_s: float, spread: float = 0.3) -> np.ndarray:
    """Return Poisson events of log-normally spread amplitude as a series (T,)."""
    starts = onsets(rng, n_frames, fps, rate_per_min)
    amplitudes = amplitude * np.exp(spread * rng.standard_normal(len(starts)))
    return event_train(n_frames, starts, amplitudes, bump(duration_s, fps))


def stretches(rng: np.random.Generator, n_frames: int, fps: float, share: float,
              mean_s: float) -> np.ndarray:
    """Return a boolean mask (T,) covering about ``share`` of frames in runs of mean
    length ``mean_s`` seconds."""
    mean_frames = max(1.0, mean_s * fps)
    count = rng.poisson(share * n_frames / mean_frames)
    starts = rng.integers(0, n_frames, count)
    lengths = np.maximum(1, rng.exponential(mean_frames, count).round().astype(int))

    delta = np.zeros(n_frames + 1, dtype=int)
    np.add.at(delta, starts, 1)
    np.add.at(delta, np.minimum(starts + lengths, n_frames), -1)
    return np.cumsum(delta[:-1]) > 0


# ---------------------------------------------------------------------------
# Behaviour: action units, blinks, head pose, gaze
# ---------------------------------------------------------------------------

def simulate_speech(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Return lips-apart and jaw-drop activations (T,) from talk turns and syllables."""
    talking = stretches(rng, n_frames, fps, share=rng.uniform(0.3, 0.6), mean_s=6.0)
    syllable_hz = rng.uniform(3.0, 5.0)
    radius, omega = 0.93, 2.0 * np.pi * syllable_hz / fps
    rhythm = signal.lfilter([1.0], [1.0, -2.0 * radius * np.cos(omega), radius ** 2],
                            rng.standard_normal(n_frames))
    rhythm /= rhythm.std() + 1e-12

    loudness = rng.uniform(0.6, 1.4)
    jaw = talking * np.clip(1.0 + 0.8 * rhythm, 0.0, None) * loudness
    lips = talking * np.clip(1.2 + 0.5 * rhythm, 0.0, None) * loudness
    return lips, jaw


def simulate_actions(rng: np.random.Generator, latent: dict[str, float], n_frames: int,
                     fps: float) -> dict[str, np.ndarray]:
    """Return the true activations (T,) of the 14 intensity AUs and the blink closure."""
    expressive = latent["expressivity"]
    smile = events(rng, n_frames, fps, latent["smile_rate"], latent["smile_intensity"],
                   rng.uniform(1.5, 3.5), spread=0.25)
    brows = events(rng, n_frames, fps, latent["brow_rate"], 1.6 * expressive, rng.uniform(0.6, 1.4))
    lips, jaw = simulate_speech(rng, n_frames, fps)

    true = {
        "AU01": brows + events(rng, n_frames, fps, 1.0, 0.8 * expressive, 1.0),
        "AU02": 0.8 * brows,
        "AU04": events(rng, n_frames, fps, latent["frown_rate"], 1.3 * expressive, 2.0),
        "AU06": 0.7 * smile,
        "AU12": smile,
        "AU25": lips + 0.3 * smile,
        "AU26": jaw,
    }
    for name in ("AU05", "AU09", "AU10", "AU14", "AU15", "AU17", "AU20"):
        true[name] = events(rng, n_frames, fps, rng.uniform(0.5, 1.5), 1.0 * expressive, 1.2)

    blink_kernel = bump(latent["blink_duration"], fps)
    blink_starts = onsets(rng, n_frames, fps, latent["blink_rate"])
    blink = event_train(n_frames, blink_starts, np.ones(len(blink_starts)), blink_kernel)
    true["blink"] = np.minimum(blink, 1.0)
    return {name: np.clip(value, 0.0, 5.0) for name, value in true.items()}


def simulate_head(rng: np.random.Generator, latent: dict[str, float], n_frames: int,
                  fps: float) -> np.ndarray:
    """Return the true head pose (T, 6): Tx, Ty, Tz in mm, Rx, Ry, Rz in radians.

    Positive Rx tips the face down. Sway is a smooth autoregressive process whose time
    constant is 1.2 s divided by ``head_speed``; translation sways by 150-250 mm per
    radian of ``head_sway``. Nods are 1.5-cycle pitch oscillations at 1.6 Hz times the
    square root of ``head_speed``.
    """
    speed, sway = latent["head_speed"], latent["head_sway"]
    time_constant = 1.2 / speed
    position = np.array([rng.normal(0.0, 40.0), rng.normal(20.0, 30.0), rng.normal(650.0, 60.0)])
    angles = np.array([rng.normal(0.05, 0.08), rng.normal(0.0, 0.1), rng.normal(0.0, 0.05)])

    nod_hz = 1.6 * np.sqrt(speed)
    nod_frames = np.arange(int(round(1.5 * fps / nod_hz)))
    nod_kernel = 0.5 - 0.5 * np.cos(2.0 * np.pi * nod_hz * nod_frames / fps)
    nod_starts = onsets(rng, n_frames, fps, latent["nod_rate"])
    nod_sizes = latent["nod_amplitude"] * np.exp(0.3 * rng.standard_normal(len(nod_starts)))
    nods = event_train(n_frames, nod_starts, nod_sizes, nod_kernel)

    turns = events(rng, n_frames, fps, 1.0, 0.08, 2.5) * rng.choice([-1.0, 1.0])
    pose = np.empty((n_frames, 6))
    for axis, scale in enumerate((200.0, 150.0, 250.0)):
        pose[:, axis] = (position[axis] + smooth_ar(rng, n_frames, fps, 15.0, 8.0)
                         + smooth_ar(rng, n_frames, fps, time_constant, scale * sway))
    pose[:, 3] = angles[0] + smooth_ar(rng, n_frames, fps, time_constant, sway) + nods
    pose[:, 4] = angles[1] + smooth_ar(rng, n_frames, fps, time_constant, 1.3 * sway) + turns
    pose[:, 5] = angles[2] + smooth_ar(rng, n_frames, fps, time_constant, 0.5 * sway)
    return pose


def simulate_gaze_angles(rng: np.random.Generator, latent: dict[str, float], n_frames: int,
                         fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Return gaze yaw and pitch (T,) in head coordinates; positive pitch looks down.

    Fixations last an exponential time (mean 1 / saccade_rate), saccades take three
    frames, and look-down episodes of 1-3 s add 0.3 rad of pitch.
    """
    n_fixations = rng.poisson(latent["saccade_rate"] * n_frames / fps) + 1
    starts = np.sort(rng.integers(0, n_frames, n_fixations))
    starts[0] = 0
    fixation = np.searchsorted(starts, np.arange(n_frames), side="right") - 1
    yaw = rng.normal(0.0, 0.12, n_fixations)[fixation]
    pitch = rng.normal(0.05, 0.08, n_fixations)[fixation]

    down = events(rng, n_frames, fps, latent["down_glance_rate"], 0.3, rng.uniform(1.0, 3.0),
                  spread=0.2)
    saccade = np.ones(3) / 3.0
    yaw = np.convolve(yaw, saccade, mode="same") + ar1(rng, n_frames, fps, 0.2, 0.01)
    pitch = np.convolve(pitch, saccade, mode="same") + ar1(rng, n_frames, fps, 0.2, 0.01)
    return yaw, pitch + np.minimum(down, 0.45)


def gaze_vectors(rng: np.random.Generator, yaw: np.ndarray, pitch: np.ndarray,
                 rotation: np.ndarray) -> np.ndarray:
    """Return the 12 gaze columns (T, 12): both eyes in camera, then head coordinates."""
    head = []
    for vergence in (0.02, -0.02):
        y, p = yaw + vergence, pitch
        eye = np.stack([np.sin(y) * np.cos(p), np.sin(p), -np.cos(y) * np.cos(p)], axis=1)
        eye = eye + 0.01 * rng.standard_normal(eye.shape)
        head.append(eye / np.linalg.norm(eye, axis=1, keepdims=True))

    camera = [np.einsum("tij,tj->ti", rotation, eye) for eye in head]
    return np.concatenate(camera + head, axis=1)


# ---------------------------------------------------------------------------
# Measurement: landmarks, tracking quality, failures
# ---------------------------------------------------------------------------

def face_landmarks(identity: np.ndarray, actions: dict[str, np.ndarray], pose: np.ndarray,
                   rotation: np.ndarray) -> np.ndarray:
    """Return the true 3D landmarks (T, 3, 68) in camera coordinates, mm.

    The coordinate-major layout (X row, Y row, Z row) is the DAIC-WOZ column order.
    """
    names = list(DEFORMATIONS)
    activation = np.stack([actions[name] for name in names], axis=1)       # (T, AUs)
    basis = np.stack([DEFORMATIONS[name].T for name in names])             # (AUs, 3, 68)
    face = (activation @ basis.reshape(len(names), -1)).reshape(-1, 3, 68) + identity.T  # (T, 3, 68)

    return rotation @ face + pose[:, :3, None]                              # (T, 3, 68)


def project(points: np.ndarray) -> np.ndarray:
    """Project camera-coordinate points (T, 3, 68) in mm to pixels (T, 2, 68)."""
    image = FOCAL_PX * points[:, :2] / points[:, 2:3]
    image[:, 0] += CENTRE_PX[0]
    image[:, 1] += CENTRE_PX[1]
    return image


def uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Return zero-mean, unit-variance uniform noise (cheaper to draw than Gaussian)."""
    return (rng.random(shape) - 0.5) * np.sqrt(12.0)


def tracking_quality(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Return confidence (T,) and success (T,) with low-confidence and failed stretches."""
    confidence = rng.uniform(0.90, 0.97) + ar1(rng, n_frames, fps, 1.0, 0.015)
    confidence = np.clip(confidence, 0.82, 0.995)

    low = stretches(rng, n_frames, fps, rng.uniform(0.01, 0.03), 1.0)
    confidence[low] = rng.uniform(0.55, 0.78, low.sum())

    failed = stretches(rng, n_frames, fps, rng.uniform(0.03, 0.05), 0.5)
    failed |= rng.random(n_frames) < 0.005
    confidence[failed] = rng.uniform(0.02, 0.45, failed.sum())
    return confidence, (~failed).astype(float)


def measure_actions(rng: np.random.Generator, actions: dict[str, np.ndarray], jitter: np.ndarray,
                    fps: float) -> np.ndarray:
    """Return the AU columns (T, 20) as an AU detector outputs them: 14 ``_r``, 6 ``_c``."""
    n_frames = len(jitter)
    gain = np.exp(0.15 * rng.standard_normal())
    intensity = []
    for name in AU_R:
        au_gain = gain * np.exp(0.1 * rng.standard_normal())
        noise = ar1(rng, n_frames, fps, 0.2, 0.08) * jitter
        measured = au_gain * actions[name[:4]] + rng.uniform(0.0, 0.3) + noise
        intensity.append(np.clip(measured, 0.0, 5.0))
    intensity = np.stack(intensity, axis=1)                                # (T, 14)

    r = {name[:4]: intensity[:, i] for i, name in enumerate(AU_R)}
    presence = [r["AU04"] > 1.0, r["AU12"] > 1.0, r["AU15"] > 1.0,
                events(rng, n_frames, fps, 1.0, 1.0, 0.8) > 0.5,
                events(rng, n_frames, fps, 0.2, 1.0, 0.8) > 0.5,
                actions["blink"] > 0.5]
    return np.concatenate([intensity, np.stack(presence, axis=1).astype(float)], axis=1)


def corrupt_failed(rng: np.random.Generator, body: dict[str, np.ndarray], failed: np.ndarray,
                   fps: float) -> None:
    """Overwrite failed frames in place with what a lost tracker writes: drifting, noisy,
    non-zero values. In about one session in ten, a few rows become ``-1.#IND`` (NaN)."""
    n_frames, n_failed = len(failed), int(failed.sum())
    if n_failed == 0:
        return
    drift = {kind: ar1(rng, n_frames, fps, 0.5, sd)[failed, None]
             for kind, sd in (("features", 15.0), ("features3D", 20.0), ("pose", 25.0))}

    body["features"][failed] += drift["features"] + 3.0 * uniform_noise(rng, (n_failed, 136))
    body["features3D"][failed] += drift["features3D"] + 4.0 * uniform_noise(rng, (n_failed, 204))
    body["pose"][failed, :3] += drift["pose"]
    body["pose"][failed, 3:] += 0.1 * rng.standard_normal((n_failed, 3))
    aus = body["AUs"][failed, :len(AU_R)] + 0.8 * rng.standard_normal((n_failed, len(AU_R)))
    body["AUs"][failed, :len(AU_R)] = np.clip(aus, 0.05, 5.0)
    gaze = body["gaze"][failed].reshape(n_failed, 4, 3) + 0.3 * rng.standard_normal((n_failed, 4, 3))
    body["gaze"][failed] = (gaze / np.linalg.norm(gaze, axis=2, keepdims=True)).reshape(n_failed, 12)

    if rng.random() < 0.1:
        rows = rng.choice(np.flatnonzero(failed), size=min(3, n_failed), replace=False)
        for kind in ("gaze", "pose"):
            body[kind][rows] = np.nan


def simulate_session(rng: np.random.Generator, latent: dict[str, float], n_frames: int,
                     fps: float) -> dict[str, np.ndarray]:
    """Simulate one session; return per CLNF file kind the columns after the four meta
    columns (T, C), and ``"meta"`` (T, 4)."""
    actions = simulate_actions(rng, latent, n_frames, fps)
    pose = simulate_head(rng, latent, n_frames, fps)
    rotation = rotation_matrices(pose[:, 3], pose[:, 4], pose[:, 5])      # (T, 3, 3)
    yaw, pitch = simulate_gaze_angles(rng, latent, n_frames, fps)
    points = face_landmarks(identity_face(rng), actions, pose, rotation)   # (T, 3, 68)

    # Tracking jitter grows as confidence drops; the 2D landmarks are the projection of
    # the jittered 3D fit, as both come from one fitted face model.
    confidence, success = tracking_quality(rng, n_frames, fps)
    jitter = 1.0 + 6.0 * np.clip(0.95 - confidence, 0.0, None)             # (T,)
    points += 0.5 * jitter[:, None, None] * uniform_noise(rng, points.shape)
    image = project(points)                                                # (T, 2, 68)
    pose_noise = np.array([0.8, 0.8, 1.5, 0.004, 0.004, 0.003])
    body = {
        "AUs": measure_actions(rng, actions, jitter, fps),
        "features": image.reshape(n_frames, 136),
        "features3D": points.reshape(n_frames, 204),
        "gaze": gaze_vectors(rng, yaw, pitch, rotation),
        "pose": pose + jitter[:, None] * pose_noise * uniform_noise(rng, (n_frames, 6)),
    }
    corrupt_failed(rng, body, success == 0, fps)

    frame = np.arange(1, n_frames + 1, dtype=float)
    body["meta"] = np.stack([frame, (frame - 1.0) / fps, confidence, success], axis=1)
    return body


def session_tables(participant: str, body: dict[str, np.ndarray]) -> dict[str, encode.Table]:
    """Assemble the five raw CLNF tables, rounded to the written precision."""
    tables = {}
    for kind in FILE_KINDS:
        values = np.concatenate([body["meta"], body[kind]], axis=1)
        decimals = _decimals(kind)
        for d in np.unique(decimals):
            columns = decimals == d
            values[:, columns] = np.round(values[:, columns], int(d))
        path = f"synthetic:{participant}_P/{participant}_CLNF_{kind}.txt"
        tables[kind] = encode.Table(path=path, columns=_columns(kind), values=values)
    return tables


# ---------------------------------------------------------------------------
# The cohort
# ---------------------------------------------------------------------------

class SessionTables(Mapping):
    """Participant -> raw CLNF tables, simulated again from the seed on each access.

    Every participant has its own generator, so a second simulation gives the same values.
    Holding only the most recent participant's tables keeps memory small: the default
    cohort's raw tables take about 2 GB as float64, the real-length cohort's about 20 GB.
    """

    def __init__(self, seed: int, ids: list[str], latent: dict[str, dict[str, float]],
                 seconds: tuple[float, float], fps: float):
        self.seed, self.ids, self.latent, self.seconds, self.fps = seed, ids, latent, seconds, fps
        self._index = {pid: i for i, pid in enumerate(ids)}
        self._last: tuple[str, dict[str, encode.Table]] | None = None

    def __getitem__(self, participant: str) -> dict[str, encode.Table]:
        if self._last is not None and self._last[0] == participant:
            return self._last[1]
        if participant not in self._index:
            raise KeyError(participant)
        rng = _generator(self.seed, 0, self._index[participant], 1)
        n_frames = int(round(rng.uniform(*self.seconds) * self.fps))
        body = simulate_session(rng, self.latent[participant], n_frames, self.fps)
        self._last = (participant, session_tables(participant, body))
        return self._last[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def make_cohort(seed: int = 0, n_participants: int = 189, duration: tuple[float, float] = (60.0, 180.0),
                real_length: bool = False, fps: float = 30.0) -> SyntheticCohort:
    """Simulate a cohort in memory; sessions are cleaned with ``encode.build_session``.

    ``duration`` is the range of session lengths in seconds, drawn uniformly;
    ``real_length`` replaces it with the DAIC-WOZ range of 7-33 minutes.

    NOTE: the cleaned sessions stay in memory as float64: about 0.8 GB for the default
    cohort and an estimated 9 GB with ``real_length``. Raw tables are simulated again on
    access (see ``SessionTables``).
    """
    seconds = REAL_LENGTH_S if real_length else tuple(duration)
    if not 0.0 < seconds[0] <= seconds[1]:
        raise ValueError(f"duration={duration!r} is invalid: give (min_s, max_s) with 0 < min_s <= max_s")
    drawn = draw_labels(seed, n_participants)
    tables = SessionTables(seed, drawn["ids"], drawn["latent"], seconds, fps)

    source = f"synthetic cohort, seed {seed}"
    start = time.perf_counter()
    sessions = {pid: encode.build_session(pid, tables[pid], source) for pid in drawn["ids"]}
    logger.info("simulated %d sessions (%d frames kept) in %.1f s", len(sessions),
                sum(s.frames_kept for s in sessions.values()), time.perf_counter() - start)
    return SyntheticCohort(
        sessions=sessions, labels=drawn["labels"], splits=drawn["splits"], root=None,
        tables=tables, latent=drawn["latent"], noise_sd=LABEL_NOISE_SD * PRIOR_SD,
        items=drawn["items"], gender=drawn["gender"], seed=seed)


def oracle_rmse(cohort: SyntheticCohort, split: str = "dev") -> float:
    """Return the RMSE on ``split`` of the Bayes posterior mean of the score given the
    latent behaviour parameters (closed form under the generator's noise model).

    Given the score s, the unsquashed effects u_j of the parameters are Gaussian with
    mean loading_j * z(s) and covariance
    LABEL_NOISE_SD^2 L L' + sum_g GROUP_NOISE_SD[g]^2 L_g L_g' + diag(nuisance^2).
    """
    ids = [pid for pid, s in cohort.splits.items() if s == split and cohort.labels[pid] is not None]
    if not ids:
        raise ValueError(f"split {split!r} has no labelled participants: use one of "
                         f"{sorted(set(cohort.splits.values()))}")
    loading = np.array([b.loading for b in BEHAVIOURS])
    covariance = LABEL_NOISE_SD ** 2 * np.outer(loading, loading)
    for group, sd in GROUP_NOISE_SD.items():
        in_group = np.array([b.group == group for b in BEHAVIOURS]) * loading
        covariance += sd ** 2 * np.outer(in_group, in_group)
    covariance += np.diag([b.nuisance ** 2 for b in BEHAVIOURS])
    precision = np.linalg.inv(covariance)

    scores = np.arange(25.0)
    means = np.outer((scores - PRIOR_MEAN) / PRIOR_SD, loading)           # (25, params)
    theta = np.array([behaviour_effects(cohort.latent[pid]) for pid in ids])  # (P, params)
    residual = theta[:, None, :] - means[None]                            # (P, 25, params)
    log_post = np.log(score_prior()) - 0.5 * np.einsum("psi,ij,psj->ps", residual, precision, residual)
    posterior = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    predicted = posterior @ scores / posterior.sum(axis=1)
    truth = np.array([cohort.labels[pid] for pid in ids])
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


# ---------------------------------------------------------------------------
# Writing the DAIC-WOZ layout
# ---------------------------------------------------------------------------

NAN_TOKEN = b"-1.#IND"


def format_rows(values: np.ndarray, decimals: np.ndarray) -> bytes:
    """Format a table (rows, C) as ``", "``-separated fixed-point text, one line per row.

    Column c gets ``decimals[c]`` digits after the point (0 writes an integer); NaN is
    written as ``-1.#IND``. Each number is laid out right-aligned in a fixed-width byte
    cell, one digit position at a time over whole column groups. Unused bytes stay zero
    and are squeezed out at the end. This is several times faster than formatting every
    number in Python. Values must fit in 18 digits.
    """
    rows, columns = values.shape
    nan = np.isnan(values)
    groups = _decimal_groups(decimals)
    scaled = [_scaled(np.where(nan[:, a:b], 0.0, values[:, a:b]), d) for a, b, d in groups]
    width = max([len(NAN_TOKEN)] + [2 + _digit_count(k).max(initial=1) + (d + 1 if d else 0)
                                    for k, (_, _, d) in zip(scaled, groups)])

    # Byte position first, so that writing one position of a column group is contiguous.
    cells = np.zeros((width + 2, rows, columns), dtype=np.uint8)           # one cell per number
    for k, (a, b, d) in zip(scaled, groups):
        _fill_cells(cells[:, :, a:b], width, k, (values[:, a:b] < 0) & (k > 0), d)
    cells[width, :, :-1] = ord(",")
    cells[width + 1, :, :-1] = ord(" ")
    cells[width, :, -1] = ord("\n")

    row, column = np.nonzero(nan)
    cells[:width, row, column] = 0
    token = np.frombuffer(NAN_TOKEN, dtype=np.uint8)[:, None]
    cells[width - len(NAN_TOKEN):width, row, column] = token
    flat = cells.transpose(1, 2, 0).reshape(-1)                            # row by row
    return flat[flat != 0].tobytes()


def _scaled(values: np.ndarray, decimals: int) -> np.ndarray:
    """Return round(|values| * 10**decimals) as integers, int32 where they fit (faster)."""
    scaled = np.rint(np.abs(values) * 10.0 ** decimals)
    return scaled.astype(np.int32 if scaled.max(initial=0) < 2 ** 31 - 1 else np.int64)


def _decimal_groups(decimals: np.ndarray) -> list[tuple[int, int, int]]:
    """Return runs of neighbouring columns with equal decimals as (start, stop, decimals)."""
    breaks = np.flatnonzero(np.diff(decimals)) + 1
    starts = np.r_[0, breaks]
    stops = np.r_[breaks, len(decimals)]
    return [(int(a), int(b), int(decimals[a])) for a, b in zip(starts, stops)]


def _digit_count(number: np.ndarray) -> np.ndarray:
    """Return the count of decimal digits of non-negative integers (at least 1)."""
    count = np.ones(number.shape, dtype=np.int64)
    for j in range(1, 19):
        more = number >= 10 ** j
        if not more.any():
            break
        count += more
    return count


def _fill_cells(cells: np.ndarray, width: int, scaled: np.ndarray, negative: np.ndarray,
                decimals: int) -> None:
    """Write numbers ``scaled / 10**decimals`` right-aligned into cells (width + 2, rows, C)."""
    integer, fraction = np.divmod(scaled, scaled.dtype.type(10 ** decimals))
    position = width - 1
    for _ in range(decimals):
        fraction, digit = np.divmod(fraction, 10)
        cells[position] = digit
        cells[position] += ord("0")
        position -= 1
    if decimals:
        cells[position] = ord(".")
        position -= 1

    n_integer = _digit_count(integer)
    for j in range(int(n_integer.max(initial=1)) + 1):
        sign = np.where((j == n_integer) & negative, ord("-"), 0)
        integer, digit = np.divmod(integer, 10)
        cells[position] = np.where(j < n_integer, digit + ord("0"), sign)
        position -= 1


def write_table(table: encode.Table, decimals: np.ndarray, path: str) -> None:
    """Write one CLNF table: the header, then the rows, LF line endings."""
    with open(path, "wb") as out:
        out.write((", ".join(table.columns) + "\n").encode())
        chunk = 20000
        for first in range(0, len(table.values), chunk):
            out.write(format_rows(table.values[first:first + chunk], decimals))


def _split_rows(cohort: SyntheticCohort, split: str) -> list[str]:
    """Return the participants of one split in numeric order."""
    return sorted((pid for pid, s in cohort.splits.items() if s == split), key=int)


def write_split_files(cohort: SyntheticCohort, root: str) -> None:
    """Write the four AVEC 2017 split files with their exact headers."""
    item_columns = ",".join(f"PHQ8_{name}" for name in ITEM_NAMES)
    for split in ("train", "dev"):
        lines = [f"Participant_ID,PHQ8_Binary,PHQ8_Score,Gender,{item_columns}"]
        for pid in _split_rows(cohort, split):
            score = int(cohort.labels[pid])
            items = ",".join(str(i) for i in cohort.items[pid])
            lines.append(f"{pid},{int(score >= 10)},{score},{cohort.gender[pid]},{items}")
        _write_lines(os.path.join(root, f"{split}_split_Depression_AVEC2017.csv"), lines)

    test = _split_rows(cohort, "test")
    _write_lines(os.path.join(root, "test_split_Depression_AVEC2017.csv"),
                 ["participant_ID,Gender"] + [f"{pid},{cohort.gender[pid]}" for pid in test])
    full = [f"{pid},{int(cohort.labels[pid] >= 10)},{int(cohort.labels[pid])},{cohort.gender[pid]}"
            for pid in test]
    _write_lines(os.path.join(root, "full_test_split.csv"),
                 ["Participant_ID,PHQ_Binary,PHQ_Score,Gender"] + full)


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", newline="\n") as out:
        out.write("\n".join(lines) + "\n")


def write_daic(cohort: SyntheticCohort, root: str) -> None:
    """Write the cohort in the DAIC-WOZ layout: ``root/NNN_P/NNN_CLNF_<kind>.txt`` for the
    five CLNF kinds, plus the AVEC 2017 split files."""
    os.makedirs(root, exist_ok=True)
    ids = sorted(cohort.tables, key=int)
    start = time.perf_counter()
    for done, pid in enumerate(ids, start=1):
        folder = os.path.join(root, f"{pid}_P")
        os.makedirs(folder, exist_ok=True)
        for kind, table in cohort.tables[pid].items():
            write_table(table, _decimals(kind), os.path.join(folder, f"{pid}_CLNF_{kind}.txt"))
        if done % 20 == 0 or done == len(ids):
            elapsed = time.perf_counter() - start
            logger.info("wrote %d/%d sessions | %.1f s elapsed | about %.0f s left", done,
                        len(ids), elapsed, elapsed / done * (len(ids) - done))
    write_split_files(cohort, root)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def summary(cohort: SyntheticCohort) -> str:
    """Return a short text summary: ids, split sizes, label statistics, oracle RMSE."""
    ids = sorted(cohort.labels, key=int)
    scores = np.array([cohort.labels[pid] for pid in ids])
    kept = sum(s.frames_kept for s in cohort.sessions.values())
    dropped = sum(s.frames_dropped for s in cohort.sessions.values())
    lines = [f"participants  {len(ids)} (ids {ids[0]}-{ids[-1]})",
             f"frames        {kept} kept, {dropped} dropped ({dropped / (kept + dropped):.1%})",
             f"PHQ-8         mean {scores.mean():.2f}, sd {scores.std():.2f}, "
             f"share >= 10 {np.mean(scores >= 10):.1%}",
             f"label noise   {cohort.noise_sd:.2f} PHQ-8 points"]
    for split in ("train", "dev", "test"):
        in_split = np.array([cohort.labels[pid] for pid in ids if cohort.splits[pid] == split])
        lines.append(f"{split:5s} split   {len(in_split):3d} participants, mean {in_split.mean():.2f}, "
                     f"{int((in_split >= 10).sum())} with score >= 10, "
                     f"oracle RMSE {oracle_rmse(cohort, split):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic DAIC-WOZ cohort.")
    parser.add_argument("--out", required=True,
                        help="folder to write the cohort into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--participants", type=int, default=189,
                        help="number of participants (default 189, the DAIC-WOZ ids)")
    parser.add_argument("--real-length", action="store_true",
                        help="sessions of 7-33 minutes like DAIC-WOZ instead of 1-3 minutes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    cohort = make_cohort(seed=args.seed, n_participants=args.participants,
                         real_length=args.real_length)
    generated = time.perf_counter() - start
    write_daic(cohort, args.out)
    written = time.perf_counter() - start - generated

    print(summary(cohort))
    print(f"written to    {args.out} (generation {generated:.1f} s, writing {written:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
