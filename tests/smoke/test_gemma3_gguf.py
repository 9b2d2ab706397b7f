"""Gemma 3 GGUF round trip through the patched ComfyUI-GGUF loader, and proof by mutation."""
from __future__ import annotations

import re
import shutil
from pathlib import Path


N_TENSORS = 41  # tiny Gemma 3: embedding + 3 layers x 13 + final norm


def gguf_dir(checkout: Path) -> Path:
    return checkout / "custom_nodes" / "ComfyUI-GGUF"


def mutated_copy(checkout: Path, dest: Path, edit) -> Path:
    """A copy of the patched ComfyUI-GGUF whose loader.py was edited (bytes kept otherwise)."""
    shutil.copytree(gguf_dir(checkout), dest, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    path = dest / "loader.py"
    text = path.read_bytes().decode("utf-8")
    new = edit(text)
    assert new != text, "the mutation did not change loader.py; update it to the loader's code"
    path.write_bytes(new.encode("utf-8"))
    return dest


def roundtrip(probe, checkout, pack: Path, out: Path) -> dict:
    return probe(checkout, "roundtrip", "--gguf-dir", pack, "--out", out)


def test_roundtrip_gives_back_the_state_dict_under_comfyui_names(probe, patched_checkout, tmp_path):
    r = roundtrip(probe, patched_checkout, gguf_dir(patched_checkout), tmp_path)
    assert r["checked"] == N_TENSORS
    assert r["missing"] == [] and r["extra"] == []
    assert r["mismatches"] == []
    assert r["worst_relative_quant_error"] < 0.01          # Q8_0: about 1/254 of a block's max
    assert r["detected"] == "GEMMA_3_4B"                  # not QWEN3_4B, not GEMMA_2_2B
    assert r["has_spiece_model"]


def test_pristine_loader_rejects_gemma3(probe, pristine_checkout, tmp_path):
    r = probe(pristine_checkout, "roundtrip", "--gguf-dir", gguf_dir(pristine_checkout), "--out", tmp_path,
              expect_ok=False)
    assert not r["ok"]
    assert "Unexpected text model architecture type in GGUF file: 'gemma3'" in r["error"]


def swap_ffn_norm_slots(text: str) -> str:
    """The field report's mistake, generalised: pre- and post-FFN norms trade places."""
    return (text.replace("pre_feedforward_layernorm", "\0")
                .replace("post_feedforward_layernorm", "pre_feedforward_layernorm")
                .replace("\0", "post_feedforward_layernorm"))


def test_mutation_swapped_ffn_norms_fails_the_roundtrip(probe, patched_checkout, tmp_path):
    pack = mutated_copy(patched_checkout, tmp_path / "ComfyUI-GGUF", swap_ffn_norm_slots)
    r = roundtrip(probe, patched_checkout, pack, tmp_path / "out")
    bad = {m["name"] for m in r["mismatches"]}
    for i in range(3):
        assert f"model.layers.{i}.pre_feedforward_layernorm.weight" in bad
        assert f"model.layers.{i}.post_feedforward_layernorm.weight" in bad
    assert not any("self_attn" in n or "mlp" in n for n in bad)


# How the patched loader takes 1 off the norms (`... - 1.0` in gemma_norm_unshift, patch 0002):
# a binary minus one, or .sub(1) / .sub_(1); not an index like [-1].
SUBTRACT_ONE = re.compile(r"\s-\s*1(\.0*)?(?![\d.\]])|\.sub_?\(\s*1(\.0*)?\s*\)")


def drop_minus_one(text: str) -> str:
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if SUBTRACT_ONE.search(line)]
    assert len(hits) == 1, f"expected one subtraction of 1 in loader.py, found lines {hits}; update the mutation"
    lines[hits[0]] = SUBTRACT_ONE.sub("", lines[hits[0]], count=1)
    return "".join(lines)


def test_mutation_without_the_minus_one_fails_the_roundtrip(probe, patched_checkout, tmp_path):
    pack = mutated_copy(patched_checkout, tmp_path / "ComfyUI-GGUF", drop_minus_one)
    r = roundtrip(probe, patched_checkout, pack, tmp_path / "out")
    bad = {m["name"] for m in r["mismatches"]}
    norms = {f"model.layers.{i}.{n}.weight" for i in range(3)
             for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                       "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm")} | {"model.norm.weight"}
    assert norms <= bad
