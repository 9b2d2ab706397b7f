"""The real patch set on the real pinned upstreams (skips when they cannot be reached)."""
from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys

import pytest

from testing.upstream import EXCLUDE, ROOT, unreachable_reason

pytestmark = pytest.mark.skipif(unreachable_reason() is not None, reason=str(unreachable_reason()))


def zpatch(*args, env, expect=0) -> dict:
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", *map(str, args), "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == expect, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def env():
    e = dict(os.environ)        # ZPATCH_CACHE: the run's shared cache (conftest.py)
    e.pop("ZPATCH_OVERLAY", None)
    return e


def test_check_real_overlay_applies_on_the_pins(env):
    res = zpatch("check", env=env)
    assert res["clean"], res["problems"]
    assert [s["name"] for s in res["series"]] == ["comfyui", "comfyui-gguf"]
    assert all(s["applies"] for s in res["series"])


def test_real_checkout_apply_compile_unapply(env, tmp_path):
    dest = tmp_path / "ComfyUI"
    res = zpatch("checkout", dest, "--exclude", EXCLUDE, env=env)
    assert res["missing_objects"] == []
    gguf = dest / "custom_nodes" / "ComfyUI-GGUF"
    pristine = {p: p.read_bytes() for p in [dest / "comfy/sd.py", gguf / "loader.py"]}

    res = zpatch("apply", dest, env=env)
    assert res["changed"]
    assert zpatch("status", dest, env=env)["clean"]
    assert zpatch("apply", dest, env=env)["changed"] is False

    loader = (gguf / "loader.py").read_text()
    assert "gemma3" in loader
    assert "spiece_model" in loader
    sd = (dest / "comfy/sd.py").read_text()
    assert "shape[-2] * shape[-1]" in sd
    for f in [dest / "comfy/sd.py", *gguf.glob("*.py"), *(dest / "custom_nodes/ComfyUI-ZImage-Fix").glob("*.py")]:
        py_compile.compile(str(f), doraise=True, cfile=str(tmp_path / "c.pyc"))

    zpatch("unapply", dest, env=env)
    assert {p: p.read_bytes() for p in pristine} == pristine
    for repo in (dest, gguf):
        assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                              text=True).stdout == ""
    assert not (dest / "custom_nodes/ComfyUI-ZImage-Fix").exists()


def test_patched_modules_import_under_torch(env, tmp_path, smoke_python):
    dest = tmp_path / "ComfyUI"
    zpatch("checkout", dest, "--exclude", EXCLUDE, env=env)
    zpatch("apply", dest, env=env)
    code = ("import sys, asyncio; sys.argv = ['x', '--cpu']\n"
            "import comfy.options; comfy.options.enable_args_parsing()\n"
            "import comfy.sd, nodes\n"
            "for node in ('custom_nodes/ComfyUI-GGUF', 'custom_nodes/ComfyUI-ZImage-Fix'):\n"
            "    assert asyncio.run(nodes.load_custom_node(node)), node\n"
            "assert 'LatentUnsqueeze' in nodes.NODE_CLASS_MAPPINGS\n"
            "assert 'CLIPLoaderGGUF' in nodes.NODE_CLASS_MAPPINGS\n"
            "print('OK')\n")
    script = tmp_path / "import_patched.py"      # run by the smoke interpreter (torch imported already)
    script.write_text("import os, sys; sys.path.insert(0, os.getcwd())   # as for python -c CODE\n" + code)
    r = subprocess.run([smoke_python, script], cwd=dest, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    assert "IMPORT FAILED" not in r.stderr


def test_real_overlay_is_in_exported_form(env):
    """The CI gate on the real series: every patch is exactly what `zpatch export` writes for it."""
    res = zpatch("export", "--check", env=env)
    assert res["changed"] is False, res


def test_real_edit_commit_export_round_trip_on_a_partial_source(env, tmp_path):
    """The snapshot lacks one blob (DESIGN section 7): with it excluded, edit mode and plain git
    commits work, and an unchanged series exports to the same bytes."""
    dest = tmp_path / "ComfyUI"
    res = zpatch("checkout", dest, "--exclude", EXCLUDE, "--apply", env=env)
    gguf = dest / "custom_nodes" / "ComfyUI-GGUF"
    res = zpatch("edit", dest, env=env)
    assert [len(u["commits"]) for u in res["upstreams"]] == [1, 4]
    assert zpatch("export", dest, "--check", env=env)["changed"] is False
    (dest / "comfy/sd.py").write_text((dest / "comfy/sd.py").read_text() + "# a maintainer's edit\n")
    subprocess.run(["git", "commit", "-q", "-a", "--amend", "--no-edit"], cwd=dest, check=True,
                   capture_output=True)
    res = zpatch("export", dest, "--check", env=env, expect=1)
    assert [p["state"] for p in res["upstreams"][0]["patches"]] == ["changed"]
    assert [p["state"] for p in res["upstreams"][1]["patches"]] == ["unchanged"] * 4
    zpatch("unapply", dest, "--discard", env=env)
    for repo in (dest, gguf):
        assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                              text=True).stdout == ""


