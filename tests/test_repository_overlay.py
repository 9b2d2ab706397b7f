"""The overlay this repository ships: canonical lock, complete headers, hashes that match."""
from __future__ import annotations

from testing.upstream import ROOT

from zimage_patcher import check, lock, overlay_write, patchset


def test_lock_is_canonical_and_current():
    """`zpatch lock` would write exactly the committed file: no stale hash, no hand formatting."""
    fresh, changed = overlay_write.relocked(ROOT)
    assert changed == []
    assert lock.dumps(fresh) == (ROOT / "upstream.lock").read_text(encoding="utf-8")


def test_lint_passes_without_network():
    res = check.run(ROOT, apply_test=False)
    assert res["clean"], res["problems"]
    assert [s["name"] for s in res["series"]] == ["comfyui", "comfyui-gguf"]


def test_every_patch_carries_its_upstream_license_notice():
    ov = patchset.load(ROOT)
    notices = {"comfyui": "GPL-3.0", "comfyui-gguf": "Apache-2.0"}
    for s in ov.series:
        for p in s.patches:
            assert notices[s.upstream.name] in p.headers["Upstream-License"], p.name
            assert p.headers["Origin"] and p.headers["Forwarded"] and p.headers["Last-Update"]


def test_pins_are_those_of_the_design():
    lk = lock.parse(ROOT / "upstream.lock")
    assert {u.name: u.commit for u in lk.upstreams} == {
        "comfyui": "57ddb7fd13d817e7259c2c992a852832b6b0f07a",
        "comfyui-gguf": "01f8845bf30d89fff293c7bd50187bc59d9d53ea"}
    assert {u.name: u.path for u in lk.upstreams} == {"comfyui": ".", "comfyui-gguf": "custom_nodes/ComfyUI-GGUF"}
