"""Checks that import ComfyUI, run in a subprocess by the smoke tests (one checkout per process).

    python probe.py --checkout DIR <command> [options]

Prints one line ``PROBE {json}`` with the findings; the tests assert on them. Commands:
  layout      synthetic writers' tensor names/shapes vs ComfyUI's own modules and detection
  roundtrip   Gemma 3 state dict -> llama.cpp-style GGUF -> ComfyUI-GGUF's gguf_clip_loader
  tokenizer   SentencePiece model -> GGUF metadata -> spiece_model; external tokenizer.model
  bigvocab    the real vocabulary size: 262144-row embedding and tokenizer
  vae         Wan 2.1 VAE decode of a 4-D latent vs the LatentUnsqueeze'd 5-D latent
  start       custom_nodes/ loaded as ComfyUI's start loads it, logging through ComfyUI's own logger
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "zimage_patcher" / "smoke"))
import writers  # noqa: E402


def setup_comfyui(checkout: Path):
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import nodes  # noqa: F401  (sets ComfyUI up as main.py would)


def import_gguf_pack(path: Path):
    """Import a ComfyUI-GGUF folder as a package under a private name (a mutated copy works too)."""
    name = "zpatch_probe_gguf_" + str(abs(hash(str(path))))
    spec = importlib.util.spec_from_file_location(name, str(path / "__init__.py"),
                                                  submodule_search_locations=[str(path)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module(name + ".loader"), importlib.import_module(name + ".dequant")


def as_float(dequant, t):
    import torch
    return dequant.dequantize_tensor(t, dtype=torch.float32).float().reshape(tuple(t.shape))


# --------------------------------------------------------------------------------------------


def cmd_layout(ns) -> dict:
    import torch
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT
    from comfy.ldm.wan.vae import WanVAE
    from comfy.text_encoders.llama import Gemma3_4B

    ops = comfy.ops.manual_cast
    out = {}

    def diff(specs, sd):
        a = {k: tuple(v) for k, v in specs.items()}
        b = {k: tuple(v.shape) for k, v in sd.items()}
        return {"missing": sorted(set(b) - set(a)), "extra": sorted(set(a) - set(b)),
                "shape": sorted(k for k in a if k in b and a[k] != b[k])}

    for tier in (writers.TINY, writers.FULL):
        z, g = tier.zimage, tier.gemma3
        specs = writers.zimage_tensor_specs(z)
        meta = {k: torch.empty(s, device="meta") for k, s in specs.items()}
        unet_config = comfy.model_detection.detect_unet_config(meta, "")
        mc = comfy.model_detection.model_config_from_unet_config(unet_config, meta)
        with torch.device("meta"):
            dit = NextDiT(patch_size=2, in_channels=16, dim=z.dim, n_layers=z.n_layers, n_heads=z.n_heads,
                          n_kv_heads=z.n_kv_heads, qk_norm=True, cap_feat_dim=z.cap_feat_dim,
                          axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
                          ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0,
                          pad_tokens_multiple=32, operations=ops)
            vae = WanVAE(dim=tier.vae.dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True])
            te = Gemma3_4B({"vocab_size": g.vocab_size, "hidden_size": g.hidden_size,
                            "intermediate_size": g.intermediate_size, "num_hidden_layers": g.num_hidden_layers,
                            "num_attention_heads": g.num_attention_heads,
                            "num_key_value_heads": g.num_key_value_heads}, None, "meta", ops)
        out[tier.name] = {
            "detected_class": type(mc).__name__ if mc else None,
            "detected": {k: unet_config.get(k) for k in ("dim", "n_layers", "n_heads", "cap_feat_dim",
                                                          "z_image_modulation", "pad_tokens_multiple")},
            "zimage": diff(specs, dit.state_dict()),
            "vae": diff(writers.wan21_vae_specs(tier.vae), vae.state_dict()),
            "gemma3": diff(writers.gemma3_hf_specs(g), te.state_dict()),
            "zimage_params": sum(math.prod(s) for s in specs.values()),
            "vae_params": sum(math.prod(s) for s in writers.wan21_vae_specs(tier.vae).values()),
        }
    return out


def cmd_roundtrip(ns) -> dict:
    """Known HF state dict -> GGUF as llama.cpp writes it (Q8_0) -> the loader -> compare."""
    import gguf
    import numpy as np
    import comfy.sd

    loader, dequant = import_gguf_pack(Path(ns.gguf_dir))
    cfg = writers.TINY.gemma3
    out = Path(ns.out)
    tok = writers.train_tokenizer(out / "rt_tokenizer.model", vocab_size=cfg.vocab_size, seed=ns.seed)
    hf = writers.gemma3_hf_state_dict(cfg, seed=ns.seed)
    path = out / "gemma-3-roundtrip-Q8_0.gguf"
    writers.write_gemma3_gguf(path, cfg, tok, state_dict=hf, policy="q8_0")
    sd = loader.gguf_clip_loader(str(path))
    q8 = gguf.GGMLQuantizationType.Q8_0
    mismatches, worst_quant_error = [], 0.0
    for name, ref in hf.items():
        if name not in sd:
            continue
        got = as_float(dequant, sd[name]).numpy()
        if got.shape != ref.shape:
            mismatches.append({"name": name, "why": f"shape {list(got.shape)} != {list(ref.shape)}"})
            continue
        if ref.ndim == 1:                       # norms: F32 in the file, +1 there, -1 on load
            expected, tol = ref, 2e-3
        else:                                   # matrices: exactly what Q8_0 holds
            expected = gguf.quants.dequantize(gguf.quants.quantize(ref, q8), q8).reshape(ref.shape)
            # ComfyUI-GGUF dequantizes Q8_0 in float16 (scale * int8): allow fp16 rounding
            tol = 2e-3 * float(np.abs(ref).max())
            worst_quant_error = max(worst_quant_error, float(np.abs(got - ref).max() / np.abs(ref).max()))
        d = float(np.abs(got - expected).max())
        if d > tol:
            mismatches.append({"name": name, "why": f"max abs diff {d:.4g} > {tol:.2g}"})
    te = comfy.sd.detect_te_model(sd)
    return {"missing": sorted(set(hf) - set(sd)), "extra": sorted(set(sd) - set(hf) - {"spiece_model"}),
            "mismatches": mismatches, "worst_relative_quant_error": worst_quant_error,
            "detected": te.name if te is not None else None, "has_spiece_model": "spiece_model" in sd,
            "checked": len(hf)}


GGUF_NAME = "gemma-3-tok-Q8_0.gguf"


def _encode_all(proc, texts):
    return [proc.encode(t) for t in texts]


def cmd_tokenizer(ns) -> dict:
    import sentencepiece as spm
    from comfy.text_encoders.spiece_tokenizer import SPieceTokenizer

    loader, _ = import_gguf_pack(Path(ns.gguf_dir))
    cfg = writers.TINY.gemma3
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_a = writers.train_tokenizer(out / "a" / "embedded.model", vocab_size=cfg.vocab_size, seed=0)
    gdir = out / "models" / "text_encoders"
    path = gdir / GGUF_NAME
    writers.write_gemma3_gguf(path, cfg, tok_a, seed=0, policy="q8_0")
    corpus = writers.tokenizer_corpus(seed=7, lines=200) + [
        "", " ", "  leading and trailing  ", "digits 1234567890 and 3.14159", "tabs\tand\nnewlines",
        "unicode: café naïve 日本語 東京 😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "<start_of_turn>user\nhi<end_of_turn>",
        "rare bytes: \u0001\u007f\u00ff ǅ", "A" * 300]
    ref = spm.SentencePieceProcessor(model_file=str(tok_a))
    result = {}

    def load_spiece():
        sd = loader.gguf_clip_loader(str(path))
        data = sd.get("spiece_model")
        if data is None:
            return None
        return bytes(data.numpy().tobytes())

    blob = load_spiece()
    result["embedded"] = {"has_spiece_model": blob is not None}
    if blob is not None:
        got = spm.SentencePieceProcessor(model_proto=blob)
        a, b = _encode_all(ref, corpus), _encode_all(got, corpus)
        differ = [corpus[i] for i in range(len(corpus)) if a[i] != b[i]]
        comfy_tok = SPieceTokenizer(blob, add_bos=True, add_eos=False)
        comfy_ids = [comfy_tok(t)["input_ids"] for t in corpus[:20]]
        result["embedded"].update({
            "pieces": got.get_piece_size(), "reference_pieces": ref.get_piece_size(),
            "differ": differ[:5], "n_differ": len(differ), "n_texts": len(corpus),
            "comfy_bos_first": all(ids[:1] == [ref.bos_id()] for ids in comfy_ids),
            "comfy_matches": all(ids[1:] == ref.encode(t) for ids, t in zip(comfy_ids, corpus[:20])),
            "ids": {"bos": got.bos_id(), "eos": got.eos_id(), "pad": got.pad_id(), "unk": got.unk_id()},
            "reference_ids": {"bos": ref.bos_id(), "eos": ref.eos_id(), "pad": ref.pad_id(), "unk": ref.unk_id()},
            "decode_roundtrip": all(got.decode(got.encode(t)) == t for t in corpus),
        })
    # An external tokenizer.model (a different one, so the winner is identifiable) wins when present;
    # "PATH@VOCAB" trains it with VOCAB pieces (more than the embedding has: it must be ignored).
    for spec in ns.external or []:
        rel, _, vocab = spec.partition("@")
        vocab = int(vocab or 400)
        tok_b = writers.train_tokenizer(out / f"b{vocab}" / "external.model", vocab_size=vocab, seed=3)
        target = (gdir / rel).resolve()          # absolute paths stay as they are
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tok_b, target)
        try:
            blob2 = load_spiece()
        finally:
            target.unlink()
        b_proc = spm.SentencePieceProcessor(model_file=str(tok_b))
        entry = {"has_spiece_model": blob2 is not None, "external_pieces": vocab}
        if blob2 is not None:
            got2 = spm.SentencePieceProcessor(model_proto=blob2)
            entry.update({"pieces": got2.get_piece_size(), "bytes_equal_external": blob2 == tok_b.read_bytes(),
                          "encodes_like_external": _encode_all(got2, corpus) == _encode_all(b_proc, corpus),
                          "encodes_like_embedded": _encode_all(got2, corpus) == _encode_all(ref, corpus)})
        result.setdefault("external", {})[spec] = entry
    return result


def cmd_bigvocab(ns) -> dict:
    """Real Gemma 3 vocabulary size (262144 rows, llama.cpp's [PADn] fill): the >= 64K embedding
    branch (dequantized to float16 on load) and a 262144-piece tokenizer rebuild."""
    import dataclasses
    import gguf
    import numpy as np
    import sentencepiece as spm

    loader, dequant = import_gguf_pack(Path(ns.gguf_dir))
    out = Path(ns.out)
    cfg = dataclasses.replace(writers.TINY.gemma3, vocab_size=writers.FULL.gemma3.vocab_size)
    tok = writers.train_tokenizer(out / "tok.model", vocab_size=writers.TINY.tokenizer_vocab)
    path = out / "gemma-3-bigvocab-Q8_0.gguf"
    writers.write_gemma3_gguf(path, cfg, tok, seed=0, policy="q8_0")
    sd = loader.gguf_clip_loader(str(path))
    emb = sd["model.embed_tokens.weight"]
    ref = writers.gemma3_hf_value(cfg, 0)("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size))
    q8 = gguf.GGMLQuantizationType.Q8_0
    expected = gguf.quants.dequantize(gguf.quants.quantize(ref, q8), q8).reshape(ref.shape)
    got = as_float(dequant, emb).numpy()
    proc = spm.SentencePieceProcessor(model_proto=bytes(sd["spiece_model"].numpy().tobytes()))
    orig = spm.SentencePieceProcessor(model_file=str(tok))
    corpus = writers.tokenizer_corpus(seed=11, lines=100)
    return {"embed_shape": list(emb.shape), "embed_dtype": str(emb.dtype),
            "embed_quantized": bool(dequant.is_quantized(emb)),
            "embed_max_diff": float(np.abs(got - expected).max()), "embed_scale": float(np.abs(ref).max()),
            "pieces": proc.get_piece_size(), "pad_piece_unused": proc.is_unused(cfg.vocab_size - 1),
            "encodes_like_original": all(proc.encode(t) == orig.encode(t) for t in corpus)}


def cmd_vae(ns) -> dict:
    import torch
    import comfy.sd
    import comfy.utils
    import nodes

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(ns.vae))
    g = torch.Generator().manual_seed(0)
    lat4 = torch.randn((1, 16, 8, 8), generator=g)
    out = {"latent_dim": vae.latent_dim}
    if ns.plain:  # only the 4-D decodes, errors reported (for a pristine checkout)
        with torch.inference_mode():
            for name, fn in (("decode", lambda: vae.decode(lat4)),
                             ("decode_tiled", lambda: vae.decode_tiled(lat4, tile_x=4, tile_y=4, overlap=2))):
                try:
                    fn()
                    out[name + "_4d_error"] = None
                except Exception as exc:  # noqa: BLE001
                    out[name + "_4d_error"] = f"{type(exc).__name__}: {exc}"
                    out[name + "_4d_where"] = traceback.extract_tb(exc.__traceback__)[-1].filename
        return out
    loop = asyncio.new_event_loop()
    node_dir = Path(ns.checkout) / "custom_nodes" / "ComfyUI-ZImage-Fix"
    ok = loop.run_until_complete(nodes.load_custom_node(str(node_dir), module_parent="custom_nodes"))
    if not ok:
        raise RuntimeError("IMPORT FAILED: custom_nodes/ComfyUI-ZImage-Fix")
    import harness
    with torch.inference_mode():
        key = harness.latent_input_name(nodes, "LatentUnsqueeze")
        lat5 = harness.call_node(nodes, "LatentUnsqueeze", **{key: {"samples": lat4}})[0]["samples"]
        out["unsqueezed_shape"] = list(lat5.shape)
        out["unsqueeze_is_view_of_same_values"] = bool(torch.equal(lat5[:, :, 0], lat4))
        out["estimate_4d"] = vae.memory_used_decode(lat4.shape, vae.vae_dtype)
        out["estimate_5d"] = vae.memory_used_decode(lat5.shape, vae.vae_dtype)
        d4, d5 = vae.decode(lat4), vae.decode(lat5)
        t4 = vae.decode_tiled(lat4, tile_x=4, tile_y=4, overlap=2)
        t5 = vae.decode_tiled(lat5, tile_x=4, tile_y=4, overlap=2)
        node4 = harness.call_node(nodes, "VAEDecode", vae=vae, samples={"samples": lat4})[0]
        node5 = harness.call_node(nodes, "VAEDecode", vae=vae, samples={"samples": lat5})[0]
    def images(x):  # (B, T, H, W, C) or (B, H, W, C) -> the (N, H, W, C) image batch VAEDecode gives
        return x.reshape((-1,) + tuple(x.shape[-3:]))

    def max_diff(a, b):
        a, b = images(a), images(b)
        return float((a - b).abs().max()) if a.shape == b.shape else None

    out.update({
        "decode_shapes": [list(d4.shape), list(d5.shape)],
        "decode_max_diff": max_diff(d4, d5),
        "tiled_shapes": [list(t4.shape), list(t5.shape)],
        "tiled_max_diff": max_diff(t4, t5),
        "node_shapes": [list(node4.shape), list(node5.shape)],
        "node_max_diff": max_diff(node4, node5),
        "decode_std": float(d5.float().std()),
    })
    return out


def cmd_start(ns) -> dict:
    """What main.py does for custom nodes at start (nodes.init_extra_nodes -> load_custom_node for each
    folder of custom_nodes/, with app.logger's handler on stderr), without the server and the API nodes."""
    import logging
    from app.logger import setup_logger
    setup_logger(log_level="INFO")
    import nodes
    before = set(nodes.NODE_CLASS_MAPPINGS)
    folder = ns.checkout / "custom_nodes"
    loaded = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir() and not d.name.startswith((".", "__")):
            loaded[d.name] = asyncio.run(nodes.load_custom_node(str(d)))
    logging.getLogger().handlers[0].flush()
    import app.logger
    return {"loaded": loaded, "new_nodes": sorted(set(nodes.NODE_CLASS_MAPPINGS) - before),
            "log": [entry["m"] for entry in app.logger.get_logs() or []]}    # what ComfyUI's own log view shows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkout", required=True, type=Path)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("layout")
    p = sub.add_parser("roundtrip")
    p.add_argument("--gguf-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("tokenizer")
    p.add_argument("--gguf-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--external", action="append",
                   help="PATH[@VOCAB]: a tokenizer.model there (relative to the GGUF's folder, or absolute)")
    p = sub.add_parser("bigvocab")
    p.add_argument("--gguf-dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("vae")
    p.add_argument("--vae", required=True)
    p.add_argument("--plain", action="store_true", help="only decode 4-D latents, report errors")
    sub.add_parser("start")
    ns = ap.parse_args()
    ns.checkout = ns.checkout.resolve()
    for attr in ("gguf_dir", "out", "vae"):
        if getattr(ns, attr, None):
            setattr(ns, attr, str(Path(getattr(ns, attr)).resolve()))
    try:
        setup_comfyui(ns.checkout)
        result = {"ok": True, **globals()["cmd_" + ns.cmd](ns)}
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        code = 1
    print("PROBE " + json.dumps(result, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
