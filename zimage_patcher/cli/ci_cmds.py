"""smoke and verify: the commands that prove the overlay works end to end."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..errors import Exit, ZpatchError
from .base import command, complete_upstream, envelope, field, report_error


@command("smoke", "zpatch smoke ./ComfyUI --device cuda --models /models", interrupted="rerun it")
@click.argument("checkout", type=click.Path(file_okay=False), default=".")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--tier", type=click.Choice(["tiny", "full"]), default=None,
              help="tiny: small synthetic models (default on cpu); full: real sizes (default on cuda). "
                   "With --models, tiny says the files there are the tiny tier's (as the tests run it).")
@click.option("--models", type=click.Path(file_okay=False, exists=True), default=None,
              help="Use the real model files in this folder instead of synthetic ones (1024x1024, 8 steps; "
                   "`zpatch models fetch DIR` gets them).")
@click.option("--python", "python", default=None, metavar="PY",
              help="Interpreter with torch for the harness (default: $ZPATCH_SMOKE_PYTHON, the one running "
                   "zpatch if it has the smoke packages, else a managed venv).")
@click.option("--unpatched", is_flag=True,
              help="Negative control on a pristine checkout: passes only if the field's errors appear.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where PNGs and report.json go (default: CHECKOUT/output/zpatch-smoke).")
def smoke_cmd(ctx, checkout, device, tier, models, python, unpatched, out_dir):
    """Run the Z-Image workflow headless through the patched ComfyUI stack and check the image.
    First checks that CHECKOUT holds the overlay (the one --overlay or ZPATCH_OVERLAY names), or with
    --unpatched that it does not, so a smoke never tests something else than it says."""
    from .. import status
    from ..smoke import runner
    checkout = Path(checkout)
    why = status.not_ready_for_smoke(ctx.load(), checkout, pristine=unpatched)
    if why:
        raise ZpatchError(f"{checkout}: {why}", Exit.BAD_CHECKOUT,
                          hint=f"zpatch unapply {shlex.quote(str(checkout))}" if unpatched
                          else f"zpatch apply {shlex.quote(str(checkout))}")
    out = Path(out_dir) if out_dir else checkout / "output" / "zpatch-smoke"
    report = runner.run_smoke(checkout, out, python=python, device=device, tier=tier,
                              models=Path(models) if models else None, unpatched=unpatched)
    ctx.emit({"report": report}, runner.summary(report))


def _step_line(s: dict) -> str:
    return f"{'ok  ' if s['ok'] else 'FAIL'} {s['step']:<9} {s['seconds']:6.2f}s  {s['summary']}"


def _zpatch_argv() -> list[str]:
    """How this zpatch was started, as a command a person can paste: `zpatch` when that is what the
    PATH finds, else the script's own path (make's .venv/bin/zpatch), else `python -m zimage_patcher.cli`."""
    import os
    import shutil
    import sys
    exe = Path(sys.argv[0])
    if exe.name == "zpatch" and exe.is_file():
        found = shutil.which("zpatch")
        return ["zpatch"] if found and os.path.samefile(found, exe) else [str(exe.absolute())]
    return [sys.executable, "-m", "zimage_patcher.cli"]


def _rerun(ctx, res: dict, *, keep, offline, python, device, tier, manifest, control, no_smoke) -> str:
    """report.md's Rerun line: this run again, pasted anywhere. The smoke interpreter is named even when
    it came from $ZPATCH_SMOKE_PYTHON (what `make gpu-smoke SMOKE_PYTHON=...` sets), the paths are
    absolute, and the overlay is named when it was chosen (--overlay, $ZPATCH_OVERLAY)."""
    import os
    import shlex
    from ..smoke.runner import ENV_PYTHON
    python = python or os.environ.get(ENV_PYTHON)
    python = os.path.abspath(python) if python and os.sep in python else python    # a bare name: the PATH's
    overlay = ctx.overlay_dir or os.environ.get("ZPATCH_OVERLAY")
    return shlex.join([*_zpatch_argv(), "verify", *(["--overlay", os.path.abspath(overlay)] if overlay else []),
                       *(["--device", device] if device != "cpu" else []), *(["--tier", tier] if tier else []),
                       *(["--models", res["models"]] if res["models"] else []),
                       *(["--manifest", os.path.abspath(manifest)] if manifest else []),
                       *(["--python", python] if python else []),
                       *(["--offline"] if offline else []), *(["--control"] if control else []),
                       *(["--no-smoke"] if no_smoke else []), "--keep", os.path.abspath(keep or res["workdir"])])


@command("verify", "zpatch verify --device cuda --models ~/models --keep build/gpu-smoke",
         interrupted="rerun verify: it starts again from a fresh checkout (with --models, the model files already "
                     "verified are kept)")
@click.option("--keep", "keep", type=click.Path(file_okay=False), default=None,
              help="Work in this directory and keep it, with report.md and report.json (default: a temporary "
                   "one, removed after). A directory a previous verify left is reused: its ComfyUI/, pristine/, "
                   "smoke/, control/, report.json and report.md are replaced, anything else in it is kept (a "
                   "--models DIR inside it too). One verify at a time works in it. Example: --keep build/verify")
@click.option("--offline", is_flag=True,
              help="Use only the local caches (zpatch's for the upstreams, Hugging Face's for --models).")
@click.option("--python", "python", default=None, metavar="PY",
              help="Interpreter for compile and smoke. Example: --python ~/ComfyUI/venv/bin/python")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the smoke runs. Example: --device cuda")
@click.option("--tier", type=click.Choice(["tiny", "full"]), default=None,
              help="Synthetic model sizes: tiny (default on cpu) or full (default on cuda). With --models, tiny "
                   "says the files are the tiny tier's (how the tests rehearse the GPU tier on a CPU).")
@click.option("--models", "models", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Fetch the real model files into DIR (a `models` step, as `zpatch models fetch DIR`; quick when "
                   "they are there and verified) and run the smoke on them: 1024x1024, 8 steps. "
                   "Example: --models ~/models")
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="With --models: the list of files (default: the overlay's zimage_patcher/overlay/models.toml). "
                   "Example: --manifest my-models.toml")
@click.option("--control", is_flag=True, help="Also run the negative control on a pristine checkout.")
@click.option("--no-smoke", is_flag=True, help="Stop after compile (no torch needed).")
def verify_cmd(ctx, keep, offline, python, device, tier, models, manifest, control, no_smoke):
    """Fresh checkout at the pins -> lint -> strict apply -> status -> compile -> (models ->) smoke,
    one report. Each step is printed as it finishes.

    \b
    The GPU tier, unattended (`make gpu-smoke MODELS=~/models` runs it):
      zpatch verify --device cuda --models ~/models --keep build/gpu-smoke
    then build/gpu-smoke/report.md gives each step's and smoke stage's time,
    peak GPU memory, the GPU, torch and the exit status (report.json: --json).

    \b
    Exit codes of this command (a failed step's own code):
      0   verified
      3   the overlay or models.toml is malformed
      4   a checkout is invalid
      5   a patch does not apply
      6   an upstream or the Hugging Face Hub cannot be reached (or refuses)
      7   the smoke generation (or the control) failed
      8   a model file's size or sha256 is wrong, or the smoke Python is missing
          (with --models and --device cuda: checked before any download)
      10  another zpatch verify works in the --keep folder
      12  the file system refused (full, read-only, permission)"""
    import shlex
    from .. import verify
    if manifest and not models:
        raise ZpatchError("--manifest lists the files --models fetches; it needs --models DIR", Exit.USAGE,
                          hint="zpatch verify --models ~/models --manifest " + shlex.quote(manifest))
    on_step = None if ctx.as_json or ctx.verbosity < 0 else (lambda s: click.echo(_step_line(s)))
    out: dict = {}

    def finish(res: dict) -> None:    # while the --keep folder is still verify's: the reports go there
        out["code"] = code = verify.exit_code(res)
        if code >= 2:       # the envelope's failure fields, in report.json as in what --json prints
            err = next(s["error"] for s in res["steps"] if not s["ok"])
            res.update(error=err["error"], hint=err.get("hint"), details=err.get("details") or {})
        res["report_files"] = verify.report_paths(res) if res["kept"] else None
        if res["report_files"]:
            verify.write_reports(res, envelope("verify", code < 2, {**res, "exit_code": int(code)}),
                                 verify.markdown(res, code, _rerun(ctx, res, keep=keep, offline=offline,
                                                                  python=python, device=device, tier=tier,
                                                                  manifest=manifest, control=control,
                                                                  no_smoke=no_smoke)))
    res = verify.run(ctx.overlay_root(), workdir=Path(keep) if keep else None, offline=offline, python=python,
                     device=device, tier=tier, models=Path(models) if models else None,
                     manifest=Path(manifest) if manifest else None, control=control, smoke=not no_smoke,
                     on_step=on_step, progress=on_step is not None, keep_failed=True, finish=finish)
    code = out["code"]
    lines = []
    m = res["measurements"]
    if m["stages"]:
        stages = "  ".join(f"{k} {v:.2f}s" for k, v in m["stages"].items() if v is not None and k != "total")
        peak = ("peak GPU memory n/a (cpu)" if device == "cpu" else
                f"peak GPU memory {m['peak_gpu_mb']:.0f} MB on {m['gpu']}" if m["peak_gpu_mb"] is not None
                else "peak GPU memory n/a")
        rss = f", peak RSS {m['peak_rss_mb']:.0f} MB" if m["peak_rss_mb"] is not None else ""
        lines.append(f"smoke stages: {stages}")
        lines.append(f"{peak}{rss}; torch {m['torch'] or 'n/a'}")
    if res["report_files"]:
        lines.append(f"Report: {field(res['report_files']['markdown'])} (and report.json)")
    if res["passed"]:
        lines.append("Verified: the overlay applies on the pins" + (
            " and compiles; the smoke generation was not run (--no-smoke)." if no_smoke
            else " and the smoke generation passes" + (f" on the model files in {field(res['models'])}."
                                                       if res["models"] else ".")))
    else:
        lines.append(f"Verification failed at {res['steps'][-1]['step']}; its files are kept in {res['workdir']} "
                     "(remove it when done).")
    ctx.emit(res, "\n".join(lines))
    if not res["passed"]:
        err = next(s["error"] for s in res["steps"] if not s["ok"])
        ctx.fail(err["error"], err.get("hint"))
        if not ctx.as_json and ctx.verbosity >= 0:       # -q: the command's boundary prints it
            report_error(err["error"], err.get("hint"))
    return code


@command("drift", "zpatch drift --upstream comfyui --smoke --markdown", interrupted="rerun it", findings=True)
@click.option("--upstream", "only", default=None, metavar="NAME", help="Only this upstream.",
              shell_complete=complete_upstream)
@click.option("--to", "to", default=None, metavar="REF", help="Target instead of origin/<tracked branch>.")
@click.option("--markdown", is_flag=True, help="Print the report as Markdown (a step summary, an issue body).")
@click.option("--smoke", is_flag=True,
              help="Also run the CPU smoke: on each upstream's target (its series rebased there, the others at "
                   "their pins), or on the pins when nothing moved; a failure is bisected to the first commit.")
@click.option("--offline", is_flag=True, help="Use the cache as it is (no fetch).")
@click.option("--python", "python", default=None, metavar="PY", help="Interpreter for the smoke.")
@click.option("--from", "saved", multiple=True, type=click.Path(dir_okay=False, exists=True), metavar="REPORT.json",
              help="Render a report saved by `zpatch drift --json` instead of computing one (repeat to merge "
                   "the reports of single upstreams).")
@click.option("--artifact", default=None, metavar="NAME",
              help="With --markdown: name the CI artifact that holds the whole report when the body is cut.")
def drift_cmd(ctx, only, to, markdown, smoke, offline, python, saved, artifact):
    """Per upstream: how far its tracked branch moved past the pin, which upstream commits touched
    patched files, what a rebase would do to each patch, and the commit a pull request should move
    the pin to (the head, or when the head conflicts or fails the smoke, the newest commit that
    passes, found by bisection). Classes and exit codes: current 0, moved-clean 1, upstreamed 11,
    moved-conflict 5, smoke-failed 7 (the worst upstream decides).
    Never changes a checkout, patches/ or upstream.lock."""
    from .. import drift, drift_report, drift_schema
    from ..smoke.oneline import one_line
    if saved:
        if smoke or offline or to or python:
            raise ZpatchError("--from renders a saved report: --smoke, --to, --offline and --python do not apply",
                              Exit.USAGE, hint="zpatch drift --from drift.json --markdown")
        report = drift_schema.merge([drift_schema.load_report(Path(f)) for f in saved])
        if only:
            names = [u["name"] for u in report["upstreams"]]
            if only not in names:
                raise ZpatchError(f"{only}: not in the saved report", Exit.USAGE, hint="one of: " + ", ".join(names))
            report = drift_schema.merge([{**report, "upstreams": [u for u in report["upstreams"]
                                                                   if u["name"] == only]}])
    else:
        ov = ctx.load()
        if only and only not in [s.upstream.name for s in ov.series]:
            raise ZpatchError(f"{only}: no such upstream in upstream.lock", Exit.USAGE,
                              hint="one of: " + ", ".join(s.upstream.name for s in ov.series))
        report = drift.run(ov, only=only, to=to, offline=offline, smoke=smoke, python=python)
    from .. import overlay_write
    # a stopped rebase holds the overlay: another rebase is refused until that one is finished
    busy = ov.root if not saved and ctx.overlay_busy == overlay_write.REBASE_HINT else None
    op = overlay_write.stopped(busy) if busy else None

    def next_step(name: str, onto: str) -> str:
        """The rebase of NAME onto ONTO, as the overlay's state allows it now."""
        if op is None:
            return f"zpatch rebase {name} --onto {onto}"
        finish = "`zpatch rebase --continue` (or `zpatch rebase --abort`)"
        if op.upstream == name and onto in (op.onto, op.onto[:len(onto)]):
            return f"finish the stopped rebase of {name} onto {op.onto[:12]}: {finish}"
        return f"once the stopped rebase is done ({finish}), zpatch rebase {name} --onto {onto}"
    if markdown and not ctx.as_json:
        click.echo(drift_report.markdown(report, artifact=artifact), nl=False)
    else:
        lines = []
        for u in report["upstreams"]:
            lines.append(f"{u['name']}: {u['class']} ({u['ahead']} commit(s) past the pin on {u['ref']}, "
                         f"{len(u['touching'])} of them touched patched files)")
            lines += [f"  {p['state']:<10} {one_line(p['name'])}" + ("  (and conflicts)" if p.get("also_conflict") else "")
                      for p in u["patches"] if u["class"] != "current"]
            if u.get("advance") and u["advance"].get("target"):
                a = u["advance"]
                lines.append(f"  partial advance: carries onto {a['target'][:12]} ({a['trials']} trial applies)"
                             + (f"; first to break it: {a['first_bad'][:12]}" if a.get("first_bad") else ""))
            sm = u.get("smoke")
            if sm:
                f = sm.get("failure") or {}
                lines.append(f"  smoke on {sm['commit'][:12]}: " + ("passed" if sm["passed"] else
                             f"FAILED at {one_line(f.get('step'))}: {one_line(f.get('error'))}"))
                if sm.get("bisect") and sm["bisect"].get("first_bad"):
                    lines.append(f"  first failing commit: {sm['bisect']['first_bad'][:12]} "
                                 f"({sm['bisect']['smokes']} smokes)")
            if u.get("target") and u["class"] != "current":
                lines.append(f"  target: {u['target'][:12]}; next: {next_step(u['name'], u['target'])}")
            elif any(p["state"] == "conflict" for p in u["patches"]):
                lines.append(f"  a rebase stops at the first conflict for you to resolve; next: "
                             f"{next_step(u['name'], u['head'])}")
        lines.append(f"Drift: {report['class']}.")
        ctx.emit(report, "\n".join(lines))
    clashes = [(u, [p["name"] for p in u["patches"] if p["state"] == "conflict"]) for u in report["upstreams"]]
    clashes = [(u, names) for u, names in clashes if names]
    if clashes:
        ctx.fail("; ".join(f"{u['name']}: {', '.join(names)} conflict(s) with {u['ref']}" for u, names in clashes),
                 " and ".join(f"`zpatch rebase {u['name']} --onto {u['head']}`" for u, _ in clashes)
                 + " stops at the first conflict for you to resolve" if op is None else
                 "; ".join(next_step(u["name"], u["head"]) for u, _ in clashes))
    return Exit(report["exit_code"])


@command("drift-publish", "zpatch drift-publish reports/*/drift.json --recreate comfyui", interrupted="rerun it")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--recreate", default="", metavar="NAMES",
              help="Upstreams (comma- or space-separated) whose pull request branch starts afresh, even if "
                   "someone else pushed to it.")
