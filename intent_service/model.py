"""The intent model: sentence embeddings (all-MiniLM-L6-v2, onnxruntime) + TF-IDF word and
character n-grams, a linear classifier, a softmax calibration and an out-of-scope threshold, plus
the entity definitions.

One model file holds everything the service needs except the sentence encoder::

    {"format": "intent_service/model@3",
     "pipeline": <sklearn Pipeline>, "temperature": float, "threshold": float,
     "none_label": "None", "entities": <entity spec>, "meta": {...}}

``meta`` records ``version``, ``trained_at``, ``data_sha256`` (SHA-256 over the training data and
entity files), ``config`` (the model configuration), ``encoder`` (name, upstream revision and the
SHA-256 of each encoder file), the intents, entity categories, the library versions, the
calibration and evaluation figures from training.

The encoder (``encoders/all-MiniLM-L6-v2/``: an ONNX graph and a tokenizer file) ships with the
code and is data read by onnxruntime and ``tokenizers``. Loading a model checks each encoder file
against the SHA-256 the model recorded (``encoder.py``): a changed file is refused.

The file is written with skops (``skops.io``; a zip of a JSON schema and ``.npy`` arrays read with
``allow_pickle=False``), never pickled. Loading checks every type the file names against
``ALLOWED_TYPES`` and then lets skops build only those (``SKOPS_TRUSTED``), so a swapped file cannot
run code. Old ``.joblib`` (pickle) files are refused without being unpickled (``model@1`` was the
joblib format); ``model@2`` files (TF-IDF only, no encoder) still load.
"""
from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np

from .entities import EntityExtractor
from .text import IndexedText, normalize_for_model

log = logging.getLogger("intent_service")

FORMAT = "intent_service/model@3"  # @1: the old joblib (pickle) files; @2: TF-IDF only
READABLE_FORMATS = ("intent_service/model@2", FORMAT)
NONE_LABEL = "None"

#: The shipped configuration, chosen on CLINC150 val + oos_val only (README, "CLINC150"):
#: TF-IDF word 1-2-grams + char_wb 1-5-grams + 2 x the sentence embedding, LinearSVC C=1.
DEFAULT_CONFIG: Dict[str, Any] = {"embedding_weight": 2.0, "classifier": "svc", "C": 1.0}
#: "logreg" is a configuration candidate on CLINC150 val only (``clinc.CANDIDATES``): model files
#: hold a LinearSVC, the one classifier type ``ALLOWED_TYPES`` lets a file name.
CLASSIFIERS = ("svc", "logreg")


# --------------------------------------------------------------------------- building


def normalize_config(config: Optional[Dict[str, Any]] = None, **overrides: Any) -> Dict[str, Any]:
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["classifier"] not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}")
    cfg["embedding_weight"] = float(cfg["embedding_weight"])
    cfg["C"] = float(cfg["C"])
    if cfg["embedding_weight"] < 0 or cfg["C"] <= 0:
        raise ValueError("embedding_weight must be >= 0 and C > 0")
    return cfg


