"""Tests of encode.py: parsing, cleaning, labels, cohorts, spectral encoding and the cache.

Oracles: the spectral reference vectors (computed with Song et al.'s MATLAB code), a direct
full-length numpy FFT, the two real OpenFace files, and small files written here with known
contents. Run with ``python -m pytest test_encode.py``.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

import encode
from encode import DataError

# Reference spectra from the original MATLAB implementation and two real OpenFace files,
# shipped with their provenance and licences.
TESTDATA = Path(__file__).resolve().parent / "testdata"
FIXTURES = TESTDATA / "spectral"
REAL = TESTDATA / "real"

AU_NAMES = ["AU01_r", "AU02_r", "AU04_r", "AU12_r", "AU04_c", "AU12_c"]
META = ["frame", "timestamp", "confidence", "success"]


# ---------------------------------------------------------------------------
# Helpers that write small files in the real layouts
# ---------------------------------------------------------------------------

def daic_columns(kind: str) -> list[str]:
    body = {"AUs": AU_NAMES,
            "features": [f"{a}{i}" for a in "xy" for i in range(68)],
            "features3D": [f"{a}{i}" for a in "XYZ" for i in range(68)],
            "gaze": [f"{a}_{e}" for e in ("0", "1", "h0", "h1") for a in "xyz"],
            "pose": ["Tx", "Ty", "Tz", "Rx", "Ry", "Rz"]}[kind]
    return META + body


def openface_columns(face_id: bool = False) -> list[str]:
    meta = ["frame", "face_id"] + META[1:] if face_id else META
    gaze = [f"gaze_{e}_{a}" for e in "01" for a in "xyz"]
    pose = [f"pose_{p}" for p in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")]
    landmarks = [f"{a}_{i}" for a in "xy" for i in range(68)]
    return meta + gaze + pose + landmarks + AU_NAMES


def make_values(columns: list[str], n: int, seed: int = 0) -> np.ndarray:
    """Random rows with frame 1..n, 30 fps timestamps, confidence 0.95 and success 1."""
    values = np.random.default_rng(seed).normal(size=(n, len(columns))).round(4)
    values[:, columns.index("frame")] = np.arange(1, n + 1)
    values[:, columns.index("timestamp")] = np.round(np.arange(n) / 30, 3)
    values[:, columns.index("confidence")] = 0.95
    values[:, columns.index("success")] = 1
    if "face_id" in columns:
        values[:, columns.index("face_id")] = 0
    return values


def csv_text(columns, values, sep=", ", newline="\n", final_newline=True, tokens=None) -> str:
    """File text; ``tokens`` maps (row, column index) to a literal field text."""
    cells = [[f"{v:.6g}" for v in row] for row in values]
    for (row, column), token in (tokens or {}).items():
        cells[row][column] = token
    lines = [", ".join(columns)] + [sep.join(row) for row in cells]
    return newline.join(lines) + (newline if final_newline else "")


def write_daic(folder: Path, participant="300", n=300, edit=None, tokens=None) -> Path:
    """A DAIC-WOZ session folder; ``edit(kind, columns, values)`` may change a file's values."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, kind in enumerate(encode.DAIC_KINDS):
        columns = daic_columns(kind)
        values = make_values(columns, n, seed)
        if edit:
            values = edit(kind, columns, values)
        text = csv_text(columns, values, tokens=(tokens or {}).get(kind))
        (folder / f"{participant}_CLNF_{kind}.txt").write_text(text)
    return folder


def write_openface(path: Path, values=None, columns=None, **text_options) -> Path:
    columns = columns or openface_columns()
    values = make_values(columns, 300) if values is None else values
    path.write_text(csv_text(columns, values, **text_options))
    return path


def zip_folder(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name)
    return archive


AVEC2017_HEADER = ("Participant_ID,PHQ8_Binary,PHQ8_Score,Gender,PHQ8_NoInterest,"
                   "PHQ8_Depressed,PHQ8_Sleep,PHQ8_Tired,PHQ8_Appetite,PHQ8_Failure,"
                   "PHQ8_Concentrating,PHQ8_Moving")

AVEC2016_HEADER = "Participant_ID,PHQ_Binary,PHQ_Score,Gender"

