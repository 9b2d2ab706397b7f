"""Real git repositories for tests, built from scratch (the pre-commit project's style).

A fake ComfyUI with a nested fake ComfyUI-GGUF, each a real repository reachable under an
https URL through `url.<path>.insteadOf` in an isolated git config: the same mechanism users
rely on for mirrors."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from zimage_patcher.git import FORMAT_PATCH_OPTIONS

SD_PY = "".join(f"# line {i} of sd.py\n" for i in range(1, 41))
LOADER_PY = "".join(f"# loader line {i}\n" for i in range(1, 41))
NODE_INIT = "NODE_CLASS_MAPPINGS = {}\n"

COMFY_URL = "https://example.invalid/comfyanonymous/ComfyUI"
GGUF_URL = "https://example.invalid/city96/ComfyUI-GGUF"


# A fresh CI machine has no git identity; the fixtures' commits must not depend on one.
_IDENTITY = {"GIT_AUTHOR_NAME": "Fixture", "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
             "GIT_COMMITTER_NAME": "Fixture", "GIT_COMMITTER_EMAIL": "fixture@example.invalid"}


def git(*args, cwd=None, check=True, input=None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, input=input,
                       env={**os.environ, **_IDENTITY})
    if check and r.returncode:
        raise AssertionError(f"git {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def make_repo(path: Path, files: dict[str, str], message="initial") -> str:
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", str(path))
    write(path, files)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def commit(path: Path, files: dict[str, str], message: str) -> str:
    write(path, files)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


HEADERS = ("\n\nOrigin: vendor, zimage-patcher\nForwarded: no\nLast-Update: 2026-11-26\n"
           "Upstream-License: test fixture\n")


def make_patches(upstream: Path, base: str, edits: list[tuple[str, dict[str, str]]], outdir: Path) -> list[str]:
    """Commit each (subject, {file: new text}) on top of BASE in a scratch clone and export
    them with git format-patch and zpatch's fixed options."""
    work = outdir.parent / f".work-{outdir.name}"
    shutil.rmtree(work, ignore_errors=True)
    git("clone", "-q", str(upstream), str(work))
    git("checkout", "-q", "--detach", base, cwd=work)
    for subject, files in edits:
        write(work, files)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", subject + HEADERS, cwd=work)
    outdir.mkdir(parents=True, exist_ok=True)
    out = git("format-patch", *FORMAT_PATCH_OPTIONS,
              "-o", str(outdir), f"{base}..HEAD", cwd=work)
    shutil.rmtree(work)
    names = [Path(line).name for line in out.splitlines()]
    (outdir / "series").write_text("".join(n + "\n" for n in names))
    return names


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_lock(root: Path, upstreams: list[dict], overlay: dict | None = None) -> None:
    """Write upstream.lock by recomputing hashes, the way `zpatch lock` does."""
    lines = ["version = 1", ""]
    for u in upstreams:
        lines += [f"[upstream.{u['name']}]", f'url = "{u["url"]}"', 'branch = "main"',
                  f'commit = "{u["commit"]}"', f'path = "{u["path"]}"', f'patches = "{u["patches"]}"', "",
                  f"[upstream.{u['name']}.sha256]"]
        d = root / u["patches"]
        for name in (d / "series").read_text().split():
            lines.append(f'"{name}" = "{sha256(d / name)}"')
        lines.append("")
    if overlay:
        lines += ["[overlay]", f'source = "{overlay["source"]}"', f'path = "{overlay["path"]}"', "",
                  "[overlay.sha256]"]
        src = root / overlay["source"]
        for p in sorted(src.rglob("*")):
            if p.is_file():
                lines.append(f'"{p.relative_to(src).as_posix()}" = "{sha256(p)}"')
        lines.append("")
    (root / "upstream.lock").write_text("\n".join(lines))


