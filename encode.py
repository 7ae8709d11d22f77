"""Read OpenFace-family recordings and labels, clean frames, and encode spectra.

Inputs: DAIC-WOZ sessions, each a folder ``NNN_P/`` or an archive ``NNN_P.zip`` with the five
``NNN_CLNF_*.txt`` files (``NNN_CLM_*`` in the AVEC 2016 release). E-DAIC sessions
(``NNN_P/features/NNN_OpenFace2.1.0_Pose_gaze_AUs.csv``) and single OpenFace 1.x/2.x CSV files
are read too, and so are the AVEC 2016/2017 and E-DAIC split files with PHQ-8 scores.

Method: each session is cleaned. One face is kept, frames are ordered and unique, failed,
low-confidence and non-finite frames are removed, and each channel's median is subtracted
except for landmarks. Every facial attribute time series is then summarised by the fixed-size
amplitude and phase spectra of Song et al., "Spectral representation of behaviour primitives
for depression analysis", IEEE Trans. Affective Computing, 2020, with their "select" or
"resample" frequency alignment.

Shape legend used in comments across the repository: B batch, S streams, T frames,
K frequency columns, C channels, N nodes, E edges, H hidden, D fused size.

Summarise a session, an OpenFace CSV or a whole data root:
``python encode.py testdata/real/video2.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import struct
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ATTRIBUTES = ("au", "gaze", "pose", "landmarks")
CNN_ATTRIBUTES = ("au", "gaze", "pose")
N_LANDMARKS = 68

# A session with fewer kept frames than this is rejected: its spectrum would hold a handful of
# bins. 50 frames is 1.7 s at 30 fps; the shortest real test file has 100 frames.
# NOTE: the paper gives no minimum; 50 is a chosen value, not a validated one.
MIN_KEPT_FRAMES = 50

# The option that skips a bad session, spelled for Python callers and for the command line.
SKIP_ADVICE = "on_bad_session='skip' (command line: --on-bad-session skip)"

# Plausible video frame rates. A timestamp step outside this range (OpenFace writes 1 ms steps
# when it cannot read a container's frame rate) falls back to DEFAULT_FPS.
FPS_RANGE = (5.0, 120.0)
DEFAULT_FPS = 30.0


class DataError(ValueError):
    """Invalid input data; the message names the file, the value and the fix."""


@dataclass
class Table:
    """One parsed OpenFace-family file before cleaning."""

    path: str
    columns: list[str]
    values: np.ndarray


@dataclass
class Session:
    """One participant's cleaned recording: per attribute, the kept frames."""

    participant: str
    attributes: dict[str, np.ndarray]
    channels: dict[str, list[str]]
    fps: float
    frames_kept: int
    frames_dropped: int
    drop_reasons: dict[str, int]
    source: str


@dataclass
class Cohort:
    """Sessions with their PHQ-8 labels (None when unlabelled) and split membership."""

    sessions: dict[str, Session]
    labels: dict[str, float | None]
    splits: dict[str, str]
    root: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Parsing one comma-separated file
# ---------------------------------------------------------------------------

# Spellings of not-a-number written by MSVC and others, replaced by "nan" before parsing.
# Longer spellings come first because "1.#IND" is a substring of "-1.#IND".
NAN_SPELLINGS = (b"-1.#IND", b"1.#IND", b"-1.#QNAN", b"1.#QNAN", b"-1.#INF", b"1.#INF",
                 b"-nan(ind)", b"nan(ind)")
NON_SPACE = re.compile(rb"\S")
NAN_TOKENS = {s.decode().lower() for s in NAN_SPELLINGS} | {"nan", "-nan", "inf", "-inf", "+inf"}


def read_table(source, name: str | None = None) -> Table:
    """Parse an OpenFace-family file (a path, or its bytes) into a Table.

    Fields are split on commas and stripped, LF and CRLF are accepted, the final newline is
    optional, and NaN or infinity tokens become NaN. ``name`` is the path used in messages
    (for example ``"300_P.zip:300_CLNF_AUs.txt"``); it defaults to ``source`` for a path.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "<bytes>"
    else:
        name = name or str(source)
        data = _read_bytes(Path(source))

    # Header: the first line, names stripped.
    data = data.removeprefix(b"\xef\xbb\xbf")
    end = data.find(b"\n")
    header = data if end < 0 else data[:end]
    columns = _parse_header(header, name)

    # Rows: one vectorised parse, or a line-by-line pass that names the first bad field.
    if end < 0 or NON_SPACE.search(data, end + 1) is None:
        raise DataError(f"{name}: the file has a header but no data rows; "
                        "check that the recording was written completely")
    if b"#" in data or b"(ind)" in data:
        data = _normalise_nan_spellings(data)
        end = data.find(b"\n")
    values = _parse_rows_fast(data, len(columns))
    if values is None:
        values = _parse_rows_slow(data[end + 1:], columns, name)

    values[np.isinf(values)] = np.nan
    return Table(path=name, columns=columns, values=values)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from err


def _parse_header(line: bytes, name: str) -> list[str]:
    columns = [c.strip() for c in line.decode("utf-8", errors="replace").split(",")]
    if not any(columns):
        raise DataError(f"{name}: the first line is empty; expected a header of column names")
    if _is_number(columns[0]):
        raise DataError(f"{name}: the first line starts with the number {columns[0]!r}, "
                        "expected a header of column names such as 'frame, timestamp, ...'")
    if "" in columns:
        raise DataError(f"{name}: header column {columns.index('') + 1} has an empty name")
    _check_unique_columns(columns, name)
    return columns


def _check_unique_columns(columns: list[str], name: str) -> None:
    """Raise a DataError on a repeated column name, which would make one of its columns unused."""
    seen = {}
    for index, column in enumerate(columns, start=1):
        if column in seen:
            raise DataError(f"{name}, line 1: column name {column!r} appears twice (columns "
                            f"{seen[column]} and {index}); remove or rename the repeated column")
        seen[column] = index


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return token.lower() in NAN_TOKENS
    return True


def _normalise_nan_spellings(data: bytes) -> bytes:
    for spelling in NAN_SPELLINGS:
        data = data.replace(spelling, b"nan")
    return data


def _parse_rows_fast(data: bytes, n_columns: int) -> np.ndarray | None:
    """Parse every row after the header with numpy's C reader, or return None on any problem."""
    try:
        values = np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, comments=None,
                            dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    if values.shape[1] != n_columns:
        return None
    return values


