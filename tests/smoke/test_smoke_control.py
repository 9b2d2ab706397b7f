"""Negative control: on pristine upstream the field's two errors appear, and only there."""
from __future__ import annotations

import pytest

from zimage_patcher.errors import Exit, ZpatchError
from zimage_patcher.smoke import runner


def test_control_on_pristine_observes_both_expected_errors(pristine_checkout, tiny_models, smoke_python, tmp_path):
    rep = runner.run_smoke(pristine_checkout, tmp_path, python=smoke_python, unpatched=True,
                           synthetic_dir=tiny_models, timeout=600)
    assert rep["ok"] and rep["control"]["passed"]
    exp = rep["control"]["expected_errors"]
    assert exp["text_encoder_load"]["observed"] and exp["vae_decode_4d"]["observed"]
    te = rep["stages"]["text_encoder_load"]["error"]
    assert te["type"] == "ValueError"
    assert "Unexpected text model architecture type in GGUF file: 'gemma3'" in te["message"]
    vae = rep["stages"]["vae_decode_4d"]
    assert vae["error"]["type"] == "IndexError" and "tuple index out of range" in vae["error"]["message"]
    assert vae["raised_in_comfy_sd"]
    assert runner.summary(rep).startswith("negative control passed")


def test_control_fails_on_a_patched_checkout(patched_checkout, tiny_models, smoke_python, tmp_path):
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(patched_checkout, tmp_path, python=smoke_python, unpatched=True,
                         synthetic_dir=tiny_models, timeout=600)
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    assert err.message.startswith("negative control failed at text_encoder_load")
    exp = err.details["control"]["expected_errors"]
    assert not exp["text_encoder_load"]["observed"] and not exp["vae_decode_4d"]["observed"]


def test_smoke_on_pristine_fails_for_want_of_the_overlay(pristine_checkout, tiny_models, smoke_python, tmp_path):
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(pristine_checkout, tmp_path, python=smoke_python, synthetic_dir=tiny_models, timeout=600)
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    assert err.message == ("smoke failed at import: RuntimeError: custom node missing: "
                           "custom_nodes/ComfyUI-ZImage-Fix (a patched checkout has it; run `zpatch apply`)")
    assert "zpatch apply" in err.hint and "\n" not in err.message


def test_the_patches_are_what_make_it_work(node_only_checkout, tiny_models, smoke_python, tmp_path):
    """Upstream plus the LatentUnsqueeze node but without the patches: the text encoder fails."""
    with pytest.raises(ZpatchError) as ei:
        runner.run_smoke(node_only_checkout, tmp_path, python=smoke_python, synthetic_dir=tiny_models, timeout=600)
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    assert err.message == ("smoke failed at load: ValueError: "
                           "Unexpected text model architecture type in GGUF file: 'gemma3'")
    assert err.details["stages"]["import"]["ok"]


def test_a_custom_node_that_fails_to_import_fails_the_smoke(pristine_checkout, tiny_models, smoke_python, tmp_path):
    """ComfyUI itself only logs IMPORT FAILED and carries on; the smoke does not."""
    broken = pristine_checkout / "custom_nodes" / "zpatch_broken_node.py"
    broken.write_text("raise ImportError('boom')\n")
    try:
        with pytest.raises(ZpatchError) as ei:
            runner.run_smoke(pristine_checkout, tmp_path, python=smoke_python, unpatched=True,
                             synthetic_dir=tiny_models, timeout=600)
    finally:
        broken.unlink()
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    assert err.message == ("negative control failed at import: RuntimeError: "
                           "IMPORT FAILED: custom_nodes/zpatch_broken_node.py")
    nodes = err.details["stages"]["import"]
    assert nodes["ok"] is False
