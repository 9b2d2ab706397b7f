"""Seeded synthetic model files for the smoke generation (no network, written at run time).

Three writers, each producing a file laid out the way the real release is:

* ``write_zimage_gguf``: a Z-Image (Lumina-2 family) diffusion model GGUF with ComfyUI's tensor
  names, ``general.architecture = lumina2`` and quantized weights written by
  ``gguf.quants.quantize`` (Q8_0 and Q4_0, small tensors F16/F32), the way city96's converter
  writes them.
* ``write_gemma3_gguf``: a Gemma 3 text encoder GGUF written as llama.cpp's
  ``convert_hf_to_gguf.py`` writes one: Hugging Face names renamed to llama.cpp names, +1.0 on
  every ``*norm.weight``, ``general.architecture = gemma3`` and SentencePiece tokenizer metadata
  (``tokenizer.ggml.model = "llama"``, tokens / scores / token_type, special ids, add_bos ...).
  The tokenizer is a small SentencePiece BPE model trained here (``train_tokenizer``).
* ``write_wan21_vae``: a Wan 2.1 16-channel VAE (the architecture of ``qwen_image_vae``) in
  safetensors.

Shapes are derived from the architectures, not read from ComfyUI, so the files test ComfyUI's
detection rather than echo it (tests/smoke compares them with ComfyUI's modules).

This module needs numpy, gguf, safetensors and sentencepiece; it imports neither torch nor
ComfyUI nor the rest of zimage_patcher (the smoke harness runs it under another Python).
Run as a script it writes one tier's set: ``python writers.py --out DIR --tier tiny``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

WRITER_VERSION = 2  # bump when the files' content changes, so cached sets are rewritten

ZIMAGE_FILE = "z_image_synthetic.gguf"
GEMMA3_FILE = "gemma-3-synthetic.gguf"
VAE_FILE = "wan21_vae_synthetic.safetensors"
TOKENIZER_FILE = "synthetic_spm.model"
MANIFEST_FILE = "manifest.json"


# --------------------------------------------------------------------------------------------
# configurations


@dataclass(frozen=True)
class ZImageConfig:
    """Z-Image DiT. Real values: ComfyUI's model_detection (dim 3840 -> 30 heads, axes 32/48/48)."""
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2      # fixed in ComfyUI's NextDiT (not read from the file)
    n_heads: int = 30
    n_kv_heads: int = 30
    cap_feat_dim: int = 2560       # the text encoder's hidden size
    in_channels: int = 16
    patch_size: int = 2
    multiple_of: int = 256
    ffn_dim_multiplier: float = 8.0 / 3.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.ffn_dim_multiplier * self.dim)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


@dataclass(frozen=True)
class Gemma3Config:
    """Gemma 3 4B text model (Hugging Face text_config of google/gemma-3-4b-it)."""
    hidden_size: int = 2560
    intermediate_size: int = 10240
    num_hidden_layers: int = 34
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    vocab_size: int = 262144        # rows of token_embd in llama.cpp GGUFs (tokenizer size)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    sliding_window: int = 1024
    context_length: int = 131072
    rope_scaling_factor: float = 8.0


@dataclass(frozen=True)
class VAEConfig:
    """Wan 2.1 VAE; ComfyUI reads ``dim`` from the width of ``decoder.head.0.gamma``."""
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple = (False, True, True)


@dataclass(frozen=True)
class Tier:
    name: str
    zimage: ZImageConfig
    gemma3: Gemma3Config
    vae: VAEConfig
    tokenizer_vocab: int = 512
    width: int = 64
    height: int = 64
    steps: int = 2


# The tiny tier shrinks widths and depths. ComfyUI hard-codes some of them (Z-Image is recognised
# by width 3840, the Gemma 3 config is fixed); the harness tells ComfyUI about the small sizes
# through ComfyUI's own hooks, see harness.py (`install_tiny_hooks`).
TINY = Tier(
    name="tiny",
    zimage=ZImageConfig(dim=256, n_layers=2, n_heads=2, n_kv_heads=2, cap_feat_dim=128),
    gemma3=Gemma3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                        vocab_size=512, context_length=8192),
    vae=VAEConfig(dim=32),
    tokenizer_vocab=512,
)

