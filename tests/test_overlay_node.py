"""LatentUnsqueeze, the overlay's custom node, loaded the way ComfyUI loads it (by file path)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

OVERLAY = Path(__file__).resolve().parent.parent / "zimage_patcher" / "overlay"
NODE_DIR = OVERLAY / "ComfyUI-ZImage-Fix"


@pytest.fixture(scope="module", autouse=True)
def torch():
    """torch, imported when the first test here runs: not at collection, in every worker (this module
    runs in the worker of the smoke tests, tests/conftest.py)."""
    return pytest.importorskip("torch")


def _load_module(name, path, package_dir=None):
    kwargs = {"submodule_search_locations": [str(package_dir)]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, path, **kwargs)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@pytest.fixture(scope="module")
def node_module():
    return _load_module("zimage_fix_nodes_under_test", NODE_DIR / "nodes.py")


@pytest.fixture()
def node(node_module):
    return node_module.LatentUnsqueeze()


def test_package_exports_mappings_like_comfyui_loads_it():
    # ComfyUI imports a custom node folder as a package from its __init__.py
    pkg = _load_module("zimage_fix_pkg_under_test", NODE_DIR / "__init__.py", package_dir=NODE_DIR)
    assert set(pkg.NODE_CLASS_MAPPINGS) == {"LatentUnsqueeze"}
    assert set(pkg.NODE_DISPLAY_NAME_MAPPINGS) == {"LatentUnsqueeze"}
    cls = pkg.NODE_CLASS_MAPPINGS["LatentUnsqueeze"]
    assert cls.INPUT_TYPES()["required"]["samples"][0] == "LATENT"
    assert cls.RETURN_TYPES == ("LATENT",)
    assert cls.CATEGORY == "latent"
    assert callable(getattr(cls(), cls.FUNCTION))


def test_4d_latent_becomes_one_frame_5d_with_identical_values(node, torch):
    latent = torch.randn(2, 16, 8, 12)
    (out,) = node.unsqueeze({"samples": latent})
    assert out["samples"].shape == (2, 16, 1, 8, 12)
    assert out["samples"].dtype == latent.dtype
    assert torch.equal(out["samples"][:, :, 0], latent)
    assert torch.equal(out["samples"].squeeze(2), latent)


def test_input_dict_is_not_mutated(node, torch):
    latent = torch.randn(1, 16, 4, 4)
    samples = {"samples": latent}
    node.unsqueeze(samples)
    assert samples["samples"] is latent
    assert samples["samples"].shape == (1, 16, 4, 4)


def test_5d_latent_passes_unchanged(node, torch):
    latent = torch.randn(1, 16, 3, 8, 8)
    samples = {"samples": latent, "batch_index": [0]}
    (out,) = node.unsqueeze(samples)
    assert out is samples
    assert out["samples"] is latent
    assert out["samples"].shape == (1, 16, 3, 8, 8)


def test_extra_keys_are_preserved(node, torch):
    latent = torch.randn(3, 16, 8, 8)
    mask = torch.ones(3, 1, 64, 64)
    samples = {"samples": latent, "noise_mask": mask, "batch_index": [4, 5, 6], "type": "image"}
    (out,) = node.unsqueeze(samples)
    assert out["samples"].shape == (3, 16, 1, 8, 8)
    assert out["noise_mask"] is mask
    assert out["batch_index"] == [4, 5, 6]
    assert out["type"] == "image"
    assert set(out) == set(samples)


@pytest.mark.parametrize("shape", [(16, 8), (1, 16, 8), (1, 1, 16, 1, 8, 8)])
def test_other_ranks_are_refused_with_the_shape(node, shape, torch):
    with pytest.raises(ValueError, match=r"got shape \(" + ", ".join(map(str, shape))):
        node.unsqueeze({"samples": torch.zeros(shape)})


def test_workflow_uses_the_node_between_sampler_and_vae_decode():
    wf = json.loads((OVERLAY / "workflow_z_image.json").read_text())
    by_type = {}
    for node_id, n in wf.items():
        by_type.setdefault(n["class_type"], []).append(node_id)
    (unsqueeze,) = by_type["LatentUnsqueeze"]
    (sampler,) = by_type["KSampler"]
    (decode,) = by_type["VAEDecode"]
    assert wf[unsqueeze]["inputs"]["samples"] == [sampler, 0]
    assert wf[decode]["inputs"]["samples"] == [unsqueeze, 0]
    assert wf[by_type["CLIPLoaderGGUF"][0]]["inputs"]["type"] == "lumina2"
