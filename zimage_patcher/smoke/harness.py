#!/usr/bin/env python3
"""zpatch smoke generation: run the field's Z-Image graph headless on a ComfyUI checkout.

Standalone script. It runs under the smoke environment's Python (torch, gguf, ComfyUI's
requirements), not necessarily the one zimage_patcher is installed in; it imports its sibling
``writers.py`` and nothing else from zimage_patcher. The runner (runner.py) starts it in a
subprocess and reads the JSON report it writes.

Graph (node functions called directly, in one process, under ``torch.inference_mode()``):

    UnetLoaderGGUF -> CLIPLoaderGGUF(type=lumina2) -> CLIPTextEncode -> EmptySD3LatentImage
    -> KSampler -> LatentUnsqueeze -> VAEDecode -> SaveImage
    and the same graph without LatentUnsqueeze (the sampled latent is shared, as ComfyUI's
    cache would share it).

Any node error, a custom node that fails to import, NaN/inf, a constant image, a wrong image
size, or the two graphs disagreeing is a failure: the report's `failure` is then {stage, error}
(the stage and the first line of the error, one clean line; docs/json.md). What ComfyUI itself
only logs and carries on after (`unet unexpected:`, `clip missing:`, `Missing VAE keys` ...) is
judged as ComfyUI judges it: listed in the report's `warnings` with its stage, not a failure; the
one exception is a Gemma 3 weight our ComfyUI-GGUF patches rename that did not load
(PATCHED_TEXT_ENCODER_KEYS).

Modes:
  default       the smoke; synthetic models (tier ``tiny`` on CPU, ``full`` real sizes for a GPU)
                or ``--models DIR`` with the user's real files at 1024x1024, 8 steps
                (``--models DIR --tier tiny``: the tiny tier's files under the real names, at the
                tiny size, as the tests run `zpatch verify --models` on a CPU).
  --unpatched   negative control for a PRISTINE pinned checkout: each stage on its own, it
                expects the two failures the field saw (gemma3 GGUF rejected by ComfyUI-GGUF;
                IndexError from comfy/sd.py when VAE-decoding a 4-D latent with the Wan 2.1
                VAE). The control passes only when both occur.

Exit status 0 when the report says ok, 1 when it does not, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import writers  # noqa: E402  (sibling module; numpy only at import time)
from oneline import one_line  # noqa: E402  (sibling module; standard library only)

REQUIRED_NODE_PACKS = ("ComfyUI-GGUF", "ComfyUI-ZImage-Fix")
REAL_MODEL_FILES = {
    "diffusion_model": ("z_image_turbo-Q5_K_M.gguf",),
    "text_encoder": ("gemma-3-4b-it-Q4_K_M.gguf",),
    "vae": ("qwen_image_vae.safetensors",),
}
EXPECTED_CONTROL_ERRORS = {
    "text_encoder_load": ("ValueError", "Unexpected text model architecture type in GGUF file: 'gemma3'"),
    "vae_decode_4d": ("IndexError", "tuple index out of range"),
}
# ComfyUI loads state dicts with strict=False and only logs what it could not place ("unet
# unexpected:", "unet missing:", "clip missing:", "Missing VAE keys ..."). The smoke judges as ComfyUI
# does: such lines are reported in the report's `warnings`, not failures. One exception is ours:
# the Gemma 3 weights that the ComfyUI-GGUF patches rename from llama.cpp names (DESIGN.md s.2).
# A renaming mistake leaves them missing, ComfyUI runs on uninitialised weights and nothing
# crashes (the field's bug), so a missing one of these fails the load stage.
PATCHED_TEXT_ENCODER_KEYS = re.compile(
    r"(?:^|\.)model\.(?:embed_tokens|norm|layers\.\d+\.(?:input_layernorm|post_attention_layernorm"
    r"|pre_feedforward_layernorm|post_feedforward_layernorm|self_attn\.(?:[qkvo]_proj|[qk]_norm)"
    r"|mlp\.(?:gate|up|down)_proj))\.weight$")
MAX_WARNINGS = 100
DEFAULT_PROMPT = "a red fox in the snow, golden hour, detailed photo"


class StageFailed(Exception):
    """A stage failed; the report already says how."""


# --------------------------------------------------------------------------------------------
# report bookkeeping


class Report:
    def __init__(self, path: Path, **fields):
        self.path = path
        self.data = {"ok": False, "stages": {}, "failure": None, "warnings": [], **fields}
        self._log_records: list[tuple[str, logging.LogRecord]] = []   # (stage, record), WARNING and up
        self.current_stage = "harness"
        self.te_loads: list[dict] | None = None    # observe_text_encoder_loads()

    @contextmanager
    def stage(self, name: str, *, fatal: bool = True, expect: tuple | None = None):
        """Time a stage; record ok/error. expect=(error type, message) for the negative control.
        Log records are attributed to the stage while it runs, to "harness" outside stages."""
        self.current_stage = name
        try:
            with self._stage(name, fatal=fatal, expect=expect) as entry:
                yield entry
        finally:
            self.current_stage = "harness"

    @contextmanager
    def _stage(self, name: str, *, fatal: bool, expect: tuple | None):
        entry: dict = {"ok": False}
        self.data["stages"][name] = entry
        t0 = time.perf_counter()
        try:
            yield entry
        except StageFailed:
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a report entry
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            entry["error"] = describe(exc)
            if expect is not None:
                entry["expected_error"] = {"type": expect[0], "message": expect[1]}
                entry["observed_expected_error"] = matches_expected(exc, expect)
                entry["ok"] = entry["observed_expected_error"]
                return
            self.fail(name, entry["error"])
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if fatal:
                raise StageFailed(name) from exc
            return
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        if expect is not None:
            entry["expected_error"] = {"type": expect[0], "message": expect[1]}
            entry["observed_expected_error"] = False
            entry["ok"] = False
            entry["error"] = None
        else:
            entry["ok"] = True

    def fail(self, stage: str, error: dict) -> None:
        """The first failure wins. `stage` and `error` (one clean line) are the stable part of the
        object; type, message, where and traceback are details."""
        if self.data["failure"] is None:
            line = error.get("error") or (f"{error['type']}: {error.get('message', '')}" if error.get("type")
                                          else error.get("message", ""))
            self.data["failure"] = {"stage": stage, **error, "error": one_line(line) or "(no message)"}

    def collect_warnings(self) -> None:
        """Every WARNING-or-above log record, as {stage, level, message}: the stage it was logged in
        and its first line (one_line); repeats of the same line in the same stage are kept once."""
        seen, out = set(), []
        for stage, rec in self._log_records:
            try:
                msg = one_line(rec.getMessage())
            except Exception:  # noqa: BLE001 - a record whose arguments do not format
                msg = one_line(str(rec.msg))
            if (stage, msg) in seen:
                continue
            seen.add((stage, msg))
            out.append({"stage": stage, "level": rec.levelname, "message": msg})
        self.data["warnings"] = out[:MAX_WARNINGS]
        self.data["warnings_omitted"] = max(0, len(out) - MAX_WARNINGS)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path)


def describe(exc: BaseException) -> dict:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else None
    return {"type": type(exc).__name__, "message": one_line(exc), "where": where,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def matches_expected(exc: BaseException, expect: tuple) -> bool:
    return type(exc).__name__ == expect[0] and expect[1] in str(exc)


class _ListHandler(logging.Handler):
    """Keeps WARNING-and-up records with the stage they were logged in."""

    def __init__(self, report: Report):
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record):
        self.report._log_records.append((self.report.current_stage, record))


# --------------------------------------------------------------------------------------------
# environment facts


def git_head(path: Path) -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = run("rev-parse", "HEAD") or None
    status = run("status", "--porcelain", "--untracked-files=no") if head else ""
    return {"path": str(path), "commit": head, "modified_files": len(status.splitlines()) if head else None}


def gpu_facts(torch) -> dict:
    """The CUDA device the smoke runs on: name, memory, compute capability (device 0, as ComfyUI uses)."""
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "total_mb": round(props.total_memory / 2**20),
            "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if sys.platform == "darwin":
        kb /= 1024
    return round(kb / 1024, 1)


def image_stats(images) -> dict:
    import torch
    t = images.detach().float().cpu()
    finite = bool(torch.isfinite(t).all())
    return {"shape": list(t.shape), "finite": finite,
            "mean": float(t.mean()) if finite else None, "std": float(t.std()) if finite else None,
            "min": float(t.min()) if finite else None, "max": float(t.max()) if finite else None}


def check_image(images, width: int, height: int) -> dict:
    stats = image_stats(images)
    if tuple(stats["shape"]) != (1, height, width, 3):
        raise AssertionError(f"image shape {stats['shape']}, expected [1, {height}, {width}, 3]")
    if not stats["finite"]:
        raise AssertionError("image contains NaN or inf")
    if stats["std"] < 1e-4 or stats["max"] - stats["min"] < 1e-3:
        raise AssertionError(f"image is constant (min {stats['min']:.4g}, max {stats['max']:.4g})")
    return stats


# --------------------------------------------------------------------------------------------
# ComfyUI, headless


def import_comfyui(checkout: Path, device: str, out_dir: Path):
    """Import ComfyUI the way main.py sets it up, minus the server."""
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    sys.argv = [sys.argv[0]] + (["--cpu"] if device == "cpu" else [])
    import comfy.options
    comfy.options.enable_args_parsing()
    import folder_paths
    for kind in ("output", "temp", "input", "user"):
        d = out_dir / "comfyui" / kind
        d.mkdir(parents=True, exist_ok=True)
        getattr(folder_paths, f"set_{kind}_directory")(str(d))
    import nodes
    return nodes, folder_paths


def load_node_packs(nodes, folder_paths, loop, required: tuple[str, ...]) -> dict:
    """Load comfy_extras/nodes_sd3.py and every custom node as init_external_custom_nodes does,
    but keep each one's result: any custom node that fails to import is a failure."""
    loop.run_until_complete(nodes.init_public_apis())
    extras = os.path.join(os.path.dirname(nodes.__file__), "comfy_extras", "nodes_sd3.py")
    if not loop.run_until_complete(nodes.load_custom_node(extras, module_parent="comfy_extras")):
        raise RuntimeError("IMPORT FAILED: comfy_extras/nodes_sd3.py")
    base = set(nodes.NODE_CLASS_MAPPINGS)
    results: dict = {}
    for root in folder_paths.get_folder_paths("custom_nodes"):
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(os.path.realpath(root))):
            path = os.path.join(root, name)
            if name == "__pycache__" or name.endswith(".disabled"):
                continue
            if os.path.isfile(path) and os.path.splitext(path)[1] != ".py":
                continue
            t0 = time.perf_counter()
            ok = loop.run_until_complete(nodes.load_custom_node(path, base, module_parent="custom_nodes"))
            results[name] = {"ok": bool(ok), "seconds": round(time.perf_counter() - t0, 3)}
    failed = sorted(n for n, r in results.items() if not r["ok"])
    missing = [n for n in required if n not in results]
    if failed:
        raise RuntimeError("IMPORT FAILED: " + ", ".join(f"custom_nodes/{n}" for n in failed))
    if missing:
        raise RuntimeError("custom node missing: " + ", ".join(f"custom_nodes/{n}" for n in missing)
                           + " (a patched checkout has it; run `zpatch apply`)")
    return results


