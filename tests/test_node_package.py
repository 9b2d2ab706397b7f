"""The custom node as a package of its own: the Comfy Registry / ComfyUI-Manager metadata, validated by
comfy-cli's own code (`comfy node validate`, its pyproject parser, its publish zip), the example workflow
for ComfyUI's editor (the same graph as the API-format workflow the smoke runs, converted by comfy-cli's
UI-to-API converter), and every node file in upstream.lock, so `zpatch apply` installs what the
registry ships."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from testing.smoke_support import apply_overlay, build_checkout
from testing.upstream import ROOT, lock, unreachable_reason
from zimage_patcher import patchset

OVERLAY = ROOT / "zimage_patcher" / "overlay"
NODE_DIR = OVERLAY / "ComfyUI-ZImage-Fix"
API_WORKFLOW = OVERLAY / "workflow_z_image.json"
UI_WORKFLOW = NODE_DIR / "example_workflows" / "z_image_turbo_gemma3_gguf.json"
PYPROJECT = NODE_DIR / "pyproject.toml"


def comfy_cli(module: str):
    """A module of comfy-cli, imported when a test needs it (not at collection, in every worker)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{e}: comfy-cli comes with the test extra (pip install -e '.[test]')")


def node_copy(dest: Path) -> Path:
    """The node's files as `zpatch apply` installs them, in a folder of its own: comfy-cli writes
    caches where it runs (.ruff_cache), which must never land in the locked source folder."""
    shutil.copytree(NODE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def comfy_node_validate(folder: Path, home: Path) -> subprocess.CompletedProcess:
    """`comfy node validate`, the check `comfy node publish` runs before it uploads, offline: no
    telemetry (DO_NOT_TRACK), no update check, no prompt, its config in HOME instead of the user's;
    plain text, wide lines (its messages are matched below)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COMFY_USER_AGENT", "AI_AGENT")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), DO_NOT_TRACK="1", COMFY_NO_UPDATE_CHECK="1",
               COMFY_OUTPUT="pretty", NO_COLOR="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", "node", "validate"], cwd=folder,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def registry_name_problems(name: str) -> list[str]:
    """[project].name against https://docs.comfy.org/registry/specifications: comfy-cli does not check it
    (the registry does, at publish), and the documented rules are stricter than the registry server's
    own check (which lets a leading digit and '..' through), so these are the documented ones, with the
    server's no special character at the end and the documented best practice of no "ComfyUI"."""
    out = []
    if not 0 < len(name) < 100:
        out.append("must be less than 100 characters")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        out.append("only alphanumeric characters, hyphens, underscores and periods")
    if re.search(r"[._-]{2}", name):
        out.append("no consecutive special characters")
    if not re.match(r"[A-Za-z]", name):
        out.append("cannot start with a number or special character")
    if name[-1:] in ("-", "_", "."):
        out.append("cannot end with a special character")
    if "comfyui" in name.lower():
        out.append('best practice: no "ComfyUI" in the name')
    return out


# ------------------------------------------------------------------ the registry metadata


def test_comfy_node_validate_passes_without_a_warning(tmp_path):
    r = comfy_node_validate(node_copy(tmp_path / "node"), tmp_path / "home")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # comfy-cli only warns, and drops the field, for a classifier, requires-comfyui or license it cannot read
    assert "Warning" not in out, out
    assert "All validation checks passed" in out, out      # and its ruff security rules found nothing


@pytest.mark.parametrize("edit, expect_rc, expect", [
    (lambda t: re.sub(r'(?m)^version = .*\n', "", t), 1, "project version is empty"),
    (lambda t: t.replace('"Operating System :: OS Independent",',
                         '"Operating System :: OS Independent", "Environment :: GPU :: Cambricon MLU",'),
     0, "Warning: Invalid Environment classifier"),
    (lambda t: t.replace('">=0.4.0"', '">=0.4"'), 0, "Warning: Invalid requires-comfyui format"),
], ids=["no-version", "unknown-accelerator", "two-part-comfyui-version"])
def test_comfy_node_validate_catches_a_broken_copy(tmp_path, edit, expect_rc, expect):
    """The check above can fail: the same validation on a broken copy of the pyproject."""
    folder = node_copy(tmp_path / "node")
    text = (folder / "pyproject.toml").read_text()
    broken = edit(text)
    assert broken != text
    (folder / "pyproject.toml").write_text(broken)
    r = comfy_node_validate(folder, tmp_path / "home")
    assert r.returncode == expect_rc and expect in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_registry_reads_the_declared_fields():
    cfg = comfy_cli("comfy_cli.registry.config_parser").extract_node_configuration(str(PYPROJECT))
    p, c = cfg.project, cfg.tool_comfy
    assert p.name == "zimage-fix" and registry_name_problems(p.name) == []
    assert re.fullmatch(r"\d+\.\d+\.\d+", p.version), p.version          # semver X.Y.Z
    assert (p.license.file, p.license.text) == ("LICENSE", "")
    assert p.dependencies == []                                           # torch comes with ComfyUI
    assert p.description and p.requires_python.startswith(">=")
    assert p.urls.repository.startswith("https://github.com/")
    assert p.supported_os == ["OS Independent"]                           # parsed, not dropped
    assert c.publisher_id and c.display_name and c.icon == ""
    # the lower bound is a three-part version the registry keeps (test_matches_real_comfyui_at_the_pin:
    # ComfyUI's version at the pinned commit)
    assert re.fullmatch(r">=\d+\.\d+\.\d+", p.supported_comfyui_version), p.supported_comfyui_version


@pytest.mark.parametrize("name", ["ComfyUI-ZImage-Fix", "comfyui_zimage_fix", "1zimage-fix", "-zimage-fix",
                                  "zimage--fix", "zimage-fix.", "zimage fix", "z" * 100, ""])
def test_a_name_the_registry_refuses_is_caught(tmp_path, name):
    """The same parser on a copy with a bad name: the name check sees what the registry would get."""
    text = PYPROJECT.read_text()
    bad = tmp_path / "pyproject.toml"
    bad.write_text(re.sub(r'(?m)^name = ".*"$', lambda _: f"name = {json.dumps(name)}", text, count=1))
    cfg = comfy_cli("comfy_cli.registry.config_parser").extract_node_configuration(str(bad))
    assert cfg.project.name == name
    assert registry_name_problems(cfg.project.name)


def test_the_published_zip_holds_exactly_the_files_zpatch_installs(tmp_path, monkeypatch):
    """`comfy node publish`, run in the node folder, zips its git-tracked files: with every node file
    tracked, that is the set upstream.lock lists (what `zpatch apply` installs), nothing more."""
    folder = node_copy(tmp_path / "node")
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    monkeypatch.chdir(folder)
    comfy_cli("comfy_cli.file_utils").zip_files(tmp_path / "node.zip")
    with zipfile.ZipFile(tmp_path / "node.zip") as z:
        assert sorted(z.namelist()) == sorted(lock()["overlay"]["sha256"])


def test_every_node_file_is_in_the_lock_with_its_hash():
    ov = patchset.load(ROOT)
    assert ROOT / ov.lock.overlay.source == NODE_DIR
    files = patchset.overlay_files(NODE_DIR)
    assert {"pyproject.toml", "LICENSE", "README.md", UI_WORKFLOW.relative_to(NODE_DIR).as_posix()} <= set(files)
    assert sorted(ov.lock.overlay.sha256) == files, "run `zpatch lock` after changing the node folder"
    assert patchset.node_hashes(ROOT, ov.lock.overlay) == ov.lock.overlay.sha256


def test_the_license_is_the_projects_gpl3():
    text = (NODE_DIR / "LICENSE").read_bytes()
    assert text == (ROOT / "LICENSE").read_bytes()
    assert text.lstrip().startswith(b"GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007")
    assert tomllib.loads(PYPROJECT.read_text())["project"]["license"] == {"file": "LICENSE"}


def test_the_node_sources_parse_on_the_oldest_python_declared():
    floor = re.fullmatch(r">=\s*3\.(\d+)", tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])
    assert floor, "requires-python is a >=3.N floor"
    for path in sorted(NODE_DIR.glob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, int(floor.group(1))))