@click.option("--token-kind", type=click.Choice(["app", "pat", "github-token"]),
              default="github-token", show_default=True,
              help="What GH_TOKEN is: with the workflow's own token (github-token) the PR body says checks did "
                   "not run.")
@click.option("--remote", default="origin", show_default=True, help="Where the branches are pushed.")
@click.option("--dry-run", is_flag=True, help="Read GitHub, build the commits, but push and write nothing.")
@click.option("--artifact", default=None, metavar="NAME", help="The CI artifact that holds the whole reports.")
def drift_publish_cmd(ctx, reports, recreate, token_kind, remote, dry_run, artifact):
    """The scheduled job's publishing step: for each upstream in REPORTS (from `zpatch drift --json`),
    one pull request that moves its pin to the report's target and one issue when it needs a person,
    through `gh` (GH_TOKEN) and `git push`. Reruns change nothing unless the finding changed; a branch
    someone else pushed to is left alone; a PR closed without merge skips its target.
    Run it inside the overlay's repository, on the commit the PRs should start from."""
    from .. import drift_publish
    res = drift_publish.publish(ctx.overlay_root(for_writing=True), [Path(r) for r in reports],
                                recreate={n for n in recreate.replace(",", " ").split() if n},
                                token_kind=token_kind, remote=remote, dry_run=dry_run, artifact=artifact)
    lines = [f"{u['upstream']}: {u['class']}; pull request: {u['pr']}; issue: {u['issue']}" for u in res["upstreams"]]
    lines += [f"{f['report']}: skipped: {f['error']}" for f in res["failed_legs"]]
    lines.append(f"{len(res['writes'])} write(s) to GitHub" + (" (dry run: none made)" if dry_run else "") + ".")
    ctx.emit(res, "\n".join(lines))
    return Exit.OK
