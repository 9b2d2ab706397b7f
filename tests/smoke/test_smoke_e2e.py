"""End to end: the tiny smoke on a patched checkout produces the images the field expects."""
from __future__ import annotations

import numpy as np
import pytest

from testing.smoke_support import lock
from zimage_patcher.smoke import runner

STAGES = ("environment", "models", "import", "load", "encode", "sample", "decode", "save")


@pytest.fixture(scope="module")
def report(patched_checkout, tiny_models, smoke_python, tmp_path_factory):
    return runner.run_smoke(patched_checkout, tmp_path_factory.mktemp("smoke-out"), python=smoke_python,
                            device="cpu", tier="tiny", synthetic_dir=tiny_models, timeout=600)


def test_both_graphs_write_pngs_of_the_right_size(report):
    Image = pytest.importorskip("PIL.Image")
    graphs = sorted(img["graph"] for img in report["images"])
    assert graphs == ["direct", "latent_unsqueeze"]
    pixels = {}
    for img in report["images"]:
        with Image.open(img["path"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            a = np.asarray(im, dtype=np.float32)
        assert a.std() > 1.0, f"{img['graph']}: constant image"
        pixels[img["graph"]] = a
    # with the patched comfy/sd.py the 4-D latent decodes exactly like the unsqueezed one
    assert np.array_equal(pixels["direct"], pixels["latent_unsqueeze"])
    assert report["stages"]["decode"]["graphs_max_abs_diff"] <= 1e-4


def test_report_has_every_stage_and_the_facts(report):
    assert report["ok"] is True and report["failure"] is None
    for name in STAGES:
        assert report["stages"][name]["ok"], name
        assert report["timings"][name] >= 0, name
    for name in ("latent_unsqueeze", "direct"):
        stats = report["stages"]["decode"]["graphs"][name]["image"]
        assert stats["shape"] == [1, 64, 64, 3] and stats["finite"]
        assert stats["std"] > 1e-3 and 0.0 <= stats["min"] < stats["max"] <= 1.0
    assert report["stages"]["decode"]["graphs"]["latent_unsqueeze"]["latent_shape"] == [1, 16, 1, 8, 8]
    assert report["stages"]["sample"]["latent_shape"] == [1, 16, 8, 8]
    # Gemma 3 hidden states (tiny width 128) for BOS + the prompt's tokens
    cond = report["stages"]["encode"]["conditioning_shape"]
    assert cond[0] == 1 and cond[1] > 3 and cond[2] == 128
    assert report["stages"]["encode"]["conditioning_std"] > 1e-3
    assert report["device"] == "cpu" and report["tier"] == "tiny"
    assert 0 < report["peak_rss_mb"] < 4096
    assert {"torch", "python", "gguf"} <= set(report["versions"])
    pins = lock()["upstream"]
    assert report["commits"]["comfyui"]["commit"] == pins["comfyui"]["commit"]
    assert report["commits"]["comfyui-gguf"]["commit"] == pins["comfyui-gguf"]["commit"]


def test_the_patched_loaders_and_hooks_were_what_ran(report):
    load = report["stages"]["load"]
    # the text encoder went through ComfyUI's Gemma 3 path (not Qwen3 / Gemma 2)
    assert load["text_encoder_name"] == "gemma3_4b"
    # the DiT is ComfyUI's Z-Image config (the tiny tier's registered subclass of it)
    assert load["diffusion_model_class"] == "TinyZImageForSmoke"
    assert load["diffusion_model_bases"][:2] == ["TinyZImageForSmoke", "ZImage"]
    nodes = report["stages"]["import"]["custom_nodes"]
    assert nodes["ComfyUI-GGUF"]["ok"] and nodes["ComfyUI-ZImage-Fix"]["ok"]
    assert any("gemma3_4b_model_config" in h for h in report["shrink_hooks"])
