"""The smoke API the CLI calls: run harness.py under the smoke Python and return its report.

Imports no torch: the harness runs in a subprocess, under an interpreter that has torch, gguf and
ComfyUI's requirements (pristine and patched ComfyUI could not share one process anyway).

Python resolution (``choose_python``): the explicit ``python`` argument, else
``$ZPATCH_SMOKE_PYTHON``, else the interpreter running zpatch when it already has the smoke
packages (``make run``'s .venv does), else a venv zpatch manages under
``$ZPATCH_CACHE/smoke-venv`` (default ``~/.cache/zimage-patcher``), created on demand from
requirements.txt next to this file: CPU wheels of torch on a machine without an NVIDIA GPU when
PyTorch's CPU index answers, else PyPI's build (about 6 GB, with CUDA); ``torch_source`` decides and
says why.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..cache import cache_home
from ..errors import Exit, ZpatchError, from_oserror
from .oneline import one_line

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "harness.py"
REQUIREMENTS = HERE / "requirements.txt"
ENV_PYTHON = "ZPATCH_SMOKE_PYTHON"
REPORT_NAME = "smoke-report.json"
LOG_NAME = "smoke.log"
_STAMP = ".zpatch-requirements.sha256"
# Each distribution of requirements.txt -> the top-level module harness.py or ComfyUI imports
# (the names differ for pyyaml, Pillow, protobuf, pydantic-settings). A test keeps this in step with requirements.txt.
SMOKE_MODULES = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "einops": "einops",
    "safetensors": "safetensors", "pyyaml": "yaml", "Pillow": "PIL", "tqdm": "tqdm",
    "psutil": "psutil", "scipy": "scipy", "torchsde": "torchsde", "transformers": "transformers",
    "sentencepiece": "sentencepiece", "protobuf": "google.protobuf", "av": "av", "gguf": "gguf",
    "pydantic-settings": "pydantic_settings",
}
# find_spec only locates a module (imports nothing but a dotted name's parent), so the probe
# costs an interpreter start, not a torch import. Prints the modules it cannot find.
_PROBE = ("import sys, importlib.util as u\n"
          "def has(m):\n"
          "    try: return u.find_spec(m) is not None\n"
          "    except Exception: return False\n"
          "print(' '.join(m for m in sys.argv[1:] if not has(m)))")


# --------------------------------------------------------------------------------------------
# the interpreter


def managed_venv_dir() -> Path:
    return cache_home() / "smoke-venv"


def managed_models_dir(tier: str) -> Path:
    return cache_home() / "smoke-models" / tier


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def _check_interpreter(python: str, source: str) -> str:
    found = shutil.which(python) if os.sep not in python else (python if os.access(python, os.X_OK) else None)
    if not found or not os.path.isfile(found):
        raise ZpatchError(f"smoke python not found: {python} (from {source})", Exit.ENVIRONMENT,
                          hint=f"pass --python PATH or set {ENV_PYTHON} to an interpreter with torch "
                               f"and gguf (pip install -r {REQUIREMENTS})")
    return os.path.abspath(found)  # the harness runs with cwd=out_dir; abspath keeps a venv's symlink


def missing_smoke_modules(python: str) -> list[str]:
    """The smoke modules ``python`` cannot find, checked in a subprocess (torch is never imported
    here). An interpreter that does not run lacks them all."""
    mods = list(SMOKE_MODULES.values())
    try:  # cwd=HERE: sys.path[0] as the harness will see it
        r = subprocess.run([python, "-c", _PROBE, *mods], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, cwd=str(HERE), timeout=60)
    except (OSError, subprocess.SubprocessError):
        return mods
    return r.stdout.split() if r.returncode == 0 else mods


def _managed_is_current(venv: Path) -> bool:
    """The venv exists and was installed from this requirements.txt (its stamp matches)."""
    stamp = venv / _STAMP
    return (_venv_python(venv).is_file() and stamp.is_file()
            and stamp.read_text().strip() == _requirements_digest())


CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ENV_TORCH = "ZPATCH_SMOKE_TORCH"          # cpu, or pypi: override the choice of torch build
ENV_CPU_INDEX = "ZPATCH_TORCH_CPU_INDEX"  # a mirror of PyTorch's CPU index


def has_nvidia_gpu() -> bool:
    """The NVIDIA driver lists a GPU (nvidia-smi -L)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def _answers(index: str) -> bool:
    """INDEX serves torch (its simple-index page for torch answers within a few seconds)."""
    import urllib.request
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=8) as r:
            return 200 <= r.status < 300
    except Exception:       # any network failure means "not reachable"; the choice falls back to PyPI
        return False