# What upstream would write if it did each real patch's job itself (its own words, not ours).
UPSTREAM_DOES_IT = {
    "0001-Let-video-VAEs-decode-4-D-image-latents.patch":
        ("comfy/sd.py", "        if self.latent_dim == 3 and samples.ndim == 4:  # image latent\n"),
    "0001-Fix-reading-scalar-GGUF-metadata-with-current-NumPy.patch":
        ("loader.py", "        return field_type(field.parts[field.data[-1]][0])\n"),
    "0002-Add-Gemma-3-text-encoder-support.patch":
        ("loader.py", 'TXT_ARCH_LIST = {"t5", "llama", "gemma3"}\n'),
    "0003-Rebuild-the-Gemma-3-tokenizer-from-GGUF-metadata.patch":
        ("loader.py", "    spm.trainer_spec.model_type = model.TrainerSpec.BPE\n"),
    "0004-Load-an-external-tokenizer.model-for-Gemma-3.patch":
        ("loader.py", '    tok = os.path.join(folder, "tokenizer.model")\n'),
}


def test_every_real_patch_has_a_probe_silent_on_the_pin_that_fires_when_upstream_does_the_job(env, tmp_path):
    from zimage_patcher import cache, patchset, probes
    os.environ.update({k: v for k, v in env.items() if k == "ZPATCH_CACHE"})
    ov = patchset.load(ROOT)
    seen = set()
    for s in ov.series:
        mirror = cache.ensure(s.upstream.url, s.upstream.commit)
        work = tmp_path / s.upstream.name
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(mirror), str(work)], check=True)
        for p in s.patches:
            assert p.probes, f"{p.name} has no Obsolete-If probe"
            assert probes.fired(p, mirror, s.upstream.commit) == [], p.name
            path, line = UPSTREAM_DOES_IT[p.name]
            blob = subprocess.run(["git", "show", f"{s.upstream.commit}:{path}"], cwd=work, capture_output=True,
                                  check=True).stdout
            sha = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=work, input=blob + line.encode(),
                                 capture_output=True, check=True).stdout.decode().strip()
            idx = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "idx")}
            subprocess.run(["git", "read-tree", s.upstream.commit], cwd=work, env=idx, check=True)
            subprocess.run(["git", "update-index", "--cacheinfo", f"100644,{sha},{path}"], cwd=work, env=idx, check=True)
            tree = subprocess.run(["git", "write-tree", "--missing-ok"], cwd=work, env=idx, capture_output=True,
                                  check=True, text=True).stdout.strip()
            did = subprocess.run(["git", "commit-tree", tree, "-p", s.upstream.commit, "-m", "upstream does it"],
                                 cwd=work, env={**idx, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x",
                                                "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"},
                                 capture_output=True, check=True, text=True).stdout.strip()
            assert probes.fired(p, work, did), f"{p.name}: probe silent although upstream did the job"
            seen.add(p.name)
    assert seen == set(UPSTREAM_DOES_IT)


def test_real_dry_run_rebase_onto_the_newest_snapshot_commits(env):
    """Per patch, what the newest upstream commits mean for the real series (recorded in
    bench/results/rebase-real.md by bench/rebase_bench.py)."""
    gguf = zpatch("rebase", "comfyui-gguf", "--onto", "origin/main", "--dry-run", env=env)
    assert gguf["ahead"] >= 1 and len(gguf["patches"]) == 4
    assert {p["state"] for p in gguf["patches"]} <= {"unchanged", "refreshed", "changed"}
    r = subprocess.run([sys.executable, "-m", "zimage_patcher.cli", "rebase", "comfyui", "--onto", "origin/master",
                        "--dry-run", "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    comfy = json.loads(r.stdout)
    assert r.returncode in (0, 5) and comfy["ahead"] >= 1
    for p in comfy["patches"]:
        if p["state"] == "conflict":
            assert p["files"] and p["upstream_commits"], p     # names the file and the upstream commits


def test_defines_probes_read_the_real_upstream_modules(env, tmp_path):
    """`defines` parses the real comfy/sd.py and loader.py with this Python and answers what importing
    them would: on the pins, and on the tip of the real series (patch 0003 gives gguf_sd_loader a
    `reader` parameter)."""
    from zimage_patcher import cache, git, patchset, probes
    os.environ.update({k: v for k, v in env.items() if k == "ZPATCH_CACHE"})
    ov = patchset.load(ROOT)
    by_name = {s.upstream.name: s for s in ov.series}
    sd = by_name["comfyui"]
    src = git.show_blob(cache.ensure(sd.upstream.url, sd.upstream.commit), sd.upstream.commit, "comfy/sd.py")
    assert probes.defines(src, "VAE.decode(vae_options)") and probes.defines(src, "CLIPType.LUMINA2")
    assert not probes.defines(src, "VAE.decode(no_such_parameter)") and not probes.defines(src, "NoSuchClass")
    gg = by_name["comfyui-gguf"]
    mirror = cache.ensure(gg.upstream.url, gg.upstream.commit)
    src = git.show_blob(mirror, gg.upstream.commit, "loader.py")
    assert probes.defines(src, "gguf_sd_loader(is_text_model)") and not probes.defines(src, "gguf_sd_loader(reader)")
    idx = git.ScratchIndex(mirror, str(tmp_path), read_only=True)       # the cache is only read
    tip = idx.commit_patches(gg.upstream.commit, [p.path for p in gg.patches])[-1]
    assert probes.defines(git.show_blob(mirror, tip, "loader.py", env=idx.env), "gguf_sd_loader(reader)")