# ------------------------------------------------------------------ the example workflow

# What ComfyUI's /object_info says of the workflow's node types, as much as the UI-to-API conversion
# reads: inputs in INPUT_TYPES order (a list is a combo, whose choices do not matter here; INT, FLOAT and
# STRING are widgets; other types are sockets), control_after_generate, outputs, display names.
# test_matches_real_comfyui_at_the_pin checks it against a real ComfyUI at the pin.
OBJECT_INFO = {
    "UnetLoaderGGUF": {"display_name": "Unet Loader (GGUF)", "output": ["MODEL"],
                       "input": {"required": {"unet_name": [[]]}}},
    "CLIPLoaderGGUF": {"display_name": "CLIPLoader (GGUF)", "output": ["CLIP"],
                       "input": {"required": {"clip_name": [[]], "type": [[]]}}},
    "CLIPTextEncode": {"display_name": "CLIP Text Encode (Prompt)", "output": ["CONDITIONING"],
                       "input": {"required": {"text": ["STRING"], "clip": ["CLIP"]}}},
    "EmptySD3LatentImage": {"display_name": None, "output": ["LATENT"],
                            "input": {"required": {"width": ["INT"], "height": ["INT"], "batch_size": ["INT"]}}},
    "KSampler": {"display_name": "KSampler", "output": ["LATENT"], "input": {"required": {
        "model": ["MODEL"], "seed": ["INT", {"control_after_generate": True}], "steps": ["INT"], "cfg": ["FLOAT"],
        "sampler_name": [[]], "scheduler": [[]], "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
        "latent_image": ["LATENT"], "denoise": ["FLOAT"]}}},
    "LatentUnsqueeze": {"display_name": "Latent Unsqueeze (image -> 1-frame video)", "output": ["LATENT"],
                        "input": {"required": {"samples": ["LATENT"]}}},
    "VAELoader": {"display_name": "Load VAE", "output": ["VAE"], "input": {"required": {"vae_name": [[]]}}},
    "VAEDecode": {"display_name": "VAE Decode", "output": ["IMAGE"],
                  "input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}}},
    "SaveImage": {"display_name": "Save Image", "output": [],
                  "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING"]}}},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY = {"Note", "MarkdownNote"}