def torch_source() -> tuple[str | None, str]:
    """Where the managed venv takes torch from: an extra pip index (PyTorch's CPU wheels, about 1 GB
    instead of 6), or None for PyPI's default build (with CUDA); and why, in words."""
    cpu = os.environ.get(ENV_CPU_INDEX) or CPU_INDEX
    choice = os.environ.get(ENV_TORCH, "").strip().lower()
    if choice == "cpu":
        return cpu, f"CPU wheels from {cpu} (${ENV_TORCH}=cpu)"
    if choice == "pypi":
        return None, f"PyPI's torch build, with CUDA (${ENV_TORCH}=pypi)"
    if has_nvidia_gpu():
        return None, "PyPI's torch build, with CUDA: nvidia-smi lists a GPU"
    if _answers(cpu):
        return cpu, f"CPU wheels from {cpu}: no NVIDIA GPU here (set {ENV_TORCH}=pypi for the CUDA build)"
    return None, (f"PyPI's torch build, with CUDA (about 6 GB): no NVIDIA GPU here, but {cpu} does not answer "
                  f"(a mirror of it: {ENV_CPU_INDEX}=URL)")


def install_command(python: Path, index: str | None) -> list[str]:
    """The pip command that fills the managed venv, from INDEX too when given (torch's local
    version +cpu satisfies requirements.txt's ==pin and sorts above PyPI's build of the same version)."""
    extra = ["--extra-index-url", index] if index else []
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", *extra, "-r", str(REQUIREMENTS)]