def _parse_rows_slow(body: bytes, columns: list[str], name: str) -> np.ndarray:
    """Parse the rows line by line; raise a DataError naming the first bad line and column."""
    rows = []
    for number, line in enumerate(body.decode("utf-8", errors="replace").split("\n"), start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != len(columns):
            raise DataError(f"{name}, line {number}: {len(fields)} fields, but the header has "
                            f"{len(columns)} columns; the file is truncated or malformed")
        rows.append([_parse_field(f, number, i, columns, name) for i, f in enumerate(fields)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(columns))


def _parse_field(text: str, line: int, index: int, columns: list[str], name: str) -> float:
    token = text.strip()
    if token.lower() in NAN_TOKENS:
        return np.nan
    try:
        return float(token)
    except ValueError:
        raise DataError(f"{name}, line {line}, column {index + 1} ({columns[index]}): "
                        f"cannot parse {token!r} as a number; fix or remove that row") from None


# ---------------------------------------------------------------------------
# Columns: metadata, attribute channels and their aliases
# ---------------------------------------------------------------------------

# File kinds of a DAIC-WOZ session and the file name suffixes (lower case) that identify them.
DAIC_KINDS = ("AUs", "features", "features3D", "gaze", "pose")
DAIC_SUFFIXES = {kind: tuple(f"_{tracker}_{kind.lower()}.{ext}" for tracker in ("clnf", "clm")
                             for ext in ("txt", "csv"))
                 for kind in DAIC_KINDS}
EDAIC_PATTERN = re.compile(r"openface[\d.]*_pose_gaze_aus\.csv$", re.IGNORECASE)

META_ALIASES = {"frame": ("frame", "frame_number"), "timestamp": ("timestamp",),
                "confidence": ("confidence",), "success": ("success", "detection_success"),
                "face_id": ("face_id",)}

GAZE_EYES = ("0", "1", "h0", "h1")  # eye 0 and 1 in camera coordinates, then in head coordinates
GAZE_OPTIONAL = ("gaze_angle_x", "gaze_angle_y")
POSE_NAMES = ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")


def _meta_index(table: Table, key: str) -> int | None:
    lowered = [c.lower() for c in table.columns]
    for alias in META_ALIASES[key]:
        if alias in lowered:
            return lowered.index(alias)
    return None


def _meta_column(table: Table, key: str) -> np.ndarray:
    index = _meta_index(table, key)
    if index is None:
        raise DataError(f"{table.path}: missing column {key!r} (accepted names: "
                        f"{', '.join(META_ALIASES[key])}); every OpenFace file starts with "
                        "frame, timestamp, confidence, success")
    return table.values[:, index]


def _find_columns(table: Table, pairs: list[tuple[str, str]], attribute: str) -> list[int]:
    """Find the columns of (canonical, file) name pairs; a DataError lists any that are missing."""
    position = {c: i for i, c in enumerate(table.columns)}
    missing = [raw for _, raw in pairs if raw not in position]
    if missing:
        listed = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise DataError(f"{table.path}: missing {len(missing)} {attribute} column(s): {listed}; "
                        "check that the file is the OpenFace output with that attribute enabled")
    return [position[raw] for _, raw in pairs]


def _au_names(table: Table, au: str) -> list[tuple[str, str]]:
    if au not in ("r", "c", "both"):
        raise ValueError(f"au={au!r} is invalid; use 'r' (intensity), 'c' (presence) or 'both'")
    kinds = ("r", "c") if au == "both" else (au,)
    names = [c for kind in kinds for c in table.columns if re.fullmatch(rf"AU\d+_{kind}", c)]
    if not names:
        raise DataError(f"{table.path}: no action unit columns ending in "
                        f"{' or '.join('_' + k for k in kinds)}; expected names such as AU01_r")
    return [(c, c) for c in names]


def _gaze_names(table: Table, daic: bool) -> list[tuple[str, str]]:
    if daic:
        # DAIC gaze files: x_0, y_0, z_0, x_1, ..., x_h1, y_h1, z_h1 (12 channels).
        return [(f"gaze_{eye}_{axis}", f"{axis}_{eye}") for eye in GAZE_EYES for axis in "xyz"]
    names = [(f"gaze_{eye}_{axis}",) * 2 for eye in ("0", "1") for axis in "xyz"]
    return names + [(c, c) for c in GAZE_OPTIONAL if c in table.columns]


def _pose_names(daic: bool) -> list[tuple[str, str]]:
    return [(f"pose_{p}", p if daic else f"pose_{p}") for p in POSE_NAMES]


def _landmark_names(landmarks: str, daic: bool) -> list[tuple[str, str]]:
    if landmarks not in ("2d", "3d"):
        raise ValueError(f"landmarks={landmarks!r} is invalid; use '2d' or '3d'")
    axes = "xy" if landmarks == "2d" else "XYZ"
    gap = "" if daic else "_"  # DAIC writes x0 and X0, OpenFace writes x_0 and X_0
    return [(f"{a}_{i}", f"{a}{gap}{i}") for a in axes for i in range(N_LANDMARKS)]


def _attribute_sources(tables: dict[str, Table], source: str, au: str,
                       landmarks: str) -> dict[str, tuple[str, list[int], list[str]]]:
    """Per attribute: the file kind it comes from, its column indices and its channel names."""
    if "openface" in tables:
        return _openface_sources(tables["openface"], au, landmarks)

    landmark_kind = "features" if landmarks == "2d" else "features3D"
    attribute_kinds = {"au": "AUs", "gaze": "gaze", "pose": "pose", "landmarks": landmark_kind}
    missing = sorted({kind for kind in attribute_kinds.values() if kind not in tables})
    if missing:
        raise DataError(f"{source}: missing DAIC-WOZ file(s) for {', '.join(missing)} "
                        f"(expected names ending in _CLNF_{missing[0]}.txt or "
                        f"_CLM_{missing[0]}.txt)")

    names = {"au": _au_names(tables["AUs"], au), "gaze": _gaze_names(tables["gaze"], True),
             "pose": _pose_names(True), "landmarks": _landmark_names(landmarks, True)}
    return {attr: (kind, _find_columns(tables[kind], names[attr], attr), _canonical(names[attr]))
            for attr, kind in attribute_kinds.items()}


def _openface_sources(table: Table, au: str,
                      landmarks: str) -> dict[str, tuple[str, list[int], list[str]]]:
    names = {"au": _au_names(table, au), "gaze": _gaze_names(table, False),
             "pose": _pose_names(False), "landmarks": _landmark_names(landmarks, False)}

    # E-DAIC files (OpenFace run with pose, gaze and AUs only) contain no landmark columns at
    # all: such a session has no landmarks attribute. A file with some landmark columns but not
    # all of those requested is an error.
    landmark_like = [c for c in table.columns if re.fullmatch(r"[xyXYZ]_\d+", c)]
    if not landmark_like:
        log.info("%s: no landmark columns (E-DAIC layout); the session has no landmarks "
                 "attribute", table.path)
        del names["landmarks"]

    return {attr: ("openface", _find_columns(table, pairs, attr), _canonical(pairs))
            for attr, pairs in names.items()}


def _canonical(pairs: list[tuple[str, str]]) -> list[str]:
    return [canonical for canonical, _ in pairs]


# ---------------------------------------------------------------------------
# Cleaning: one face, ordered unique frames, valid frames, medians
# ---------------------------------------------------------------------------

DROP_REASONS = ("other_face", "duplicate", "unaligned", "failed", "low_confidence", "non_finite")


def build_session(participant: str, tables: dict[str, Table], source: str,
                  min_confidence: float = 0.8, au: str = "r", landmarks: str = "2d") -> Session:
    """Clean one session's raw tables into per-attribute (T, C) arrays of kept frames.

    ``tables`` maps the DAIC-WOZ file kinds ("AUs", "features", "features3D", "gaze", "pose")
    or "openface" (one OpenFace or E-DAIC CSV) to parsed tables. Steps: keep the face with the
    most successful frames, order by frame and drop repeated frames (the first row wins), keep
    the frames present in every used file, drop frames that failed (success != 1), have
    confidence below ``min_confidence`` or a non-finite value in any used column (a frame is
    kept or dropped for all attributes together, reasons counted in that order), then subtract
    each channel's median over the kept frames except for landmarks, whose raw positions carry
    spatial information. Dropped frames are removed, not interpolated, so the kept frames form
    one shorter series. ``frames_dropped`` counts rows of other faces, repeated rows, frames
    missing from some file and invalid frames.
    """
    sources = _attribute_sources(tables, source, au, landmarks)
    kinds = sorted({kind for kind, _, _ in sources.values()})
    reasons = dict.fromkeys(DROP_REASONS, 0)

    # One face, frames in order, each frame once, present in every used file.
    per_kind = {kind: _ordered_frames(tables[kind], reasons) for kind in kinds}
    frames, rows = _align_frames(per_kind, reasons)

    # Valid frames across all attributes together.
    values = {attr: tables[kind].values[np.ix_(rows[kind], columns)]
              for attr, (kind, columns, _) in sources.items()}
    keep = _valid_frames(tables, rows, values, min_confidence, reasons)
    attributes = {attr: np.ascontiguousarray(v[keep]) for attr, v in values.items()}

    _check_kept(participant, source, int(keep.sum()), reasons)
    for attr, x in attributes.items():
        if attr != "landmarks":
            x -= np.median(x, axis=0)

    timestamps = _meta_column(tables[kinds[0]], "timestamp")[rows[kinds[0]]][keep]
    return Session(participant=participant, attributes=attributes,
                   channels={attr: names for attr, (_, _, names) in sources.items()},
                   fps=estimate_fps(timestamps, frames[keep], source),
                   frames_kept=int(keep.sum()), frames_dropped=sum(reasons.values()),
                   drop_reasons=reasons, source=source)


def _ordered_frames(table: Table, reasons: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique frame numbers of one file and the row of each (first occurrence wins)."""
    frame = _meta_column(table, "frame")
    rows = np.flatnonzero(np.isfinite(frame))
    reasons["non_finite"] = max(reasons["non_finite"], len(frame) - len(rows))
    if _meta_index(table, "face_id") is not None:
        rows = _choose_face(table, rows, reasons)

    # A stable sort keeps repeated frames in file order, so the first row of each comes first.
    rows = rows[np.argsort(frame[rows], kind="stable")]
    frames = np.rint(frame[rows]).astype(np.int64)
    first = np.ones(len(frames), dtype=bool)
    first[1:] = frames[1:] != frames[:-1]
    reasons["duplicate"] = max(reasons["duplicate"], int((~first).sum()))
    return frames[first], rows[first]


def _choose_face(table: Table, rows: np.ndarray, reasons: dict[str, int]) -> np.ndarray:
    """Keep the rows of the face with the most successful frames (lowest face_id on ties)."""
    face = table.values[rows, _meta_index(table, "face_id")]
    success = _meta_column(table, "success")[rows] == 1
    faces = np.unique(face[np.isfinite(face)])
    if len(faces) <= 1 and np.isfinite(face).all():
        return rows

    counts = [int(success[face == f].sum()) for f in faces]
    best = faces[int(np.argmax(counts))] if len(faces) else np.nan
    keep = face == best
    log.info("%s: %d face ids, keeping face_id %s with %d successful frames",
             table.path, len(faces), f"{best:g}", max(counts, default=0))
    reasons["other_face"] += int((~keep).sum())
    return rows[keep]


def _align_frames(per_kind: dict[str, tuple[np.ndarray, np.ndarray]],
                  reasons: dict[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frames present in every file, and per file the row of each of those frames."""
    all_frames = [frames for frames, _ in per_kind.values()]
    common, union = all_frames[0], all_frames[0]
    for frames in all_frames[1:]:
        common = np.intersect1d(common, frames, assume_unique=True)
        union = np.union1d(union, frames)

    reasons["unaligned"] = len(union) - len(common)
    rows = {kind: r[np.searchsorted(f, common)] for kind, (f, r) in per_kind.items()}
    return common, rows


def _valid_frames(tables: dict[str, Table], rows: dict[str, np.ndarray],
                  values: dict[str, np.ndarray], min_confidence: float,
                  reasons: dict[str, int]) -> np.ndarray:
    """Boolean mask over the aligned frames: success, enough confidence, finite values."""
    n = len(next(iter(rows.values())))
    failed, low = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for kind, r in rows.items():
        failed |= _meta_column(tables[kind], "success")[r] != 1
        low |= ~(_meta_column(tables[kind], "confidence")[r] >= min_confidence)  # NaN is low
    low &= ~failed

    finite = np.ones(n, dtype=bool)
    for x in values.values():
        finite &= np.isfinite(x).all(axis=1)
    non_finite = ~finite & ~failed & ~low

    reasons["failed"] += int(failed.sum())
    reasons["low_confidence"] += int(low.sum())
    reasons["non_finite"] += int(non_finite.sum())
    return ~(failed | low | non_finite)


def _check_kept(participant: str, source: str, kept_frames: int,
                reasons: dict[str, int]) -> None:
    if kept_frames >= MIN_KEPT_FRAMES:
        return
    dropped = ", ".join(f"{k} {v}" for k, v in reasons.items() if v)
    raise DataError(f"{source}: participant {participant} has {kept_frames} usable frames, "
                    f"fewer than the minimum of {MIN_KEPT_FRAMES} (dropped: {dropped or 'none'}); "
                    f"{_kept_advice(reasons)}, or skip the session with {SKIP_ADVICE}")


def _kept_advice(reasons: dict[str, int]) -> str:
    """Name the fix for too few kept frames from the reason that dropped them."""
    if reasons["low_confidence"]:
        return (f"lower min_confidence (--min-confidence), which dropped "
                f"{reasons['low_confidence']} frames")
    if reasons["non_finite"]:
        return (f"{reasons['non_finite']} frames have NaN or infinite values, so re-run "
                "OpenFace on the video")
    if reasons["failed"]:
        return f"the tracker failed on {reasons['failed']} frames, so re-run OpenFace on the video"
    return "the recording has too few frames, so use a longer recording"


def estimate_fps(timestamps: np.ndarray, frames: np.ndarray, source: str) -> float:
    """Frame rate from the timestamps, or DEFAULT_FPS when they imply an implausible rate.

    The median step per frame is robust to pauses and restarts. Timestamps rounded to 1 ms
    bias it (0.033 s steps give 30.3 fps), so where the rate over the whole span agrees with
    it within 5 %, the span's rate is used instead.
    """
    if len(frames) < 2:
        log.warning("%s: fewer than 2 frames; assuming %.1f fps", source, DEFAULT_FPS)
        return DEFAULT_FPS
    steps = np.diff(timestamps) / np.maximum(np.diff(frames), 1)
    if np.any(steps < 0):
        log.warning("%s: timestamps decrease %d times in frame order; the frame rate estimate "
                    "uses the median step", source, int((steps < 0).sum()))
    steps = steps[np.isfinite(steps) & (steps > 0)]
    fps = 1.0 / np.median(steps) if len(steps) else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        span_fps = (frames[-1] - frames[0]) / (timestamps[-1] - timestamps[0])
    if abs(span_fps / fps - 1) < 0.05:
        fps = span_fps

    if FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        return float(fps)
    log.warning("%s: timestamps imply %.1f fps, outside %g-%g fps; assuming %.1f fps",
                source, fps, *FPS_RANGE, DEFAULT_FPS)
    return DEFAULT_FPS


# ---------------------------------------------------------------------------
# Sessions on disk: DAIC-WOZ folders and archives, E-DAIC folders, OpenFace CSV files
# ---------------------------------------------------------------------------

def load_session(path, min_confidence: float = 0.8, au: str = "r",
                 landmarks: str = "2d") -> Session:
    """Read and clean one session: a DAIC-WOZ folder or archive, an E-DAIC folder or a CSV."""
    path = Path(path)
    tables = read_session_tables(path, landmarks)
    return build_session(participant_id(path), tables, str(path), min_confidence, au, landmarks)


def participant_id(path) -> str:
    """Participant id from a session path: "303" for 303_P, 303_P.zip or 303_OpenFace...csv."""
    name = Path(path).name
    match = re.fullmatch(r"(\d+)_P(\.zip)?", name, flags=re.IGNORECASE)
    if match is None and EDAIC_PATTERN.search(name):
        match = re.match(r"(\d+)_", name)
    return match.group(1) if match else Path(path).stem


def read_session_tables(path, landmarks: str = "2d") -> dict[str, Table]:
    """Parse the files of one session that the chosen landmark kind needs, keyed by file kind."""
    path = Path(path)
    kinds = _needed_kinds(landmarks)
    if path.is_dir():
        return _read_folder(path, kinds)
    if path.suffix.lower() == ".zip":
        return _read_archive(path, kinds)
    if path.is_file():
        return {"openface": read_table(path)}
    raise DataError(f"{path}: no such file or folder; give a DAIC-WOZ session folder NNN_P or "
                    "archive NNN_P.zip, an E-DAIC session folder, or an OpenFace CSV file")


def _needed_kinds(landmarks: str) -> tuple[str, ...]:
    _landmark_names(landmarks, True)  # validates the option
    return ("AUs", "gaze", "pose", "features" if landmarks == "2d" else "features3D")


def _is_data_member(name: str) -> bool:
    """False for folders and for the macOS metadata entries (__MACOSX/ and ._ files)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return not (name.endswith("/") or name.startswith("__MACOSX/") or "/__MACOSX/" in name
                or base.startswith("._"))


def _match_members(names: list[str], kinds: tuple[str, ...], where: str) -> dict[str, str]:
    """Match each DAIC file kind to the one name ending in its suffix; absent kinds are left out."""
    found = {}
    for kind in kinds:
        matches = [n for n in names if _is_data_member(n)
                   and n.lower().endswith(DAIC_SUFFIXES[kind])]
        if len(matches) > 1:
            raise DataError(f"{where}: {len(matches)} files match the {kind} file "
                            f"({', '.join(matches)}); keep one")
        if matches:
            found[kind] = matches[0]
    return found


def _edaic_member(names: list[str], where: str) -> str | None:
    matches = [n for n in names if _is_data_member(n) and EDAIC_PATTERN.search(n)]
    if len(matches) > 1:
        raise DataError(f"{where}: several E-DAIC OpenFace files ({', '.join(matches)}); keep one")
    return matches[0] if matches else None


def _missing_files_error(where: str, kinds: tuple[str, ...], found: dict[str, str]) -> DataError:
    missing = [k for k in kinds if k not in found]
    expected = ", ".join(f"NNN_CLNF_{k}.txt" for k in missing)
    return DataError(f"{where}: missing DAIC-WOZ file(s) {expected} (found: "
                     f"{', '.join(sorted(found.values())) or 'none'}); restore the files from "
                     "the corpus archive")


def _read_folder(folder: Path, kinds: tuple[str, ...]) -> dict[str, Table]:
    names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    found = _match_members(names, DAIC_KINDS, str(folder))
    if found:
        if any(k not in found for k in kinds):
            raise _missing_files_error(str(folder), kinds, found)
        _check_member_ids(folder, [found[kind] for kind in kinds])
        return {kind: read_table(folder / found[kind]) for kind in kinds}

    edaic = _edaic_member(names, str(folder))
    if edaic is None:
        raise DataError(f"{folder}: no DAIC-WOZ files (NNN_CLNF_AUs.txt, ...) and no E-DAIC file "
                        "(features/NNN_OpenFace2.1.0_Pose_gaze_AUs.csv); is this a session folder?")
    _check_member_ids(folder, [edaic])
    return {"openface": read_table(folder / edaic)}


def _check_member_ids(path: Path, members: list[str]) -> None:
    """Raise a DataError when a file's numeric prefix names a participant other than its session.

    Files are matched by their suffix, so ``300_CLNF_AUs.txt`` copied into ``305_P/`` would
    otherwise be read as participant 305. Only sessions named NNN_P or NNN_P.zip are checked.
    """
    session = re.fullmatch(r"(\d+)_P(\.zip)?", path.name, flags=re.IGNORECASE)
    if session is None:
        return
    for member in members:
        prefix = re.match(r"(\d+)_", member.rsplit("/", 1)[-1])
        if prefix is not None and int(prefix.group(1)) != int(session.group(1)):
            raise DataError(f"{path}: the file {member} belongs to participant "
                            f"{prefix.group(1)}, but the session is participant "
                            f"{session.group(1)}; put the files of {session.group(1)} in "
                            f"{path.name} or rename the session")


def _read_archive(path: Path, kinds: tuple[str, ...]) -> dict[str, Table]:
    """Parse the needed members of a session archive in memory, without extracting it."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise _corrupt_archive_error(path, kinds, err) from err

    with archive:
        names = archive.namelist()
        found = _match_members(names, DAIC_KINDS, str(path))
        if not found:
            edaic = _edaic_member(names, str(path))
            if edaic is None:
                raise DataError(f"{path}: the archive contains no DAIC-WOZ CLNF/CLM files and no "
                                "E-DAIC OpenFace file; is this a session archive?")
            _check_member_ids(path, [edaic])
            return {"openface": _read_member(archive, path, edaic, kinds)}
        if any(k not in found for k in kinds):
            raise _missing_files_error(str(path), kinds, found)
        _check_member_ids(path, [found[kind] for kind in kinds])
        return {kind: _read_member(archive, path, found[kind], kinds) for kind in kinds}


def _read_member(archive: zipfile.ZipFile, path: Path, member: str,
                 kinds: tuple[str, ...]) -> Table:
    try:
        data = archive.read(member)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise _corrupt_archive_error(path, kinds, err) from err
    return read_table(data, f"{path}:{member}")


def _corrupt_archive_error(path: Path, kinds: tuple[str, ...], err: Exception) -> DataError:
    """Build a DataError that lists the needed members a scan of the archive finds incomplete."""
    complete = _complete_members(path)
    found = _match_members(complete, kinds, str(path))
    unreadable = [k for k in kinds if k not in found]
    prefix = path.name.split("_")[0]
    listing = ("needed files that could not be read: "
               + ", ".join(f"{prefix}_CLNF_{k}.txt" for k in unreadable)
               if unreadable else "every needed file has a complete entry")
    return DataError(f"{path}: the archive is truncated or corrupt ({err}); {listing}; "
                     f"download the archive again or set {SKIP_ADVICE}")


def _complete_members(path: Path) -> list[str]:
    """List the entries whose data lies wholly inside the file, walking its local headers.

    A truncated archive has no central directory, so the entries are found from the local file
    header at the start of each. The walk stops at the first entry that is cut off, and at one
    whose size is only written after its data.
    """
    names = []
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            offset = 0
            while offset + 30 <= size:
                handle.seek(offset)
                entry = _local_entry(handle)
                if entry is None or entry[1] > size:
                    break
                names.append(entry[0])
                offset = entry[1]
    except OSError:
        pass
    return names


def _local_entry(handle) -> tuple[str, int] | None:
    """(name, end offset of the data) of the local file header at the handle's position."""
    start = handle.tell()
    header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None
    flags, compressed, name_length, extra_length = (struct.unpack("<H", header[6:8])[0],
                                                    *struct.unpack("<I", header[18:22]),
                                                    *struct.unpack("<HH", header[26:30]))
    name = handle.read(name_length).decode("utf-8", errors="replace")
    extra = handle.read(extra_length)
    if compressed == 0xFFFFFFFF:
        compressed = _zip64_compressed_size(extra)
    if compressed is None or (flags & 0x08 and compressed == 0):
        return None  # sizes follow the data: the entry cannot be skipped without inflating
    return name, start + 30 + name_length + extra_length + compressed


def _zip64_compressed_size(extra: bytes) -> int | None:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[position:position + 4])
        if tag == 0x0001 and length >= 16:
            return struct.unpack("<Q", extra[position + 12:position + 20])[0]
        position += 4 + length
    return None


# ---------------------------------------------------------------------------
# Labels: AVEC 2016, AVEC 2017 and E-DAIC split files
# ---------------------------------------------------------------------------

LABEL_ALIASES = {"id": ("participant_id", "participant"),
                 "score": ("phq8_score", "phq_score"),
                 "binary": ("phq8_binary", "phq_binary")}
PHQ8_RANGE = (0, 24)
PHQ8_CUTOFF = 10  # PHQ-8 total >= 10 counts as depressed (binary label 1)


def split_name(path) -> str | None:
    """Return the split a label file's name implies ("train", "dev", "test"), or None.

    Known names: training_split.csv, train_split_Depression_AVEC2017.csv, train_split.csv,
    dev_split*.csv, test_split*.csv and full_test_split.csv.
    """
    name = Path(path).name.lower()
    if not name.endswith(".csv"):
        return None
    for prefix, split in (("training_split", "train"), ("train_split", "train"),
                          ("dev_split", "dev"), ("full_test_split", "test"),
                          ("test_split", "test")):
        if name.startswith(prefix):
            return split
    return None


def load_labels(path) -> dict[str, float | None]:
    """PHQ-8 totals by participant id from one split file; None where the file has no scores.

    Columns are found through aliases, case-insensitively: the id in Participant_ID or
    participant_ID, the score in PHQ8_Score or PHQ_Score, the binary label in PHQ8_Binary or
    PHQ_Binary. A binary label that disagrees with score >= 10 is logged and ignored.
    """
    header, rows = _read_csv_rows(Path(path))
    columns = {key: _label_column(header, key) for key in LABEL_ALIASES}
    if columns["id"] is None:
        raise DataError(f"{path}: no participant id column (accepted: Participant_ID, "
                        f"participant_ID); header is {', '.join(header)}")
    if columns["score"] is None:
        log.info("%s: no PHQ-8 score column; its %d participants are unlabelled", path, len(rows))

    labels = {}
    for line, row in rows:
        participant = _participant(row[columns["id"]], path, line)
        if participant in labels:
            raise DataError(f"{path}, line {line}: participant {participant} appears twice; "
                            "remove the repeated row")
        labels[participant] = _row_score(row, columns, path, line, participant)
    return labels


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Stripped header names and the non-empty rows with their 1-based line numbers."""
    text = _read_bytes(path).decode("utf-8-sig", errors="replace")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: the label file is empty; expected a header such as "
                        "Participant_ID,PHQ8_Binary,PHQ8_Score")
    header = [c.strip() for c in lines[0][1].split(",")]
    rows = []
    for number, line in lines[1:]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < len(header):
            raise DataError(f"{path}, line {number}: {len(fields)} fields, but the header has "
                            f"{len(header)}; fix the row")
        rows.append((number, fields))
    return header, rows


def _label_column(header: list[str], key: str) -> int | None:
    lowered = [c.lower() for c in header]
    for alias in LABEL_ALIASES[key]:
        if alias in lowered:
            return lowered.index(alias)
    return None


def _participant(value: str, path, line: int) -> str:
    """Canonical participant id: "303" for "303" or "303.0"."""
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: participant id {value!r} is not a number") from None
    if not number.is_integer():
        raise DataError(f"{path}, line {line}: participant id {value!r} is not an integer")
    return str(int(number))


def _row_score(row: list[str], columns: dict[str, int | None], path, line: int,
               participant: str) -> float | None:
    if columns["score"] is None:
        return None
    value = row[columns["score"]]
    try:
        score = float(value)
    except ValueError:
        score = np.nan
    if not (np.isfinite(score) and score.is_integer() and PHQ8_RANGE[0] <= score <= PHQ8_RANGE[1]):
        raise DataError(f"{path}, line {line}: participant {participant} has PHQ-8 score "
                        f"{value!r}; expected an integer from {PHQ8_RANGE[0]} to {PHQ8_RANGE[1]}")

    if columns["binary"] is not None:
        _check_binary(row[columns["binary"]], score, path, line, participant)
    return score


def _check_binary(value: str, score: float, path, line: int, participant: str) -> None:
    derived = int(score >= PHQ8_CUTOFF)
    try:
        agrees = float(value) == derived
    except ValueError:
        agrees = False
    if not agrees:
        log.warning("%s, line %d: participant %s has binary label %r but score %g; using "
                    "score >= %d, which gives %d", path, line, participant, value, score,
                    PHQ8_CUTOFF, derived)


def binary_labels(labels: dict[str, float | None]) -> dict[str, int | None]:
    """Binary depression labels derived from PHQ-8 totals (score >= 10), None where unlabelled."""
    return {p: None if s is None else int(s >= PHQ8_CUTOFF) for p, s in labels.items()}


# ---------------------------------------------------------------------------
# Cohorts: every session and split file under a data root
# ---------------------------------------------------------------------------

BAD_SESSION_CHOICES = ("error", "skip")


def find_sessions(root) -> dict[str, Path]:
    """Session folders NNN_P and archives NNN_P.zip directly under root, by participant id.

    Where both exist, the folder is used.
    """
    sessions = {}
    for path in sorted(Path(root).iterdir()):
        match = re.fullmatch(r"(\d+)_P(\.zip)?", path.name, flags=re.IGNORECASE)
        if match is None or (path.is_file() != bool(match.group(2))):
            continue
        participant = match.group(1)
        if participant in sessions and path.is_file():
            log.info("%s: using the folder %s instead of the archive", path, sessions[participant])
            continue
        sessions[participant] = path
    return sessions


def find_label_files(root) -> list[Path]:
    """Split files directly under root or under root/labels (E-DAIC), unlabelled ones first."""
    root = Path(root)
    files = [p for folder in (root, root / "labels") if folder.is_dir()
             for p in sorted(folder.iterdir()) if p.is_file() and split_name(p)]
    return sorted(files, key=lambda p: p.name.lower().startswith("full_test"))


def load_cohort(root, min_confidence: float = 0.8, on_bad_session: str = "error",
                au: str = "r", landmarks: str = "2d") -> Cohort:
    """Load every session listed in the split files under a DAIC-WOZ or E-DAIC root.

    A session listed but absent, or one that fails to load, raises a DataError, or with
    ``on_bad_session="skip"`` is recorded in ``Cohort.skipped`` with the reason. Sessions
    that no split file lists are left out and recorded in ``skipped`` too.
    """
    root = Path(root)
    if on_bad_session not in BAD_SESSION_CHOICES:
        raise ValueError(f"on_bad_session={on_bad_session!r} is invalid; use 'error' or 'skip'")
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; give the folder that contains the NNN_P "
                        "sessions")

    labels, splits = read_splits(root)
    found = find_sessions(root)
    skipped = _absent_sessions(root, splits, found, on_bad_session)
    for participant in sorted(set(found) - set(splits), key=int):
        log.warning("%s: not listed in any split file, left out", found[participant])
        skipped[participant] = "not listed in any split file"

    listed = [p for p in sorted(splits, key=int) if p in found]
    sessions = _load_sessions(found, listed, on_bad_session, skipped,
                              dict(min_confidence=min_confidence, au=au, landmarks=landmarks))
    return Cohort(sessions=sessions, labels={p: labels[p] for p in sessions},
                  splits={p: splits[p] for p in sessions}, root=str(root), skipped=skipped)


def read_splits(root) -> tuple[dict[str, float | None], dict[str, str]]:
    """Read the label and split of every participant in the split files under root.

    A labelled file (AVEC 2017 full_test_split.csv) takes precedence over an unlabelled one
    for the same split (test_split_Depression_AVEC2017.csv).
    """
    files = find_label_files(root)
    if not files:
        raise DataError(f"{root}: no split files found (train_split_Depression_AVEC2017.csv, "
                        "training_split.csv, labels/train_split.csv, ...); put them in the root")
    labels, splits = {}, {}
    for path in files:
        split = split_name(path)
        for participant, score in load_labels(path).items():
            if splits.get(participant, split) != split:
                raise DataError(f"{path}: participant {participant} is in both the "
                                f"{splits[participant]} and the {split} split; fix the split files")
            if labels.get(participant) is not None:
                if score is not None and score != labels[participant]:
                    raise DataError(f"{path}: participant {participant} has score {score:g} "
                                    f"here and {labels[participant]:g} in another split file")
                continue
            labels[participant], splits[participant] = score, split
    return labels, splits


def _absent_sessions(root: Path, splits: dict[str, str], found: dict[str, Path],
                     on_bad_session: str) -> dict[str, str]:
    absent = [p for p in sorted(splits, key=int) if p not in found]
    if absent and on_bad_session == "error":
        raise DataError(f"{root}: {len(absent)} session(s) listed in the split files are missing "
                        f"(no folder or archive for {', '.join(absent[:10])}"
                        f"{', ...' if len(absent) > 10 else ''}); add them or use "
                        f"{SKIP_ADVICE}")
    for participant in absent:
        log.warning("participant %s (%s split) has no session under %s, skipped",
                    participant, splits[participant], root)
    return {p: f"no folder {p}_P or archive {p}_P.zip under {root}" for p in absent}


def _load_sessions(found: dict[str, Path], listed: list[str], on_bad_session: str,
                   skipped: dict[str, str], options: dict) -> dict[str, Session]:
    sessions = {}
    start = time.perf_counter()
    for done, participant in enumerate(listed, start=1):
        try:
            sessions[participant] = load_session(found[participant], **options)
        except DataError as err:
            if on_bad_session == "error":
                raise
            log.warning("participant %s skipped: %s", participant, err)
            skipped[participant] = str(err)
        elapsed = time.perf_counter() - start
        log.info("loaded %d/%d sessions | %.1f s elapsed | about %.0f s left", done,
                 len(listed), elapsed, elapsed / done * (len(listed) - done))
    return sessions


# ---------------------------------------------------------------------------
# Spectral encoding
# ---------------------------------------------------------------------------

ALIGNMENTS = ("select", "resample")

# A bin whose amplitude is at most PHASE_EPSILON times the channel's peak absolute value
# (after median subtraction) is treated as empty and gets phase exactly 0. The peak bounds
# every normalised amplitude, and FFT rounding noise is about 1e-16 of it.
PHASE_EPSILON = 1e-12


def spectral_encode(x: np.ndarray, k: int = 120, resolution: int = 256, align: str = "select",
                    participant: str | None = None,
                    subtract_median: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase spectra (C, k) of a multichannel series x (C, T), as Song et al.

    select: centre-trim to m*R frames with m = T // R (an odd surplus frame is removed at the
    start), subtract each channel's median over the trimmed frames, and keep bins 0, m, 2m, ...
    of the length-m*R DFT, amplitude |F| / (m*R). Column 0 is the Nyquist bin and column c >= 1
    is the bin at (c-1)/R cycles per frame, whatever T is. Requires T >= R and k-1 <= R/2.
    resample: subtract each channel's median over all frames, take the non-negative half of
    the full DFT, resample it to R points with scipy.signal.resample_poly, amplitude |F| / T,
    first k columns. Works for any T >= 2; requires k <= R.
    ``subtract_median=False`` keeps the raw values (used for landmark positions).
    """
    _check_positive_int(k, "k", "the number of retained frequency columns")
    _check_positive_int(resolution, "resolution", "the frequency resolution in bins")
    x = _check_series(x, participant)
    if align == "select":
        spectrum = _select_spectrum(x, k, resolution, participant, subtract_median)
    elif align == "resample":
        spectrum = _resample_spectrum(x, k, resolution, participant, subtract_median)
    else:
        raise ValueError(f"align={align!r} is invalid; use 'select' or 'resample'")

    amplitude, scale = np.abs(spectrum[0]), spectrum[1]
    phase = np.angle(spectrum[0])
    phase[amplitude <= PHASE_EPSILON * scale[:, None]] = 0.0
    return amplitude, phase


def _check_positive_int(value, name: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; {name} is {meaning}, an integer >= 1")


def _check_series(x, participant: str | None) -> np.ndarray:
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise ValueError(f"participant {participant or '?'}: the series has complex dtype "
                         f"{x.dtype}; pass real values, one row per channel")
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; expected (channels, frames)")
    if not np.isfinite(x).all():
        raise DataError(f"participant {participant or '?'}: the series contains non-finite "
                        "values; clean it with build_session first")
    return x


def _centred(x: np.ndarray, subtract_median: bool) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each channel's median if requested; also return each channel's peak |x|."""
    if subtract_median:
        x = x - np.median(x, axis=1, keepdims=True)
    scale = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x))
    return x, scale


def _select_spectrum(x: np.ndarray, k: int, resolution: int, participant: str | None,
                     subtract_median: bool) -> tuple[np.ndarray, np.ndarray]:
    channels, frames = x.shape
    if frames < resolution:
        raise DataError(f"participant {participant or '?'}: the series has {frames} frames, "
                        f"fewer than resolution {resolution} that align='select' needs; use "
                        f"align='resample' or a resolution of at most {frames}")
    if 2 * (k - 1) > resolution:
        raise DataError(f"participant {participant or '?'}: k={k} columns need resolution >= "
                        f"{2 * (k - 1)} with align='select' (column c is bin c-1 <= R/2), got "
                        f"{resolution}; use a smaller k or a larger resolution")

    # Centre-trim to m*R frames; the odd surplus frame goes from the start.
    m = frames // resolution
    start = (frames - m * resolution + 1) // 2
    trimmed, scale = _centred(x[:, start:start + m * resolution], subtract_median)

    # Bin j*m of the length-m*R DFT is bin j of the R-point DFT of the folded series.
    folded = trimmed.reshape(channels, m, resolution).sum(axis=1)  # (C, m, R) -> (C, R)
    bins = np.fft.fft(folded, axis=1) / (m * resolution)
    columns = np.concatenate([bins[:, resolution // 2:resolution // 2 + 1], bins[:, :k - 1]],
                             axis=1)  # (C, k): Nyquist, then bins 0 .. k-2
    return columns, scale


def _resample_spectrum(x: np.ndarray, k: int, resolution: int, participant: str | None,
                       subtract_median: bool) -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import resample_poly

    frames = x.shape[1]
    if frames < 2 or k > resolution:
        raise DataError(f"participant {participant or '?'}: align='resample' needs at least 2 "
                        f"frames and k <= resolution, got {frames} frames, k={k}, resolution "
                        f"{resolution}; use a longer recording or a larger resolution")

    centred, scale = _centred(x, subtract_median)
    half = np.fft.fft(centred, axis=1)[:, :frames // 2 + 1]  # (C, T//2 + 1) non-negative bins
    resampled = resample_poly(half, resolution, half.shape[1], axis=1)  # (C, R)
    return resampled[:, :k] / frames, scale


# ---------------------------------------------------------------------------
# Encoded sessions and cohorts
# ---------------------------------------------------------------------------

def encode_session(session: Session, k: int = 120, resolution: int = 256,
                   align: str = "select") -> dict[str, np.ndarray]:
    """Spectral features per attribute of one session.

    au, gaze, pose: the heatmap [amplitude; phase] of shape (2C, K).
    landmarks: node features of shape (68, 2*D*K) for D coordinates, per node
    [amp_x, amp_y, (amp_z), phase_x, phase_y, (phase_z)], K columns each.
    """
    features = {}
    for attr, x in session.attributes.items():
        # NOTE: landmark positions keep their raw values here too (no median subtraction), so
        # the zero-frequency column carries the mean position, the spatial information that
        # the paper keeps landmarks unnormalised for.
        amplitude, phase = spectral_encode(x.T, k, resolution, align, session.participant,
                                           subtract_median=attr != "landmarks")  # (C, K) each
        if attr == "landmarks":
            features[attr] = np.concatenate([_per_node(amplitude), _per_node(phase)], axis=1)
        else:
            features[attr] = np.concatenate([amplitude, phase], axis=0)  # (2C, K)
    return features


def _per_node(spectrum: np.ndarray) -> np.ndarray:
    """(D*68, K) rows ordered x0..x67, y0..y67, ... -> (68, D*K) rows per landmark."""
    dims = spectrum.shape[0] // N_LANDMARKS
    per_axis = spectrum.reshape(dims, N_LANDMARKS, -1)  # (D, N, K)
    return per_axis.transpose(1, 0, 2).reshape(N_LANDMARKS, -1)  # (N, D*K)


@dataclass
class EncodedCohort:
    """Spectral features, labels and splits of a cohort, one row per participant."""

    participants: list[str]
    features: dict[str, np.ndarray]
    labels: np.ndarray
    splits: list[str]
    channels: dict[str, list[str]]
    params: dict
    skipped: dict[str, str] = field(default_factory=dict)

    def select(self, indices) -> "EncodedCohort":
        """Return the rows at the given integer indices, in that order."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return EncodedCohort(participants=[self.participants[i] for i in indices],
                             features={a: f[indices] for a, f in self.features.items()},
                             labels=self.labels[indices],
                             splits=[self.splits[i] for i in indices],
                             channels=self.channels, params=self.params, skipped=self.skipped)

    def split(self, name: str) -> "EncodedCohort":
        """Return the rows of one split ("train", "dev" or "test")."""
        if name not in ("train", "dev", "test"):
            raise ValueError(f"split {name!r} is invalid; use 'train', 'dev' or 'test'")
        return self.select([i for i, s in enumerate(self.splits) if s == name])


def _id_key(participant: str) -> tuple:
    return (0, int(participant), "") if participant.isdigit() else (1, 0, participant)


def encode_cohort(cohort: Cohort, k: int = 120, resolution: int = 256, align: str = "select",
                  on_bad_session: str = "error") -> EncodedCohort:
    """Encode every session of a cohort; participants sorted numerically.

    A session that cannot be encoded (too short for align="select") raises its DataError, or
    with ``on_bad_session="skip"`` is left out and recorded in ``skipped``.
    """
    if not cohort.sessions:
        raise DataError(f"{cohort.root or 'cohort'}: no sessions to encode (skipped: "
                        f"{len(cohort.skipped)}); check the data root and the split files")
    attributes, channels = _common_channels(cohort)
    skipped = dict(cohort.skipped)
    rows = {}
    for participant in sorted(cohort.sessions, key=_id_key):
        try:
            rows[participant] = encode_session(cohort.sessions[participant], k, resolution, align)
        except DataError as err:
            if on_bad_session == "error":
                raise
            log.warning("participant %s skipped: %s", participant, err)
            skipped[participant] = str(err)

    participants = list(rows)
    if not participants:
        _raise_all_skipped(cohort, skipped)
    features = {a: np.stack([rows[p][a] for p in participants])
                for a in attributes}  # (P, 2C, K) or (P, 68, 2DK)
    labels = np.array([np.nan if cohort.labels.get(p) is None else cohort.labels[p]
                       for p in participants], dtype=np.float64)
    params = dict(k=k, resolution=resolution, align=align, root=cohort.root)
    splits = [_split_of(cohort, p) for p in participants]
    return EncodedCohort(participants, features, labels, splits,
                         {a: channels[a] for a in attributes}, params, skipped)


def _raise_all_skipped(cohort: Cohort, skipped: dict[str, str]) -> None:
    """Raise a DataError for a cohort with no encodable session, naming the first reason."""
    first = next(iter(skipped.items()), ("-", "-"))
    low = sum(s.drop_reasons.get("low_confidence", 0) for s in cohort.sessions.values())
    advice = "fix those sessions as the first reason says"
    if low:
        advice += f", or lower min_confidence (--min-confidence), which dropped {low} frames"
    raise DataError(f"{cohort.root or 'cohort'}: all {len(skipped)} sessions were skipped "
                    f"(first: participant {first[0]}: {first[1]}); {advice}")


def _split_of(cohort: Cohort, participant: str) -> str:
    if participant not in cohort.splits:
        raise DataError(f"participant {participant} has a session but no split; list it in a "
                        "split file")
    return cohort.splits[participant]


def _common_channels(cohort: Cohort) -> tuple[list[str], dict[str, list[str]]]:
    """Attributes every session has, and their channel names, which must agree across sessions."""
    sessions = list(cohort.sessions.values())
    attributes = [a for a in ATTRIBUTES if all(a in s.attributes for s in sessions)]
    left_out = [a for a in ATTRIBUTES if a not in attributes
                and any(a in s.attributes for s in sessions)]
    if left_out:
        log.warning("attribute(s) %s missing in some sessions (E-DAIC has no landmarks); "
                    "left out for the whole cohort", ", ".join(left_out))

    channels = {a: sessions[0].channels[a] for a in attributes} if sessions else {}
    for session in sessions[1:]:
        for attr in attributes:
            if session.channels[attr] != channels[attr]:
                raise DataError(f"{session.source}: participant {session.participant} has "
                                f"{len(session.channels[attr])} {attr} channels, the first "
                                f"session has {len(channels[attr])}; do not mix OpenFace versions "
                                "in one cohort")
    return attributes, channels


# ---------------------------------------------------------------------------
# Encoded-cohort cache
# ---------------------------------------------------------------------------

CACHE_FORMAT = "depnas-encoded-v1"


def load_encoded(root=None, *, k: int = 120, resolution: int = 256, align: str = "select",
                 min_confidence: float = 0.8, on_bad_session: str = "error",
                 cache_dir=".cache/depnas", seed: int = 0, au: str = "r",
                 landmarks: str = "2d") -> EncodedCohort:
    """Load and encode a data root (None: the synthetic cohort of ``seed``), through a cache.

    The cache entry's name is a sha256 of the inputs, of encode.py's own source and of every
    parameter, so any change to them builds a new entry. The inputs are the split files and
    the session files the reader uses, or synthetic.py's source and the seed.
    ``cache_dir=None`` disables the cache.
    """
    params = dict(k=k, resolution=resolution, align=align, min_confidence=min_confidence,
                  on_bad_session=on_bad_session, au=au, landmarks=landmarks)
    key = cache_key(root, seed=seed, **params) if cache_dir is not None else None
    if key is not None:
        cached = _read_cache(Path(cache_dir), key)
        if cached is not None:
            log.info("encoded cohort read from the cache %s", Path(cache_dir) / f"{key}.npz")
            return cached

    cohort = _load_source(root, seed, params)
    encoded = encode_cohort(cohort, k, resolution, align, on_bad_session)
    encoded.params.update(params, source="synthetic" if root is None else str(root),
                          seed=seed if root is None else None, cache_key=key)
    if key is not None:
        _write_cache(Path(cache_dir), key, encoded)
    return encoded


def _load_source(root, seed: int, params: dict) -> Cohort:
    options = dict(min_confidence=params["min_confidence"], au=params["au"],
                   landmarks=params["landmarks"])
    if root is not None:
        return load_cohort(root, on_bad_session=params["on_bad_session"], **options)

    import synthetic  # imported here: the synthetic cohort is only needed without a data root

    cohort = synthetic.make_cohort(seed=seed)
    if options != dict(min_confidence=0.8, au="r", landmarks="2d"):
        # make_cohort cleans with the defaults; clean its raw tables again with these options.
        cohort.sessions = {p: build_session(p, cohort.tables[p], s.source, **options)
                           for p, s in cohort.sessions.items()}
    return cohort


def cache_key(root=None, *, seed: int = 0, **params) -> str:
    """sha256 (hex) of the inputs' contents, encode.py's source and the parameters."""
    digest = hashlib.sha256()
    digest.update(CACHE_FORMAT.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())

    if root is None:
        digest.update(_synthetic_source().read_bytes())
        digest.update(f"seed={seed}".encode())
    else:
        for name, content in _input_digests(Path(root), params.get("landmarks", "2d")):
            digest.update(f"{name}\0{content}\0".encode())
    return digest.hexdigest()


def _synthetic_source() -> Path:
    """Locate synthetic.py: beside encode.py, else wherever ``import synthetic`` finds it."""
    beside = Path(__file__).with_name("synthetic.py")
    if beside.is_file():
        return beside
    spec = importlib.util.find_spec("synthetic")
    if spec is None or spec.origin is None:
        raise DataError(f"synthetic.py not found beside {Path(__file__).name} or on the import "
                        "path; give a data root instead")
    return Path(spec.origin)


def _input_digests(root: Path, landmarks: str) -> list[tuple[str, str]]:
    """(name, content digest) of every split file and session file the reader would use.

    Files in folders are hashed whole. Archive members are identified by their CRC-32 and size
    from the archive's directory, which avoids reading archives of several hundred MB.
    NOTE: so a change to an archive member that keeps its CRC-32 and size (a 1 in 2**32
    chance for a random change) would reuse a stale cache entry.
    """
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; give the folder that contains the NNN_P "
                        "sessions")
    entries = [(p.name, _file_digest(p)) for p in find_label_files(root)]
    kinds = _needed_kinds(landmarks)
    for participant, path in find_sessions(root).items():
        if path.is_dir():
            names = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
            used = list(_match_members(names, kinds, str(path)).values())
            used += [n for n in [_edaic_member(names, str(path))] if n and not used]
            entries += [(f"{participant}/{n}", _file_digest(path / n)) for n in used]
        else:
            entries += _archive_digests(participant, path)
    return entries


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _archive_digests(participant: str, path: Path) -> list[tuple[str, str]]:
    try:
        with zipfile.ZipFile(path) as archive:
            return [(f"{participant}/{i.filename}", f"{i.CRC:08x}:{i.file_size}")
                    for i in archive.infolist() if _is_data_member(i.filename)]
    except (zipfile.BadZipFile, OSError):
        return [(f"{participant}/{path.name}", _file_digest(path))]


def _write_cache(folder: Path, key: str, encoded: EncodedCohort) -> None:
    """Write the arrays (.npz), then the metadata (.json); each atomically via os.replace."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": encoded.labels, "participants": np.array(encoded.participants, dtype=str),
              "splits": np.array(encoded.splits, dtype=str)}
    arrays.update({f"features_{a}": f for a, f in encoded.features.items()})
    meta = {"format": CACHE_FORMAT, "attributes": list(encoded.features),
            "channels": encoded.channels, "params": encoded.params, "skipped": encoded.skipped}

    _write_atomic(folder / f"{key}.npz", lambda handle: np.savez(handle, **arrays))
    _write_atomic(folder / f"{key}.json",
                  lambda handle: handle.write(json.dumps(meta, indent=1).encode()))
    log.info("encoded cohort cached in %s", folder / f"{key}.npz")


def _write_atomic(path: Path, write) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def _read_cache(folder: Path, key: str) -> EncodedCohort | None:
    """Read a cached cohort; return None when absent or unreadable (a warning names the entry)."""
    arrays, meta = folder / f"{key}.npz", folder / f"{key}.json"
    if not (arrays.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        with np.load(arrays, allow_pickle=False) as data:
            encoded = EncodedCohort(
                participants=[str(p) for p in data["participants"]],
                features={a: data[f"features_{a}"] for a in info["attributes"]},
                labels=data["labels"], splits=[str(s) for s in data["splits"]],
                channels=info["channels"], params=info["params"], skipped=info["skipped"])
        _check_cached(encoded)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        log.warning("cache entry %s is unreadable (%s); rebuilding it", arrays, err)
        return None
    return encoded


def _check_cached(encoded: EncodedCohort) -> None:
    count = len(encoded.participants)
    sizes = [len(encoded.labels), len(encoded.splits)] + [len(f) for f in encoded.features.values()]
    if any(size != count for size in sizes):
        raise ValueError(f"row counts {sizes} differ from {count} participants")


# ---------------------------------------------------------------------------
# Command line: summaries of a session, an OpenFace file or a data root
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    """Print a summary of a session (or one OpenFace CSV) or of every session under a root."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    options = dict(min_confidence=args.min_confidence, au=args.au, landmarks=args.landmarks)
    encoding = dict(k=args.k, resolution=args.resolution, align=args.align)
    try:
        if _is_root(Path(args.path)):
            cohort = load_cohort(args.path, on_bad_session=args.on_bad_session, **options)
            _print_cohort(cohort, encoding)
        else:
            if not _print_session(load_session(args.path, **options), encoding):
                return 1
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Summarise OpenFace recordings: channels, kept "
                                     "and dropped frames, frame rate and encoded shapes.")
    parser.add_argument("path", help="a session folder NNN_P, an archive NNN_P.zip, an "
                        "OpenFace CSV file, or a data root with split files")
    parser.add_argument("--align", choices=ALIGNMENTS, default="select",
                        help="frequency alignment of the spectra (default: select)")
    parser.add_argument("--resolution", type=int, default=256,
                        help="frequency resolution R, in bins (default: 256)")
    parser.add_argument("--k", type=int, default=120,
                        help="retained frequency columns K (default: 120)")
    parser.add_argument("--min-confidence", type=float, default=0.8,
                        help="lowest tracker confidence of a kept frame, 0-1 (default: 0.8)")
    parser.add_argument("--au", choices=("r", "c", "both"), default="r",
                        help="action unit channels: r intensity, c presence (default: r)")
    parser.add_argument("--landmarks", choices=("2d", "3d"), default="2d",
                        help="landmark coordinates: 2d pixels or 3d millimetres (default: 2d)")
    parser.add_argument("--on-bad-session", choices=BAD_SESSION_CHOICES, default="error",
                        help="for a root: stop at a bad or missing session, or skip it "
                        "(default: error)")
    return parser


