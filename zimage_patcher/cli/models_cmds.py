"""models fetch: the real model files for the smoke and for ComfyUI, from the Hugging Face Hub."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from .base import _hoist, command, field, main


class _Models(click.Group):
    """`zpatch --json models fetch DIR`: the shared options moved in front of `models` by the top-level
    group land after `fetch`, where its command reads them."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _hoist(list(args)))


@main.group("models", cls=_Models)
def models_group():
    """Model files for the smoke and ComfyUI: `zpatch models fetch DIR`."""


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


# Ctrl-C or SIGTERM: every file that reached DIR did so whole and verified, and the record says so
INTERRUPTED_HINT = "rerun it: the files already verified in DIR are kept; the one being fetched is fetched again"

_LABEL = {"fetched": "fetched", "cached": "verified", "present": "already there"}


@command("models fetch", "zpatch models fetch ~/models   then   zpatch smoke ./ComfyUI --models ~/models",
         interrupted=INTERRUPTED_HINT)
@click.argument("directory", type=click.Path(), metavar="DIR")
@click.option("--only", "only", metavar="NAME", default=None,
              help="Only this model: its file name or role (diffusion_model, text_encoder, tokenizer, vae).")
@click.option("--offline", is_flag=True, help="Use the Hugging Face cache only (as HF_HUB_OFFLINE=1 does).")
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="The list of files (default: the overlay's zimage_patcher/overlay/models.toml).")
def fetch_cmd(ctx, directory, only, offline, manifest):
    """Download the field's model files (Z-Image Turbo GGUF, Gemma 3 4B GGUF and its tokenizer.model,
    the Qwen-Image VAE) from the Hugging Face Hub through huggingface_hub (its cache, resume, progress
    bars; HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE as it reads them), check each one's size
    and sha256, and lay them out flat in DIR, where `zpatch smoke --models DIR` looks for them. A file
    enters DIR whole and verified (a hard link to the cache, else a copy); files already there and
    verified are kept. Where models.toml pins no sha256, the first fetch records what it saw in
    DIR/.zpatch-models.json and later runs hold to it.

    \b
    Exit codes of this command:
      0   done (fetched, or already there and verified)
      3   models.toml, or the record DIR/.zpatch-models.json, is malformed
      6   the Hub cannot be reached, refuses (gated or private: `hf auth
          login` or HF_TOKEN) or lacks the file; with --offline, not cached
      8   a file's size or sha256 is wrong (a download is not kept)
      10  another zpatch is fetching into DIR
      12  the file system refused (full, read-only, permission)"""
    from .. import models
    path = Path(manifest) if manifest else ctx.overlay_root() / models.MANIFEST
    res = models.fetch(path, Path(directory), only=only, offline=offline,
                       progress=not ctx.as_json and ctx.verbosity >= 0)
    lines = []
    for f in res["files"]:
        how = {"linked": ", hard link to the cache", "copied": ", copied from the cache"}.get(f.get("placed"), "")
        src = f"{f['repo_id']}@{f['revision']}"
        lines.append(f"{_LABEL[f['state']]:<13} {field(f['name'])}  {_size(f['size'])}  from {field(src)}{how}")
        if f["recorded"]:
            lines.append(f"  sha256 not pinned in the manifest; recorded {f['sha256']}; pin it in models.toml")
    fetched = sum(f["state"] != "present" for f in res["files"])
    lines.append(f"{len(res['files'])} file(s) in {field(res['dir'])}"
                 + (f" ({fetched} new)." if fetched else ", all already there."))
    models_dir = shlex.quote(res["dir"])
    lines.append(f"Next: zpatch smoke ./ComfyUI --models {models_dir}   (on a GPU: --device cuda)")
    ctx.emit(res, "\n".join(lines))


# `command` registers on the top-level group; this one lives under `models`.
models_group.add_command(main.commands.pop("models fetch"), "fetch")