def digest(info: dict) -> dict:
    """The part of an /object_info entry the conversion depends on, comparable between the table and
    a real ComfyUI (whose entries also carry tooltips, ranges, combo choices...)."""
    inputs = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            inputs.append([section, name, kind, bool(opts.get("control_after_generate")), bool(opts.get("forceInput"))])
    return {"display_name": info.get("display_name"), "output": list(info["output"]), "inputs": inputs}


def widgets_and_sockets(node_type: str) -> tuple[list[tuple[str, bool]], list[tuple[str, str]]]:
    """(widget name, has control_after_generate) and (socket name, type), in the editor's order."""
    widgets, sockets = [], []
    for _, name, kind, control, force in digest(OBJECT_INFO[node_type])["inputs"]:
        if kind in WIDGET_TYPES and not force:
            widgets.append((name, control))
        else:
            sockets.append((name, kind))
    return widgets, sockets


def test_the_example_workflow_is_the_graph_the_smoke_runs():
    """UI format -> API format by comfy-cli's converter (links to [node id, slot]; widgets_values onto
    the widget inputs in INPUT_TYPES order, control_after_generate skipped) gives workflow_z_image.json,
    node for node: class types, links, values and titles."""
    convert = comfy_cli("comfy_cli.workflow_to_api").convert_ui_to_api
    ui = json.loads(UI_WORKFLOW.read_text())
    assert convert(ui, OBJECT_INFO) == json.loads(API_WORKFLOW.read_text())


