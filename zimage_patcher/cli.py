"""zpatch's command line: one thin function per command; the work happens in the modules."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import patchset
from .errors import Exit, ZpatchError

SCHEMA = 1

EXIT_CODES = """\b
Exit codes:
  0  success (or nothing to do)
  1  check/status found problems
  2  bad command line
  3  overlay invalid: upstream.lock, series or a patch malformed, tampered or hostile
  4  checkout invalid: missing, not a repository, off its pin, or user changes in the way
  5  a patch does not apply
  6  an upstream cannot be reached (or is not cached with --offline)
  7  the smoke generation failed
  8  a required tool (git, the smoke Python) is missing"""


def _emit(ctx_json: bool, command: str, payload: dict, text: str) -> None:
    if ctx_json:
        click.echo(json.dumps({"schema": SCHEMA, "command": command, "ok": True, **payload},
                              indent=2, sort_keys=True))
    else:
        click.echo(text)


def command(name: str, help_example: str):
    """Register a command with --json, --overlay, error handling and an example in its --help."""
    def wrap(fn):
        @main.command(name, help=fn.__doc__, epilog=f"\b\nExample:\n  {help_example}\n\n{EXIT_CODES}")
        @click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable schema).")
        @click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False), default=None,
                      help="Overlay directory holding upstream.lock (default: found automatically).")
        @functools.wraps(fn)
        def run(as_json: bool, overlay_dir: str | None, **kw):
            try:
                code = fn(as_json=as_json, overlay_dir=overlay_dir, **kw)
            except ZpatchError as e:
                if as_json:
                    click.echo(json.dumps({"schema": SCHEMA, "command": name, "ok": False, **e.to_json()},
                                          indent=2, sort_keys=True))
                else:
                    click.echo(f"error: {e.message}", err=True)
                    if e.hint:
                        click.echo(f"hint: {e.hint}", err=True)
                sys.exit(int(e.exit_code))
            sys.exit(int(code or 0))
        return run
    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zimage-patcher")
def main():
    """zpatch: keep the Z-Image overlay (patches + custom node) on ComfyUI and ComfyUI-GGUF.

    \b
    Typical session:
      zpatch checkout ./ComfyUI     # upstreams at their pins, through a local cache
      zpatch apply ./ComfyUI        # both patch series + the ComfyUI-ZImage-Fix node
      zpatch status ./ComfyUI       # what is applied, missing or modified
      zpatch unapply ./ComfyUI      # back to pristine upstream
      zpatch check                  # lint the overlay; touches nothing
    """


def _load(overlay_dir, verify=True):
    return patchset.load(patchset.find_root(overlay_dir), verify_hashes=verify)


@command("checkout", "zpatch checkout ./ComfyUI --exclude comfy/text_encoders/llama_tokenizer/tokenizer.json")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--offline", is_flag=True, help="Use only the local cache; never touch the network.")
@click.option("--exclude", multiple=True, metavar="PATH",
              help="Leave PATH unmaterialized (git sparse checkout); repeatable.")
@click.option("--apply", "then_apply", is_flag=True, help="Apply the overlay right after (one step, as `apply`).")
def checkout_cmd(as_json, overlay_dir, dest, offline, exclude, then_apply):
    """Clone every upstream at its pinned commit into DEST (ComfyUI with ComfyUI-GGUF nested)."""
    from . import workspace
    ov = _load(overlay_dir)
    res = workspace.checkout(ov, Path(dest), offline=offline, exclude=list(exclude), progress=not as_json)
    lines = [f"Checked out {u['name']} at {u['commit'][:12]} into {Path(dest) / u['path']}"
             for u in res["upstreams"]]
    for m in res["missing_objects"]:
        lines.append(f"warning: {m} is missing: the source repository lacks its object "
                     f"(git status will show it deleted; --exclude {m} leaves it out cleanly)")
    if then_apply:
        res["apply"] = workspace.apply(ov, Path(dest))
        lines.append(_apply_text(res["apply"], dest))
    else:
        lines.append(f"Next: zpatch apply {dest}")
    _emit(as_json, "checkout", res, "\n".join(lines))


def _apply_text(res: dict, checkout) -> str:
    counts = ", ".join(f"{u['name']} {len(u['applied'])} patch{'es' if len(u['applied']) != 1 else ''}"
                       for u in res["upstreams"])
    if not res["changed"]:
        return f"Already applied ({counts}; node {res['overlay']}). Nothing to do."
    verb = "Re-applied the changed overlay" if res.get("replaced") else "Applied"
    return (f"{verb}: {counts}.\nInstalled {res['overlay']}.\n"
            f"Next: zpatch status {checkout}   or   zpatch smoke {checkout}")


@command("apply", "zpatch apply /ComfyUI")
@click.argument("checkout", type=click.Path(file_okay=False), default=".")
@click.option("--allow-drift", is_flag=True, help="Upstream moved off its pin: try a 3-way apply.")
def apply_cmd(as_json, overlay_dir, checkout, allow_drift):
    """Apply both patch series and install the custom node into CHECKOUT (all or nothing).

    A second run is a no-op that says so; after the overlay changed, the old patches are
    reversed from zpatch's own copies and the new ones applied."""
    from . import workspace
    ov = _load(overlay_dir)
    res = workspace.apply(ov, Path(checkout), allow_drift=allow_drift)
    _emit(as_json, "apply", res, _apply_text(res, checkout))


