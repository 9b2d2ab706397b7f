"""The synthetic writers lay files out as the real releases are, as ComfyUI's modules expect."""
from __future__ import annotations


def test_writer_layouts_match_comfyui_modules_and_detection(probe, pristine_checkout):
    r = probe(pristine_checkout, "layout")
    for tier in ("tiny", "full"):
        for part in ("zimage", "vae", "gemma3"):
            assert r[tier][part] == {"missing": [], "extra": [], "shape": []}, (tier, part)
    # the full-size file is what ComfyUI's own detection calls Z-Image (width 3840, 30 layers)
    assert r["full"]["detected_class"] == "ZImage"
    assert r["full"]["detected"]["dim"] == 3840 and r["full"]["detected"]["n_layers"] == 30
    assert r["full"]["detected"]["z_image_modulation"] is True
    assert 6.0e9 < r["full"]["zimage_params"] < 6.3e9
    assert 1.2e8 < r["full"]["vae_params"] < 1.3e8          # the real Wan 2.1 VAE: ~127M
    # the tiny file needs the harness's hook: ComfyUI alone would take it for Lumina 2
    assert r["tiny"]["detected_class"] == "Lumina2"


def test_gemma3_gguf_is_written_as_llama_cpp_writes_it(tiny_models):
    """Metadata and values read back with gguf-py, no ComfyUI involved."""
    gguf = __import__("pytest").importorskip("gguf")
    import numpy as np
    from zimage_patcher.smoke import writers

    r = gguf.GGUFReader(str(tiny_models / writers.GEMMA3_FILE))

    def field(name):
        f = r.get_field(name)
        return f.contents() if f is not None else None

    assert field("general.architecture") == "gemma3"
    assert field("tokenizer.ggml.model") == "llama"
    assert len(field("tokenizer.ggml.tokens")) == len(field("tokenizer.ggml.scores")) == 512
    assert len(field("tokenizer.ggml.token_type")) == 512
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
            field("tokenizer.ggml.padding_token_id"), field("tokenizer.ggml.unknown_token_id")) == (2, 1, 0, 3)
    assert field("tokenizer.ggml.add_bos_token") is True and field("tokenizer.ggml.add_eos_token") is False
    assert field("gemma3.embedding_length") == 128 and field("gemma3.block_count") == 3
    types = field("tokenizer.ggml.token_type")
    assert types[2] == 3 and types[3] == 2 and types.count(6) == 256      # control, unknown, bytes
    tensors = {t.name: t for t in r.tensors}
    assert "blk.0.ffn_norm.weight" in tensors and "blk.0.post_ffw_norm.weight" in tensors
    assert "output.weight" not in tensors and not any(n.startswith("model.") for n in tensors)
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    # +1.0 on every norm, as llama.cpp's converter does
    hf = writers.gemma3_hf_state_dict(writers.TINY.gemma3, seed=0)
    for gname, hname in (("blk.1.ffn_norm.weight", "model.layers.1.pre_feedforward_layernorm.weight"),
                         ("blk.2.attn_k_norm.weight", "model.layers.2.self_attn.k_norm.weight"),
                         ("output_norm.weight", "model.norm.weight")):
        np.testing.assert_allclose(np.asarray(tensors[gname].data), hf[hname] + 1.0, rtol=0, atol=1e-6)


def test_zimage_gguf_has_quantized_tensors(tiny_models):
    gguf = __import__("pytest").importorskip("gguf")
    from zimage_patcher.smoke import writers

    r = gguf.GGUFReader(str(tiny_models / writers.ZIMAGE_FILE))
    assert r.get_field("general.architecture").contents() == "lumina2"
    kinds = {t.tensor_type.name for t in r.tensors}
    assert {"Q8_0", "Q4_0", "F32", "F16"} <= kinds
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}
    assert shapes["cap_embedder.1.weight"] == (256, 128)