def _run_streamed(cmd: list[str]) -> tuple[int, str]:
    """Run cmd with its stdout on our stderr (pip's progress bar stays live on a terminal) and
    its stderr copied to ours as it comes (pip's errors go there); returns the exit status and
    the last lines of its stderr, for the error message."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    sys.stderr.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=2,
                          stderr=subprocess.PIPE, text=True, errors="replace", env=env) as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line)
    return proc.returncode, "".join(tail)


def ensure_managed_venv(venv: Path | None = None) -> str:
    """Create (or reuse) the managed smoke venv; returns its python. Reused while the stamp of
    requirements.txt matches; a change of requirements.txt reinstalls. pip's output streams to
    stderr: the first install downloads several GB and takes minutes."""
    venv = venv or managed_venv_dir()
    py = _venv_python(venv)
    digest = _requirements_digest()
    stamp = venv / _STAMP
    if _managed_is_current(venv):
        return str(py)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        from filelock import FileLock
        lock = FileLock(str(venv) + ".lock")
    except ImportError:  # pragma: no cover - filelock is a dependency of zpatch
        lock = None
    hint = (f"set {ENV_PYTHON} to an interpreter with the smoke requirements, or install them by "
            f"hand: {py} -m pip install -r {REQUIREMENTS}")
    try:
        if lock:
            lock.acquire(timeout=3600)
        if _managed_is_current(venv):
            return str(py)
        index, why = torch_source()
        print(f"zpatch: creating the smoke venv in {venv} (pip's progress follows; this takes minutes)\n"
              f"zpatch: torch: {why}\n"
              f"zpatch: or pass --python / set {ENV_PYTHON} to an interpreter you have\n"
              f"zpatch: to remove it later: rm -rf {venv}", file=sys.stderr)
        steps = []
        if not py.is_file():
            steps.append([sys.executable, "-m", "venv", str(venv)])
        steps.append(install_command(py, index))
        for cmd in steps:
            rc, err = _run_streamed(cmd)
            if rc != 0:
                last = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
                raise ZpatchError(f"creating the smoke environment failed: {' '.join(cmd[:4])}...: {last}",
                                  Exit.ENVIRONMENT, hint=hint,
                                  details={"command": cmd, "returncode": rc, "stderr": err[-4000:]})
        stamp.write_text(digest + "\n")
        return str(py)
    except OSError as exc:
        raise from_oserror(exc, f"creating the smoke environment in {venv} failed", otherwise=ZpatchError(
            f"creating the smoke environment in {venv} failed: {exc}", Exit.ENVIRONMENT, hint=hint)) from exc
    finally:
        if lock and lock.is_locked:
            lock.release()


def _names(mods: list[str], shown: int = 3) -> str:
    return ", ".join(mods[:shown]) + (f" and {len(mods) - shown} more" if len(mods) > shown else "")


def choose_python(python: str | None = None) -> tuple[str | None, str]:
    """Which smoke interpreter, and why: explicit python > $ZPATCH_SMOKE_PYTHON > the interpreter
    running zpatch if it has the smoke packages > the managed venv if current > a new managed
    venv. Returns (python, reason); python is None when the managed venv must be created (this
    function creates nothing)."""
    if python:
        return _check_interpreter(str(python), "--python"), "--python"
    env = os.environ.get(ENV_PYTHON)
    if env:
        return _check_interpreter(env, f"${ENV_PYTHON}"), f"from ${ENV_PYTHON}"
    missing = missing_smoke_modules(sys.executable)
    if not missing:  # e.g. make run's .venv: no second multi-GB venv
        return sys.executable, "the interpreter running zpatch has the smoke packages"
    lacks = f"the interpreter running zpatch lacks {_names(missing)}"
    venv = managed_venv_dir()
    if _managed_is_current(venv):
        return str(_venv_python(venv)), f"the managed smoke venv; {lacks}"
    return None, f"a new managed smoke venv; {lacks}"


def resolve_python(python: str | None = None) -> str:
    """The smoke interpreter (see choose_python), creating the managed venv when needed; says on
    stderr which one and why unless it was given explicitly."""
    py, why = choose_python(python)
    if py is None:
        py = ensure_managed_venv()
    if why != "--python":
        print(f"zpatch: smoke uses {py} ({why})", file=sys.stderr)
    return py


# --------------------------------------------------------------------------------------------
# running


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _one_line(text: str, limit: int = 300) -> str:
    return one_line(text, limit)


def failure_line(failure: dict | None) -> str:
    """The failure object's `error` (one clean line); older reports had only type and message."""
    failure = failure or {}
    if failure.get("error"):
        return one_line(failure["error"])
    etype, msg = failure.get("type"), failure.get("message", "")
    return one_line(f"{etype}: {msg}" if etype else msg) or "(no message)"


def reproduce_command(checkout: Path, out_dir: Path, *, python: str, device: str, tier: str | None,
                      models: Path | None, unpatched: bool) -> str:
    """The zpatch command line that runs this smoke again, the same way."""
    args = ["zpatch", "smoke", str(checkout), "--out", str(out_dir), "--device", device]
    if models is not None:
        args += ["--models", str(models)] + (["--tier", "tiny"] if tier == "tiny" else [])
    else:
        args += ["--tier", tier or default_tier(device)]
    args += ["--python", python] + (["--unpatched"] if unpatched else [])
    return shlex.join(args)


# Failures whose cause zpatch knows, as (stage, text in the error line) -> what to do. Anything
# else is reported as what failed, where the log is and how to reproduce it, blaming nobody.
_PATCH_ERRORS = (
    ("load", "Unexpected text model architecture type in GGUF file: 'gemma3'",
     "this is the error the ComfyUI-GGUF patches fix: are they applied? zpatch status {checkout}"),
    ("load", "the ComfyUI-GGUF patches map from llama.cpp names were not loaded",
     "the Gemma 3 renaming of the ComfyUI-GGUF patches no longer fills every weight ComfyUI's text "
     "encoder has: compare the patched loader with comfy/text_encoders/llama.py"),
    ("decode", "tuple index out of range",
     "this is the error the ComfyUI patch fixes (4-D latents into the Wan VAE): is it applied? "
     "zpatch status {checkout}"),
)