FULL = Tier(name="full", zimage=ZImageConfig(), gemma3=Gemma3Config(), vae=VAEConfig(),
            tokenizer_vocab=512, width=1024, height=1024, steps=8)

TIERS = {"tiny": TINY, "full": FULL}


# --------------------------------------------------------------------------------------------
# deterministic random data


def _rng(seed: int, name: str) -> np.random.Generator:
    """One generator per tensor, so a tensor's values do not depend on the writing order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _normal(seed: int, name: str, shape: tuple, std: float, mean: float = 0.0) -> np.ndarray:
    """Random values with this mean and standard deviation (uniform: 3x faster than a normal
    draw, which matters for the 10-billion-value full tier; the distribution does not)."""
    out = _rng(seed, name).random(size=shape, dtype=np.float32)
    out -= np.float32(0.5)
    out *= np.float32(std * math.sqrt(12.0))
    if mean:
        out += np.float32(mean)
    return out


# --------------------------------------------------------------------------------------------
# GGUF helpers


def _gguf():
    import gguf  # imported late: `--help` and the manifest code work without it
    return gguf


def _qtype(name: str):
    return getattr(_gguf().GGMLQuantizationType, name)


def _encode(data: np.ndarray, qtype_name: str) -> np.ndarray:
    """Tensor data as it lies in the file: F32/F16 arrays, or quantized bytes (gguf.quants)."""
    gguf = _gguf()
    if qtype_name == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype_name == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), _qtype(qtype_name))


def _nbytes(shape: tuple, qtype_name: str) -> int:
    gguf = _gguf()
    block, type_size = gguf.GGML_QUANT_SIZES[_qtype(qtype_name)]
    n = math.prod(shape)
    assert n % block == 0, (shape, qtype_name)
    return n // block * type_size


def _ordered_map(fn, items: list) -> Iterator[tuple]:
    """(item, fn(item)) in order; big sets on a few threads with a bounded window (numpy's
    random fill and gguf's quantize release the GIL), small ones inline."""
    total = sum(math.prod(it[1]) for it in items)
    workers = min(8, os.cpu_count() or 1) if total > 50_000_000 else 1
    if workers == 1:
        for it in items:
            yield it, fn(it)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as ex:
        window: deque = deque()
        for it in items:
            window.append((it, ex.submit(fn, it)))
            if len(window) >= 2 * workers:
                head, fut = window.popleft()
                yield head, fut.result()
        while window:
            head, fut = window.popleft()
            yield head, fut.result()


def _stream_gguf(path: Path, arch: str, add_metadata: Callable, specs: list,
                 make: Callable[[str, tuple], np.ndarray]) -> dict:
    """Write a GGUF tensor by tensor (bounded memory even for the full tier).

    specs: [(name, numpy shape, qtype name)]; make(name, shape) returns float32 data.
    Returns {qtype name: count}.
    """
    gguf = _gguf()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    add_metadata(writer)
    for name, shape, qt in specs:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qt), raw_dtype=_qtype(qt))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts: dict = {}
    for (name, shape, qt), data in _ordered_map(lambda spec: _encode(make(spec[0], spec[1]), spec[2]), specs):
        writer.write_tensor_data(data)
        counts[qt] = counts.get(qt, 0) + 1
    writer.close()
    os.replace(tmp, path)
    return counts


# --------------------------------------------------------------------------------------------
# Z-Image diffusion model