class World:
    """Upstream repositories, an overlay that patches them, and an isolated git config/cache."""

    def __init__(self, tmp: Path, template: "World | None" = None):
        """A new world in TMP; with TEMPLATE, a copy of that one (the same repositories, pins and
        overlay, for a fraction of the ~25 git processes that building one takes)."""
        self.tmp = tmp
        self.comfy_up = tmp / "upstream" / "ComfyUI"
        self.gguf_up = tmp / "upstream" / "ComfyUI-GGUF"
        if template is None:
            self.comfy_pin = make_repo(self.comfy_up, {"comfy/sd.py": SD_PY, "nodes.py": "NODES = 1\n",
                                                       ".gitignore": "/custom_nodes/\n"})
            self.gguf_pin = make_repo(self.gguf_up, {"loader.py": LOADER_PY, "nodes.py": "GGUF = 1\n"})
        else:
            shutil.copytree(template.tmp / "upstream", tmp / "upstream", symlinks=True)
            self.comfy_pin, self.gguf_pin = template.comfy_pin, template.gguf_pin
        gitconfig = tmp / "gitconfig"
        gitconfig.write_text(
            "[user]\n\tname = Test\n\temail = test@example.invalid\n"
            "[init]\n\tdefaultBranch = main\n"
            # no `git maintenance run --auto` after each commit and fetch: a process apiece, and these
            # repositories live for one test
            "[maintenance]\n\tauto = false\n"
            f'[url "{self.comfy_up}"]\n\tinsteadOf = {COMFY_URL}\n'
            f'[url "{self.gguf_up}"]\n\tinsteadOf = {GGUF_URL}\n')
        self.env = {"GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1",
                    "ZPATCH_CACHE": str(tmp / "cache"), "XDG_CACHE_HOME": str(tmp / "xdg")}
        self.overlay = tmp / "overlay"
        if template is None:
            self.build_overlay()
        else:
            shutil.copytree(template.overlay, self.overlay, symlinks=True)

    def build_overlay(self, comfy_edits=None, gguf_edits=None) -> None:
        if self.overlay.exists():
            shutil.rmtree(self.overlay)
        comfy_edits = comfy_edits if comfy_edits is not None else [
            ("sd: accept 4-D latents", {"comfy/sd.py": replace_line(SD_PY, "line 10 of sd.py\n", "line 10 PATCHED\n")})]
        if gguf_edits is None:
            l1 = replace_line(LOADER_PY, "loader line 5\n", "loader line 5 gemma3\n")
            l2 = replace_line(l1, "loader line 20\n", "loader line 20 tokenizer\n")
            l3 = replace_line(l2, "loader line 35\n", "loader line 35 external\n")
            gguf_edits = [("loader: gemma3", {"loader.py": l1}), ("loader: tokenizer", {"loader.py": l2}),
                          ("loader: external tokenizer", {"loader.py": l3, "tokenizer_util.py": "UTIL = 1\n"})]
        make_patches(self.comfy_up, self.comfy_pin, comfy_edits, self.overlay / "patches" / "comfyui")
        make_patches(self.gguf_up, self.gguf_pin, gguf_edits, self.overlay / "patches" / "comfyui-gguf")
        write(self.overlay / "node" / "ComfyUI-ZImage-Fix", {"__init__.py": NODE_INIT, "nodes.py": "X = 1\n"})
        self.relock()

    def relock(self) -> None:
        write_lock(self.overlay, [
            {"name": "comfyui", "url": COMFY_URL, "commit": self.comfy_pin, "path": ".", "patches": "patches/comfyui"},
            {"name": "comfyui-gguf", "url": GGUF_URL, "commit": self.gguf_pin, "path": "custom_nodes/ComfyUI-GGUF",
             "patches": "patches/comfyui-gguf"}],
            {"source": "node/ComfyUI-ZImage-Fix", "path": "custom_nodes/ComfyUI-ZImage-Fix"})

    def make_gguf_crlf(self) -> str:
        """Move ComfyUI-GGUF to CRLF files, as the real one has, with a one-patch series that changes
        line 20; returns the CRLF loader.py."""
        crlf = "".join(f"# loader line {i}\r\n" for i in range(1, 41))
        self.gguf_pin = commit(self.gguf_up, {"loader.py": crlf}, "CRLF like upstream")
        shutil.rmtree(self.overlay / "patches" / "comfyui-gguf")
        make_patches(self.gguf_up, self.gguf_pin,
                     [("loader: crlf edit", {"loader.py": crlf.replace("line 20\r\n", "line 20 x\r\n")})],
                     self.overlay / "patches" / "comfyui-gguf")
        self.relock()
        return crlf

    def clone_checkout(self, dest: Path) -> Path:
        """A user's own install: plain git clones, no zpatch involved."""
        git("clone", "-q", str(self.comfy_up), str(dest))
        git("checkout", "-q", "--detach", self.comfy_pin, cwd=dest)
        git("clone", "-q", str(self.gguf_up), str(dest / "custom_nodes" / "ComfyUI-GGUF"))
        git("checkout", "-q", "--detach", self.gguf_pin, cwd=dest / "custom_nodes" / "ComfyUI-GGUF")
        return dest


def tree_snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under ROOT (including .git internals except the zpatch state), every folder
    outside .git and every symlink (as its target), for nothing-changed-on-disk assertions."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        parts = p.relative_to(root).parts
        if "zpatch" in parts:
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            if ".git" not in parts:
                out[rel + "/"] = "dir"
        elif p.is_file():
            if rel.endswith(".git/index") or "/objects/" in "/" + rel:
                continue   # stat refreshes in the index and content-addressed objects are not user data
            out[rel] = p.read_bytes()
    return out


def gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until every process of group PGID has exited: a git child forked by a killed zpatch may
    hold a copy of its lock's descriptor for a moment after the parent died."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def overlay_snapshot(world) -> dict:
    """Every file of WORLD's overlay and its bytes, for nothing-changed assertions."""
    return {p.relative_to(world.overlay).as_posix(): p.read_bytes()
            for p in sorted(world.overlay.rglob("*")) if p.is_file() and ".zpatch" not in p.relative_to(world.overlay).parts}


def error_line(r) -> str:
    """The one `error:` line a failed command printed (exactly one, or the test fails)."""
    lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, r.output
    return lines[0]