def build_pipeline(C: Optional[float] = None, class_weight: Optional[dict] = None,
                   config: Optional[Dict[str, Any]] = None) -> Any:
    """Word 1-2 grams + character 1-5 grams (within word boundaries) + the sentence embedding
    (weight ``config["embedding_weight"]``; 0 leaves it out) -> LinearSVC (or LogisticRegression).

    Character n-grams carry Korean (agglutinative: 주문/주문번호/주문은/주문이) and spelling
    variants; word n-grams carry English phrasing; the (English) sentence embedding carries
    meaning beyond shared words: paraphrases, synonyms, unseen wordings.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline

    cfg = normalize_config(config, C=C)
    parts = [
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                 preprocessor=normalize_for_model,
                                 token_pattern=r"(?u)\b\w+\b")),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True,
                                 min_df=2, preprocessor=normalize_for_model)),
    ]
    if cfg["embedding_weight"] > 0:
        from .encoder import ENCODER_FILES
        from .features import SentenceEmbedding

        parts.append(("embedding", SentenceEmbedding(weight=cfg["embedding_weight"],
                                                     encoder_files=dict(ENCODER_FILES))))
    if cfg["classifier"] == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=cfg["C"], class_weight=class_weight, max_iter=300)
    else:
        from sklearn.svm import LinearSVC

        clf = LinearSVC(C=cfg["C"], class_weight=class_weight, random_state=0)
    return Pipeline([("features", FeatureUnion(parts)), ("clf", clf)])


def embedding_steps(pipeline: Any) -> list:
    """The ``SentenceEmbedding`` transformers of a pipeline (none in a TF-IDF-only model)."""
    from .features import SentenceEmbedding

    feats = getattr(pipeline, "named_steps", {}).get("features")
    return [t for _, t in getattr(feats, "transformer_list", [])
            if isinstance(t, SentenceEmbedding)]


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores * temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(scores: np.ndarray, y_idx: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood on held-out scores."""
    best_t, best_nll = 1.0, np.inf
    for t in np.geomspace(0.5, 50.0, 41):
        p = softmax(scores, t)[np.arange(len(y_idx)), y_idx]
        nll = -np.log(np.clip(p, 1e-12, None)).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def apply_threshold(probs: np.ndarray, classes: Sequence[str], threshold: float) -> np.ndarray:
    """Labels after the out-of-scope rule: top in-scope confidence < threshold -> None."""
    cls = np.asarray(classes)
    labels = cls[probs.argmax(axis=1)].astype(object)
    in_scope = cls != NONE_LABEL
    conf = probs[:, in_scope].max(axis=1) if in_scope.any() else np.zeros(len(probs))
    labels[conf < threshold] = NONE_LABEL
    return labels


THRESHOLD_GRID = np.round(np.linspace(0.0, 0.95, 191), 3)


def choose_threshold(probs: np.ndarray, classes: Sequence[str], y_true: Sequence[str],
                     oos_recall_target: Optional[float] = None) -> float:
    """The out-of-scope threshold, chosen on held-out data by the **accuracy rule**.

    Rule: the threshold ``t`` in ``{0, 0.005, ..., 0.95}`` that maximises the held-out accuracy
    with out-of-scope as a class (every utterance counts once, an out-of-scope one is right when
    it is answered ``None``); ties go to the smallest ``t``. It names no target figure.
    With no out-of-scope or no in-scope example in the held-out data: 0.

    ``oos_recall_target`` (the old "recall-target" rule, kept for explicit callers): the smallest
    threshold whose held-out OOS recall reaches it, never costing more than 2 points of in-scope
    accuracy relative to no threshold.
    """
    yt = np.asarray(y_true, dtype=object)
    is_oos = yt == NONE_LABEL
    if not is_oos.any() or is_oos.all():
        return 0.0
    if oos_recall_target is None:
        best_t, best_acc = 0.0, -1.0
        for t in THRESHOLD_GRID:
            acc = float((apply_threshold(probs, classes, t) == yt).mean())
            if acc > best_acc + 1e-12:
                best_t, best_acc = float(t), acc
        return best_t

    def figures(t: float) -> Tuple[float, float]:
        lab = apply_threshold(probs, classes, t)
        return (lab[~is_oos] == yt[~is_oos]).mean(), (lab[is_oos] == NONE_LABEL).mean()

    base_acc, _ = figures(0.0)
    chosen = 0.0
    for t in THRESHOLD_GRID:
        acc, rec = figures(t)
        if acc < base_acc - 0.02:
            break
        chosen = float(t)
        if rec >= oos_recall_target:
            break
    return chosen


# --------------------------------------------------------------------------- the model