SPLIT_LAYOUTS = {
    "avec2016": {"training_split.csv": AVEC2016_HEADER + "\r\n300,0,3,1\r\n",
                 "dev_split.csv": AVEC2016_HEADER + "\r\n301,1,12,0\r\n",
                 "test_split.csv": "participant_ID,Gender\n302,1\n"},
    "avec2017": {"train_split_Depression_AVEC2017.csv":
                 AVEC2017_HEADER + "\n300,0,3,1,0,1,0,1,0,1,0,0\n",
                 "dev_split_Depression_AVEC2017.csv":
                 AVEC2017_HEADER + "\n301,1,12,0,2,2,1,2,1,2,1,1\n",
                 "test_split_Depression_AVEC2017.csv": "participant_ID,Gender\n302,1\n",
                 "full_test_split.csv": "Participant_ID,PHQ_Binary,PHQ_Score,Gender\n302,1,17,1\n"},
    "edaic": {f"labels/{s}_split.csv":
              "Participant_ID,Gender,PHQ_Binary,PHQ_Score,PCL-C (PTSD),PTSD Severity\n"
              f"{p},male,{int(v >= 10)},{v},0,20\n"
              for s, p, v in (("train", 300, 3), ("dev", 301, 12), ("test", 302, 17))},
}
LAYOUT_LABELS = {"avec2016": {"300": 3.0, "301": 12.0, "302": None},
                 "avec2017": {"300": 3.0, "301": 12.0, "302": 17.0},
                 "edaic": {"300": 3.0, "301": 12.0, "302": 17.0}}


def write_splits(root: Path, layout: str) -> None:
    for name, text in SPLIT_LAYOUTS[layout].items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode())


def write_root(root: Path, layout="avec2017", participants=("300", "301", "302")) -> Path:
    write_splits(root, layout)
    for seed, participant in enumerate(participants):
        write_daic(root / f"{participant}_P", participant, n=280 + seed)
    return root


# ---------------------------------------------------------------------------
# Spectral encoding
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("align", ["select", "resample"])
@pytest.mark.parametrize("length", [500, 1001])
def test_spectral_matches_fixture(align, length):
    x = np.load(FIXTURES / f"input_L{length}.npy")
    ref_amp = np.load(FIXTURES / f"{align}_L{length}_R256_N120_amp.npy")
    ref_phase = np.load(FIXTURES / f"{align}_L{length}_R256_N120_phase.npy")

    amp, phase = encode.spectral_encode(x, k=120, resolution=256, align=align)

    assert amp.shape == ref_amp.shape
    assert np.abs(amp - ref_amp).max() <= 1e-12
    complex_error = np.abs(amp * np.exp(1j * phase) - ref_amp * np.exp(1j * ref_phase)).max()
    assert complex_error <= 1e-12


@pytest.mark.parametrize("length", [256, 257, 511, 512, 1001, 5000])
def test_spectral_select_shape(length):
    x = np.random.default_rng(length).normal(size=(3, length))
    amp, phase = encode.spectral_encode(x, align="select")
    assert amp.shape == (3, 120)
    assert phase.shape == (3, 120)


@pytest.mark.parametrize("length", [10, 100, 999])
def test_spectral_resample_shape(length):
    x = np.random.default_rng(length).normal(size=(3, length))
    amp, phase = encode.spectral_encode(x, align="resample")
    assert amp.shape == (3, 120)
    assert phase.shape == (3, 120)


@pytest.mark.parametrize("align", ["select", "resample"])
def test_spectral_constant_channel_phase_zero(align):
    t = np.arange(700)
    x = np.stack([np.full(700, 3.5), np.sin(2 * np.pi * 0.05 * t)])
    _, phase = encode.spectral_encode(x, align=align)
    assert np.all(phase[0] == 0.0)


def test_spectral_empty_bins_phase_zero():
    # A cosine on bin 5 of R = 256 fills column 6 only; every other bin is rounding noise.
    t = np.arange(512)
    x = np.cos(2 * np.pi * 5 * t / 256)[None, :]
    amp, phase = encode.spectral_encode(x, align="select")
    others = np.delete(np.arange(120), 6)
    assert amp[0, 6] == pytest.approx(0.5, abs=1e-12)
    assert np.all(phase[0, others] == 0.0)


