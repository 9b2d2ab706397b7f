"""`zpatch verify`: the whole chain in a scratch directory, one step after another, one report.

With MODELS (`zpatch verify --models DIR`, `make gpu-smoke`) a `models` step before the smoke fetches
and verifies the real model files into DIR (models.fetch, as `zpatch models fetch DIR` does; quick when
they are there and verified) and the smoke runs on them: the GPU tier, unattended. A kept folder gets
report.json (what `zpatch --json verify` prints) and report.md (per-step and per-stage times, peak
memory, GPU, torch, exit status), written by the CLI once the exit status is known. A kept folder is
locked for the whole run (a second verify there exits BUSY), and reusing it replaces only what verify
made there (OWN). What would fail the models step for sure (the manifest, DIR, a torch without CUDA for
--device cuda) is checked before the first step."""
from __future__ import annotations

import contextlib
import datetime
import os
import py_compile
import shlex
import shutil
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

from . import apply, check, clone, durable, locks, patchset, status, workspace
from .errors import EXIT_HELP, Exit, ZpatchError, from_oserror, last_line
from .smoke.oneline import one_line


MARKER = ".zpatch-verify"
LOCK = ".zpatch-verify.lock"          # flock: one verify at a time in a --keep folder (never removed)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# What verify makes in its folder, and all that reusing the folder removes: anything else there (the
# user's notes, a --models DIR inside it) stays.
OWN = ("ComfyUI", "pristine", "smoke", "control", REPORT_JSON, REPORT_MD, ".compile.pyc")


def _made_by_verify(workdir: Path) -> bool:
    """WORKDIR is empty (but for a lock file a verify killed at its start left) or holds the marker."""
    names = set(os.listdir(workdir)) - {LOCK}
    return not names or MARKER in names


def _workdir(workdir: Path | None, stack: contextlib.ExitStack) -> Path:
    """A temporary folder, or WORKDIR: new, empty, or one a previous verify left (what it made there
    removed, the rest kept), locked in STACK for the whole run: a second verify in it exits BUSY
    before it touches anything (it would otherwise remove the first one's checkout under it)."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="zpatch-verify-"))
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ZpatchError(f"--keep {workdir}: not a directory", Exit.USAGE)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if not _made_by_verify(workdir):
            raise ZpatchError(f"--keep {workdir}: not empty and not made by zpatch verify", Exit.USAGE,
                              hint="choose a new or empty directory")
        stack.enter_context(locks.Exclusive(workdir / LOCK, lambda pid: ZpatchError(
            f"--keep {workdir}: {locks.another(pid, 'zpatch verify')} is working in it", Exit.BUSY,
            hint="wait for it to finish, then rerun; or choose another --keep DIR")))
        for name in OWN:
            p = workdir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif os.path.lexists(p):
                p.unlink()
        (workdir / MARKER).write_text("made by zpatch verify; the next verify --keep here replaces "
                                      + ", ".join(OWN) + " and keeps the rest\n")
    except OSError as e:
        raise from_oserror(e, f"cannot prepare the --keep folder {workdir}", code=Exit.USAGE,
                           hint="choose another --keep DIR") from None
    return workdir


def _check_models_place(models: Path, workdir: Path | None) -> None:
    """A --models DIR inside what each verify --keep replaces would be removed by the next run."""
    if workdir is None:
        return
    m = os.path.realpath(models)         # resolved: a symlink may spell either path (a spelling is no defence)
    for name in OWN:
        own = os.path.realpath(Path(workdir) / name)
        if m == own or m.startswith(own + os.sep):
            raise ZpatchError(f"--models {models}: inside {own}, which each verify --keep {workdir} replaces",
                              Exit.USAGE, hint=f"choose a folder outside it, e.g. {Path(workdir) / 'models'}")


# The cheap half of the smoke's environment stage: what --device cuda needs, asked before the models
# step downloads gigabytes that a torch without CUDA could not use.
_CUDA_PROBE = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"


def _cuda_preflight(python: str | None) -> None:
    from .smoke import runner
    py, _ = runner.choose_python(python)     # --python or $ZPATCH_SMOKE_PYTHON not there: ENVIRONMENT now
    if py is None:
        return       # the smoke makes a managed venv, with the torch this machine's GPU needs
    try:
        r = subprocess.run([py, "-c", _CUDA_PROBE], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise ZpatchError(f"cannot run the smoke python {py}: {e}", Exit.ENVIRONMENT,
                          hint=f"pass --python or set {runner.ENV_PYTHON}") from None
    before = "checked before the models step: nothing was downloaded"
    if r.returncode == 3:      # the words of the harness's environment stage, as the smoke step would fail
        raise ZpatchError(f"smoke python {py} is not usable: RuntimeError: --device cuda but "
                          "torch.cuda.is_available() is False", Exit.ENVIRONMENT,
                          hint="this torch sees no GPU: use --device cpu, or a python with a CUDA build of torch "
                               f"(--python); {before}")
    if r.returncode != 0:
        raise ZpatchError(f"smoke python {py} is not usable: {last_line(r.stderr)}", Exit.ENVIRONMENT,
                          hint=f"{py} -m pip install -r {runner.REQUIREMENTS}   or pass --python / set "
                               f"{runner.ENV_PYTHON}; {before}")


def _step_error(name: str, e: Exception) -> ZpatchError:
    """Whatever stopped a step, as the error its entry and the report carry: the file system refusing is
    FILESYSTEM naming the path (errors.from_oserror), as the CLI would say it; anything else unexpected
    is a bug (INTERNAL), its traceback kept in the step's data."""
    if isinstance(e, ZpatchError):
        return e
    if isinstance(e, OSError):
        return from_oserror(e, code=Exit.BAD_CHECKOUT, hint="check the path and the current directory")
    return ZpatchError(f"internal error in zpatch verify ({name} step): {type(e).__name__}: {e}", Exit.INTERNAL,
                       hint="this is a bug; please report it with the message and the step's traceback "
                            "(details.traceback in report.json)",
                       details={"traceback": "".join(traceback.format_exception(e))[-8000:]})