def call_node(nodes, name: str, **inputs):
    """Run one node's function (V1: FUNCTION on an instance; V3: the execute classmethod)."""
    try:
        cls = nodes.NODE_CLASS_MAPPINGS[name]
    except KeyError:
        raise RuntimeError(f"node {name!r} is not registered") from None
    try:
        from comfy_api.internal import _ComfyNodeInternal
        v3 = issubclass(cls, _ComfyNodeInternal)
    except ImportError:
        v3 = False
    if v3:
        cls.VALIDATE_CLASS()
        out = cls.execute(**inputs)
    else:
        out = getattr(cls(), cls.FUNCTION)(**inputs)
    if hasattr(out, "result") and not isinstance(out, (tuple, dict)):
        out = out.result            # V3 NodeOutput
    if isinstance(out, dict):
        return out                  # {"ui": ..., "result": ...} (SaveImage)
    return tuple(out)


def latent_input_name(nodes, name: str) -> str:
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    required = cls.INPUT_TYPES().get("required", {})
    for key, spec in required.items():
        if spec and spec[0] == "LATENT":
            return key
    raise RuntimeError(f"node {name} has no LATENT input ({sorted(required)})")


def install_tiny_hooks(tier: writers.Tier) -> list[str]:
    """Tell ComfyUI about the tiny tier's shrunk sizes, through ComfyUI's own hooks only.

    What is shrunk and why: the real Z-Image DiT is 6.15B parameters and Gemma 3 4B 3.9B; a
    2-core CPU test cannot write, hold or run them. Sizes ComfyUI reads from the files need no
    hook (DiT depth counted from `layers.N`; VAE width read from `decoder.head.0.gamma`).
    Two sizes are hard-coded in ComfyUI and get a hook each:

    1. Z-Image is recognised only at width 3840 (`cap_embedder.1.weight`, model_detection.py).
       The tiny file is width 256 (2 heads of 128, the real head size and rope axes 32/48/48),
       so we register one more model config in ComfyUI's own registry
       `comfy.supported_models.models`, a subclass of `ZImage` that matches exactly this width
       and carries the values the 3840 branch of detection sets. ComfyUI's detection still runs
       (lumina2 branch, layer count from the file) and builds the real `ZImage` model class,
       sampling settings and latent format; only the width and head count differ.
    2. The Gemma 3 4B config is fixed (comfy/text_encoders/llama.py). ComfyUI reads overrides from
       `model_options["gemma3_4b_model_config"]` (sd1_clip.py); ComfyUI-GGUF's CLIPLoaderGGUF
       builds its own model_options, so we wrap `comfy.sd.load_text_encoder_state_dicts` to add
       that one key and change nothing else. Loading, renaming, detection (GEMMA_3_4B) and the
       tokenizer still go through the patched ComfyUI-GGUF code unchanged.
    """
    import comfy.sd
    import comfy.supported_models as sm

    z, g = tier.zimage, tier.gemma3

    class TinyZImageForSmoke(sm.ZImage):
        unet_config = {"image_model": "lumina2", "dim": z.dim, "cap_feat_dim": z.cap_feat_dim}
        unet_extra_config = {
            "n_heads": z.n_heads, "n_kv_heads": z.n_kv_heads,
            # the rest as comfy/model_detection.py sets it for Z-Image (dim 3840)
            "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
            "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
            "pad_tokens_multiple": 32,
        }

    sm.models.insert(0, TinyZImageForSmoke)

    te_config = {"vocab_size": g.vocab_size, "hidden_size": g.hidden_size,
                 "intermediate_size": g.intermediate_size, "num_hidden_layers": g.num_hidden_layers,
                 "num_attention_heads": g.num_attention_heads,
                 "num_key_value_heads": g.num_key_value_heads}
    original = comfy.sd.load_text_encoder_state_dicts

    def load_text_encoder_state_dicts(state_dicts=[], embedding_directory=None,
                                      clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION, model_options={}):
        model_options = {**model_options, "gemma3_4b_model_config": dict(te_config)}
        return original(state_dicts=state_dicts, embedding_directory=embedding_directory,
                        clip_type=clip_type, model_options=model_options)

    comfy.sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts
    return [
        f"comfy.supported_models.models += ZImage subclass matching dim={z.dim}, "
        f"cap_feat_dim={z.cap_feat_dim} (n_heads={z.n_heads}); Z-Image detection is fixed at 3840",
        "model_options['gemma3_4b_model_config'] = " + json.dumps(te_config, sort_keys=True)
        + " added around comfy.sd.load_text_encoder_state_dicts",
        f"file-driven, no hook: DiT n_layers={z.n_layers}, Wan VAE dim={tier.vae.dim}",
    ]


