"""A local server that answers as the Hugging Face Hub does for hf_hub_download (tests point HF_ENDPOINT
at it): `zpatch models fetch` and `zpatch verify --models` run against it with the real huggingface_hub.

It serves `{endpoint}/{repo_id}/resolve/{revision}/{filename}`: HEAD with X-Repo-Commit, ETag and
X-Linked-Etag (the sha256, as for an LFS file), X-Linked-Size and Content-Length; GET whole or, for a
`Range: bytes=N-` request, 206 with Content-Range. It sends no X-Xet-* header, so the plain HTTP path
is taken; a new commit id whenever a repository's bytes change. It can cut a GET after N bytes once,
and answer 401 GatedRepo for a repository."""
from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


# The four model files as small random stand-ins, for tests of fetching (not of the smoke):
# role -> (local name, repo_id, filename in the repo, bytes); SMALL_PINNED: the roles a test manifest pins.
SMALL_FILES = {
    "diffusion_model": ("z_image_turbo-Q5_K_M.gguf", "test-org/Z-Image-Turbo-GGUF", "z_image_turbo-Q5_K_M.gguf",
                        b"GGUF" + os.urandom(6000)),
    "text_encoder": ("gemma-3-4b-it-Q4_K_M.gguf", "test-org/gemma-3-4b-it-GGUF", "gemma-3-4b-it-Q4_K_M.gguf",
                     b"GGUF" + os.urandom(5000)),
    "tokenizer": ("tokenizer.model", "test-org/gemma-3-4b-it", "tokenizer.model", os.urandom(3000)),
    "vae": ("qwen_image_vae.safetensors", "test-org/Qwen-Image_ComfyUI", "split_files/vae/qwen_image_vae.safetensors",
            os.urandom(4000)),
}
SMALL_PINNED = ("diffusion_model", "vae")      # the others have no sha256 in the test manifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """FILES: {(repo_id, path in the repository): bytes}, changeable while it serves. start() and stop()."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        self.files = dict(files)
        self.gated: set[str] = set()
        self.cut: dict[str, int] = {}       # filename -> bytes sent before the connection drops (once)
        self.log: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                hub.log.append((self.command, self.path, self.headers.get("Range")))
                parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound")
                repo, path = "/".join(parts[:2]), "/".join(parts[4:])
                if repo in hub.gated:
                    return self._error(401, "GatedRepo", f"Access to model {repo} is restricted.")
                data = hub.files.get((repo, path))
                if data is None:
                    return self._error(404, "EntryNotFound")
                # a new commit whenever the repository's bytes change, as on the Hub (huggingface_hub
                # keys its snapshots by commit: the same commit means the same files)
                commit = hashlib.sha1(b"".join(d for (r, _), d in sorted(hub.files.items()) if r == repo)).hexdigest()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{sha(data)}"')
                self.send_header("X-Linked-Etag", f'"{sha(data)}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                cut = hub.cut.pop(path.rsplit("/", 1)[-1], None)
                if cut is not None:      # the declared length, fewer bytes, then the connection closes
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def _error(self, code: int, kind: str, message: str = ""):
                self.send_response(code)
                self.send_header("X-Error-Code", kind)
                if message:
                    self.send_header("X-Error-Message", message)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> "FakeHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self) -> list:
        return [entry for entry in self.log if entry[0] == "GET" and "/resolve/" in entry[1]]


def hub_env(environ: dict, hub: FakeHub, hf_home) -> dict:
    """ENVIRON for a zpatch that talks to HUB only: no HF_* of the user's, no proxy, HF_HOME in the test."""
    e = {k: v for k, v in environ.items()
         if not k.startswith("HF_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    e.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), NO_COLOR="1", NO_PROXY="127.0.0.1",
             HF_HUB_DISABLE_TELEMETRY="1")
    return e


def manifest_text(models: dict[str, tuple[str, str, str, bytes]], *, pin=None, override: dict | None = None) -> str:
    """A models.toml for MODELS ({role: (name, repo_id, filename, bytes)}): size and sha256 pinned for the
    roles in PIN (default: all), OVERRIDE {role: sha256} putting a wrong one in."""
    lines = ["version = 1", ""]
    for role, (name, repo, filename, data) in models.items():
        lines += [f"[model.{role}]", f'name = "{name}"', f'repo_id = "{repo}"', 'revision = "main"',
                  f'filename = "{filename}"']
        if pin is None or role in pin:
            lines += [f"size = {len(data)}", f'sha256 = "{(override or {}).get(role, sha(data))}"']
        lines.append("")
    return "\n".join(lines)
