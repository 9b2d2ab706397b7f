"""The GPU tier's one command, rehearsed on a CPU through the same path.

`make gpu-smoke` with DEVICE=cpu TIER=tiny runs `zpatch verify --device cpu --tier tiny --models DIR
--manifest M --keep K` on the real upstreams (a fresh checkout at the pins, through the reachable
mirrors), with the real huggingface_hub fetching the model files from a local server that answers as
the Hugging Face Hub does (testing/fake_hub.py). What it serves is the tiny tier's synthetic set
(writers.py, the `tiny_models` fixture) under the real file names; `--tier tiny` tells the smoke that
the files are the tiny tier's, so the same graph runs at 64x64, 2 steps. Nothing of zpatch or git is
replaced: only the Hub and the model sizes are small."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testing.fake_hub import FakeHub, hub_env, manifest_text, sha
from testing.smoke_support import ROOT, unreachable_reason

# role -> (name in DIR, as harness.py REAL_MODEL_FILES wants it; repo_id; path in the repo; the tiny file served)
SERVED = {
    "diffusion_model": ("z_image_turbo-Q5_K_M.gguf", "test-org/Z-Image-Turbo-GGUF", "z_image_turbo-Q5_K_M.gguf",
                        "z_image_synthetic.gguf"),
    "text_encoder": ("gemma-3-4b-it-Q4_K_M.gguf", "test-org/gemma-3-4b-it-GGUF", "gemma-3-4b-it-Q4_K_M.gguf",
                     "gemma-3-synthetic.gguf"),
    "tokenizer": ("tokenizer.model", "test-org/gemma-3-4b-it", "tokenizer.model", "synthetic_spm.model"),
    "vae": ("qwen_image_vae.safetensors", "test-org/Qwen-Image_ComfyUI", "split_files/vae/qwen_image_vae.safetensors",
            "wan21_vae_synthetic.safetensors"),
}
STEPS = ["checkout", "check", "apply", "status", "compile", "models", "smoke"]
STAGES = ["environment", "models", "import", "load", "encode", "sample", "decode", "save", "total"]


@pytest.fixture
def models(tiny_models) -> dict:
    """{role: (name, repo_id, filename, bytes)}: the tiny set under the real names."""
    return {role: (name, repo, path, (tiny_models / synthetic).read_bytes())
            for role, (name, repo, path, synthetic) in SERVED.items()}


@pytest.fixture
def hub(models):
    h = FakeHub({(repo, path): data for _, repo, path, data in models.values()}).start()
    yield h
    h.stop()


@pytest.fixture
def env(hub, tmp_path, smoke_python):
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    e = hub_env(os.environ, hub, tmp_path / "hf")
    e.pop("ZPATCH_OVERLAY", None)
    e["ZPATCH_SMOKE_PYTHON"] = smoke_python
    return e


def test_make_gpu_smoke_fetches_applies_runs_the_graph_on_the_fetched_files_and_reports(
        models, hub, env, smoke_python, tmp_path):
    manifest = tmp_path / "models.toml"
    manifest.write_text(manifest_text(models), encoding="utf-8")
    d, keep = tmp_path / "models", tmp_path / "gpu-smoke"
    bin_dir = Path(sys.prefix) / "bin"          # the venv running the tests is make's VENV (make test's .venv)
    assert (bin_dir / "zpatch").is_file(), f"no zpatch in {bin_dir}: pip install -e . there"
    # `make gpu-smoke` as a GPU user types it, with the CPU rehearsal's variables; -o: setup's venv is taken
    # as it is (a pyproject.toml newer than the venv would otherwise reinstall it)
    r = subprocess.run(["make", "--no-print-directory", "-o", f"{bin_dir}/zpatch", "gpu-smoke", f"VENV={sys.prefix}",
                        "DEVICE=cpu", "TIER=tiny", f"MODELS={d}", f"MANIFEST={manifest}", f"KEEP={keep}",
                        f"SMOKE_PYTHON={smoke_python}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0] == (f"ZPATCH_SMOKE_PYTHON={smoke_python} {bin_dir}/zpatch verify --device cpu --tier tiny \\")
    assert [l.split()[:2] for l in out if l.split()[:1] in (["ok"], ["FAIL"])] == [["ok", s] for s in STEPS]
    assert out[-2:] == [f"Report: {keep / 'report.md'} (and report.json)",
                        f"Verified: the overlay applies on the pins and the smoke generation passes on the model "
                        f"files in {d}."]
    stages = next(l for l in out if l.startswith("smoke stages: ")).split()[2::2]
    assert stages == STAGES[:-1]                                     # in the order they ran
    assert any(l.startswith("peak GPU memory n/a (cpu), peak RSS ") for l in out)

    # report.json: what `zpatch --json verify` prints
    rep = json.loads((keep / "report.json").read_text())
    assert (rep["command"], rep["ok"], rep["exit_code"], rep["passed"]) == ("verify", True, 0, True)
    assert (rep["device"], rep["tier"], rep["models"], rep["manifest"]) == ("cpu", "tiny", str(d), str(manifest))
    assert rep["report_files"] == {"json": str(keep / "report.json"), "markdown": str(keep / "report.md")}
    steps = {s["step"]: s for s in rep["steps"]}
    assert list(steps) == STEPS and all(s["ok"] and s["seconds"] > 0 for s in steps.values())

    # the models were fetched from the Hub, verified against the manifest's pins, laid out under the real names
    fetched = steps["models"]["data"]
    assert fetched["dir"] == str(d) and fetched["manifest"] == str(manifest)
    assert {f["name"]: (f["state"], f["pinned"], f["sha256"], f["size"]) for f in fetched["files"]} == {
        name: ("fetched", True, sha(data), len(data)) for name, _, _, data in models.values()}
    assert sorted(g[1].split("/resolve/main/")[1] for g in hub.gets()) == sorted(p for _, _, p, _ in models.values())
    assert {p.name: p.read_bytes() for p in d.iterdir() if not p.name.startswith(".")} == {
        name: data for name, _, _, data in models.values()}

    # the checkout applied, and the smoke ran the graph on the fetched files, not on synthetic ones
    assert steps["apply"]["summary"].endswith(" applied") and steps["status"]["data"]["node"]["state"] == "installed"
    smoke = steps["smoke"]["data"]
    assert smoke["ok"] and smoke["failure"] is None
    assert smoke["models"] == {"dir": str(d), "source": "user", "diffusion_model": SERVED["diffusion_model"][0],
                               "text_encoder": SERVED["text_encoder"][0], "vae": SERVED["vae"][0],
                               "tokenizer": SERVED["tokenizer"][0]}
    assert "--models" in smoke["command"] and "--synthetic-dir" not in smoke["command"]
    assert (smoke["tier"], smoke["width"], smoke["height"], smoke["steps"]) == ("tiny", 64, 64, 2)
    assert smoke["stages"]["load"]["diffusion_model_class"] == "TinyZImageForSmoke"
    assert len(smoke["images"]) == 2 and all(os.path.isfile(i["path"]) for i in smoke["images"])
    assert smoke["reproduce"].endswith(f"--device cpu --models {d} --tier tiny --python {smoke_python}")

    # every step's and stage's time, the memory fields, the versions
    m = rep["measurements"]
    assert set(m["steps"]) == set(STEPS) and all(v > 0 for v in m["steps"].values())      # (JSON sorts the keys)
    assert set(m["stages"]) == set(STAGES) and all(isinstance(v, float) and v >= 0 for v in m["stages"].values())
    assert m["peak_gpu_mb"] is None and m["gpu"] is None and m["peak_rss_mb"] > 0
    assert m["torch"] == smoke["versions"]["torch"] and (m["smoke_tier"], m["smoke_models"]) == ("tiny", "user")

    # the summary for a person; its Rerun line works pasted: the zpatch that ran (`zpatch` when the PATH
    # finds that one) and the interpreter make passed in $ZPATCH_SMOKE_PYTHON, as --python
    found = shutil.which("zpatch", path=env.get("PATH"))
    zpatch_cmd = "zpatch" if found and os.path.samefile(found, bin_dir / "zpatch") else str(bin_dir / "zpatch")
    md = (keep / "report.md").read_text()
    assert md.startswith("# zpatch verify: passed (exit 0)\n")
    for line in ("- Exit status: 0 (success, or nothing to do)", "- Device: cpu; GPU: n/a (cpu)",
                 "- Graph: 64x64, 2 steps, tier tiny, your model files",
                 f"- Model files: {d}", "- Peak GPU memory: n/a (cpu)",
                 f"- Peak RSS of the smoke process: {m['peak_rss_mb']:.0f} MB",
                 f"- Rerun: `{zpatch_cmd} verify --tier tiny --models {d} --manifest {manifest} --python {smoke_python} "
                 f"--keep {keep}`"):
        assert line in md.splitlines(), line
    assert any(l.startswith(f"- torch: {m['torch']} (") for l in md.splitlines())     # and its CUDA, if any
    assert all(f"| {s} | ok | " in md for s in STEPS)
    assert [l.split()[1] for l in md.split("## Smoke stages")[1].splitlines() if l.startswith("| ")][1:] == STAGES


def test_a_wrong_sha256_stops_at_the_models_step_and_nothing_is_smoke_run(models, env, tmp_path):
    manifest = tmp_path / "models.toml"
    manifest.write_text(manifest_text(models, override={"vae": "0" * 64}), encoding="utf-8")
    d, keep = tmp_path / "models", tmp_path / "gpu-smoke"
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "verify", "--device", "cpu", "--tier", "tiny",
                        "--models", d, "--manifest", manifest, "--keep", keep, "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 8, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert (res["ok"], res["exit_code"], res["passed"]) == (False, 8, False)
    assert [s["step"] for s in res["steps"]] == STEPS[:-1] and [s["ok"] for s in res["steps"]] == [True] * 5 + [False]
    failed = res["steps"][-1]
    assert failed["failure"]["stage"] == "models"
    assert failed["error"]["error"].startswith("qwen_image_vae.safetensors from test-org/Qwen-Image_ComfyUI@main: ")
    assert "0" * 64 in failed["error"]["error"] and "not kept" in failed["error"]["hint"]
    assert not (d / "qwen_image_vae.safetensors").exists() and not (keep / "smoke").exists()
    assert res["measurements"]["stages"] == {} and res["measurements"]["peak_rss_mb"] is None
    assert json.loads((keep / "report.json").read_text()) == res
    md = (keep / "report.md").read_text()
    assert md.startswith("# zpatch verify: FAILED at models (exit 8)\n")
    assert "- Peak GPU memory: n/a (cpu)" in md and "- Stage: models" in md and "## Smoke stages" not in md