def _is_root(path: Path) -> bool:
    return path.is_dir() and bool(find_label_files(path))


def _print_session(session: Session, encoding: dict) -> bool:
    """Print one session's summary; return False when the session cannot be encoded."""
    reasons = ", ".join(f"{k} {v}" for k, v in session.drop_reasons.items() if v) or "none"
    print(f"session {session.participant} from {session.source}")
    print(f"frames: {session.frames_kept} kept, {session.frames_dropped} dropped ({reasons})")
    print(f"duration: {session.frames_kept / session.fps:.1f} s at {session.fps:.2f} fps")

    try:
        shapes = {a: f.shape for a, f in encode_session(session, **encoding).items()}
    except DataError as err:
        shapes, note = {}, f"not encoded: {err}"
    else:
        note = f"encoded with align={encoding['align']}, resolution {encoding['resolution']}"
    print(f"{'attribute':<10} {'channels':>8}  {'encoded':<12} first channels")
    for attr, names in session.channels.items():
        first = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        shape = "x".join(map(str, shapes[attr])) if attr in shapes else "-"
        print(f"{attr:<10} {len(names):>8}  {shape:<12} {first}")
    print(note)
    return bool(shapes)


def _print_cohort(cohort: Cohort, encoding: dict) -> None:
    print(f"cohort under {cohort.root}: {len(cohort.sessions)} sessions, "
          f"{len(cohort.skipped)} skipped")
    print(f"{'split':<6} {'sessions':>8} {'labelled':>8} {'mean':>6} {'sd':>6} {'min':>4} "
          f"{'max':>4} {'>=10':>6}")
    for split in ("train", "dev", "test"):
        members = [p for p, s in cohort.splits.items() if s == split]
        scores = np.array([cohort.labels[p] for p in members if cohort.labels[p] is not None])
        stats = (f"{scores.mean():>6.2f} {scores.std(ddof=1) if len(scores) > 1 else 0:>6.2f} "
                 f"{scores.min():>4.0f} {scores.max():>4.0f} {(scores >= PHQ8_CUTOFF).mean():>6.2f}"
                 if len(scores) else f"{'-':>6} {'-':>6} {'-':>4} {'-':>4} {'-':>6}")
        print(f"{split:<6} {len(members):>8} {len(scores):>8} {stats}")

    print(f"\n{'participant':<12} {'split':<6} {'score':>5} {'kept':>7} {'dropped':>7} "
          f"{'fps':>6} {'seconds':>8}")
    for participant in sorted(cohort.sessions, key=_id_key):
        s, score = cohort.sessions[participant], cohort.labels[participant]
        print(f"{participant:<12} {cohort.splits[participant]:<6} "
              f"{'-' if score is None else f'{score:.0f}':>5} {s.frames_kept:>7} "
              f"{s.frames_dropped:>7} {s.fps:>6.2f} {s.frames_kept / s.fps:>8.1f}")
    for participant, reason in cohort.skipped.items():
        print(f"skipped {participant}: {reason}")

    if cohort.sessions:
        first = cohort.sessions[min(cohort.sessions, key=_id_key)]
        shapes = {a: f.shape for a, f in encode_session(first, **encoding).items()}
        print("encoded shapes per session: " + ", ".join(f"{a} {s}" for a, s in shapes.items()))


if __name__ == "__main__":
    sys.exit(main())