SMOKE_STEPS = ("smoke", "control")


def _failure(name: str, err: ZpatchError) -> dict:
    """A failed step's {stage, error}. For smoke and control: the harness report's own failure
    object (its stage, e.g. "load"), or "environment" when no smoke Python could run. Otherwise
    the step's name and the error's one-line message."""
    f = err.details.get("failure") if name in SMOKE_STEPS and isinstance(err.details, dict) else None
    if isinstance(f, dict) and f.get("stage") and f.get("error"):
        return f
    stage = "environment" if name in SMOKE_STEPS and err.exit_code == Exit.ENVIRONMENT else name
    return {"stage": stage, "error": one_line(err.message)}


def _warnings(name: str, data) -> list:
    """What ComfyUI only logged during the smoke ([{stage, level, message}]); [] for other steps."""
    if name not in SMOKE_STEPS or not isinstance(data, dict):
        return []
    return list(data.get("warnings") or [])


def run(root: Path, *, workdir: Path | None = None, offline: bool = False, python: str | None = None,
        device: str = "cpu", tier: str | None = None, models: Path | None = None, manifest: Path | None = None,
        control: bool = False, smoke: bool = True, on_step=None, progress: bool = False,
        keep_failed: bool = False, finish=None) -> dict:
    """Each step's result goes to ON_STEP as soon as it finishes (the CLI streams them).
    KEEP_FAILED: a scratch folder (no WORKDIR) is kept when a step fails, for the files its hint names.
    MODELS: a folder for the real model files: a `models` step fetches and verifies them there (from
    MANIFEST, default the overlay's models.toml) and the smoke and control run on them. TIER: the
    synthetic models' sizes (default by device); with MODELS, "tiny" says the files are the tiny
    tier's (runner.run_smoke). FINISH(result) runs last, while WORKDIR is still locked (the CLI writes
    the reports there)."""
    models = Path(models).expanduser().absolute() if models is not None else None
    if models is not None and not smoke:
        raise ZpatchError("--models feeds the smoke, which --no-smoke leaves out", Exit.USAGE,
                          hint="drop --no-smoke, or fetch the files alone: zpatch models fetch "
                               + shlex.quote(str(models)))
    if models is not None:
        # What would fail at the models step fails now, before the checkout, the folder, any download:
        # a malformed manifest, a DIR that cannot be a folder, a torch that cannot run --device cuda.
        from . import models as model_files
        model_files.load_manifest(manifest or root / model_files.MANIFEST)
        model_files.check_dir(models)
        _check_models_place(models, workdir)
        if device == "cuda":
            _cuda_preflight(python)
    ov = patchset.load(root)         # an overlay that does not load leaves a kept folder as it was
    with contextlib.ExitStack() as held:
        scratch = _workdir(workdir, held)
        result = _run(root, ov, scratch, workdir=workdir, offline=offline, python=python, device=device, tier=tier,
                      models=models, manifest=manifest, control=control, smoke=smoke, on_step=on_step,
                      progress=progress, keep_failed=keep_failed)
        if finish is not None:
            finish(result)
    return result