#: ``IntentModel._linear_blocks``: (transformer, its coefficient slice) pairs and the intercepts.
def _transform_scorer(transformer: Any, w: np.ndarray) -> Callable[[Sequence[str]], np.ndarray]:
    """The general path: ``transformer.transform(texts) @ w`` (float64 [texts, classes])."""
    return lambda texts: np.asarray(transformer.transform(texts) @ w, dtype=np.float64)


_LinearBlocks = Tuple[List[Callable[[Sequence[str]], np.ndarray]], np.ndarray]


@dataclass
class IntentModel:
    pipeline: Any
    temperature: float
    threshold: float
    entity_spec: Dict[str, Any]
    meta: Dict[str, Any] = field(default_factory=dict)
    none_label: str = NONE_LABEL
    #: SHA-256 of the file the model was loaded from (set by ``load_model``; "" when trained here)
    file_sha256: str = ""

    def __post_init__(self) -> None:
        self.extractor = EntityExtractor(self.entity_spec)
        self.classes: List[str] = [str(c) for c in self.pipeline.classes_]
        self._has_none = self.none_label in self.classes

    def verify_encoder(self) -> None:
        """Load and verify the sentence encoder now (not on the first request): each encoder
        file's SHA-256 must equal the digest this model recorded. ``EncoderIntegrityError``
        (a ``ModelIntegrityError``) if not, ``EncoderSourceError`` if a file is missing."""
        recorded = (self.meta.get("encoder") or {}).get("files")
        for step in embedding_steps(self.pipeline):
            if recorded is not None and dict(step.encoder_files or {}) != dict(recorded):
                raise EncoderIntegrityError("the model's pipeline and its metadata name "
                                            "different encoder files")
            step.encoder()

    # -- metadata
    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unknown"))

    @property
    def data_sha256(self) -> str:
        return str(self.meta.get("data_sha256", ""))

    @property
    def intents(self) -> List[str]:
        return sorted(set(self.classes) | {self.none_label})

    def info(self) -> Dict[str, Any]:
        keys = ("version", "trained_at", "data_sha256", "config", "encoder", "training_examples",
                "calibration", "evaluation", "library_versions")
        out = {k: self.meta[k] for k in keys if k in self.meta}
        out.update({"intents": self.intents, "entityCategories": self.extractor.categories,
                    "threshold": self.threshold, "temperature": self.temperature})
        return out

    # -- prediction
    def _linear_blocks(self) -> Optional[_LinearBlocks]:
        """For ``FeatureUnion -> linear classifier`` pipelines: each transformer with its slice of
        the coefficient matrix, so a prediction skips FeatureUnion's stacking and the
        estimators' input validation (about 1.5 ms of a 3-5 ms request). None otherwise."""
        if getattr(self, "_blocks", False) is not False:
            return self._blocks
        self._blocks: Optional[_LinearBlocks] = None
        steps = getattr(self.pipeline, "named_steps", {})
        feats, clf = steps.get("features"), steps.get("clf")
        coef, intercept = getattr(clf, "coef_", None), getattr(clf, "intercept_", None)
        if (feats is None or coef is None or intercept is None or feats.transformer_weights
                or len(steps) != 2):
            return None
        from .fastscore import block_scorer

        blocks: List[Callable[[Sequence[str]], np.ndarray]] = []
        start = 0
        for _, t in feats.transformer_list:
            width = (len(t.vocabulary_) if hasattr(t, "vocabulary_")
                     else 384 if hasattr(t, "encoder_files") else None)
            if width is None:
                return None
            w = np.ascontiguousarray(coef[:, start:start + width].T)
            blocks.append(block_scorer(t, w) or _transform_scorer(t, w))
            start += width
        if start != coef.shape[1]:
            return None
        self._blocks = (blocks, np.asarray(intercept))
        return self._blocks

    def decision_scores(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        fast = self._linear_blocks()
        if fast is None:
            scores = self.pipeline.decision_function(texts)
        else:
            blocks, intercept = fast
            scores = np.tile(intercept, (len(texts), 1)).astype(np.float64)
            for block in blocks:  # the same sum as FeatureUnion + decision_function
                scores += block(texts)
        if scores.ndim == 1 or scores.shape[1] == 1:  # binary LinearSVC returns one column
            scores = scores.reshape(-1)
            scores = np.stack([-scores, scores], axis=1)
        return scores

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return softmax(self.decision_scores(texts), self.temperature)

    def predict_labels(self, texts: Sequence[str]) -> List[str]:
        return list(apply_threshold(self.probabilities(texts), self.classes, self.threshold))

    def rank_intents(self, probs_row: np.ndarray) -> List[Dict[str, Any]]:
        """CLU ``intents`` list (every intent, sorted by score, None included)."""
        scores = {c: float(p) for c, p in zip(self.classes, probs_row, strict=True)}
        in_scope = {c: s for c, s in scores.items() if c != self.none_label}
        top_c = max(in_scope, key=in_scope.__getitem__) if in_scope else None
        top_s = in_scope.get(top_c, 0.0) if top_c else 0.0
        none_s = scores.get(self.none_label, 0.0)
        is_none = top_c is None or top_s < self.threshold or none_s > top_s
        if is_none:
            # None is the answer: its score must lead the list
            none_s = max(none_s, 1.0 - top_s, top_s)
        scores[self.none_label] = none_s
        ranked = sorted(scores.items(),
                        key=lambda kv: (-kv[1], 0 if (is_none and kv[0] == self.none_label) else 1,
                                        kv[0]))
        return [{"category": c, "confidenceScore": round(min(max(s, 0.0), 1.0), 6)}
                for c, s in ranked]

    def analyze(self, text: str, string_index_type: str = "TextElement_V8") -> Dict[str, Any]:
        probs = self.probabilities([text])[0]
        intents = self.rank_intents(probs)
        entities = self.extractor.extract(text, string_index_type, IndexedText(text))
        return {"topIntent": intents[0]["category"], "projectKind": "Conversation",
                "intents": intents, "entities": entities}

    # -- persistence
    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "pipeline": self.pipeline, "temperature": self.temperature,
                "threshold": self.threshold, "none_label": self.none_label,
                "entities": self.entity_spec, "meta": self.meta}

    def to_bytes(self) -> bytes:
        """The skops file's bytes (what ``save`` writes); ``load_model_bytes`` reads them."""
        import skops.io as sio

        return sio.dumps(self.to_dict(), compression=zipfile.ZIP_DEFLATED, compresslevel=6)

    def save(self, path: str) -> None:
        """Write the model as a skops file (see the module docstring); never a pickle."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(self.to_bytes())
        os.replace(tmp, path)  # atomic: a concurrently starting server never sees half a file

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "IntentModel":
        if not isinstance(d, dict) or d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"not an intent_service model file (expected format {FORMAT})")
        return cls(pipeline=d["pipeline"], temperature=float(d["temperature"]),
                   threshold=float(d["threshold"]), entity_spec=d["entities"],
                   meta=dict(d.get("meta", {})), none_label=d.get("none_label", NONE_LABEL))


# --------------------------------------------------------------------------- loading

#: ``INTENT_MODEL_MAX_BYTES`` default: the largest model file (local or downloaded) accepted.
DEFAULT_MAX_MODEL_BYTES = 200 * 1024 * 1024
#: Zip-bomb guard: the largest total size of a model file's members once decompressed.
MAX_UNCOMPRESSED_BYTES = 1024 * 1024 * 1024

#: Passed to ``skops.io.load(trusted=...)``: the types of a model file beyond skops' own safe
#: defaults. Built from ``skops.io.get_untrusted_types`` on a trained model, plus the sklearn and
#: numpy types the pipeline is made of (trusted by skops anyway; listed to say what we expect).
SKOPS_TRUSTED = (
    "intent_service.text.normalize_for_model",          # the TfidfVectorizers' preprocessor
    "intent_service.features.SentenceEmbedding",        # weight + encoder digests; no state
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.svm._classes.LinearSVC",
    "numpy.ndarray",
    "numpy.float64",                                   # TfidfVectorizer(dtype=np.float64)
)
#: Every type a model file may name, and every skops node kind it may use. Checked on the file's
#: schema before skops builds anything, so a file naming any other type (even one skops trusts by
#: default, such as another estimator) is refused.
ALLOWED_TYPES = frozenset(SKOPS_TRUSTED) | {
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int",
    "builtins.float", "builtins.bool", "builtins.NoneType"}
ALLOWED_NODES = frozenset({"DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode",
                           "FunctionNode", "NdArrayNode", "ObjectNode", "CachedNode"})

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_SUFFIXES = (".joblib", ".pkl", ".pickle")
# pickle protocol 2+, then the compressors joblib may wrap a pickle in (zlib, gzip, bz2, xz, lz4)
_LEGACY_MAGIC = (b"\x80", b"x\x01", b"x^", b"x\x9c", b"x\xda", b"\x1f\x8b", b"BZh", b"\xfd7zXZ",
                 b"\x04\x22\x4d\x18", b"ZF")


class ModelLoadError(RuntimeError):
    """A model could not be loaded. The message may name the file or the (redacted) URL, so it
    belongs in logs and on the command line; HTTP responses name only the class."""


class ModelConfigError(ModelLoadError):
    """The model settings are unusable: no SHA-256 pin for a URL, a plain-http URL to a host
    other than loopback, a malformed pin. Retrying cannot help."""


class ModelSourceError(ModelLoadError):
    """The file is missing, or the download failed (HTTP error, redirect, network error)."""


class ModelTooLargeError(ModelSourceError):
    """The file is larger than ``INTENT_MODEL_MAX_BYTES``."""


class ModelIntegrityError(ModelLoadError):
    """The file's SHA-256 differs from the pinned ``INTENT_MODEL_SHA256``."""