@command("unapply", "zpatch unapply ./ComfyUI")
@click.argument("checkout", type=click.Path(file_okay=False), default=".")
def unapply_cmd(as_json, overlay_dir, checkout):
    """Reverse what `apply` did: CHECKOUT returns to pristine upstream, byte for byte."""
    from . import workspace
    ov = _load(overlay_dir, verify=False)
    res = workspace.unapply(ov, Path(checkout))
    if not res["changed"]:
        text = "Nothing applied by zpatch here. Nothing to do."
    else:
        parts = ", ".join(f"{k} {len(v)}" for k, v in res["reversed"].items())
        text = (f"Reversed patches: {parts}; removed {res['overlay_removed']}.\n"
                f"The checkout is pristine upstream. Next: zpatch apply {checkout}")
    _emit(as_json, "unapply", res, text)


@command("status", "zpatch status ./ComfyUI --json")
@click.argument("checkout", type=click.Path(file_okay=False), default=".")
def status_cmd(as_json, overlay_dir, checkout):
    """Per upstream: pin vs HEAD, each patch applied / missing / modified / outdated, foreign changes,
    and the custom node. Exits 1 when anything differs from a cleanly applied overlay."""
    from . import workspace
    ov = _load(overlay_dir)
    res = workspace.status(ov, Path(checkout))
    lines = []
    for u in res["upstreams"]:
        pin = "at pin" if u["at_pin"] else f"HEAD {str(u['head'])[:12]}, OFF its pin"
        lines.append(f"{u['name']} ({u['path']}): pin {u['pin'][:12]}, {pin}")
        lines += [f"  {p['state']:<9} {p['name']}" for p in u["patches"]]
        lines += [f"  foreign   {f['git_status']} {f['path']}" for f in u["foreign_changes"]]
    if res["overlay"]:
        lines.append(f"node {res['overlay']['path']}: {res['overlay']['state']}")
    lines += _status_advice(res, checkout)
    _emit(as_json, "status", res, "\n".join(lines))
    return Exit.OK if res["clean"] else Exit.FINDINGS


def _status_advice(res: dict, checkout) -> list[str]:
    """What to do next, one line per kind of difference (git status style)."""
    if res["clean"]:
        return ["All applied and clean."]
    states = {p["state"] for u in res["upstreams"] for p in u["patches"]}
    out = []
    off = [u for u in res["upstreams"] if not u["at_pin"]]
    if off:
        out.append("  (off pin: `git -C <repo> checkout <pin>`, or `zpatch apply --allow-drift` for a 3-way apply)")
    if states & {"missing", "outdated"} or (res["overlay"] and res["overlay"]["state"] == "missing"):
        out.append(f"  (use `zpatch apply {checkout}` to apply what is missing or outdated)")
    if states & {"modified", "conflict"} or (res["overlay"] and res["overlay"]["state"] == "modified"):
        out.append("  (edited after apply: keep the edit with `git diff > my.patch`, or restore the file)")
    if any(u["foreign_changes"] for u in res["upstreams"]):
        out.append("  (foreign changes are not zpatch's: your edits, or files a partial mirror left out)")
    return ["Not clean."] + out