def _run(root: Path, ov, scratch: Path, *, workdir, offline, python, device, tier, models, manifest, control, smoke,
         on_step, progress, keep_failed) -> dict:
    steps: list[dict] = []
    result = {"workdir": str(scratch), "passed": False, "steps": steps, "device": device, "tier": tier,
              "models": str(models) if models is not None else None,
              "manifest": str(manifest) if manifest is not None else None}
    dest = scratch / "ComfyUI"

    # Every step carries `failure` (null, or {stage, error}: for smoke and control the harness's
    # stage and first error line) and `warnings` (for smoke and control what ComfyUI only logged,
    # [{stage, level, message}]; [] for the other steps). drift reads both from steps[-1].
    # Any exception a step raises (a full disk's OSError too) is its failure: the report says so.
    def step(name, fn):
        durable.fault_point(f"verify-{name}")      # tests hold a run here, before the step
        t0 = time.perf_counter()
        try:
            summary, data = fn()
            entry = {"step": name, "ok": True, "seconds": time.perf_counter() - t0, "summary": summary,
                     "data": data, "error": None, "failure": None, "warnings": _warnings(name, data)}
        except Exception as exc:
            e = _step_error(name, exc)
            entry = {"step": name, "ok": False, "seconds": time.perf_counter() - t0,
                     "summary": e.message, "data": e.details, "error": e.to_json(),
                     "failure": _failure(name, e), "warnings": _warnings(name, e.details)}
        steps.append(entry)
        if on_step:
            on_step(entry)
        if not entry["ok"]:
            raise _Stop()

    missing: list[str] = []

    def do_checkout():
        res = clone.checkout(ov, dest, offline=offline, progress=progress)
        missing.extend(res["missing_objects"])
        note = f"; missing from the source repository: {', '.join(missing)}" if missing else ""
        return f"{len(res['upstreams'])} upstreams at their pins{note}", res

    def do_check():
        res = check.run(root, offline=offline)
        if not res["clean"]:
            # a failing step is a failure (2 and up), never check's "found something" (1): a patch that
            # does not apply is a conflict, an unreachable upstream is unreachable, the rest is the overlay
            kinds = {p["kind"] for p in res["problems"]}
            code = (Exit.CONFLICT if "conflict" in kinds else Exit.UNREACHABLE if kinds <= {"upstream"}
                    else Exit.BAD_OVERLAY)
            first = next((p for p in res["problems"] if p["kind"] == "conflict"), res["problems"][0])
            raise ZpatchError(first["message"], code, hint=first.get("hint"), details=res)
        return f"{sum(len(s['patches']) for s in res['series'])} patches lint clean and apply on the pins", res

    def do_apply():
        res = apply.apply(ov, dest)
        return ", ".join(f"{u['name']}: {len(u['applied'])}" for u in res["upstreams"]) + " applied", res

    def do_status():
        res = status.status(ov, dest)
        foreign = [f["path"] for u in res["upstreams"] for f in u["foreign_changes"]
                   if (f["path"] if u["path"] == "." else f"{u['path']}/{f['path']}") not in missing]
        bad = [p for u in res["upstreams"] for p in u["patches"] if p["state"] != "applied"]
        if bad or foreign or res["node"]["state"] != "installed":
            raise ZpatchError(f"status not clean after apply: {bad or foreign or res['node']}",
                              Exit.CONFLICT, details=res)
        return "every patch applied, node installed, no foreign change", res

    def do_compile():
        files = [dest / u.series.upstream.path / f for u in workspace.resolve(ov, dest)
                 for f in u.series.files if f.endswith(".py")]
        files += sorted((dest / ov.lock.overlay.path).rglob("*.py")) if ov.lock.overlay else []
        for f in files:
            try:
                py_compile.compile(str(f), doraise=True, cfile=str(scratch / ".compile.pyc"))
            except py_compile.PyCompileError as e:
                raise ZpatchError(f"{f}: does not compile: {e.msg.strip().splitlines()[-1]}", Exit.CONFLICT)
        return f"{len(files)} patched Python files compile", {"files": [str(f) for f in files]}

    def kept(e: ZpatchError) -> ZpatchError:
        """The smoke's hint names its log, which a temporary scratch directory does not keep."""
        if workdir is None:
            e.hint = ((e.hint + "; ") if e.hint else "") + \
                "verify removes its scratch directory: zpatch verify --keep DIR keeps the log"
        return e

    def do_models():
        from . import models as model_files
        res = model_files.fetch(manifest or root / model_files.MANIFEST, models, offline=offline,
                                progress=progress)
        counts = {state: sum(f["state"] == state for f in res["files"]) for state in ("fetched", "cached", "present")}
        how = ", ".join(f"{n} {label}" for state, label in (("fetched", "fetched"), ("cached", "from the Hugging Face "
                        "cache"), ("present", "already there")) if (n := counts[state]))
        return f"{len(res['files'])} model files verified in {res['dir']}: {how}", res

    def do_smoke():
        from .smoke import runner
        try:
            rep = runner.run_smoke(dest, scratch / "smoke", python=python, device=device, tier=tier, models=models)
        except ZpatchError as e:
            raise kept(e) from None
        return runner.summary(rep).splitlines()[0], rep

    def do_control():
        from .smoke import runner
        pristine = scratch / "pristine"
        clone.checkout(ov, pristine, offline=offline)
        try:   # without MODELS the tiny synthetic set unless --tier says otherwise, on any device
            rep = runner.run_smoke(pristine, scratch / "control", python=python, device=device,
                                   tier=tier or (None if models else "tiny"), models=models, unpatched=True)
        except ZpatchError as e:
            raise kept(e) from None
        return runner.summary(rep).splitlines()[0], rep

    plan = [("checkout", do_checkout), ("check", do_check), ("apply", do_apply), ("status", do_status),
            ("compile", do_compile)]
    if models is not None:
        plan.append(("models", do_models))
    if smoke:
        plan.append(("smoke", do_smoke))
        if control:
            plan.append(("control", do_control))
    try:
        for name, fn in plan:
            step(name, fn)
        result["passed"] = True
    except _Stop:
        pass
    finally:
        result["measurements"] = measurements(result)
        # a failure's hint names files in the scratch folder: keep it for the user to look at
        result["kept"] = workdir is not None or (keep_failed and not result["passed"])
        if not result["kept"]:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