def zimage_tensor_specs(cfg: ZImageConfig) -> dict[str, tuple]:
    """ComfyUI-named tensors of a Z-Image DiT (comfy/ldm/lumina/model.py, z_image_modulation)."""
    d, hd, p2c = cfg.dim, cfg.head_dim, cfg.patch_size ** 2 * cfg.in_channels
    mod, tdim = min(d, 256), min(d, 1024)
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    specs: dict[str, tuple] = {
        "x_embedder.weight": (d, p2c), "x_embedder.bias": (d,),
        "t_embedder.mlp.0.weight": (tdim, 256), "t_embedder.mlp.0.bias": (tdim,),
        "t_embedder.mlp.2.weight": (256, tdim), "t_embedder.mlp.2.bias": (256,),
        "cap_embedder.0.weight": (cfg.cap_feat_dim,),
        "cap_embedder.1.weight": (d, cfg.cap_feat_dim), "cap_embedder.1.bias": (d,),
    }

    def block(prefix: str, modulation: bool) -> None:
        specs.update({
            f"{prefix}.attention.qkv.weight": (qkv, d),
            f"{prefix}.attention.out.weight": (d, cfg.n_heads * hd),
            f"{prefix}.attention.q_norm.weight": (hd,),
            f"{prefix}.attention.k_norm.weight": (hd,),
            f"{prefix}.feed_forward.w1.weight": (cfg.ffn_hidden, d),
            f"{prefix}.feed_forward.w2.weight": (d, cfg.ffn_hidden),
            f"{prefix}.feed_forward.w3.weight": (cfg.ffn_hidden, d),
            f"{prefix}.attention_norm1.weight": (d,), f"{prefix}.ffn_norm1.weight": (d,),
            f"{prefix}.attention_norm2.weight": (d,), f"{prefix}.ffn_norm2.weight": (d,),
        })
        if modulation:
            specs[f"{prefix}.adaLN_modulation.0.weight"] = (4 * d, mod)
            specs[f"{prefix}.adaLN_modulation.0.bias"] = (4 * d,)

    for i in range(cfg.n_refiner_layers):
        block(f"noise_refiner.{i}", True)
    for i in range(cfg.n_refiner_layers):
        block(f"context_refiner.{i}", False)
    for i in range(cfg.n_layers):
        block(f"layers.{i}", True)
    specs.update({
        "norm_final.weight": (d,),
        "final_layer.linear.weight": (p2c, d), "final_layer.linear.bias": (p2c,),
        "final_layer.adaLN_modulation.1.weight": (d, mod), "final_layer.adaLN_modulation.1.bias": (d,),
        "x_pad_token": (1, d), "cap_pad_token": (1, d),
    })
    return specs


def _zimage_qtype(name: str, shape: tuple) -> str:
    """Big matrices quantized (attention Q8_0, feed-forward Q4_0), small ones F16, vectors F32."""
    if len(shape) < 2 or name.endswith("_pad_token"):
        return "F32"
    if shape[-1] % 32 or math.prod(shape) < 32 * 1024:
        return "F16"
    if ".feed_forward." in name:
        return "Q4_0"
    if ".attention." in name or "adaLN_modulation" in name or name.startswith("cap_embedder"):
        return "Q8_0"
    return "F16"


def _zimage_values(cfg: ZImageConfig, seed: int) -> Callable[[str, tuple], np.ndarray]:
    def make(name: str, shape: tuple) -> np.ndarray:
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_final.weight")) \
                or name == "cap_embedder.0.weight":
            return _normal(seed, name, shape, 0.02, mean=1.0)        # RMSNorm gains near 1
        if name.endswith(".bias") or name.endswith("_pad_token"):
            return _normal(seed, name, shape, 0.02)
        fan_in = shape[-1]
        std = 1.0 / math.sqrt(fan_in)
        if "adaLN_modulation" in name:
            std *= 0.5                                               # moderate gates/scales
        return _normal(seed, name, shape, std)
    return make