class EncoderIntegrityError(ModelIntegrityError):
    """A sentence-encoder file (``encoders/...``) differs from the SHA-256 the model file recorded
    (or, when training, from the digest pinned in ``encoder.ENCODER_FILES``)."""


class EncoderSourceError(ModelSourceError):
    """A sentence-encoder file is missing or unreadable."""


class ModelFormatError(ModelLoadError):
    """Not a skops model file of this service, or it names types that are not allowed."""


class LegacyPickleModelError(ModelFormatError):
    """An old pickle/joblib model file: refused without being unpickled."""


def _sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: str) -> bool:
    return bool(_URL_RE.match(source or ""))


def redact_url(source: str) -> str:
    """A URL without its credentials, for logs: the query string (a SAS token is one), any
    fragment and any user:password are dropped. Anything that is not a URL is returned as is."""
    if not is_url(source):
        return source
    parts = urlsplit(source)
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        host, port = "<unparseable host>", None
    if ":" in host:
        host = f"[{host}]"
    out = f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"
    return out + ("?<redacted>" if parts.query or parts.fragment else "")


def scrub_urls(text: str) -> str:
    """Redact query strings and user:password@ in free text (e.g. an HTTP library's message)."""
    text = re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@", r"\1", text)
    return re.sub(r"\?[^\s'\")>\]]*", "?<redacted>", text)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(source: str) -> None:
    """https only; plain http only to a loopback host (tests, a local stack)."""
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    try:
        host = parts.hostname or ""
    except ValueError:
        host = ""
    if not host:
        raise ModelConfigError(f"model URL {redact_url(source)} has no host")
    if scheme == "https":
        return
    if scheme == "http":
        if _is_loopback(host):
            return
        raise ModelConfigError(f"model URL {redact_url(source)}: plain http is allowed only to a "
                               "loopback host; use https")
    raise ModelConfigError(f"model URL {redact_url(source)}: only https (or http to loopback) "
                           "is supported")


