"""The smoke judges as ComfyUI does: what ComfyUI only logs is a warning in the report, a real
error fails with its stage and one clean first line, and the keys the ComfyUI-GGUF patches rename
stay checked (the field's bug: Gemma 3 weights silently left out)."""
from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest

from testing.smoke_support import ROOT, apply_overlay, build_checkout, byte_compiled
from zimage_patcher import verify
from zimage_patcher.errors import Exit, ZpatchError
from zimage_patcher.smoke import runner
from zimage_patcher.smoke.oneline import one_line


def assert_clean_line(text: str) -> None:
    assert text and len(text) <= 300 and text == text.strip()
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in text), repr(text)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, smoke_python) -> Path:
    """A patched checkout of this module's own: the tests below edit it and put it back."""
    from testing.smoke_support import unreachable_reason
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    return byte_compiled(apply_overlay(build_checkout(tmp_path_factory.mktemp("judgement") / "ComfyUI")), smoke_python)


def smoke(checkout: Path, out: Path, models: Path, python: str) -> dict:
    return runner.run_smoke(checkout, out, python=python, synthetic_dir=models, timeout=600)


def test_one_line_keeps_the_first_line_without_control_characters():
    assert one_line("\x1b[1;31mValueError\x1b[0m: bad\rvalue\tthere\nsecond line") == "ValueError: bad value there"
    assert one_line("\n\n  \x1b]0;title\x07first\u202e line\r\n2") == "first line"
    assert one_line("x" * 400) == "x" * 297 + "..."
    assert one_line("") == ""


def test_a_warning_only_load_passes_and_reports_the_warning(checkout, tiny_models, smoke_python, tmp_path):
    """An older model file with a tensor upstream's model no longer has (as norm_final.weight at
    ComfyUI's head): ComfyUI logs `unet unexpected:` and carries on, and so does the smoke."""
    from zimage_patcher.smoke import writers
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    manifest = json.loads((models / writers.MANIFEST_FILE).read_text())
    cfg = writers.TIERS["tiny"].zimage
    writers.write_zimage_gguf(models / manifest["files"]["diffusion_model"], cfg, seed=manifest["seed"],
                              extra={"zpatch_gone_upstream.weight": (cfg.dim,)})

    rep = smoke(checkout, tmp_path / "out", models, smoke_python)
    assert rep["ok"] is True and rep["failure"] is None
    assert {"stage": "load", "level": "WARNING",
            "message": "unet unexpected: ['zpatch_gone_upstream.weight']"} in rep["warnings"]
    for w in rep["warnings"]:
        assert set(w) == {"stage", "level", "message"}
        assert_clean_line(w["message"])
    on_disk = json.loads(Path(rep["report"]).read_text())
    assert on_disk["warnings"] == rep["warnings"] and on_disk["failure"] is None
    assert rep["stages"]["load"]["text_encoder_keys"]["checked"] is True
    first = runner.summary(rep).splitlines()[0]
    assert first.startswith("smoke passed: ") and f"{len(rep['warnings'])} warning(s)" in first


FAULT_NODE = '''\
"""Test fault: a custom node that breaks VAE loading with a message full of terminal bytes."""
import comfy.sd

def _broken_init(self, *args, **kwargs):
    raise RuntimeError("\\x1b[31mVAE exploded\\x1b[0m\\rwhile loading\\nsecond line of the message")

comfy.sd.VAE.__init__ = _broken_init
NODE_CLASS_MAPPINGS = {}
'''


def test_a_real_error_fails_with_its_stage_and_one_clean_line(checkout, tiny_models, smoke_python, tmp_path):
    fault = checkout / "custom_nodes" / "zpatch_fault_node.py"
    fault.write_text(FAULT_NODE)
    try:
        with pytest.raises(ZpatchError) as ei:
            smoke(checkout, tmp_path / "out", tiny_models, smoke_python)
    finally:
        fault.unlink()
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    failure = err.details["failure"]
    assert failure["stage"] == "load"
    assert failure["error"] == "RuntimeError: VAE exploded while loading"
    assert_clean_line(failure["error"])
    assert err.message == "smoke failed at load: RuntimeError: VAE exploded while loading"
    # the report on disk says the same
    on_disk = json.loads((tmp_path / "out" / runner.REPORT_NAME).read_text())
    assert {k: on_disk["failure"][k] for k in ("stage", "error")} == {"stage": "load",
                                                                       "error": failure["error"]}
    assert isinstance(on_disk["warnings"], list)
    # the hint blames nobody: what failed, the full log, the command to run it again
    assert "patches are applied" not in err.hint and "zpatch status" not in err.hint
    assert "not necessarily the patches" in err.hint
    assert f"full log: {tmp_path / 'out' / runner.LOG_NAME}" in err.hint
    assert f"reproduce: zpatch smoke {checkout} --out {tmp_path / 'out'}" in err.hint
    assert "VAE exploded" in (tmp_path / "out" / runner.LOG_NAME).read_text()