class _Stop(Exception):
    """A step failed; its entry already says why."""


# ---------------------------------------------------------------- the report

def exit_code(result: dict) -> Exit:
    """The exit status of this verify: 0 when it passed, else the first failed step's error code."""
    if result["passed"]:
        return Exit.OK
    failed = next((s for s in result["steps"] if not s["ok"]), None)
    return Exit(failed["error"]["exit_code"]) if failed and failed.get("error") else Exit.INTERNAL


# the harness's stages in the order they run (smoke, then control); any other before `total`
STAGE_ORDER = ("environment", "models", "import", "load", "encode", "sample", "decode", "save",
               "text_encoder_load", "vae_load", "vae_decode_4d", "total")


def measurements(result: dict) -> dict:
    """What the GPU tier is run for, in one place: each step's seconds, the smoke's per-stage seconds
    (the harness's timings, `total` included), peak GPU memory (null on cpu or when the smoke did not
    get that far), peak RSS, the GPU's name and the torch version (null when the smoke did not run)."""
    smoke = next((s for s in result["steps"] if s["step"] == "smoke"), None)
    rep = smoke["data"] if smoke and isinstance(smoke.get("data"), dict) else {}
    models = rep.get("models") if isinstance(rep.get("models"), dict) else {}
    timings = rep.get("timings") or {}          # the report is written with sorted keys: back in run order
    order = {k: i for i, k in enumerate(STAGE_ORDER)}
    return {"steps": {s["step"]: round(s["seconds"], 3) for s in result["steps"]},
            "stages": {k: timings[k] for k in sorted(timings, key=lambda k: order.get(k, len(order) - 1.5))},
            "peak_gpu_mb": rep.get("peak_gpu_mb"), "peak_gpu_reserved_mb": rep.get("peak_gpu_reserved_mb"),
            "peak_rss_mb": rep.get("peak_rss_mb"),
            "gpu": (rep.get("gpu") or {}).get("name"), "torch": (rep.get("versions") or {}).get("torch"),
            "smoke_tier": rep.get("tier"), "smoke_models": models.get("source"),
            "image_size": [rep["width"], rep["height"]] if rep.get("width") else None,
            "sampling_steps": rep.get("steps")}


def _mb(v) -> str:
    return f"{v:.0f} MB" if isinstance(v, (int, float)) else "n/a"