def _hint(report: dict, checkout: Path, unpatched: bool, report_path: Path, log_path: Path,
          reproduce: str) -> str:
    failure = report.get("failure") or {}
    stage, line = failure.get("stage"), failure_line(failure)
    where = f"full log: {log_path}; report: {report_path}; reproduce: {reproduce}"
    if unpatched:
        return ("the negative control expects a pristine checkout at the pins (zpatch checkout DIR, "
                f"no apply); {where}")
    if stage == "import" and ("missing" in line or "IMPORT FAILED" in line):
        return f"is the overlay applied? zpatch status {checkout}   then   zpatch apply {checkout}; {where}"
    if stage == "models" and "missing in" in line:
        return f"put the model files there under these names, or leave out --models for synthetic ones; {where}"
    for known_stage, text, advice in _PATCH_ERRORS:
        if stage == known_stage and text in line:
            return f"{advice.format(checkout=checkout)}; {where}"
    return (f"the {stage} stage failed for a reason zpatch does not recognise (not necessarily the "
            f"patches: upstream may have changed); {where}")


def default_tier(device: str) -> str:
    """The synthetic tier a device gets when none is named: tiny on cpu, full (real sizes) on cuda."""
    return "tiny" if device == "cpu" else "full"


def run_smoke(checkout: Path, out_dir: Path, *, python: str | None = None, device: str = "cpu",
              tier: str | None = None, models: Path | None = None, unpatched: bool = False,
              timeout: float | None = None, synthetic_dir: Path | None = None) -> dict:
    """Run the smoke generation (or with unpatched=True the negative control) on a checkout.

    tier: the synthetic models' sizes (None: default_tier(device)). With MODELS (the files under the
    real names, smoke/harness.py REAL_MODEL_FILES): None or "full" runs the real graph (1024x1024,
    8 steps); "tiny" says MODELS holds the tiny tier's files (the tiny graph, as the tests run it).
    synthetic_dir: where the synthetic models are written, or reused when its manifest matches
    (default: the managed cache, $ZPATCH_CACHE/smoke-models/TIER).

    Returns the harness's report (a dict, also written to OUT_DIR/smoke-report.json). Raises
    ZpatchError: Exit.SMOKE_FAILED when the run fails (details = the report), Exit.ENVIRONMENT
    when the smoke Python is missing or lacks a requirement.
    """
    checkout = Path(checkout).resolve()
    out_dir = Path(out_dir).resolve()
    if not (checkout / "comfy").is_dir():
        raise ZpatchError(f"{checkout}: not a ComfyUI checkout (no comfy/ folder)", Exit.BAD_CHECKOUT,
                          hint=f"zpatch checkout {checkout} --apply")
    py = resolve_python(python)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / REPORT_NAME
    log_path = out_dir / LOG_NAME
    report_path.unlink(missing_ok=True)
    cmd = [py, str(HARNESS), "--checkout", str(checkout), "--out", str(out_dir),
           "--report", str(report_path), "--device", device]
    if models is not None:
        cmd += ["--models", str(Path(models).resolve())] + (["--tier", "tiny"] if tier == "tiny" else [])
    else:
        tier = tier or default_tier(device)
        cmd += ["--tier", tier, "--synthetic-dir", str(Path(synthetic_dir).resolve() if synthetic_dir
                                                        else managed_models_dir(tier))]
    if unpatched:
        cmd.append("--unpatched")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reproduce = reproduce_command(checkout, out_dir, python=py, device=device, tier=tier, unpatched=unpatched,
                                  models=Path(models).resolve() if models is not None else None)
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=str(out_dir), env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:g}s"
        raise ZpatchError(f"smoke {error}", Exit.SMOKE_FAILED,
                          hint=f"full log: {log_path}; reproduce: {reproduce}",
                          details={"command": cmd, "log_tail": _tail(log_path), "log": str(log_path),
                                   "failure": {"stage": "harness", "error": error}, "warnings": []}) from None
    except OSError as exc:
        failure = {"stage": "environment", "error": one_line(f"cannot run {py}: {exc}")}
        raise ZpatchError(f"cannot run the smoke python {py}: {exc}", Exit.ENVIRONMENT,
                          hint=f"pass --python or set {ENV_PYTHON}",
                          details={"failure": failure, "warnings": []}) from exc
    if not report_path.is_file():
        last = _one_line(_tail(log_path, 1) or "(no output)")
        error = f"harness exited {proc.returncode} without a report: {last}"
        raise ZpatchError(f"smoke {error}", Exit.SMOKE_FAILED,
                          hint=f"full log: {log_path}; reproduce: {reproduce}",
                          details={"command": cmd, "returncode": proc.returncode, "log_tail": _tail(log_path),
                                   "log": str(log_path), "failure": {"stage": "harness", "error": one_line(error)},
                                   "warnings": []})
    report = json.loads(report_path.read_text())
    report["command"] = cmd
    report["log"] = str(log_path)
    report["report"] = str(report_path)
    report["reproduce"] = reproduce
    report.setdefault("warnings", [])
    if report.get("ok"):
        report["failure"] = None
        return report
    if not report.get("failure"):
        report["failure"] = {"stage": "harness", "error": "the harness reported no success and no failure"}
    failure = report["failure"]
    failure["error"] = failure_line(failure)
    failure.setdefault("stage", "harness")
    stage, line = failure["stage"], failure["error"]
    if stage == "environment":
        hint = ("this torch sees no GPU: use --device cpu, or a python with a CUDA build of torch (--python)"
                if "cuda" in line.lower() else
                f"{py} -m pip install -r {REQUIREMENTS}   or pass --python / set {ENV_PYTHON}")
        raise ZpatchError(f"smoke python {py} is not usable: {line}", Exit.ENVIRONMENT,
                          hint=hint, details=report)
    what = "negative control" if unpatched else "smoke"
    raise ZpatchError(f"{what} failed at {stage}: {line}", Exit.SMOKE_FAILED,
                      hint=_hint(report, checkout, unpatched, report_path, log_path, reproduce), details=report)