@command("check", "zpatch check --offline")
@click.option("--offline", is_flag=True, help="Test-apply against the cache only.")
@click.option("--no-apply", is_flag=True, help="Lint only; skip the test-apply on the pins.")
def check_cmd(as_json, overlay_dir, offline, no_apply):
    """Lint the overlay (lock, series, headers, hashes, hostile paths) and test-apply every series
    on its pin in a scratch index. Reports every problem; touches no checkout."""
    from . import check
    root = patchset.find_root(overlay_dir)
    res = check.run(root, offline=offline, apply_test=not no_apply)
    lines = []
    for s in res["series"]:
        state = {True: "applies cleanly", False: "DOES NOT APPLY", None: "not test-applied"}[s["applies"]]
        lines.append(f"{s['name']}: {len(s['patches'])} patch(es) on {s['pin'][:12]}: {state}")
    for p in res["problems"]:
        lines.append(f"problem: {p['message']}" + (f"\n  hint: {p['hint']}" if p.get("hint") else ""))
    lines.append("Overlay OK." if res["ok"] else f"{len(res['problems'])} problem(s).")
    if as_json:
        click.echo(json.dumps({"schema": SCHEMA, "command": "check", **res}, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(lines))
    return check.exit_code(res)


@command("lock", "zpatch lock")
def lock_cmd(as_json, overlay_dir):
    """Recompute the sha256 of every patch and overlay file into upstream.lock (after an intended edit)."""
    from . import lock as lockmod
    root = patchset.find_root(overlay_dir)
    lk, changed = patchset.relock(root)
    text = lockmod.dumps(lk)
    path = root / lockmod.LOCK_NAME
    if path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    msg = ("Updated upstream.lock: " + ", ".join(changed)) if changed else "upstream.lock is up to date."
    _emit(as_json, "lock", {"changed": changed}, msg)



@command("smoke", "zpatch smoke ./ComfyUI --device cuda --models /models")
@click.argument("checkout", type=click.Path(file_okay=False), default=".")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--tier", type=click.Choice(["tiny", "full"]), default=None,
              help="tiny: small synthetic models (default on cpu); full: real sizes (default on cuda).")
@click.option("--models", type=click.Path(file_okay=False, exists=True), default=None,
              help="Use the real model files in this folder instead of synthetic ones (1024x1024, 8 steps).")
@click.option("--python", "python", default=None, metavar="PY",
              help="Interpreter with torch for the harness (default: $ZPATCH_SMOKE_PYTHON or a managed venv).")
@click.option("--unpatched", is_flag=True,
              help="Negative control on a pristine checkout: passes only if the field's errors appear.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where PNGs and report.json go (default: CHECKOUT/output/zpatch-smoke).")
def smoke_cmd(as_json, overlay_dir, checkout, device, tier, models, python, unpatched, out_dir):
    """Run the Z-Image workflow headless through the patched ComfyUI stack and check the image."""
    from .smoke import runner
    checkout = Path(checkout)
    out = Path(out_dir) if out_dir else checkout / "output" / "zpatch-smoke"
    report = runner.run_smoke(checkout, out, python=python, device=device,
                              tier=tier or ("tiny" if device == "cpu" else "full"),
                              models=Path(models) if models else None, unpatched=unpatched)
    _emit(as_json, "smoke", {"report": report}, runner.summary(report))


@command("verify", "zpatch verify --keep ./scratch")
@click.option("--keep", "keep", type=click.Path(file_okay=False), default=None,
              help="Work in this directory and keep it (default: a temporary one, removed after).")
@click.option("--offline", is_flag=True, help="Use only the local cache.")
@click.option("--python", "python", default=None, metavar="PY", help="Interpreter for compile and smoke.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--control", is_flag=True, help="Also run the negative control on a pristine checkout.")
@click.option("--no-smoke", is_flag=True, help="Stop after compile (no torch needed).")
def verify_cmd(as_json, overlay_dir, keep, offline, python, device, control, no_smoke):
    """Fresh checkout at the pins -> lint -> strict apply -> status -> compile -> smoke, one report."""
    from . import verify
    res = verify.run(patchset.find_root(overlay_dir), workdir=Path(keep) if keep else None,
                     offline=offline, python=python, device=device, control=control, smoke=not no_smoke)
    lines = [f"{'ok  ' if s['ok'] else 'FAIL'} {s['step']:<9} {s['seconds']:6.2f}s  {s['summary']}"
             for s in res["steps"]]
    lines.append("Verified: the overlay applies on the pins and the smoke generation passes."
                 if res["ok"] else f"Verification failed at {res['steps'][-1]['step']}.")
    if as_json:
        click.echo(json.dumps({"schema": SCHEMA, "command": "verify", **res}, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(lines))
        if not res["ok"] and res.get("error"):
            click.echo(f"error: {res['error']['error']}", err=True)
            if res["error"].get("hint"):
                click.echo(f"hint: {res['error']['hint']}", err=True)
    return Exit.OK if res["ok"] else Exit(res["error"]["exit_code"])


if __name__ == "__main__":  # pragma: no cover
    main()