def test_spectral_select_rejects_short_series():
    x = np.zeros((2, 100))
    with pytest.raises(DataError, match="100 frames") as error:
        encode.spectral_encode(x, align="select", participant="317")
    assert "317" in str(error.value)
    assert "align='resample'" in str(error.value)


def test_spectral_select_rejects_large_k():
    with pytest.raises(DataError, match="resolution >= 238"):
        encode.spectral_encode(np.zeros((1, 300)), k=120, resolution=200)


@pytest.mark.parametrize("name, value", [("k", 0), ("k", -3), ("k", 12.0), ("k", True),
                                         ("resolution", 0), ("resolution", -256),
                                         ("resolution", 256.0)])
def test_spectral_rejects_bad_sizes(name, value):
    with pytest.raises(ValueError, match=rf"{name}={value!r} is invalid.*integer >= 1"):
        encode.spectral_encode(np.zeros((1, 300)), **{name: value})


def test_spectral_rejects_complex():
    x = np.ones((1, 300)) * (1 + 2j)
    with pytest.raises(ValueError, match="complex dtype complex128"):
        encode.spectral_encode(x)


@pytest.mark.parametrize("length", [256, 777, 1300])
def test_spectral_folding_equals_full_fft(length):
    # Oracle: the DFT of the whole trimmed series, sampled every m bins.
    x = np.random.default_rng(length).normal(size=(2, length))
    resolution, k = 256, 120
    m = length // resolution
    start = (length - m * resolution + 1) // 2
    trimmed = x[:, start:start + m * resolution]
    trimmed = trimmed - np.median(trimmed, axis=1, keepdims=True)
    full = np.fft.fft(trimmed, axis=1) / (m * resolution)
    expected = np.concatenate([full[:, [m * resolution // 2]], full[:, :m * (k - 1):m]], axis=1)

    amp, phase = encode.spectral_encode(x, k=k, resolution=resolution, align="select")
    assert np.abs(amp * np.exp(1j * phase) - expected).max() <= 1e-12


def test_spectral_rejects_non_finite():
    x = np.ones((1, 300))
    x[0, 5] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        encode.spectral_encode(x)


# ---------------------------------------------------------------------------
# The two real OpenFace files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, frames", [("video2.csv", 608), ("OpenFace_Test.csv", 100)])
def test_real_file_loads(name, frames):
    session = encode.load_session(REAL / name)
    assert session.frames_kept == frames
    assert session.attributes["landmarks"].shape == (frames, 136)
    assert session.attributes["pose"].shape == (frames, 6)
    assert session.attributes["gaze"].shape == (frames, 6)
    assert session.attributes["au"].shape == (frames, 17)


def test_real_video2_fps_from_timestamps():
    session = encode.load_session(REAL / "video2.csv")
    assert session.fps == pytest.approx(29.75, abs=0.01)


def test_fps_from_millisecond_timestamps(tmp_path):
    # Timestamps rounded to 1 ms (0.033, 0.067, ...) have a median step of 0.033 s.
    session = encode.load_session(write_daic(tmp_path / "300_P"))
    assert session.fps == pytest.approx(30.0, abs=0.01)


def test_real_openface_test_fps_fallback():
    # Its timestamps advance 1 ms per frame, which is implausible.
    session = encode.load_session(REAL / "OpenFace_Test.csv")
    assert session.fps == encode.DEFAULT_FPS


def test_real_video2_encodes_select():
    session = encode.load_session(REAL / "video2.csv")
    features = encode.encode_session(session, resolution=256, align="select")
    assert features["au"].shape == (34, 120)
    assert features["gaze"].shape == (12, 120)
    assert features["pose"].shape == (12, 120)
    assert features["landmarks"].shape == (68, 480)


def test_real_openface_test_needs_resample():
    session = encode.load_session(REAL / "OpenFace_Test.csv")
    features = encode.encode_session(session, align="resample")
    assert features["landmarks"].shape == (68, 480)
    with pytest.raises(DataError, match="align='resample'"):
        encode.encode_session(session, align="select")


def test_cli_unencodable_session_fails(capsys):
    assert encode.main([str(REAL / "OpenFace_Test.csv")]) == 1
    assert "not encoded:" in capsys.readouterr().out


def test_real_file_values_parsed():
    # video2.csv separates non-AU fields with a comma and two spaces; frame 1's pose_Tz.
    table = encode.read_table(REAL / "video2.csv")
    first = [line for line in (REAL / "video2.csv").read_text().splitlines()[1:2]][0]
    expected = float(first.split(",")[table.columns.index("pose_Tz")])
    assert table.values[0, table.columns.index("pose_Tz")] == expected


def test_cli_summarises_real_file(capsys):
    assert encode.main([str(REAL / "video2.csv")]) == 0
    output = capsys.readouterr().out
    assert "608 kept" in output
    assert "29.75 fps" in output
    assert "68x480" in output


# ---------------------------------------------------------------------------
# Parsing variants
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sep", [", ", ",", ",  "])
def test_read_separators(tmp_path, sep):
    columns = openface_columns()
    values = make_values(columns, 5)
    table = encode.read_table(write_openface(tmp_path / "a.csv", values, sep=sep))
    assert table.columns == columns
    np.testing.assert_array_equal(table.values, values)


def test_read_crlf_without_final_newline(tmp_path):
    columns = openface_columns()
    values = make_values(columns, 4)
    path = write_openface(tmp_path / "a.csv", values, newline="\r\n", final_newline=False)
    table = encode.read_table(path)
    np.testing.assert_array_equal(table.values, values)


def test_read_bytes_matches_path(tmp_path):
    path = write_openface(tmp_path / "a.csv", make_values(openface_columns(), 4))
    from_bytes = encode.read_table(path.read_bytes(), "a.zip:a.csv")
    assert from_bytes.path == "a.zip:a.csv"
    np.testing.assert_array_equal(from_bytes.values, encode.read_table(path).values)


@pytest.mark.parametrize("token", ["-1.#IND", "1.#IND", "-1.#QNAN", "1.#QNAN", "nan", "NaN",
                                   "inf", "-inf"])
def test_read_nan_spelling(tmp_path, token):
    columns = openface_columns()
    path = write_openface(tmp_path / "a.csv", make_values(columns, 4), tokens={(2, 10): token})
    table = encode.read_table(path)
    assert np.isnan(table.values[2, 10])
    assert np.isfinite(np.delete(table.values.ravel(), 2 * len(columns) + 10)).all()


def test_nan_spelling_drops_frame(tmp_path):
    tokens = {"pose": {(7, 5): "-1.#IND"}, "AUs": {(9, 4): "1.#QNAN"}}
    session = encode.load_session(write_daic(tmp_path / "300_P", tokens=tokens))
    assert session.drop_reasons["non_finite"] == 2
    assert session.frames_kept == 298


def test_read_unparseable_value(tmp_path):
    path = write_openface(tmp_path / "a.csv", make_values(openface_columns(), 4),
                          tokens={(2, 7): "12.5x"})
    with pytest.raises(DataError, match=r"line 4, column 8 \(gaze_1_x\)") as error:
        encode.read_table(path)
    assert "'12.5x'" in str(error.value)


def test_read_ragged_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("frame, timestamp\n1, 0.0\n2, 0.1, 7\n")
    with pytest.raises(DataError, match="line 3: 3 fields"):
        encode.read_table(path)


def test_read_header_without_rows(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(", ".join(openface_columns()) + "\r\n\r\n")
    with pytest.raises(DataError, match="no data rows"):
        encode.read_table(path)


def test_read_missing_header(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("1, 0.0\n2, 0.1\n")
    with pytest.raises(DataError, match="header"):
        encode.read_table(path)


def test_read_duplicate_column(tmp_path):
    columns = openface_columns()
    columns[columns.index("gaze_1_y")] = "gaze_0_y"
    path = write_openface(tmp_path / "a.csv", make_values(columns, 4), columns)
    with pytest.raises(DataError, match=r"a\.csv, line 1: column name 'gaze_0_y' appears twice"):
        encode.read_table(path)


# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------

def with_rows(rows, column, value):
    """An edit for write_daic that sets one metadata column on the given rows of every file."""
    def edit(kind, columns, values):
        values[rows, columns.index(column)] = value
        return values
    return edit


def test_failed_frames_dropped(tmp_path):
    # Failed frames carry non-zero junk (the tracker's stale state), not zeros.
    def edit(kind, columns, values):
        values[[3, 4, 5], columns.index("success")] = 0
        values[[3, 4, 5], 4:] = 1e6
        return values
    session = encode.load_session(write_daic(tmp_path / "300_P", edit=edit))
    assert session.drop_reasons["failed"] == 3
    assert session.frames_kept == 297
    assert np.abs(session.attributes["landmarks"]).max() < 1e3


def test_low_confidence_dropped(tmp_path):
    folder = write_daic(tmp_path / "300_P", edit=with_rows([10, 11], "confidence", 0.5))
    session = encode.load_session(folder, min_confidence=0.8)
    assert session.drop_reasons["low_confidence"] == 2
    assert session.frames_kept == 298


def test_min_confidence_option(tmp_path):
    folder = write_daic(tmp_path / "300_P", edit=with_rows([10, 11], "confidence", 0.5))
    session = encode.load_session(folder, min_confidence=0.4)
    assert session.frames_kept == 300


def test_failed_in_one_file_drops_frame_everywhere(tmp_path):
    def edit(kind, columns, values):
        if kind == "gaze":
            values[20, columns.index("success")] = 0
        return values
    session = encode.load_session(write_daic(tmp_path / "300_P", edit=edit))
    assert session.drop_reasons["failed"] == 1
    assert all(len(x) == 299 for x in session.attributes.values())


def test_face_with_most_successes_kept(tmp_path):
    # Face 0 on 300 frames (40 failed), face 1 on frames 1-280 (all successful).
    columns = openface_columns(face_id=True)
    face0 = make_values(columns, 300, seed=1)
    face0[:40, columns.index("success")] = 0
    face1 = make_values(columns, 280, seed=2)
    face1[:, columns.index("face_id")] = 1
    path = write_openface(tmp_path / "multi.csv", np.concatenate([face0, face1]), columns)

    session = encode.load_session(path)
    assert session.drop_reasons["other_face"] == 300
    assert session.frames_kept == 280
    pose = face1[:, columns.index("pose_Tx")]
    np.testing.assert_allclose(session.attributes["pose"][:, 0], pose - np.median(pose))


def test_duplicate_frames_keep_first(tmp_path):
    columns = openface_columns()
    values = make_values(columns, 300)
    repeat = values[[50, 51]].copy()
    repeat[:, columns.index("pose_Tx")] = 1e3
    values = np.concatenate([values[::-1], repeat])  # frames out of order, repeats last
    path = write_openface(tmp_path / "a.csv", values, columns)

    session = encode.load_session(path)
    assert session.drop_reasons["duplicate"] == 2
    assert session.frames_kept == 300
    assert session.attributes["pose"][:, 0].max() < 1e3 - 10


def test_frames_ordered(tmp_path):
    columns = openface_columns()
    values = make_values(columns, 300)
    path = write_openface(tmp_path / "a.csv", values[::-1], columns)
    session = encode.load_session(path)
    x = values[:, columns.index("x_0")]
    np.testing.assert_array_equal(session.attributes["landmarks"][:, 0], x)


def test_unaligned_frames_use_intersection(tmp_path):
    def edit(kind, columns, values):
        return values[:-5] if kind == "pose" else values
    session = encode.load_session(write_daic(tmp_path / "300_P", edit=edit))
    assert session.drop_reasons["unaligned"] == 5
    assert session.frames_kept == 295


def test_median_subtracted_except_landmarks(tmp_path):
    columns = openface_columns()
    values = make_values(columns, 300) + 5.0
    values[:, :len(META)] = make_values(columns, 300)[:, :len(META)]
    path = write_openface(tmp_path / "a.csv", values, columns)
    session = encode.load_session(path)

    for attr in encode.CNN_ATTRIBUTES:
        assert np.abs(np.median(session.attributes[attr], axis=0)).max() <= 1e-12
    raw = encode.read_table(path)
    x0 = raw.values[:, raw.columns.index("x_0")]
    np.testing.assert_array_equal(session.attributes["landmarks"][:, 0], x0)


def test_too_few_kept_frames(tmp_path):
    folder = write_daic(tmp_path / "300_P", edit=with_rows(slice(20, None), "success", 0))
    with pytest.raises(DataError, match="20 usable frames"):
        encode.load_session(folder)


def test_too_few_frames_advice_names_reason(tmp_path):
    failed = write_daic(tmp_path / "300_P", edit=with_rows(slice(20, None), "success", 0))
    with pytest.raises(DataError, match="tracker failed on 280 frames") as error:
        encode.load_session(failed)
    assert "min_confidence" not in str(error.value)
    assert "--on-bad-session skip" in str(error.value)


def test_too_few_frames_low_confidence_advice(tmp_path):
    folder = write_daic(tmp_path / "300_P", edit=with_rows(slice(20, None), "confidence", 0.1))
    with pytest.raises(DataError, match="lower min_confidence .* dropped 280 frames"):
        encode.load_session(folder)


# ---------------------------------------------------------------------------
# Session layouts
# ---------------------------------------------------------------------------

def test_daic_folder_channels(tmp_path):
    session = encode.load_session(write_daic(tmp_path / "300_P"))
    assert session.participant == "300"
    assert session.channels["au"] == ["AU01_r", "AU02_r", "AU04_r", "AU12_r"]
    assert session.channels["gaze"][-1] == "gaze_h1_z"
    assert len(session.channels["gaze"]) == 12
    assert session.channels["pose"][0] == "pose_Tx"
    assert session.channels["landmarks"][68] == "y_0"


@pytest.mark.parametrize("au, count", [("r", 4), ("c", 2), ("both", 6)])
def test_au_option(tmp_path, au, count):
    session = encode.load_session(write_daic(tmp_path / "300_P"), au=au)
    assert session.attributes["au"].shape == (300, count)


def test_landmarks_3d(tmp_path):
    session = encode.load_session(write_daic(tmp_path / "300_P"), landmarks="3d")
    assert session.attributes["landmarks"].shape == (300, 204)
    assert session.channels["landmarks"][136] == "Z_0"


def test_avec2016_clm_names(tmp_path):
    folder = write_daic(tmp_path / "300_P")
    for path in folder.iterdir():
        path.rename(path.with_name(path.name.replace("_CLNF_", "_CLM_")))
    assert encode.load_session(folder).frames_kept == 300


def test_zip_matches_folder(tmp_path):
    folder = write_daic(tmp_path / "src")
    junk = {"__MACOSX/300_CLNF_AUs.txt": b"\x00\x05\x16\x07junk",
            "300_P/._300_CLNF_pose.txt": b"\x00\x05\x16\x07junk"}
    archive = zip_folder(folder, tmp_path / "300_P.zip", junk)

    from_zip = encode.load_session(archive)
    from_folder = encode.load_session(folder)
    assert from_zip.participant == "300"
    for attr in encode.ATTRIBUTES:
        np.testing.assert_array_equal(from_zip.attributes[attr], from_folder.attributes[attr])


def test_folder_member_of_other_participant(tmp_path):
    folder = write_daic(tmp_path / "305_P", participant="300")
    with pytest.raises(DataError, match="305_P: the file 300_CLNF_.* participant 300, but the "
                       "session is participant 305"):
        encode.load_session(folder)


def test_zip_member_of_other_participant(tmp_path):
    archive = zip_folder(write_daic(tmp_path / "src"), tmp_path / "305_P.zip")
    with pytest.raises(DataError, match="305_P.zip: the file 300_CLNF_.* participant 300"):
        encode.load_session(archive)


def test_zip_truncated(tmp_path):
    archive = zip_folder(write_daic(tmp_path / "src"), tmp_path / "300_P.zip")
    with zipfile.ZipFile(archive) as zf:
        pose_offset = zf.getinfo("300_CLNF_pose.txt").header_offset
    archive.write_bytes(archive.read_bytes()[:pose_offset + 200])

    with pytest.raises(DataError, match="truncated or corrupt") as error:
        encode.load_session(archive)
    assert "300_P.zip" in str(error.value)
    assert "300_CLNF_pose.txt" in str(error.value)
    assert "300_CLNF_AUs.txt" not in str(error.value)


def test_missing_attribute_file(tmp_path):
    folder = write_daic(tmp_path / "300_P")
    (folder / "300_CLNF_pose.txt").unlink()
    with pytest.raises(DataError, match="CLNF_pose.txt"):
        encode.load_session(folder)


def test_missing_column(tmp_path):
    columns = [c for c in openface_columns() if c != "pose_Rz"]
    path = write_openface(tmp_path / "a.csv", make_values(columns, 300), columns)
    with pytest.raises(DataError, match="pose_Rz"):
        encode.load_session(path)


def write_edaic(root: Path, participant: str = "300") -> Path:
    """An E-DAIC session folder: pose, gaze with angles, and AUs; no landmarks."""
    columns = (META + [f"pose_{p}" for p in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")]
               + [f"gaze_{e}_{a}" for e in "01" for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
               + AU_NAMES)
    features = root / f"{participant}_P" / "features"
    features.mkdir(parents=True)
    write_openface(features / f"{participant}_OpenFace2.1.0_Pose_gaze_AUs.csv",
                   make_values(columns, 300), columns)
    return root / f"{participant}_P"


def test_edaic_folder_has_no_landmarks(tmp_path):
    session = encode.load_session(write_edaic(tmp_path))
    assert session.participant == "300"
    assert "landmarks" not in session.attributes
    assert session.attributes["gaze"].shape == (300, 8)


def test_openface2_face_id_and_gaze_angles(tmp_path):
    columns = openface_columns(face_id=True) + ["gaze_angle_x", "gaze_angle_y"]
    session = encode.load_session(write_openface(tmp_path / "b.csv",
                                                 make_values(columns, 300), columns))
    assert session.channels["gaze"][-2:] == ["gaze_angle_x", "gaze_angle_y"]


def test_landmark_node_features(tmp_path):
    session = encode.load_session(write_daic(tmp_path / "300_P"))
    nodes = encode.encode_session(session)["landmarks"]
    track = session.attributes["landmarks"][:, [5, 68 + 5]].T  # landmark 5: x and y, (2, T)
    amp, phase = encode.spectral_encode(track, subtract_median=False)
    np.testing.assert_array_equal(nodes[5], np.concatenate([amp[0], amp[1], phase[0], phase[1]]))


# ---------------------------------------------------------------------------
# Labels and cohorts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(SPLIT_LAYOUTS))
def test_split_files(tmp_path, layout):
    write_splits(tmp_path, layout)
    labels, splits = encode.read_splits(tmp_path)
    assert labels == LAYOUT_LABELS[layout]
    assert splits == {"300": "train", "301": "dev", "302": "test"}


@pytest.mark.parametrize("name, split", [
    ("training_split.csv", "train"), ("train_split_Depression_AVEC2017.csv", "train"),
    ("dev_split_Depression_AVEC2017.csv", "dev"), ("test_split_Depression_AVEC2017.csv", "test"),
    ("full_test_split.csv", "test"), ("train_split.csv", "train"), ("detailed_lables.csv", None)])
def test_split_name(name, split):
    assert encode.split_name(name) == split


def test_labels_without_scores_are_none(tmp_path):
    path = tmp_path / "test_split_Depression_AVEC2017.csv"
    path.write_text("participant_ID,Gender\n302,1\n303,0\n")
    assert encode.load_labels(path) == {"302": None, "303": None}


def test_label_out_of_range(tmp_path):
    path = tmp_path / "dev_split.csv"
    path.write_text("Participant_ID,PHQ_Binary,PHQ_Score,Gender\n301,1,12,0\n305,1,25,0\n")
    with pytest.raises(DataError, match="line 3: participant 305 has PHQ-8 score '25'"):
        encode.load_labels(path)


@pytest.mark.parametrize("value", ["12.5", "", "abc"])
def test_label_not_an_integer(tmp_path, value):
    path = tmp_path / "dev_split.csv"
    path.write_text(f"Participant_ID,PHQ_Binary,PHQ_Score,Gender\n301,1,{value},0\n")
    with pytest.raises(DataError, match="participant 301"):
        encode.load_labels(path)


def test_wrong_binary_label_logged(tmp_path, caplog):
    path = tmp_path / "train_split_Depression_AVEC2017.csv"
    path.write_text(AVEC2017_HEADER + "\n409,0,10,1,1,1,1,1,1,1,2,2\n")
    with caplog.at_level(logging.WARNING):
        labels = encode.load_labels(path)
    assert labels == {"409": 10.0}
    assert "409" in caplog.text
    assert encode.binary_labels(labels) == {"409": 1}


def test_cohort_prefers_labelled_test_split(tmp_path):
    cohort = encode.load_cohort(write_root(tmp_path, "avec2017"))
    assert cohort.labels == {"300": 3.0, "301": 12.0, "302": 17.0}
    assert cohort.splits["302"] == "test"
    assert cohort.sessions["301"].frames_kept == 281


def test_cohort_from_archives(tmp_path):
    write_splits(tmp_path, "avec2016")
    for participant in ("300", "301", "302"):
        folder = write_daic(tmp_path / "src" / participant, participant)
        zip_folder(folder, tmp_path / f"{participant}_P.zip")
    cohort = encode.load_cohort(tmp_path)
    assert sorted(cohort.sessions) == ["300", "301", "302"]
    assert cohort.labels["302"] is None


def test_cohort_edaic_layout(tmp_path):
    write_splits(tmp_path, "edaic")
    for participant in ("300", "301", "302"):
        write_edaic(tmp_path, participant)
    encoded = encode.encode_cohort(encode.load_cohort(tmp_path))
    assert sorted(encoded.features) == ["au", "gaze", "pose"]
    assert encoded.labels.tolist() == [3.0, 12.0, 17.0]


def test_cli_summarises_root(tmp_path, capsys):
    assert encode.main([str(write_root(tmp_path))]) == 0
    output = capsys.readouterr().out
    assert "3 sessions" in output
    assert "dev" in output
    assert "landmarks (68, 480)" in output


def test_cohort_missing_session(tmp_path):
    write_root(tmp_path, participants=("300", "301"))
    with pytest.raises(DataError, match="302"):
        encode.load_cohort(tmp_path)


def test_cohort_missing_session_names_cli_option(tmp_path):
    write_root(tmp_path, participants=("300", "301"))
    with pytest.raises(DataError, match="--on-bad-session skip"):
        encode.load_cohort(tmp_path)


def test_cohort_skips_bad_sessions(tmp_path):
    write_root(tmp_path, participants=("300", "301"))
    (tmp_path / "301_P" / "301_CLNF_gaze.txt").unlink()
    cohort = encode.load_cohort(tmp_path, on_bad_session="skip")
    assert sorted(cohort.sessions) == ["300"]
    assert sorted(cohort.skipped) == ["301", "302"]
    assert "gaze" in cohort.skipped["301"]


def test_encoded_cohort_split_and_select(tmp_path):
    encoded = encode.encode_cohort(encode.load_cohort(write_root(tmp_path)))
    assert encoded.participants == ["300", "301", "302"]
    assert encoded.features["au"].shape == (3, 8, 120)
    assert encoded.features["landmarks"].shape == (3, 68, 480)
    dev = encoded.split("dev")
    assert dev.participants == ["301"]
    np.testing.assert_array_equal(dev.features["pose"][0], encoded.features["pose"][1])
    assert encoded.select([2, 0]).labels.tolist() == [17.0, 3.0]


# ---------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------

def test_cache_second_load_does_not_parse(tmp_path, monkeypatch):
    root = write_root(tmp_path / "data")
    first = encode.load_encoded(root, cache_dir=tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("read_table called although the cache holds the cohort")
    monkeypatch.setattr(encode, "read_table", fail)
    second = encode.load_encoded(root, cache_dir=tmp_path / "cache")

    assert second.participants == first.participants
    assert second.splits == first.splits
    np.testing.assert_array_equal(second.labels, first.labels)
    for attr, features in first.features.items():
        np.testing.assert_array_equal(second.features[attr], features)


def test_cache_key_follows_inputs(tmp_path):
    root = write_root(tmp_path)
    key = encode.cache_key(root, k=120)
    session_file = root / "300_P" / "300_CLNF_pose.txt"
    session_file.write_text(session_file.read_text().replace("0.95", "0.96", 1))
    assert encode.cache_key(root, k=120) != key


def test_cache_key_follows_parameters(tmp_path):
    root = write_root(tmp_path)
    assert encode.cache_key(root, k=120) != encode.cache_key(root, k=60)


def test_cache_corrupt_entry_rebuilt(tmp_path, caplog):
    root = write_root(tmp_path / "data")
    first = encode.load_encoded(root, cache_dir=tmp_path / "cache")
    [entry] = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])

    with caplog.at_level(logging.WARNING):
        again = encode.load_encoded(root, cache_dir=tmp_path / "cache")
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(again.features["au"], first.features["au"])