def write_zimage_gguf(path: Path, cfg: ZImageConfig = ZImageConfig(), *, seed: int = 0,
                      extra: dict[str, tuple] | None = None) -> dict:
    """extra: more tensors {name: shape}, for tests: a name ComfyUI's model lacks is what an upstream
    that removed a module sees in an older file (ComfyUI logs `unet unexpected:` and carries on)."""
    specs = {**zimage_tensor_specs(cfg), **(extra or {})}
    order = [(n, s, _zimage_qtype(n, s)) for n, s in specs.items()]

    def meta(w) -> None:
        gguf = _gguf()
        w.add_name("Z-Image synthetic (zimage-patcher smoke)")
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)

    counts = _stream_gguf(Path(path), "lumina2", meta, order, _zimage_values(cfg, seed))
    return {"path": str(path), "tensors": len(order), "qtypes": counts}


# --------------------------------------------------------------------------------------------
# tokenizer


_WORDS = ("a photo of cat dog red blue green house river mountain city night light small large "
          "quiet bright forest painting portrait street rain snow sun moon tree flower garden "
          "window door table chair book lamp ocean wave sky cloud road car bicycle train bridge "
          "old new warm cold golden silver wooden stone glass morning evening the with and in on "
          "under over near beside detailed cinematic soft sharp").split()
_EXTRA = ["café", "naïve", "über", "日本", "東京", "😀", "#42", "3.14", "x^2", "(hello)", "e-mail",
          "C++", "don't", "<start_of_turn>user", "<end_of_turn>"]


def tokenizer_corpus(seed: int = 0, lines: int = 400) -> list[str]:
    """A deterministic pseudo-English corpus with digits, punctuation and non-ASCII text."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(lines):
        n = int(rng.integers(4, 14))
        words = [(_WORDS + _EXTRA)[int(j)] if rng.random() < 0.97 else str(int(rng.integers(0, 10000)))
                 for j in rng.integers(0, len(_WORDS) + len(_EXTRA), size=n)]
        sep = "  " if i % 17 == 0 else " "
        out.append(sep.join(words) + (" ." if i % 3 == 0 else ""))
    return out


def train_tokenizer(path: Path, *, vocab_size: int = 512, seed: int = 0) -> Path:
    """Train a small SentencePiece BPE model shaped like Gemma's tokenizer.

    Gemma's model: BPE, byte_fallback, identity normalization, no dummy prefix, whitespace kept,
    digits split, ids pad=0 eos=1 bos=2 unk=3, plus user-defined turn markers.
    """
    import sentencepiece as spm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus(seed)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


def llama_cpp_vocab(tokenizer_model: Path, vocab_size: int | None = None):
    """tokens, scores, token types as llama.cpp's `_create_vocab_sentencepiece` produces them."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    n = sp.vocab_size()
    tokens, scores, types = [], [], []
    for i in range(n):
        piece = sp.id_to_piece(i)
        kind = 1                                  # NORMAL
        if sp.is_unknown(i):
            kind = 2                              # UNKNOWN
        elif sp.is_control(i):
            kind = 3                              # CONTROL
        elif sp.is_unused(i):
            kind = 5                              # UNUSED
        elif sp.is_byte(i):
            kind = 6                              # BYTE
        tokens.append(piece)
        scores.append(float(sp.get_score(i)))
        types.append(kind)
    # user-defined symbols: llama.cpp marks added tokens USER_DEFINED (4)
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(Path(tokenizer_model).read_bytes())
    for i, p in enumerate(proto.pieces):
        if p.type == pb.ModelProto.SentencePiece.USER_DEFINED:
            types[i] = 4
    if vocab_size is not None and vocab_size > n:  # llama.cpp pads to the model's vocab size
        for i in range(1, vocab_size - n + 1):
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(5)
    return tokens, scores, types


# --------------------------------------------------------------------------------------------
# Gemma 3 text encoder