def drop_post_attention_norm_mapping(text: str) -> str:
    """A renaming mistake of the kind the field made: Gemma 3's post_attention_norm is not mapped
    (the tensor keeps a name ComfyUI does not know, and its post_attention_layernorm stays empty)."""
    line = '    "post_attention_norm": "post_attention_layernorm",\n'
    gemma = text.index("GEMMA3_SD_MAP")
    at = text.index(line.replace("\n", "\r\n") if "\r\n" in text else line, gemma)
    return text[:at] + text[at:].split("\n", 1)[1]


def test_a_missing_patched_text_encoder_weight_still_fails_the_load(checkout, tiny_models, smoke_python, tmp_path):
    """`clip missing:` is only a warning now; the keys the patches rename are checked by name."""
    loader = checkout / "custom_nodes" / "ComfyUI-GGUF" / "loader.py"
    original = loader.read_bytes()
    loader.write_bytes(drop_post_attention_norm_mapping(original.decode("utf-8")).encode("utf-8"))
    try:
        with pytest.raises(ZpatchError) as ei:
            smoke(checkout, tmp_path / "out", tiny_models, smoke_python)
    finally:
        loader.write_bytes(original)
    err = ei.value
    assert err.exit_code == Exit.SMOKE_FAILED
    failure = err.details["failure"]
    assert failure["stage"] == "load"
    assert failure["error"].startswith("RuntimeError: 3 Gemma 3 text encoder weight(s) that the ComfyUI-GGUF "
                                       "patches map from llama.cpp names were not loaded")
    assert "model.layers.0.post_attention_layernorm.weight" in failure["error"]
    assert_clean_line(failure["error"])
    assert "ComfyUI-GGUF patches" in err.hint
    # ComfyUI's own line is still there, as a warning of the load stage
    assert any(w["stage"] == "load" and w["message"].startswith("clip missing:") for w in err.details["warnings"])


def test_verify_carries_the_smoke_failure_and_warnings(smoke_python, tmp_path):
    """verify's smoke step has the harness's failure object ({stage, error}) and its warnings; a
    CPU-only torch asked for CUDA fails the harness's environment stage, for real."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the environment stage would pass")
    from testing.smoke_support import unreachable_reason
    if unreachable_reason():
        pytest.skip(unreachable_reason())
    res = verify.run(ROOT, workdir=tmp_path / "v", python=smoke_python, device="cuda")
    assert not res["passed"]
    step = res["steps"][-1]
    assert step["step"] == "smoke" and not step["ok"]
    assert {k: step["failure"][k] for k in ("stage", "error")} == {
        "stage": "environment", "error": "RuntimeError: --device cuda but torch.cuda.is_available() is False"}
    assert step["failure"] is step["data"]["failure"]          # the report's own object
    assert isinstance(step["warnings"], list)
    assert step["summary"].endswith(": RuntimeError: --device cuda but torch.cuda.is_available() is False")
    for s in res["steps"][:-1]:
        assert s["ok"] and s["failure"] is None and s["warnings"] == []


def test_verify_without_a_smoke_python_names_the_environment(tmp_path):
    from testing.smoke_support import unreachable_reason
    if unreachable_reason():
        pytest.skip(unreachable_reason())
    res = verify.run(ROOT, python=str(tmp_path / "no-such-python"))     # a temporary scratch directory
    step = res["steps"][-1]
    assert step["step"] == "smoke" and not step["ok"]
    assert step["failure"] == {"stage": "environment",
                               "error": f"smoke python not found: {tmp_path / 'no-such-python'} (from --python)"}
    assert step["warnings"] == []
    assert step["error"]["hint"].endswith("verify removes its scratch directory: "
                                          "zpatch verify --keep DIR keeps the log")