def summary(report: dict) -> str:
    """Human summary; the first line stands alone (verify prints only it)."""
    t = report.get("timings") or {}
    if report.get("mode") == "control":
        exp = (report.get("control") or {}).get("expected_errors", {})
        seen = ", ".join(f"{k} {'seen' if v.get('observed') else 'NOT seen'}" for k, v in exp.items())
        head = f"negative control {'passed' if report.get('ok') else 'FAILED'}: {seen}"
    else:
        images = report.get("images") or []
        size = f"{report.get('width')}x{report.get('height')}"
        head = (f"smoke {'passed' if report.get('ok') else 'FAILED'}: {len(images)} image(s) {size}, "
                f"{report.get('steps')} steps, tier {report.get('tier')} on {report.get('device')}, "
                f"{t.get('total', 0):.1f}s, peak RSS {report.get('peak_rss_mb', 0):.0f} MB")
    warnings = [w if isinstance(w, dict) else {"stage": None, "message": str(w)}   # reports before schema 2's
                for w in report.get("warnings") or []]                               # {stage, level, message}
    if warnings:
        head += f", {len(warnings)} warning(s)"
    if report.get("failure"):
        head += f"; failed at {report['failure'].get('stage')}: {failure_line(report['failure'])}"
    lines = [head]
    stages = [k for k in ("import", "load", "encode", "sample", "decode", "text_encoder_load",
                          "vae_decode_4d") if k in t]
    if stages:
        lines.append("  " + "  ".join(f"{k} {t[k]:.2f}s" for k in stages if t[k] is not None))
    models = report.get("models") or {}
    if models.get("source") == "user":
        lines.append(f"  model files: {models.get('dir')}")
    if report.get("peak_gpu_mb") is not None:
        gpu = (report.get("gpu") or {}).get("name")
        lines.append(f"  peak GPU memory {report['peak_gpu_mb']:.0f} MB" + (f" on {gpu}" if gpu else ""))
    for w in warnings[:5]:
        lines.append(f"  warning ({w.get('stage')}): {w.get('message')}")
    if len(warnings) > 5:
        lines.append(f"  ... and {len(warnings) - 5} more warning(s) in the report")
    for img in report.get("images") or []:
        lines.append(f"  {img['graph']}: {img['path']}")
    if report.get("report"):
        lines.append(f"  report: {report['report']}")
    return "\n".join(lines)
