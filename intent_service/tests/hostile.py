"""Hostile model files for the loading tests: each would create a marker file if it were built.

Not a test module (no ``test_`` prefix); importable as ``intent_service.tests.hostile`` so that
skops can name its class in a file.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path


class MarkerOnBuild:
    """Creates ``self.marker`` when an object of this class is rebuilt from saved state."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __getstate__(self):
        return {"marker": self.marker}

    def __setstate__(self, state):
        Path(state["marker"]).write_text("built", encoding="utf-8")
        self.__dict__.update(state)


class MarkerOnUnpickle:
    """Unpickling this runs ``os.makedirs(marker)``: what a swapped pickle model could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def hostile_pickle(marker: Path) -> bytes:
    """A pickle of a model-shaped dict whose loading creates ``marker``."""
    return pickle.dumps({"format": "intent_service/model@1", "pipeline": MarkerOnUnpickle(marker)},
                        protocol=pickle.HIGHEST_PROTOCOL)