# --------------------------------------------------------------------------------------------
# models


def observe_text_encoder_loads() -> list[dict] | None:
    """Record what ComfyUI's own `CLIP.load_sd` returns, (missing, unexpected) keys, for each state
    dict the text encoder loads. An observer only: arguments and result pass through unchanged.
    None when this ComfyUI has no `CLIP.load_sd` (then the key check cannot run; it says so)."""
    import comfy.sd
    original = getattr(getattr(comfy.sd, "CLIP", None), "load_sd", None)
    if original is None:
        return None
    seen: list[dict] = []

    def load_sd(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        try:
            missing, unexpected = result
            seen.append({"missing": [str(k) for k in missing], "unexpected": [str(k) for k in unexpected]})
        except (TypeError, ValueError):
            seen.append({"missing": None, "unexpected": None})
        return result

    comfy.sd.CLIP.load_sd = load_sd
    return seen


def check_patched_text_encoder_keys(loads: list[dict] | None) -> dict:
    """Fail when a Gemma 3 weight that the ComfyUI-GGUF patches rename was not loaded."""
    if loads is None or not loads or any(l["missing"] is None for l in loads):
        logging.warning("zpatch smoke: cannot see which text encoder keys ComfyUI loaded (CLIP.load_sd "
                        "changed upstream); the check of the Gemma 3 keys the patches rename did not run")
        return {"checked": False}
    missing = sorted({k for l in loads for k in l["missing"]})
    ours = [k for k in missing if PATCHED_TEXT_ENCODER_KEYS.search(k)]
    if ours:
        shown = ", ".join(ours[:4]) + (f" and {len(ours) - 4} more" if len(ours) > 4 else "")
        raise RuntimeError(f"{len(ours)} Gemma 3 text encoder weight(s) that the ComfyUI-GGUF patches map "
                           f"from llama.cpp names were not loaded (ComfyUI would run without them): {shown}")
    return {"checked": True, "missing": missing,
            "unexpected": sorted({k for l in loads for k in l["unexpected"]})[:50]}


def prepare_models(ns, report: Report) -> dict:
    """Return {"dir", "diffusion_model", "text_encoder", "vae"} file names inside dir."""
    if ns.models:
        d = Path(ns.models).resolve()
        found, missing = {}, []
        for role, names in REAL_MODEL_FILES.items():
            hit = next((n for n in names if (d / n).is_file()), None)
            if hit is None:
                missing.append(" or ".join(names))
            found[role] = hit
        if missing:
            raise FileNotFoundError(f"missing in {d}: " + ", ".join(missing))
        found["tokenizer"] = "tokenizer.model" if (d / "tokenizer.model").is_file() else None
        return {"dir": str(d), "source": "user", **found}
    d = Path(ns.synthetic_dir or (Path(ns.out) / "models")).resolve()
    # A child process writes them, so this process's peak RSS measures ComfyUI only.
    cmd = [sys.executable, str(HERE / "writers.py"), "--out", str(d), "--tier", ns.tier,
           "--seed", str(ns.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("writing synthetic models failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    manifest = json.loads(proc.stdout)
    files = manifest["files"]
    return {"dir": str(d), "source": "synthetic", "seed": ns.seed,
            "diffusion_model": files["diffusion_model"], "text_encoder": files["text_encoder"],
            "vae": files["vae"], "tokenizer": files["tokenizer"]}


def register_model_dir(folder_paths, d: str) -> None:
    for kind in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(kind, d, is_default=True)


# --------------------------------------------------------------------------------------------
# the two modes


def run_smoke(ns, report: Report, nodes, folder_paths, models: dict) -> None:
    import torch

    w, h, steps = ns.width, ns.height, ns.steps
    st = report.data["stages"]
    with torch.inference_mode():
        with report.stage("load") as e:
            t0 = time.perf_counter()
            model = call_node(nodes, "UnetLoaderGGUF", unet_name=models["diffusion_model"])[0]
            t1 = time.perf_counter()
            te_first = len(report.te_loads) if report.te_loads is not None else 0
            clip = call_node(nodes, "CLIPLoaderGGUF", clip_name=models["text_encoder"], type="lumina2")[0]
            t2 = time.perf_counter()
            vae = call_node(nodes, "VAELoader", vae_name=models["vae"])[0]
            e["parts"] = {"diffusion_model": round(t1 - t0, 3), "text_encoder": round(t2 - t1, 3),
                          "vae": round(time.perf_counter() - t2, 3)}
            e["diffusion_model_class"] = type(model.model.model_config).__name__
            e["diffusion_model_bases"] = [c.__name__ for c in type(model.model.model_config).__mro__]
            e["text_encoder_name"] = getattr(clip.cond_stage_model, "clip", None)  # e.g. gemma3_4b
            # What ComfyUI only logs (unet unexpected/missing, clip missing, Missing VAE keys) lands
            # in the report's warnings; the keys our patches rename must all have loaded.
            e["text_encoder_keys"] = check_patched_text_encoder_keys(
                None if report.te_loads is None else report.te_loads[te_first:])
        with report.stage("encode") as e:
            positive = call_node(nodes, "CLIPTextEncode", clip=clip, text=ns.prompt)[0]
            negative = call_node(nodes, "CLIPTextEncode", clip=clip, text="")[0]
            cond = positive[0][0].float()
            e["conditioning_shape"] = list(cond.shape)
            e["conditioning_std"] = float(cond.std()) if bool(torch.isfinite(cond).all()) else None
            if e["conditioning_std"] is None or e["conditioning_std"] < 1e-6:
                raise AssertionError(f"text conditioning is NaN/inf or constant (shape {list(cond.shape)})")
        with report.stage("sample") as e:
            latent = call_node(nodes, "EmptySD3LatentImage", width=w, height=h, batch_size=1)[0]
            samples = call_node(nodes, "KSampler", model=model, seed=ns.seed, steps=steps, cfg=1.0,
                                sampler_name="euler", scheduler="simple", positive=positive,
                                negative=negative, latent_image=latent, denoise=1.0)[0]
            s = samples["samples"]
            e["latent_shape"] = list(s.shape)
            if not bool(torch.isfinite(s).all()):
                raise AssertionError("sampled latent contains NaN or inf")
        graphs = {}
        with report.stage("decode", fatal=False) as e:
            images = {}
            for graph in ("latent_unsqueeze", "direct"):
                g = graphs[graph] = {"ok": False}
                t0 = time.perf_counter()
                try:
                    lat = samples
                    if graph == "latent_unsqueeze":
                        key = latent_input_name(nodes, "LatentUnsqueeze")
                        lat = call_node(nodes, "LatentUnsqueeze", **{key: samples})[0]
                        g["latent_shape"] = list(lat["samples"].shape)
                    img = call_node(nodes, "VAEDecode", vae=vae, samples=lat)[0]
                    g["seconds"] = round(time.perf_counter() - t0, 3)
                    g["image"] = check_image(img, w, h)
                    images[graph] = img
                    g["ok"] = True
                except Exception as exc:  # noqa: BLE001
                    g["seconds"] = round(time.perf_counter() - t0, 3)
                    g["error"] = describe(exc)
            e["graphs"] = graphs
            bad = [k for k, g in graphs.items() if not g["ok"]]
            if bad:
                g = graphs[bad[0]]
                raise RuntimeError(f"graph {bad[0]}: {g['error']['type']}: {g['error']['message']}")
            diff = float((images["latent_unsqueeze"].float() - images["direct"].float()).abs().max())
            e["graphs_max_abs_diff"] = diff
            if diff > 1e-4:
                raise AssertionError(f"the graphs with and without LatentUnsqueeze disagree (max abs diff {diff:.3g})")
        if not st["decode"]["ok"]:
            raise StageFailed("decode")
        with report.stage("save") as e:
            pngs = []
            for graph, img in images.items():
                res = call_node(nodes, "SaveImage", images=img, filename_prefix=f"zpatch_smoke_{graph}")
                for item in res["ui"]["images"]:
                    p = Path(folder_paths.get_output_directory()) / item["subfolder"] / item["filename"]
                    pngs.append({"graph": graph, "path": str(p)})
            e["images"] = pngs
            report.data["images"] = pngs


def run_control(ns, report: Report, nodes, folder_paths, models: dict) -> None:
    """Negative control on a pristine checkout; each expected failure in its own stage."""
    import torch

    results = {}
    with torch.inference_mode():
        with report.stage("text_encoder_load", expect=EXPECTED_CONTROL_ERRORS["text_encoder_load"]):
            call_node(nodes, "CLIPLoaderGGUF", clip_name=models["text_encoder"], type="lumina2")
        with report.stage("vae_load"):
            vae = call_node(nodes, "VAELoader", vae_name=models["vae"])[0]
        with report.stage("vae_decode_4d", expect=EXPECTED_CONTROL_ERRORS["vae_decode_4d"]) as e:
            g = torch.Generator().manual_seed(ns.seed)
            latent = torch.randn((1, 16, ns.height // 8, ns.width // 8), generator=g)
            e["latent_shape"] = list(latent.shape)
            call_node(nodes, "VAEDecode", vae=vae, samples={"samples": latent})
        # where the IndexError came from: the field saw it in comfy/sd.py's memory estimate
        entry = report.data["stages"]["vae_decode_4d"]
        if entry.get("observed_expected_error"):
            tb = entry["error"]["traceback"]
            entry["raised_in_comfy_sd"] = "comfy/sd.py" in tb.replace(os.sep, "/")
    for name in EXPECTED_CONTROL_ERRORS:
        results[name] = bool(report.data["stages"][name].get("observed_expected_error"))
    report.data["control"] = {"expected_errors": {k: {"type": v[0], "message": v[1], "observed": results[k]}
                                                  for k, v in EXPECTED_CONTROL_ERRORS.items()},
                              "passed": all(results.values())}
    if not all(results.values()):
        missing = [k for k, v in results.items() if not v]
        errs = []
        for k in missing:
            err = report.data["stages"][k].get("error")
            errs.append(f"{k}: " + (f"got {err['type']}: {err['message']}" if err else "no error"))
        msg = "expected error not observed: " + "; ".join(errs)
        report.fail(missing[0], {"type": "ControlNotObserved", "message": msg, "error": msg})


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="zpatch smoke generation harness (headless ComfyUI)")
    ap.add_argument("--checkout", required=True, type=Path, help="ComfyUI root")
    ap.add_argument("--out", required=True, type=Path, help="directory for PNGs, report, models")
    ap.add_argument("--report", type=Path, help="report path (default OUT/smoke-report.json)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--tier", choices=sorted(writers.TIERS), default=None,
                    help="synthetic model sizes: tiny (default on cpu) or full (default on cuda); with "
                         "--models, tiny says the files there are the tiny tier's (tiny graph and hooks)")
    ap.add_argument("--models", type=Path, help="directory with the model files, under the real names")
    ap.add_argument("--synthetic-dir", type=Path, help="where synthetic models are written/reused")
    ap.add_argument("--unpatched", action="store_true", help="negative control (pristine checkout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ns = ap.parse_args(argv)
    if ns.models and ns.tier != "tiny":
        ns.tier = "real"            # the user's real files: the real graph size
        defaults = (1024, 1024, 8)
    else:                           # synthetic files, or (--models --tier tiny) the tiny tier's under real names
        ns.tier = ns.tier or ("tiny" if ns.device == "cpu" else "full")
        t = writers.TIERS[ns.tier]
        defaults = (t.width, t.height, t.steps)
    ns.width = ns.width or defaults[0]
    ns.height = ns.height or defaults[1]
    ns.steps = ns.steps or defaults[2]
    ns.report = ns.report or (ns.out / "smoke-report.json")
    return ns


def main(argv=None) -> int:
    t_start = time.perf_counter()
    ns = parse_args(argv)
    ns.checkout = ns.checkout.resolve()
    ns.out = ns.out.resolve()
    ns.out.mkdir(parents=True, exist_ok=True)
    report = Report(ns.report.resolve(), mode="control" if ns.unpatched else "smoke", device=ns.device,
                    tier=ns.tier, width=ns.width, height=ns.height, steps=ns.steps, seed=ns.seed,
                    checkout=str(ns.checkout), gpu=None,
                    versions={"python": platform.python_version()})
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(_ListHandler(report))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with report.stage("environment") as e:
            import numpy
            import torch
            import gguf  # noqa: F401
            import safetensors
            import sentencepiece
            from importlib.metadata import version
            report.data["versions"].update({
                "torch": torch.__version__, "numpy": numpy.__version__, "gguf": version("gguf"),
                "safetensors": safetensors.__version__, "sentencepiece": sentencepiece.__version__})
            if ns.device == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
            report.data["versions"]["cuda"] = torch.version.cuda
            report.data["gpu"] = gpu_facts(torch) if ns.device == "cuda" else None
            e["torch_threads"] = torch.get_num_threads()
        report.data["commits"] = {"comfyui": git_head(ns.checkout),
                                  "comfyui-gguf": git_head(ns.checkout / "custom_nodes" / "ComfyUI-GGUF")}
        with report.stage("models") as e:
            models = prepare_models(ns, report)
            e.update(models)
            report.data["models"] = models
        with report.stage("import") as e:
            nodes, folder_paths = import_comfyui(ns.checkout, ns.device, ns.out)
            register_model_dir(folder_paths, models["dir"])
            e["custom_nodes"] = load_node_packs(nodes, folder_paths, loop,
                                                () if ns.unpatched else REQUIRED_NODE_PACKS)
            report.te_loads = observe_text_encoder_loads()
            if ns.tier == "tiny":  # also in the control: on a patched checkout its loads succeed
                report.data["shrink_hooks"] = install_tiny_hooks(writers.TIERS["tiny"])
            import torch
            if ns.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        if ns.unpatched:
            run_control(ns, report, nodes, folder_paths, models)
        else:
            run_smoke(ns, report, nodes, folder_paths, models)
    except StageFailed:
        pass
    except BaseException as exc:  # noqa: BLE001 - the report must be written
        report.fail("harness", describe(exc))
        if isinstance(exc, KeyboardInterrupt):
            report.write()
            raise
    finally:
        st = report.data["stages"]
        report.data["timings"] = {k: v.get("seconds") for k, v in st.items()}
        report.data["timings"]["total"] = round(time.perf_counter() - t_start, 3)
        report.data["peak_rss_mb"] = peak_rss_mb()
        if ns.device == "cuda" and "torch" in sys.modules:
            import torch
            if torch.cuda.is_available():
                report.data["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                report.data["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        report.collect_warnings()
        if report.data["failure"] is None:
            if ns.unpatched:
                report.data["ok"] = bool(report.data.get("control", {}).get("passed"))
            else:
                report.data["ok"] = all(v.get("ok") for v in st.values()) and "save" in st
        if report.data["failure"] is None and not report.data["ok"]:
            report.fail("harness", {"type": "Incomplete", "message": "not every stage ran",
                                    "error": "not every stage ran"})
        report.write()
        summary = {k: report.data.get(k) for k in ("ok", "mode", "tier", "device", "failure", "timings",
                                                   "peak_rss_mb", "images")}
        summary["warnings"] = len(report.data["warnings"])
        if summary["failure"]:
            summary["failure"] = {k: v for k, v in summary["failure"].items() if k != "traceback"}
        print("ZPATCH_SMOKE_REPORT " + str(report.path))
        print(json.dumps(summary, sort_keys=True, default=str))
        loop.close()
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
