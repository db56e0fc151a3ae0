"""The sentence encoder: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) run by onnxruntime.

The encoder ships with the code in ``encoders/all-MiniLM-L6-v2/``: ``model.int8.onnx`` (exported
once from upstream's weights by ``encoders/export_minilm.py``, int8) and upstream's
``tokenizer.json``. It is data, not code: onnxruntime reads the graph and ``tokenizers`` the
vocabulary; nothing is unpickled and nothing is downloaded.

Integrity: every file is read once, hashed, and used from the same bytes. The digests must equal
the ones the model file recorded when it was trained (``meta["encoder"]["files"]``) and, when a
model is trained, the digests pinned here (``ENCODER_FILES``). A changed file is refused
(``EncoderIntegrityError``), so a model never runs on embeddings other than the ones it learnt.

``encode(texts)`` returns the L2-normalised 384-d sentence embeddings, the same vectors as
``SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2").encode(texts)`` up to int8
rounding (``encoders/README.md`` gives the measured difference). Inputs are truncated to
``MAX_TOKENS`` word pieces, the length upstream was trained on.
"""
from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: upstream revision whose model.safetensors (sha256 53aa5117...) the export read
ENCODER_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
ENCODER_DIR = Path(__file__).resolve().parent / "encoders" / "all-MiniLM-L6-v2"
ONNX_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
#: SHA-256 of the shipped files (encoders/README.md: how model.int8.onnx was made)
ENCODER_FILES: Dict[str, str] = {
    ONNX_FILE: "8c81c3a27afa90d32addb636d80f21b2e73c9144d7044cd2cfc1e0d39122ba1c",
    TOKENIZER_FILE: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
DIM = 384
MAX_TOKENS = 128
#: threads for encoding long lists (training); a single request is one run on one thread
BULK_THREADS = max(1, min(2, os.cpu_count() or 1))


def encoder_dir() -> Path:
    """``INTENT_ENCODER_DIR`` if set (tests, another copy), else the shipped directory."""
    return Path(os.environ.get("INTENT_ENCODER_DIR") or ENCODER_DIR)


def _errors():
    from .model import EncoderIntegrityError, EncoderSourceError

    return EncoderIntegrityError, EncoderSourceError


def read_verified(directory: Path, expected: Dict[str, str]) -> Dict[str, bytes]:
    """The encoder files' bytes, each checked against ``expected`` (name -> sha256)."""
    integrity_error, source_error = _errors()
    out = {}
    for name in (ONNX_FILE, TOKENIZER_FILE):
        path = directory / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise source_error(f"encoder file {path} cannot be read: {exc.strerror or exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        want = str(expected.get(name, "")).lower()
        if digest != want:
            raise integrity_error(f"encoder file {path}: sha256 {digest} differs from the "
                                  f"expected {want or '(none recorded)'}; refusing to use it")
        out[name] = data
    return out


class Encoder:
    """Tokenizer + onnxruntime session. Thread-safe: ``InferenceSession.run`` may be called
    concurrently and releases the GIL while it computes."""

    def __init__(self, files: Dict[str, bytes], threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.sha256 = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
        tok = Tokenizer.from_str(files[TOKENIZER_FILE].decode("utf-8"))
        tok.no_padding()  # upstream's file pads to 128; each text runs alone, unpadded
        tok.enable_truncation(MAX_TOKENS)
        self.tokenizer = tok
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(files[ONNX_FILE], so, providers=["CPUExecutionProvider"])
        self._memo: Optional[Dict[str, np.ndarray]] = None
        self._memo_lock = threading.Lock()

    def info(self) -> Dict[str, object]:
        return {"name": ENCODER_NAME, "revision": ENCODER_REVISION, "dim": DIM,
                "max_tokens": MAX_TOKENS, "files": dict(self.sha256)}

    def _run(self, text: str) -> np.ndarray:
        ids = np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)
        return self.session.run(["sentence_embedding"], {"input_ids": ids,
                                                         "attention_mask": np.ones_like(ids)})[0][0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), 384]. Each text is its own run, never a padded batch: the int8
        graph quantises its activations per run (dynamic quantisation), so in a batch a text's
        vector would depend on its neighbours; this way training and serving see the same
        vector for the same text. Long lists (training) use up to ``BULK_THREADS`` threads."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        memo = self._memo
        todo = [i for i, t in enumerate(texts) if memo is None or t not in memo]
        if memo is not None:
            for i, t in enumerate(texts):
                if t in memo:
                    out[i] = memo[t]
        if len(todo) > 32 and BULK_THREADS > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(BULK_THREADS) as pool:  # onnxruntime releases the GIL
                for i, vec in zip(todo, pool.map(self._run, [texts[i] for i in todo]), strict=True):
                    out[i] = vec
        else:
            for i in todo:
                out[i] = self._run(texts[i])
        if memo is not None:
            with self._memo_lock:
                for i in todo:
                    memo[texts[i]] = out[i]
        return out

    @contextmanager
    def memoized(self) -> Iterator[None]:
        """Within the block, each distinct text is encoded once (training: cross-validation
        folds refit on the same texts). Never on while serving. Nested blocks share one memo."""
        outer = self._memo is not None
        if not outer:
            self._memo = {}
        try:
            yield
        finally:
            if not outer:
                self._memo = None


_cache: Dict[tuple, Encoder] = {}
_cache_lock = threading.Lock()


def get_encoder(expected: Optional[Dict[str, str]] = None, directory: Optional[Path] = None) -> Encoder:
    """The encoder, verified against ``expected`` (default: the pinned ``ENCODER_FILES``).

    One instance per (directory, digests) per process; the files are hashed when it is built."""
    expected = dict(expected or ENCODER_FILES)
    directory = Path(directory or encoder_dir())
    key = (str(directory), tuple(sorted(expected.items())))
    with _cache_lock:
        enc = _cache.get(key)
        if enc is None:
            threads = int(os.environ.get("INTENT_ENCODER_THREADS", "1") or 1)
            enc = Encoder(read_verified(directory, expected), threads=threads)
            _cache[key] = enc
        return enc


def list_files(directory: Optional[Path] = None) -> List[Path]:
    d = Path(directory or encoder_dir())
    return [d / ONNX_FILE, d / TOKENIZER_FILE]
