"""Read OpenFace-family recordings and labels, clean frames, and encode spectra.

Work in progress: the data classes below are the interface; the reader and the
encoder follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ATTRIBUTES = ("au", "gaze", "pose", "landmarks")
CNN_ATTRIBUTES = ("au", "gaze", "pose")


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
