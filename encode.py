"""Read OpenFace-family recordings and labels, clean frames, and encode spectra.

Inputs: DAIC-WOZ sessions (a folder ``NNN_P/`` or an archive ``NNN_P.zip`` with the five
``NNN_CLNF_*.txt`` files, or ``NNN_CLM_*`` in the AVEC 2016 release), E-DAIC sessions
(``NNN_P/features/NNN_OpenFace2.1.0_Pose_gaze_AUs.csv``), single OpenFace 1.x/2.x CSV files,
and the AVEC 2016/2017 and E-DAIC split files with PHQ-8 scores.

Method: each session is cleaned (one face, frames ordered and unique, failed, low-confidence
and non-finite frames removed, per-channel median subtracted except for landmarks) and every
facial attribute time series is summarised by the fixed-size amplitude and phase spectra of
Song et al., "Spectral representation of behaviour primitives for depression analysis",
IEEE Trans. Affective Computing, 2020, with their "select" or "resample" frequency alignment.

Shape legend used in comments across the repository: B batch, S streams, T frames,
K frequency columns, C channels, N nodes, E edges, H hidden, D fused size.

Summarise a session, an OpenFace CSV or a whole data root:
``python encode.py ../shared/data/real/video2.csv``.
"""

from __future__ import annotations

import io
import logging
import re
import struct
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
MIN_KEPT_FRAMES = 50

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
    if end < 0 or not data[end + 1:].strip():
        raise DataError(f"{name}: the file has a header but no data rows; "
                        "check that the recording was written completely")
    if b"#" in data or b"(ind)" in data:
        data = _normalise_nan_spellings(data)
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
    return columns


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
    for number, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), start=2):
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


def _find_columns(table: Table, wanted: list[tuple[str, str]], what: str) -> list[int]:
    """Column indices of (canonical, file) name pairs; a DataError lists any that are missing."""
    position = {c: i for i, c in enumerate(table.columns)}
    missing = [raw for _, raw in wanted if raw not in position]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise DataError(f"{table.path}: missing {len(missing)} {what} column(s): {shown}; "
                        "check that the file is the OpenFace output with that attribute enabled")
    return [position[raw] for _, raw in wanted]


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
    wanted = {"au": "AUs", "gaze": "gaze", "pose": "pose", "landmarks": landmark_kind}
    missing = sorted({kind for kind in wanted.values() if kind not in tables})
    if missing:
        raise DataError(f"{source}: missing DAIC-WOZ file(s) for {', '.join(missing)} "
                        f"(expected names ending in _CLNF_{missing[0]}.txt or _CLM_{missing[0]}.txt)")

    names = {"au": _au_names(tables["AUs"], au), "gaze": _gaze_names(tables["gaze"], True),
             "pose": _pose_names(True), "landmarks": _landmark_names(landmarks, True)}
    return {attr: (kind, _find_columns(tables[kind], names[attr], attr), _canonical(names[attr]))
            for attr, kind in wanted.items()}


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
    spatial information.
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


def _check_kept(participant: str, source: str, kept: int, reasons: dict[str, int]) -> None:
    if kept >= MIN_KEPT_FRAMES:
        return
    dropped = ", ".join(f"{k} {v}" for k, v in reasons.items() if v)
    raise DataError(f"{source}: participant {participant} has {kept} usable frames, fewer than "
                    f"the minimum of {MIN_KEPT_FRAMES} (dropped: {dropped or 'none'}); lower "
                    "min_confidence or skip the session with on_bad_session='skip'")


def estimate_fps(timestamps: np.ndarray, frames: np.ndarray, source: str) -> float:
    """Frame rate from the median timestamp step per frame, or DEFAULT_FPS when implausible."""
    steps = np.diff(timestamps) / np.maximum(np.diff(frames), 1)
    if np.any(steps < 0):
        log.warning("%s: timestamps decrease %d times in frame order; the frame rate estimate "
                    "uses the median step", source, int((steps < 0).sum()))
    steps = steps[np.isfinite(steps) & (steps > 0)]
    fps = 1.0 / np.median(steps) if len(steps) else np.nan

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
    """The one name per DAIC file kind that ends in its suffix; missing kinds are left out."""
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
        return {kind: read_table(folder / found[kind]) for kind in kinds}

    edaic = _edaic_member(names, str(folder))
    if edaic is None:
        raise DataError(f"{folder}: no DAIC-WOZ files (NNN_CLNF_AUs.txt, ...) and no E-DAIC file "
                        "(features/NNN_OpenFace2.1.0_Pose_gaze_AUs.csv); is this a session folder?")
    return {"openface": read_table(folder / edaic)}


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
                raise DataError(f"{path}: the archive holds no DAIC-WOZ CLNF/CLM files and no "
                                "E-DAIC OpenFace file; is this a session archive?")
            return {"openface": _read_member(archive, path, edaic, kinds)}
        if any(k not in found for k in kinds):
            raise _missing_files_error(str(path), kinds, found)
        return {kind: _read_member(archive, path, found[kind], kinds) for kind in kinds}


def _read_member(archive: zipfile.ZipFile, path: Path, member: str,
                 kinds: tuple[str, ...]) -> Table:
    try:
        data = archive.read(member)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise _corrupt_archive_error(path, kinds, err) from err
    return read_table(data, f"{path}:{member}")


def _corrupt_archive_error(path: Path, kinds: tuple[str, ...], err: Exception) -> DataError:
    """A DataError that lists which needed members a scan of the archive's entries finds whole."""
    complete = _complete_members(path)
    found = _match_members(complete, kinds, str(path))
    unreadable = [k for k in kinds if k not in found]
    prefix = path.name.split("_")[0]
    listing = ("needed files that could not be read: "
               + ", ".join(f"{prefix}_CLNF_{k}.txt" for k in unreadable)
               if unreadable else "every needed file has a complete entry")
    return DataError(f"{path}: the archive is truncated or corrupt ({err}); {listing}; "
                     "download the archive again or set on_bad_session='skip'")


def _complete_members(path: Path) -> list[str]:
    """Names of the entries whose data lies wholly inside the file, from its local headers.

    A truncated archive has no central directory, so the entries are found by walking the
    local file headers from the start; the walk stops at the first entry that is cut off or
    whose size is only given after its data.
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
    if flags & 0x08 and compressed == 0 or compressed is None:
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
