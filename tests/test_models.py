"""`zpatch models fetch DIR`: real zpatch processes and the real huggingface_hub, against a local server
that answers as the Hub does for hf_hub_download (testing/fake_hub.py; HF_ENDPOINT points there, HF_HOME
is a tmp dir)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testing.fake_hub import SMALL_FILES, SMALL_PINNED, FakeHub, hub_env, manifest_text, sha

ROOT = Path(__file__).resolve().parent.parent
FILES = SMALL_FILES
PINNED = SMALL_PINNED


@pytest.fixture
def hub():
    h = FakeHub({(repo, path): data for _, repo, path, data in FILES.values()}).start()
    yield h
    h.stop()


def write_manifest(path: Path, *, pin=PINNED, override: dict | None = None) -> Path:
    path.write_text(manifest_text(FILES, pin=pin, override=override), encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path, hub):
    return {**hub_env(os.environ, hub, tmp_path / "hf"), "ZPATCH_CACHE": str(tmp_path / "zpatch-cache")}


@pytest.fixture
def manifest(tmp_path):
    return write_manifest(tmp_path / "models.toml")


def fetch(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "models", "fetch", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)


def model_files(d: Path) -> dict[str, bytes]:
    """What DIR holds, leaving out the record; a temporary (half) file fails the test."""
    assert not [p.name for p in d.iterdir() if p.name.endswith(".part")] if d.exists() else True
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name != ".zpatch-models.json"} if d.exists() else {}


def expected_files() -> dict[str, bytes]:
    return {name: data for name, _, _, data in FILES.values()}


def test_a_fresh_fetch_lays_out_every_file_verified_and_a_second_run_downloads_nothing(hub, env, manifest, tmp_path):
    d = tmp_path / "models"
    r = fetch(env, d, "--manifest", manifest)
    assert r.returncode == 0, r.stderr
    assert model_files(d) == expected_files()
    for role, (name, repo, _, data) in FILES.items():
        assert f"fetched       {name}" in r.stdout and f"from {repo}@main" in r.stdout
        recorded = f"sha256 not pinned in the manifest; recorded {sha(data)}; pin it in models.toml"
        assert (recorded in r.stdout) == (role not in PINNED)
    assert f"Next: zpatch smoke ./ComfyUI --models {d}" in r.stdout and "--device cuda" in r.stdout
    # where the smoke looks: flat in DIR (smoke/harness.py REAL_MODEL_FILES)
    sys.path.insert(0, str(ROOT / "zimage_patcher" / "smoke"))
    try:
        from harness import REAL_MODEL_FILES
    finally:
        sys.path.pop(0)
    assert all((d / names[0]).is_file() for names in REAL_MODEL_FILES.values())
    assert (d / "qwen_image_vae.safetensors").stat().st_nlink == 2      # a hard link to the cache's blob

    hub.log.clear()
    again = fetch(env, d, "--manifest", manifest, "--json")
    assert again.returncode == 0, again.stderr
    assert hub.log == []                     # verified where they are: not even a HEAD
    out = json.loads(again.stdout)
    assert out["ok"] and out["dir"] == str(d)
    assert {f["name"]: (f["state"], f["sha256"], f["size"], f["pinned"]) for f in out["files"]} == {
        name: ("present", sha(data), len(data), role in PINNED) for role, (name, _, _, data) in FILES.items()}

    # gone from DIR, still in the Hugging Face cache: back without a download
    (d / "tokenizer.model").unlink()
    hub.log.clear()
    third = fetch(env, d, "--manifest", manifest, "--only", "tokenizer")
    assert third.returncode == 0, third.stderr
    assert "verified      tokenizer.model" in third.stdout and hub.gets() == []
    assert model_files(d) == expected_files()


def test_a_connection_cut_mid_file_is_resumed_and_the_result_verifies(hub, env, manifest, tmp_path):
    # huggingface_hub writes in chunks of 10 MiB and, when the connection drops, asks for the rest from the
    # last whole chunk on (within the run: a run that dies keeps no partial file); hence 11 MiB here
    big = os.urandom(11 * 1024 * 1024)
    hub.files[(FILES["tokenizer"][1], "tokenizer.model")] = big
    hub.cut["tokenizer.model"] = cut = 10 * 1024 * 1024 + 1000
    d = tmp_path / "models"
    r = fetch(env, d, "--manifest", manifest, "--only", "tokenizer.model")
    assert r.returncode == 0, r.stderr
    ranges = [g[2] for g in hub.gets()]
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1].startswith("bytes=") and 0 < int(ranges[1][6:-1]) <= cut, ranges
    assert model_files(d) == {"tokenizer.model": big}
    assert f"recorded {sha(big)}" in r.stdout


def test_a_wrong_sha256_is_refused_and_the_file_not_kept(hub, env, tmp_path):
    manifest = write_manifest(tmp_path / "models.toml", override={"vae": "f" * 64})
    d = tmp_path / "models"
    r = fetch(env, d, "--manifest", manifest, "--only", "vae")
    assert r.returncode == 8
    error, hint = r.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: qwen_image_vae.safetensors from test-org/Qwen-Image_ComfyUI@main: ")
    assert sha(FILES["vae"][3]) in error and "f" * 64 in error
    assert hint.startswith("hint: ") and "not kept" in hint
    assert model_files(d) == {}
    hub.files[(FILES["vae"][1], FILES["vae"][2])] = b"fixed upstream"   # and the bad bytes left no trace in
    again = fetch(env, d, "--manifest", manifest, "--only", "vae")       # the cache: the next run asks again
    assert again.returncode == 8 and "14 bytes" in again.stderr


def test_the_hash_recorded_at_the_first_fetch_holds_later(hub, env, manifest, tmp_path):
    d = tmp_path / "models"
    assert fetch(env, d, "--manifest", manifest, "--only", "tokenizer").returncode == 0
    hub.files[(FILES["tokenizer"][1], "tokenizer.model")] = b"other bytes"      # the repo's main moved
    (d / "tokenizer.model").unlink()
    r = fetch(env, d, "--manifest", manifest, "--only", "tokenizer")
    assert r.returncode == 8 and "recorded at the first fetch" in r.stderr
    assert "tokenizer.model" not in model_files(d)


def test_offline_uses_a_filled_cache_and_says_what_an_empty_one_lacks(hub, env, manifest, tmp_path):
    d = tmp_path / "models"
    assert fetch(env, d, "--manifest", manifest).returncode == 0
    for p in d.iterdir():
        p.unlink()
    hub.log.clear()
    r = fetch({**env, "HF_HUB_OFFLINE": "1"}, d, "--manifest", manifest)
    assert r.returncode == 0, r.stderr
    assert hub.log == [] and model_files(d) == expected_files()
    assert r.stdout.count("verified      ") == 4

    empty = tmp_path / "empty"
    for how in ({"HF_HUB_OFFLINE": "1"}, {}):
        r = fetch({**env, "HF_HOME": str(tmp_path / "hf-empty"), **how}, empty, "--manifest", manifest,
                  *([] if how else ["--offline"]))
        assert r.returncode == 6
        assert r.stderr.startswith("error: z_image_turbo-Q5_K_M.gguf: not in the Hugging Face cache (")
        assert "offline" in r.stderr and not empty.exists()
    assert hub.log == []


def test_a_gated_repository_gives_the_one_line_auth_hint(hub, env, manifest, tmp_path):
    hub.gated.add(FILES["text_encoder"][1])
    d = tmp_path / "models"
    r = fetch(env, d, "--manifest", manifest, "--only", "text_encoder")
    assert r.returncode == 6
    assert r.stderr.splitlines() == [
        "error: gemma-3-4b-it-Q4_K_M.gguf: test-org/gemma-3-4b-it-GGUF is a gated repository (HTTP 401): it needs "
        "an account that accepted its terms",
        f"hint: accept them on {hub.url}/test-org/gemma-3-4b-it-GGUF, then `hf auth login` (or set HF_TOKEN)"]
    assert not d.exists()
    js = fetch(env, d, "--manifest", manifest, "--only", "text_encoder", "--json")
    assert json.loads(js.stdout)["exit_code"] == 6


@pytest.mark.parametrize("text, field", [
    ('version = 1\n[model.vae]\nname = "../vae.safetensors"\nrepo_id = "a/b"\nrevision = "main"\nfilename = "v"\n',
     "model.vae.name"),
    ('version = 1\n[model.vae]\nname = "v"\nrepo_id = "a/b"\nrevision = "main"\nfilename = "v"\nsha256 = "xyz"\n',
     "model.vae.sha256"),
    ('version = 1\n[model.vae]\nname = "v"\nrepo_id = "a/b"\nfilename = "v"\n', "model.vae.revision"),
    ('version = 1\n[model.vae]\nname = "v"\nrepo_id = "a/b"\nrevision = "main"\nfilename = "v"\nsize = -1\n',
     "model.vae.size"),
])
def test_a_bad_manifest_is_one_line_naming_file_and_field(env, tmp_path, text, field):
    manifest = tmp_path / "models.toml"
    manifest.write_text(text, encoding="utf-8")
    d = tmp_path / "models"
    r = fetch(env, d, "--manifest", manifest)
    assert r.returncode == 3
    error, hint = r.stderr.splitlines()
    assert error.startswith(f"error: {manifest}: {field}: ") and hint.startswith("hint: ")
    assert not d.exists()


def test_the_overlay_manifest_is_valid_and_names_what_the_smoke_reads():
    from zimage_patcher import models
    listed = models.load_manifest(ROOT / models.MANIFEST)
    assert {m.name for m in listed} == {name for name, *_ in FILES.values()}


def test_other_commands_do_not_import_huggingface_hub():
    code = "import sys; import zimage_patcher.cli; print('huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout == "False\n"