# Hugging Face (and ComfyUI) name -> llama.cpp name, as convert_hf_to_gguf.py's tensor map has it.
HF_TO_LLAMA_CPP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
}
HF_TO_LLAMA_CPP_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gemma3_hf_specs(cfg: Gemma3Config) -> dict[str, tuple]:
    """Hugging Face names and shapes of the Gemma 3 text model (ComfyUI uses the same names)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    specs: dict[str, tuple] = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        specs.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (cfg.num_attention_heads * hd, h),
            p + "self_attn.k_proj.weight": (cfg.num_key_value_heads * hd, h),
            p + "self_attn.v_proj.weight": (cfg.num_key_value_heads * hd, h),
            p + "self_attn.o_proj.weight": (h, cfg.num_attention_heads * hd),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "post_attention_layernorm.weight": (h,),
            p + "pre_feedforward_layernorm.weight": (h,),
            p + "post_feedforward_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
        })
    specs["model.norm.weight"] = (h,)
    return specs


def hf_to_llama_cpp_name(name: str) -> str:
    if name in HF_TO_LLAMA_CPP:
        return HF_TO_LLAMA_CPP[name]
    parts = name.split(".")
    assert parts[:2] == ["model", "layers"], name
    layer, rest = parts[2], ".".join(parts[3:])
    base, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{HF_TO_LLAMA_CPP_LAYER[base]}.{suffix}"


def gemma3_hf_value(cfg: Gemma3Config, seed: int) -> Callable[[str, tuple], np.ndarray]:
    """Hugging Face convention: RMSNorm computes x * (1 + w), so norm weights lie near 0
    (distinct per tensor, so a norm loaded into the wrong slot is detectable)."""
    def make(name: str, shape: tuple) -> np.ndarray:
        if name.endswith("norm.weight"):
            return _normal(seed, name, shape, 0.1)
        if name == "model.embed_tokens.weight":
            return _normal(seed, name, shape, 1.0 / math.sqrt(cfg.hidden_size))
        return _normal(seed, name, shape, 1.0 / math.sqrt(shape[-1]))
    return make


def gemma3_hf_state_dict(cfg: Gemma3Config, seed: int = 0) -> dict[str, np.ndarray]:
    make = gemma3_hf_value(cfg, seed)
    return {n: make(n, s) for n, s in gemma3_hf_specs(cfg).items()}


def _gemma3_qtype(hf_name: str, shape: tuple, policy: str) -> str:
    """llama.cpp keeps 1-D tensors F32. policy 'q8_0': every matrix Q8_0; 'mixed': feed-forward
    Q4_0, the rest Q8_0 (a Q4_K_M-like split with the types gguf-py can write)."""
    if len(shape) < 2:
        return "F32"
    if policy == "q8_0":
        return "Q8_0"
    if policy == "mixed":
        return "Q4_0" if ".mlp." in hf_name else "Q8_0"
    if policy in ("F16", "F32", "Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q4_1"):
        return policy
    raise ValueError(f"unknown quantization policy {policy!r}")


def write_gemma3_gguf(path: Path, cfg: Gemma3Config, tokenizer_model: Path, *, seed: int = 0,
                      state_dict: dict[str, np.ndarray] | None = None, policy: str = "mixed") -> dict:
    """Write the text model as llama.cpp's converter does (Gemma3Model in convert_hf_to_gguf.py):
    llama.cpp names, ``+ 1.0`` on every tensor whose name ends in ``norm.weight``, token
    embedding cut to the tokenizer's size, no ``output.weight`` (tied), tokenizer metadata."""
    tokens, scores, types = llama_cpp_vocab(tokenizer_model, cfg.vocab_size)
    if len(tokens) != cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokens)} pieces, config says vocab_size={cfg.vocab_size}")
    hf_specs = gemma3_hf_specs(cfg)
    make_hf = (lambda n, s: state_dict[n]) if state_dict is not None else gemma3_hf_value(cfg, seed)
    back = {hf_to_llama_cpp_name(n): n for n in hf_specs}
    order = [(hf_to_llama_cpp_name(n), s, _gemma3_qtype(n, s, policy)) for n, s in hf_specs.items()]

    def make(name: str, shape: tuple) -> np.ndarray:
        hf = back[name]
        data = np.asarray(make_hf(hf, shape), dtype=np.float32)
        assert data.shape == tuple(shape), (hf, data.shape, shape)
        if hf.endswith("norm.weight"):
            data = data + np.float32(1.0)       # llama.cpp: norm_shift = 1.0 for Gemma
        return data

    def meta(w) -> None:
        gguf = _gguf()
        w.add_name("Gemma 3 synthetic (zimage-patcher smoke)")
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if policy == "q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)
        w.add_context_length(cfg.context_length)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_sliding_window(cfg.sliding_window)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling_factor)
        # tokenizer, as _set_vocab_sentencepiece + gguf.SpecialVocab write it for Gemma 3
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)
        w.add_chat_template("{{ bos_token }}{% for message in messages %}<start_of_turn>"
                            "{{ message['role'] }}\n{{ message['content'] }}<end_of_turn>\n{% endfor %}")

    counts = _stream_gguf(Path(path), "gemma3", meta, order, make)
    return {"path": str(path), "tensors": len(order), "qtypes": counts, "vocab": len(tokens)}