def parse_sha256_pin(value: Optional[str]) -> Optional[str]:
    """``INTENT_MODEL_SHA256``: 64 hex digits (case-insensitive), or empty for none."""
    if value is None or not str(value).strip():
        return None
    pin = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", pin):
        raise ModelConfigError("INTENT_MODEL_SHA256 must be 64 hexadecimal digits")
    return pin


def parse_max_model_bytes(value: Any) -> int:
    """``INTENT_MODEL_MAX_BYTES``: a whole number of bytes > 0 (empty/None: the default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MAX_MODEL_BYTES
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"INTENT_MODEL_MAX_BYTES must be a whole number of bytes, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"INTENT_MODEL_MAX_BYTES must be > 0, got {value!r}")
    return n


def _too_large(what: str, max_bytes: int) -> ModelTooLargeError:
    return ModelTooLargeError(f"{what} is larger than the limit of {max_bytes} bytes "
                              "(INTENT_MODEL_MAX_BYTES)")


def _read_file(path: str, max_bytes: int) -> bytes:
    if not os.path.isfile(path):
        raise ModelSourceError(f"model file not found: {path}")
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size > max_bytes:
            raise _too_large(f"model file {path}", max_bytes)
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(f"model file {path}", max_bytes)
    return data


def _download(url: str, max_bytes: int, timeout: Tuple[float, float]) -> bytearray:
    """Stream ``url`` into memory: no redirects, at most ``max_bytes``."""
    import requests

    shown = redact_url(url)
    buf = bytearray()
    try:
        with requests.get(url, stream=True, timeout=timeout, allow_redirects=False) as resp:
            if 300 <= resp.status_code < 400:
                raise ModelSourceError(f"GET {shown} answered HTTP {resp.status_code}, a redirect; "
                                       "redirects are not followed (use the final https URL)")
            if resp.status_code != 200:
                raise ModelSourceError(f"GET {shown} returned HTTP {resp.status_code}")
            length = resp.headers.get("Content-Length", "").strip()
            if length.isdigit() and int(length) > max_bytes:
                raise _too_large(f"GET {shown} (Content-Length {length})", max_bytes)
            for chunk in resp.iter_content(1 << 20):
                buf += chunk
                if len(buf) > max_bytes:
                    raise _too_large(f"GET {shown}", max_bytes)
    except requests.RequestException as exc:
        # the library's message repeats the URL with its query string: scrub it, drop the chain
        raise ModelSourceError(f"GET {shown} failed: {type(exc).__name__}: "
                               f"{scrub_urls(str(exc))}") from None
    return buf


def _schema_names(schema: Any) -> Tuple[set, set]:
    """Every ``module.class`` and every skops node kind named anywhere in a skops schema."""
    types, nodes = set(), set()
    stack = [schema]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if "__loader__" in obj:
                nodes.add(str(obj["__loader__"])[:100])
            if "__class__" in obj or "__module__" in obj:
                types.add(f"{obj.get('__module__')}.{obj.get('__class__')}"[:200])
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)
    return types, nodes


def _load_skops(data: bytes | bytearray, name: str) -> IntentModel:
    """Build the model from skops bytes after checking the types it names. Never unpickles."""
    if bytes(data[:4]) != _ZIP_MAGIC:
        head = bytes(data[:8])
        if head.startswith(_LEGACY_MAGIC) or name.lower().endswith(_LEGACY_SUFFIXES):
            raise LegacyPickleModelError(
                f"{name} looks like an old pickle/joblib model file; these are never loaded, "
                "because unpickling runs code. Rebuild it as a skops file: "
                "python -m intent_service build-retail (or train --out FILE.skops)")
        raise ModelFormatError(f"{name} is not a skops model file")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if sum(i.file_size for i in zf.infolist()) > MAX_UNCOMPRESSED_BYTES:
                raise ModelFormatError(f"{name} expands to more than {MAX_UNCOMPRESSED_BYTES} bytes")
            schema = json.loads(zf.read("schema.json"))
    except ModelFormatError:
        raise
    except KeyError:
        raise ModelFormatError(f"{name} is a zip file but not a skops model file") from None
    except Exception as exc:  # BadZipFile, bad JSON, deep nesting, ...
        raise ModelFormatError(f"{name}: unreadable skops file ({type(exc).__name__})") from None
    types, nodes = _schema_names(schema)
    if types - ALLOWED_TYPES or nodes - ALLOWED_NODES:
        raise ModelFormatError(f"{name} names types that are not allowed in a model file: "
                               f"{sorted((types - ALLOWED_TYPES) | (nodes - ALLOWED_NODES))[:10]}")
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        obj = sio.loads(bytes(data), trusted=list(SKOPS_TRUSTED))
    except UntrustedTypesFoundException as exc:
        raise ModelFormatError(f"{name} names untrusted types: {exc}") from None
    except Exception as exc:
        raise ModelFormatError(f"{name}: cannot build the model ({type(exc).__name__}: {exc})") from None
    try:
        model = IntentModel.from_dict(obj)
    except Exception as exc:
        raise ModelFormatError(f"{name}: {type(exc).__name__}: {exc}") from None
    model.verify_encoder()  # EncoderIntegrityError / EncoderSourceError
    return model


def load_model_bytes(data: bytes, expected_sha256: Optional[str] = None,
                     name: str = "<model bytes>") -> IntentModel:
    """``load_model`` for bytes already in memory (e.g. ``IntentModel.to_bytes()``): the same
    pin check, type allow-list and encoder verification."""
    pin = parse_sha256_pin(expected_sha256)
    digest = _sha256(bytes(data))
    if pin is not None and digest != pin:
        raise ModelIntegrityError(f"model sha256 mismatch for {name}: expected {pin}, got {digest}")
    model = _load_skops(bytes(data), name)
    model.file_sha256 = digest
    return model


def load_model(source: str, expected_sha256: Optional[str] = None,
               timeout: Tuple[float, float] = (5.0, 60.0),
               max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> IntentModel:
    """Load a skops model file from a local path or an https URL (e.g. an Azure Blob SAS URL).

    * A URL must be https (plain http only to a loopback host), must answer 200 without a
      redirect, and needs ``expected_sha256`` (``INTENT_MODEL_SHA256``, a trusted record of the
      file): a URL without a pin is refused before anything is downloaded.
    * At most ``max_bytes`` are read or downloaded; the file is read once, hashed and built from
      the same bytes. A pin that differs from the digest is refused.
    * The file may name only ``ALLOWED_TYPES``; pickles (old ``.joblib`` files) are refused
      without being unpickled.

    The returned model's ``file_sha256`` is the digest of the bytes it was built from.
    """
    t0 = time.perf_counter()
    pin = parse_sha256_pin(expected_sha256)
    if is_url(source):
        check_url(source)
        if pin is None:
            raise ModelConfigError(f"model URL {redact_url(source)} needs a SHA-256 pin "
                                   "(INTENT_MODEL_SHA256 or --model-sha256)")
        data: bytes | bytearray = _download(source, max_bytes, timeout)
        name = redact_url(source)
    else:
        data = _read_file(source, max_bytes)
        name = source
    digest = _sha256(data)
    if pin is not None and digest != pin:
        raise ModelIntegrityError(f"model sha256 mismatch for {name}: expected {pin}, got {digest}")
    model = _load_skops(data, name)
    model.file_sha256 = digest
    log.info("model %s (file sha256 %s%s) loaded in %.2fs", model.version, digest[:12],
             ", pinned" if pin else "", time.perf_counter() - t0)
    return model
