"""Bytes-level save/load of model files, on top of the model module's public API
(``IntentModel.save`` and ``model.load_model``): a trained model travels as skops bytes named by their
SHA-256, and every load checks the digest (``load_model(..., expected_sha256=...)``)."""
from __future__ import annotations

import hashlib
import os
import tempfile

from ..model import DEFAULT_MAX_MODEL_BYTES, IntentModel, ModelIntegrityError, load_model


def model_bytes(model: IntentModel) -> bytes:
    with tempfile.TemporaryDirectory(prefix="intent-model-") as tmp:
        path = os.path.join(tmp, "model.skops")
        model.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def load_model_bytes(data: bytes, expected_sha256: str, name: str = "model",
                     max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> IntentModel:
    """Build a model from skops bytes whose SHA-256 must be ``expected_sha256`` (checked here and again
    by ``load_model``)."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise ModelIntegrityError(f"{name}: sha256 mismatch: expected {expected_sha256}, got {digest}")
    fd, path = tempfile.mkstemp(prefix="intent-model-", suffix=".skops")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return load_model(path, expected_sha256=expected_sha256, max_bytes=max_bytes)
    finally:
        os.unlink(path)