# --------------------------------------------------------------------------------------------
# Wan 2.1 VAE


def wan21_vae_specs(cfg: VAEConfig = VAEConfig()) -> dict[str, tuple]:
    """Tensor names/shapes of the Wan 2.1 VAE (Wan-Video/Wan2.1 wan/modules/vae.py layout)."""
    specs: dict[str, tuple] = {}

    def conv3d(p, cin, cout, k):
        kt, kh, kw = (k, k, k) if isinstance(k, int) else k
        specs[p + ".weight"] = (cout, cin, kt, kh, kw)
        specs[p + ".bias"] = (cout,)

    def conv2d(p, cin, cout, k):
        specs[p + ".weight"] = (cout, cin, k, k)
        specs[p + ".bias"] = (cout,)

    def rms(p, c, images):
        specs[p + ".gamma"] = (c, 1, 1) if images else (c, 1, 1, 1)

    def resblock(p, cin, cout):
        rms(p + ".residual.0", cin, False)
        conv3d(p + ".residual.2", cin, cout, 3)
        rms(p + ".residual.3", cout, False)
        conv3d(p + ".residual.6", cout, cout, 3)
        if cin != cout:
            conv3d(p + ".shortcut", cin, cout, 1)

    def attn(p, c):
        rms(p + ".norm", c, True)
        conv2d(p + ".to_qkv", c, 3 * c, 1)
        conv2d(p + ".proj", c, c, 1)

    def resample(p, c, mode):
        if mode.startswith("upsample"):
            conv2d(p + ".resample.1", c, c // 2, 3)
            if mode == "upsample3d":
                conv3d(p + ".time_conv", c, 2 * c, (3, 1, 1))
        else:
            conv2d(p + ".resample.1", c, c, 3)
            if mode == "downsample3d":
                conv3d(p + ".time_conv", c, c, (3, 1, 1))

    dim, mult, nrb = cfg.dim, list(cfg.dim_mult), cfg.num_res_blocks
    # encoder
    dims = [dim * u for u in [1] + mult]
    conv3d("encoder.conv1", 3, dims[0], 3)
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(nrb):
            resblock(f"encoder.downsamples.{idx}", cin, cout)
            idx += 1
            cin = cout
        if i != len(mult) - 1:
            resample(f"encoder.downsamples.{idx}", cout,
                     "downsample3d" if cfg.temperal_downsample[i] else "downsample2d")
            idx += 1
    resblock("encoder.middle.0", cout, cout)
    attn("encoder.middle.1", cout)
    resblock("encoder.middle.2", cout, cout)
    rms("encoder.head.0", cout, False)
    conv3d("encoder.head.2", cout, cfg.z_dim * 2, 3)
    conv3d("conv1", cfg.z_dim * 2, cfg.z_dim * 2, 1)
    conv3d("conv2", cfg.z_dim, cfg.z_dim, 1)
    # decoder
    up = list(cfg.temperal_downsample)[::-1]
    dims = [dim * u for u in [mult[-1]] + mult[::-1]]
    conv3d("decoder.conv1", cfg.z_dim, dims[0], 3)
    resblock("decoder.middle.0", dims[0], dims[0])
    attn("decoder.middle.1", dims[0])
    resblock("decoder.middle.2", dims[0], dims[0])
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if i in (1, 2, 3):
            cin = cin // 2
        for _ in range(nrb + 1):
            resblock(f"decoder.upsamples.{idx}", cin, cout)
            idx += 1
            cin = cout
        if i != len(mult) - 1:
            resample(f"decoder.upsamples.{idx}", cout, "upsample3d" if up[i] else "upsample2d")
            idx += 1
    rms("decoder.head.0", cout, False)
    conv3d("decoder.head.2", cout, 3, 3)
    return specs


def write_wan21_vae(path: Path, cfg: VAEConfig = VAEConfig(), *, seed: int = 0,
                    dtype: str = "float32") -> dict:
    from safetensors.numpy import save_file

    tensors = {}
    for name, shape in wan21_vae_specs(cfg).items():
        if name.endswith(".gamma"):
            data = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            data = _normal(seed, name, shape, 0.01)
        else:
            fan_in = math.prod(shape[1:])
            data = _normal(seed, name, shape, 1.0 / math.sqrt(fan_in))
        tensors[name] = data.astype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return {"path": str(path), "tensors": len(tensors),
            "parameters": int(sum(t.size for t in tensors.values()))}


# --------------------------------------------------------------------------------------------
# a tier's set, cached by manifest


def _manifest(tier: Tier, seed: int) -> dict:
    return {"writer_version": WRITER_VERSION, "seed": seed, "tier": asdict(tier),
            "files": {"diffusion_model": ZIMAGE_FILE, "text_encoder": GEMMA3_FILE,
                      "vae": VAE_FILE, "tokenizer": TOKENIZER_FILE}}


def write_models(out_dir: Path, tier: str | Tier = "tiny", *, seed: int = 0, force: bool = False) -> dict:
    """Write (or reuse) the three model files and the tokenizer of a tier under out_dir.

    Returns the manifest: file names relative to out_dir, the tier, the seed. A directory whose
    manifest matches is reused as is (the files are deterministic in tier and seed).
    """
    t = TIERS[tier] if isinstance(tier, str) else tier
    out_dir = Path(out_dir)
    want = _manifest(t, seed)
    mpath = out_dir / MANIFEST_FILE
    if not force and mpath.is_file():
        try:
            have = json.loads(mpath.read_text())
        except ValueError:
            have = None
        if have and {k: have.get(k) for k in want} == json.loads(json.dumps(want)) and \
                all((out_dir / f).is_file() for f in want["files"].values()):
            return have
    out_dir.mkdir(parents=True, exist_ok=True)
    mpath.unlink(missing_ok=True)
    tok = train_tokenizer(out_dir / TOKENIZER_FILE, vocab_size=t.tokenizer_vocab, seed=seed)
    info = {
        "tokenizer": str(tok),
        "text_encoder": write_gemma3_gguf(out_dir / GEMMA3_FILE, t.gemma3, tok, seed=seed),
        "diffusion_model": write_zimage_gguf(out_dir / ZIMAGE_FILE, t.zimage, seed=seed),
        "vae": write_wan21_vae(out_dir / VAE_FILE, t.vae, seed=seed,
                               dtype="float16" if t.name == "full" else "float32"),
    }
    manifest = dict(want, written=info)
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--tier", choices=sorted(TIERS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    ns = ap.parse_args(list(argv) if argv is not None else None)
    manifest = write_models(ns.out, ns.tier, seed=ns.seed, force=ns.force)
    json.dump(manifest, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