def markdown(result: dict, code: Exit, rerun: str) -> str:
    """report.md: the run at a glance, for a person reading a GPU machine's results afterwards."""
    m = result.get("measurements") or measurements(result)
    smoke = next((s for s in result["steps"] if s["step"] == "smoke"), None)
    rep = smoke["data"] if smoke and isinstance(smoke.get("data"), dict) else {}
    failed = next((s for s in result["steps"] if not s["ok"]), None)
    head = "passed" if result["passed"] else f"FAILED at {failed['step']}" if failed else "FAILED"
    device = result.get("device", "cpu")
    if smoke is None or not rep.get("versions"):
        gpu = "n/a (the smoke did not run)"
    elif device == "cpu":
        gpu = "n/a (cpu)"
    else:
        g = rep.get("gpu") or {}
        gpu = f"{g.get('name', '?')} ({g.get('total_mb', '?')} MB, compute capability {g.get('capability', '?')})"
    if device == "cpu":
        peak_gpu = "n/a (cpu)"
    elif m["peak_gpu_mb"] is None:
        peak_gpu = "n/a (the smoke did not get that far)"
    else:
        peak_gpu = f"{_mb(m['peak_gpu_mb'])} allocated, {_mb(m['peak_gpu_reserved_mb'])} reserved"
    versions = rep.get("versions") or {}
    torch = (f"{versions['torch']}" + (f" (CUDA {versions['cuda']})" if versions.get("cuda") else " (no CUDA)")
             if versions.get("torch") else "n/a (the smoke did not run)")
    size = (f"{m['image_size'][0]}x{m['image_size'][1]}, {m['sampling_steps']} steps, tier {m['smoke_tier']}, "
            f"{'your model files' if m['smoke_models'] == 'user' else 'synthetic models'}"
            if m["image_size"] else "n/a")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# zpatch verify: {head} (exit {int(code)})", "",
             f"- When: {when}",
             f"- Rerun: `{rerun}`",
             f"- Exit status: {int(code)} " + (f"({EXIT_HELP[Exit.OK]})" if not failed else
                                               f"(the {failed['step']} step failed: see Failure below)"),
             f"- Device: {device}; GPU: {gpu}",
             f"- torch: {torch}",
             f"- Graph: {size}",
             f"- Model files: {result.get('models') or 'none (synthetic models)'}",
             f"- Peak GPU memory: {peak_gpu}",
             f"- Peak RSS of the smoke process: {_mb(m['peak_rss_mb'])}",
             "", "## Steps", "", "| step | result | seconds | summary |", "|---|---|---:|---|"]
    for s in result["steps"]:
        summary = one_line(s["summary"], 200).replace("|", "\\|")
        lines.append(f"| {s['step']} | {'ok' if s['ok'] else 'FAILED'} | {s['seconds']:.2f} | {summary} |")
    if m["stages"]:
        lines += ["", "## Smoke stages", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {'n/a' if v is None else f'{v:.2f}'} |" for k, v in m["stages"].items()]
    if failed and failed.get("error"):
        f = failed.get("failure") or {}
        lines += ["", "## Failure", "", f"- Stage: {f.get('stage', failed['step'])}",
                  f"- Error: {failed['error']['error']}"]
        if failed["error"].get("hint"):
            lines.append(f"- Next: {failed['error']['hint']}")
    images = rep.get("images") or []
    files = [f"{REPORT_JSON} (what `zpatch --json verify` prints)"]
    if smoke is not None:
        files.append("smoke/ (smoke-report.json, smoke.log, the PNGs)")
    files.append("ComfyUI/ (the patched checkout)")
    lines += ["", "## Files", ""] + [f"- {f}" for f in files] + [f"- image: {i['path']}" for i in images]
    return "\n".join(lines) + "\n"


def report_paths(result: dict) -> dict:
    """Where write_reports puts report.json and report.md: the verify folder."""
    folder = Path(result["workdir"])
    return {"json": str(folder / REPORT_JSON), "markdown": str(folder / REPORT_MD)}


def write_reports(result: dict, envelope: str, text: str) -> None:
    """report.json (ENVELOPE: what `zpatch --json verify` prints) and report.md (TEXT) in the kept folder."""
    paths = report_paths(result)
    try:
        durable.write_atomic(Path(paths["json"]), (envelope + "\n").encode())
        durable.write_atomic(Path(paths["markdown"]), text.encode())
    except OSError as e:
        raise from_oserror(e, "cannot write the verify report", code=Exit.FILESYSTEM) from None