def test_the_example_workflow_is_a_consistent_editor_graph():
    """What the editor needs to load it as saved: links agree with both ends, sockets and widget values
    in each node type's order, ids below last_*_id, an execution order that follows the links."""
    ui = json.loads(UI_WORKFLOW.read_text())
    assert ui["version"] == 0.4 and ui["groups"] == [] and isinstance(ui["config"], dict)
    assert isinstance(ui["extra"], dict)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and max(nodes) <= ui["last_node_id"]
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"]) and max(links) <= ui["last_link_id"]
    name = tomllib.loads(PYPROJECT.read_text())["project"]["name"]
    for n in ui["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(n), n["id"]
        if n["type"] in UI_ONLY:
            continue
        widgets, sockets = widgets_and_sockets(n["type"])
        assert n["properties"]["Node name for S&R"] == n["type"]
        if n["type"] == "LatentUnsqueeze":      # ComfyUI-Manager offers the missing node pack by this id
            assert n["properties"]["cnr_id"] == name
        assert [(i["name"], i["type"]) for i in n["inputs"]] == sockets, n["id"]
        assert len(n["widgets_values"]) == len(widgets) + sum(control for _, control in widgets), n["id"]
        assert [o["type"] for o in n["outputs"]] == OBJECT_INFO[n["type"]]["output"]
        for slot, i in enumerate(n["inputs"]):
            link_id, origin, origin_slot, target, target_slot, kind = links[i["link"]]
            assert (target, target_slot, kind) == (n["id"], slot, i["type"])
            assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
            assert nodes[origin]["outputs"][origin_slot]["type"] == kind
            assert nodes[origin]["order"] < n["order"]
        for slot, o in enumerate(n["outputs"]):
            assert o.get("slot_index", slot) == slot
            for link_id in o["links"]:
                assert links[link_id][1:3] == [n["id"], slot]


# ------------------------------------------------------------------ against a real ComfyUI

# Run in ComfyUI's Python inside a checkout: import it as main.py does, load what the workflow uses the
# way ComfyUI loads it, and print what server.py's node_info (behind /object_info) gives for each type.
OBJECT_INFO_SCRIPT = r'''
import asyncio, json, os, sys
sys.path.insert(0, os.getcwd())
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import nodes
from comfy_api.internal import _ComfyNodeInternal

async def load():
    await nodes.init_public_apis()
    for path, parent in (("comfy_extras/nodes_sd3.py", "comfy_extras"), ("custom_nodes/ComfyUI-GGUF", "custom_nodes"),
                         ("custom_nodes/ComfyUI-ZImage-Fix", "custom_nodes")):
        if not await nodes.load_custom_node(os.path.abspath(path), module_parent=parent):
            raise SystemExit(f"IMPORT FAILED: {path}")
asyncio.run(load())

def node_info(name):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    return {"input": cls.INPUT_TYPES(), "input_order": {k: list(v) for k, v in cls.INPUT_TYPES().items()},
            "output": cls.RETURN_TYPES, "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
            "name": name, "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}

print("OBJECT_INFO " + json.dumps({n: node_info(n) for n in json.loads(os.environ["NODE_TYPES"])}, default=repr))
'''


@pytest.mark.slow
def test_matches_real_comfyui_at_the_pin(tmp_path, smoke_python):
    """The table above, the conversion and the combo values, against ComfyUI and ComfyUI-GGUF at the pins
    with the overlay applied; and requires-comfyui is ComfyUI's version at the pinned commit."""
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    python = smoke_python
    checkout = apply_overlay(build_checkout(tmp_path / "ComfyUI"))
    script = tmp_path / "object_info.py"
    script.write_text(OBJECT_INFO_SCRIPT)
    r = subprocess.run([python, str(script)], cwd=checkout, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NODE_TYPES": json.dumps(sorted(OBJECT_INFO))})
    answer = [line for line in r.stdout.splitlines() if line.startswith("OBJECT_INFO ")]
    assert r.returncode == 0 and answer, r.stderr[-4000:]
    real = json.loads(answer[-1][len("OBJECT_INFO "):])

    assert {t: digest(real[t]) for t in OBJECT_INFO} == {t: digest(i) for t, i in OBJECT_INFO.items()}
    api = json.loads(API_WORKFLOW.read_text())
    convert = comfy_cli("comfy_cli.workflow_to_api").convert_ui_to_api
    assert convert(json.loads(UI_WORKFLOW.read_text()), real) == api
    # the combo values that are not file names (the model folders are empty here) are choices ComfyUI offers
    for node in api.values():
        for key in {"CLIPLoaderGGUF": ["type"], "KSampler": ["sampler_name", "scheduler"]}.get(node["class_type"], []):
            assert node["inputs"][key] in real[node["class_type"]]["input"]["required"][key][0], (node, key)

    version = re.search(r'__version__ = "([^"]+)"', (checkout / "comfyui_version.py").read_text()).group(1)
    requires = tomllib.loads(PYPROJECT.read_text())["tool"]["comfy"]["requires-comfyui"]
    assert requires == f">={version}", "requires-comfyui follows the ComfyUI version upstream.lock pins"
