"""What goes wrong around `zpatch models fetch DIR` and `zpatch verify --keep DIR --models DIR`: two runs
at once (held at their pause points with pipes, testing/pause.py), a file system that refuses a write, a
damaged record or manifest, a reused --keep folder, the report's Rerun line, an interrupt. Real zpatch
processes, real git on the real upstreams (through the configured mirrors) and the real huggingface_hub
against the local stand-in of the Hub (testing/fake_hub.py)."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testing.fake_hub import SMALL_FILES, SMALL_PINNED, FakeHub, hub_env, manifest_text
from testing.pause import Held
from testing.upstream import unreachable_reason

ROOT = Path(__file__).resolve().parent.parent
FILES = SMALL_FILES
PINNED = SMALL_PINNED
RECORD = ".zpatch-models.json"
BEFORE_MODELS = ["checkout", "check", "apply", "status", "compile"]


@pytest.fixture
def hub():
    h = FakeHub({(repo, path): data for _, repo, path, data in FILES.values()}).start()
    yield h
    h.stop()


@pytest.fixture
def env(tmp_path, hub):
    e = {**hub_env(os.environ, hub, tmp_path / "hf"), "ZPATCH_CACHE": os.environ.get("ZPATCH_CACHE",
                                                                                     str(tmp_path / "zc"))}
    for k in ("ZPATCH_OVERLAY", "ZPATCH_SMOKE_PYTHON", "ZPATCH_TEST_PAUSE", "ZPATCH_TEST_KILL_AT"):
        e.pop(k, None)
    return e


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(manifest_text(FILES, pin=PINNED), encoding="utf-8")
    return path


@pytest.fixture
def upstreams():
    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "zimage_patcher.cli", *map(str, args)]


def zpatch(env, *args, **kw) -> subprocess.CompletedProcess:
    # a timeout, never reached when all is well: a run that waits on a FIFO fails the test instead of hanging it
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env, cwd=kw.pop("cwd", ROOT),
                          stdin=subprocess.DEVNULL, timeout=300, **kw)


def snapshot(d: Path) -> dict:
    """Every entry under D: its kind, bytes (for a file) and inode, to show a run changed nothing: a file
    rewritten or a folder made again gets a new inode. Not mtimes: git freshens a pack's mtime (utime)
    when it meets an object the pack already holds, which a loaded run showed during the hold."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = os.lstat(p)
        out[str(p.relative_to(d))] = (p.read_bytes() if p.is_file() and not p.is_symlink() else None, st.st_mode,
                                      st.st_ino)
    return out


def one_error(stderr: str) -> tuple[str, str]:
    """The error and hint lines: all of stderr but the note of a first use of the upstream cache."""
    lines = [l for l in stderr.strip().splitlines() if not l.startswith("Caching ")]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), stderr
    return lines[0], lines[1]


# ---------------------------------------------------------------- models fetch

def test_a_second_fetch_into_the_same_dir_is_refused_busy_and_the_first_records_every_file(hub, env, manifest,
                                                                                           tmp_path):
    d = tmp_path / "models"
    with Held(cli("models", "fetch", d, "--manifest", manifest), "models-fetch", env=env, cwd=ROOT) as first:
        second = zpatch(env, "models", "fetch", d, "--manifest", manifest)
        assert second.returncode == 10, second.stderr
        error, hint = one_error(second.stderr)
        assert error == f"error: {d}: another zpatch is fetching model files into it"
        assert "wait for it to finish" in hint
        done = first.release()
    assert done.returncode == 0, done.stderr
    record = json.loads((d / RECORD).read_text())
    assert sorted(record["files"]) == sorted(name for name, *_ in FILES.values())
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []


def test_a_temporary_record_left_in_the_way_does_not_stop_a_fetch(hub, env, manifest, tmp_path):
    # a fixed temporary name (DIR/.zpatch-models.json.tmp) was one run's trap for the other: exit 4
    d = tmp_path / "models"
    (d / f"{RECORD}.tmp").mkdir(parents=True)
    r = zpatch(env, "models", "fetch", d, "--manifest", manifest, "--only", "tokenizer")
    assert r.returncode == 0, r.stderr
    assert list(json.loads((d / RECORD).read_text())["files"]) == ["tokenizer.model"]


DAMAGED = {
    "files-a-list": b'{"files": []}',
    "files-a-string": b'{"files": "x"}',
    "size-a-string": None,          # the real record, one field retyped (below)
    "sha256-a-number": None,
    "not-json": b"{not json",
    "a-directory": None,
    "a-fifo": None,
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_a_damaged_record_is_one_line_naming_it_exit_3_and_nothing_changes(hub, env, manifest, tmp_path, kind):
    d = tmp_path / "models"
    assert zpatch(env, "models", "fetch", d, "--manifest", manifest, "--only", "tokenizer").returncode == 0
    record = d / RECORD
    good = json.loads(record.read_text())
    if kind == "size-a-string":
        good["files"]["tokenizer.model"]["size"] = "3000"
        record.write_text(json.dumps(good))
    elif kind == "sha256-a-number":
        good["files"]["tokenizer.model"]["sha256"] = 12345
        record.write_text(json.dumps(good))
    elif kind == "a-directory":
        record.unlink()
        record.mkdir()
    elif kind == "a-fifo":
        record.unlink()
        os.mkfifo(record)        # a plain open() would wait for a writer for ever
    else:
        record.write_bytes(DAMAGED[kind])
    before = snapshot(d)
    hub.log.clear()
    r = zpatch(env, "models", "fetch", d, "--manifest", manifest)
    assert r.returncode == 3, r.stderr
    error, hint = one_error(r.stderr)
    assert error.startswith(f"error: {record}: damaged: ")
    assert hint == (f"hint: move it aside (mv {record} {record}.bak), then run again: the next fetch records "
                    "the files' hashes anew")
    assert snapshot(d) == before and hub.log == []
    js = zpatch(env, "models", "fetch", d, "--manifest", manifest, "--json")
    assert json.loads(js.stdout)["exit_code"] == 3 and snapshot(d) == before

    # the hint, followed as printed, works: the record is written anew from what is verified
    subprocess.run(hint.split("(", 1)[1].split(")", 1)[0], shell=True, check=True)
    assert os.path.lexists(f"{record}.bak")
    again = zpatch(env, "models", "fetch", d, "--manifest", manifest)
    assert again.returncode == 0, again.stderr
    assert len(json.loads(record.read_text())["files"]) == 4


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory-like"])
def test_a_manifest_that_is_not_a_file_is_refused_at_once(env, tmp_path, kind):
    if kind == "fifo":
        manifest = tmp_path / "models.toml"
        os.mkfifo(manifest)
    elif kind == "dev-zero":
        manifest = Path("/dev/zero")          # read whole, it would be a MemoryError
    else:
        manifest = tmp_path / "big.toml"       # a regular file, larger than any manifest
        manifest.write_bytes(b"#" * (2 << 20))
    d = tmp_path / "models"
    r = zpatch(env, "models", "fetch", d, "--manifest", manifest)
    assert r.returncode == 3, r.stderr
    error, _ = one_error(r.stderr)
    assert error.startswith(f"error: {manifest}: not a models manifest: ")
    assert not d.exists()


def test_a_file_in_the_way_is_never_to_be_deleted_only_moved_aside(hub, env, manifest, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    (d / "qwen_image_vae.safetensors").write_bytes(b"the user's own file")        # pinned: refused unread
    (d / "tokenizer.model").write_bytes(b"another of theirs")                     # no hash known: compared
    for only, name in (("vae", "qwen_image_vae.safetensors"), ("tokenizer", "tokenizer.model")):
        r = zpatch(env, "models", "fetch", d, "--manifest", manifest, "--only", only)
        assert r.returncode == 8, r.stderr
        _, hint = one_error(r.stderr)
        assert f"move it aside (mv {d / name} {d / name}.bak)" in hint and "rm " not in hint
        subprocess.run(hint.split("(mv ", 1)[1].split(")", 1)[0].join(["mv ", ""]), shell=True, check=True)
        again = zpatch(env, "models", "fetch", d, "--manifest", manifest, "--only", only)   # followed as printed
        assert again.returncode == 0, again.stderr
    assert (d / "qwen_image_vae.safetensors.bak").read_bytes() == b"the user's own file"
    assert (d / "tokenizer.model.bak").read_bytes() == b"another of theirs"


def test_a_dir_under_a_file_is_a_usage_error_not_a_checkout_one(hub, env, manifest, tmp_path):
    (tmp_path / "file").write_text("a file\n")
    d = tmp_path / "file" / "models"
    r = zpatch(env, "models", "fetch", d, "--manifest", manifest)
    assert r.returncode == 2, r.stderr
    error, _ = one_error(r.stderr)
    assert error == f"error: {d}: not a directory ({tmp_path / 'file'} is a file)"
    assert hub.log == []


def test_sigterm_of_a_fetch_gives_the_fetch_s_own_hint(hub, env, manifest, tmp_path):
    d = tmp_path / "models"
    with Held(cli("models", "fetch", d, "--manifest", manifest), "models-fetch", env=env, cwd=ROOT) as held:
        held.proc.send_signal(signal.SIGTERM)
        r = held.release()
    assert r.returncode == 143, r.stderr
    error, hint = one_error(r.stderr)
    assert error == "error: terminated (SIGTERM)"
    assert "already verified in DIR are kept" in hint and "apply" not in hint


# ---------------------------------------------------------------- verify

def test_a_second_verify_in_the_same_keep_folder_exits_busy_and_touches_nothing(upstreams, env, tmp_path):
    keep = tmp_path / "v"
    with Held(cli("verify", "--no-smoke", "--keep", keep), "verify-compile", env=env, cwd=ROOT) as first:
        before = snapshot(keep)
        assert "ComfyUI/comfy" in before          # the first one's checkout, which a second used to remove
        second = zpatch(env, "verify", "--no-smoke", "--keep", keep)
        assert second.returncode == 10, second.stdout + second.stderr
        error, hint = one_error(second.stderr)
        assert error.startswith(f"error: --keep {keep}: another zpatch verify (pid {first.proc.pid}) is working")
        assert "wait for it to finish" in hint and second.stdout == ""
        assert snapshot(keep) == before
        done = first.release()
    assert done.returncode == 0, done.stdout + done.stderr
    rep = json.loads((keep / "report.json").read_text())
    assert rep["passed"] and [s["step"] for s in rep["steps"]] == BEFORE_MODELS


def _file_size_limit(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))   # Python ignores SIGXFSZ: writes get EFBIG
    return set_limit


class FileSystems:
    """small(size): a real, separate file system of SIZE (a tmpfs) to fill; read_only(folder): FOLDER made
    read-only for this user, as root too (a read-only bind mount: root writes through a chmod 0555),
    else chmod 0555. Each skips where mounting is not permitted (an unprivileged container)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path, self.mounted = tmp_path, []

    def _mount(self, *args) -> None:
        r = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True) if shutil.which("mount") \
            else None
        if r is None or r.returncode:
            pytest.skip(f"cannot mount here: {r.stderr.strip() if r else 'no mount(8)'}")
        self.mounted.append(args[-1])

    def small(self, size: str) -> Path:
        mnt = self.tmp_path / f"fs{len(self.mounted)}"
        mnt.mkdir()
        self._mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "zpatch-test", mnt)
        return mnt

    def read_only(self, folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            return
        self._mount("--bind", folder, folder)
        self._mount("-o", "remount,bind,ro", folder)

    def close(self) -> None:
        for mnt in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def filesystems(tmp_path):
    fs = FileSystems(tmp_path)
    yield fs
    fs.close()


@pytest.mark.parametrize("how", ["file-size-limit", "full-hf-cache", "full-models-dir", "read-only-models-dir"])
def test_a_file_system_refusal_in_the_models_step_is_a_failed_step_with_its_report(upstreams, hub, env, tmp_path,
                                                                                   filesystems, how):
    # The file system refusing a write, as root too (where a chmod 0555 folder refuses nothing): the file size
    # limit, which the Hub's file is larger than (wherever it runs); a full tmpfs under the Hugging Face cache,
    # or under DIR (the file is copied there from the cache on another file system), where mounting is allowed;
    # a read-only DIR.
    # The message must name what refused: the cache the download goes to, or the file in DIR.
    assert zpatch(env, "checkout", tmp_path / "warm").returncode == 0       # the upstream cache warm, unlimited
    size = 8 << 20 if how == "file-size-limit" else 256 << 10
    big = dict(FILES, vae=(*FILES["vae"][:3], os.urandom(size + 4096)))
    hub.files[(big["vae"][1], big["vae"][2])] = big["vae"][3]
    manifest = tmp_path / "models.toml"
    manifest.write_text(manifest_text(big, pin=PINNED), encoding="utf-8")
    keep, d, hf_cache = tmp_path / "v", tmp_path / "models", tmp_path / "hf" / "hub"
    kw = {"preexec_fn": _file_size_limit(size)} if how == "file-size-limit" else {}
    if how == "full-hf-cache":
        env = {**env, "HF_HOME": str(filesystems.small("128k"))}
        hf_cache = Path(env["HF_HOME"]) / "hub"
    elif how == "full-models-dir":
        d = filesystems.small("128k") / "models"
    elif how == "read-only-models-dir":
        d.mkdir()
        filesystems.read_only(d)
    r = zpatch(env, "verify", "--models", d, "--manifest", manifest, "--keep", keep, **kw)
    assert r.returncode == 12, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert [l.split()[:2] for l in out if l.split()[:1] in (["ok"], ["FAIL"])] == \
        [["ok", s] for s in BEFORE_MODELS] + [["FAIL", "models"]]
    stderr = r.stderr
    if how == "full-hf-cache":      # huggingface_hub's own warning, before it tries: the Hub says the file's size
        assert "UserWarning: Not enough free disk space" in stderr
        stderr = "\n".join(l for l in stderr.splitlines() if "Not enough free disk" not in l and
                           l.strip() != "warnings.warn(")
    error, hint = one_error(stderr)
    if how == "full-models-dir":
        assert error == (f"error: {d / 'qwen_image_vae.safetensors'}: cannot copy the verified file into place "
                         "(no space left on device)")
    elif how == "read-only-models-dir":      # the first file already: DIR refuses it
        cause, way_out = (("read-only file system", f"hint: {d} is on a read-only file system") if os.geteuid() == 0
                          else ("permission denied", f"hint: give this user access to {d}"))
        assert error == f"error: {d / 'z_image_turbo-Q5_K_M.gguf'}: cannot place the verified file ({cause})"
        assert hint.startswith(way_out)
    else:
        assert error.startswith(f"error: {hf_cache}: cannot store the download of qwen_image_vae.safetensors (")
    if how == "file-size-limit":
        assert "file size limit" in error and "ulimit -f" in hint
    elif how.startswith("full-"):
        assert "no space left on device" in error and hint.startswith("hint: free some space")

    rep = json.loads((keep / "report.json").read_text())
    assert (rep["ok"], rep["exit_code"], rep["passed"]) == (False, 12, False)
    failed = rep["steps"][-1]
    assert failed["step"] == "models" and failed["error"]["exit_code"] == 12
    assert failed["failure"] == {"stage": "models", "error": error[len("error: "):]}
    assert failed["error"]["details"]["errno"] == {"file-size-limit": "EFBIG", "read-only-models-dir": (
        "EROFS" if os.geteuid() == 0 else "EACCES")}.get(how, "ENOSPC")
    md = (keep / "report.md").read_text()
    assert md.startswith("# zpatch verify: FAILED at models (exit 12)\n") and "| models | FAILED |" in md
    js = zpatch(env, "verify", "--models", d, "--manifest", manifest, "--keep", keep, "--json", **kw)
    res = json.loads(js.stdout)
    assert js.returncode == 12 and [s["step"] for s in res["steps"]] == BEFORE_MODELS + ["models"]


def test_reusing_a_keep_folder_keeps_what_is_not_verify_s_and_its_rerun_line_works_pasted(
        upstreams, hub, env, manifest, tmp_path):
    keep = tmp_path / "v"
    d = keep / "models"           # the models inside the kept folder: a rerun must not download them again
    no_python = tmp_path / "no-such" / "python"        # the smoke fails at once: this test is about the folder
    r = zpatch({**env, "ZPATCH_SMOKE_PYTHON": str(no_python)}, "verify", "--models", d, "--manifest", manifest,
               "--keep", keep)
    assert r.returncode == 8, r.stdout + r.stderr
    assert "ok   models" in r.stdout and "FAIL smoke" in r.stdout
    (keep / "notes.txt").write_text("the user's\n")
    (keep / "ComfyUI" / "stale-file").write_text("verify's own: replaced\n")
    models_before = {k: v for k, v in snapshot(d).items() if k != RECORD}    # the record is written again
    record_before = (d / RECORD).read_bytes()

    md = (keep / "report.md").read_text()
    rerun = next(l for l in md.splitlines() if l.startswith("- Rerun: `"))[len("- Rerun: `"):-1]
    # make gpu-smoke passes the interpreter in the environment: the Rerun line names it
    assert f"--python {no_python}" in rerun and f"--keep {keep}" in rerun, rerun
    hub.log.clear()
    again = subprocess.run(["bash", "-c", rerun], capture_output=True, text=True, env=env, cwd=tmp_path,
                           stdin=subprocess.DEVNULL, timeout=300)     # pasted elsewhere, without the variable
    assert again.returncode == 8, again.stdout + again.stderr
    assert f"smoke python not found: {no_python} (from --python)" in again.stderr
    assert hub.log == []                                    # not even a HEAD: the files were there, verified
    assert {k: v for k, v in snapshot(d).items() if k != RECORD} == models_before
    assert (d / RECORD).read_bytes() == record_before
    assert (keep / "notes.txt").read_text() == "the user's\n"
    assert not (keep / "ComfyUI" / "stale-file").exists() and (keep / "ComfyUI" / "comfy").is_dir()
    steps = json.loads((keep / "report.json").read_text())["steps"]
    assert [s["step"] for s in steps] == BEFORE_MODELS + ["models", "smoke"]
    assert {f["state"] for f in steps[-2]["data"]["files"]} == {"present"}


def test_a_models_dir_verify_would_replace_is_refused(env, manifest, tmp_path):
    keep = tmp_path / "v"
    r = zpatch(env, "verify", "--models", keep / "smoke" / "models", "--manifest", manifest, "--keep", keep)
    assert r.returncode == 2, r.stderr
    error, _ = one_error(r.stderr)
    assert error == (f"error: --models {keep / 'smoke' / 'models'}: inside {keep / 'smoke'}, which each verify "
                     f"--keep {keep} replaces")
    assert not keep.exists()


def test_a_models_dir_verify_would_replace_is_refused_however_a_link_spells_it(env, manifest, tmp_path):
    keep = tmp_path / "v"
    (keep / "smoke").mkdir(parents=True)               # a previous run's smoke folder, which the next replaces
    (tmp_path / "link").symlink_to(keep)
    (tmp_path / "mlink").symlink_to(keep / "smoke")
    for models, k in ((tmp_path / "link" / "smoke" / "models", keep), (keep / "smoke" / "models", tmp_path / "link"),
                      (tmp_path / "mlink", keep)):
        r = zpatch(env, "verify", "--models", models, "--manifest", manifest, "--keep", k)
        assert r.returncode == 2 and "which each verify --keep" in r.stderr, (models, k, r.stderr)
    assert os.listdir(keep) == ["smoke"] and os.listdir(keep / "smoke") == []


def test_a_malformed_manifest_is_reported_before_the_checkout(env, tmp_path):
    manifest = tmp_path / "models.toml"
    manifest.write_text("version = 1\n[model.vae]\nname = 3\n", encoding="utf-8")
    keep = tmp_path / "v"
    r = zpatch(env, "verify", "--models", tmp_path / "models", "--manifest", manifest, "--keep", keep)
    assert r.returncode == 3, r.stdout + r.stderr
    error, _ = one_error(r.stderr)
    assert error.startswith(f"error: {manifest}: model.vae.name: ")
    assert r.stdout == "" and not keep.exists() and not (tmp_path / "models").exists()


def test_device_cuda_without_cuda_fails_before_the_models_step_downloads_anything(hub, env, manifest, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("no torch in the interpreter running the tests")
    if probe.stdout.strip() == "True":
        pytest.skip("this machine has CUDA: the preflight passes")
    keep, d = tmp_path / "v", tmp_path / "models"
    r = zpatch({**env, "ZPATCH_SMOKE_PYTHON": sys.executable}, "verify", "--device", "cuda", "--models", d,
               "--manifest", manifest, "--keep", keep)
    assert r.returncode == 8, r.stdout + r.stderr
    error, hint = one_error(r.stderr)
    assert error == (f"error: smoke python {sys.executable} is not usable: RuntimeError: --device cuda but "
                     "torch.cuda.is_available() is False")
    assert "nothing was downloaded" in hint
    assert hub.log == [] and not d.exists() and not keep.exists() and r.stdout == ""


def test_sigterm_of_verify_gives_verify_s_own_hint(upstreams, env, tmp_path):
    with Held(cli("verify", "--no-smoke", "--keep", tmp_path / "v"), "verify-check", env=env, cwd=ROOT) as held:
        held.proc.send_signal(signal.SIGTERM)
        r = held.release()
    assert r.returncode == 143, r.stderr
    error, hint = one_error(r.stderr)
    assert error == "error: terminated (SIGTERM)" and hint.startswith("hint: rerun verify") and "apply" not in hint


def test_a_fetch_killed_at_each_write_leaves_only_whole_verified_files_and_the_rerun_finishes(hub, env, manifest,
                                                                                            tmp_path):
    """SIGKILL at every write point of `models fetch`, one run each: what DIR holds is always whole
    verified files and a readable record (or none), and the next run ends in the same DIR an
    uninterrupted fetch makes, temporary files of the killed runs included in what it cleans up."""
    want = {name: data for name, _, _, data in FILES.values()}
    clean = tmp_path / "clean"
    assert zpatch(env, "models", "fetch", clean, "--manifest", manifest).returncode == 0
    expected = sorted(os.listdir(clean))
    n = 0
    while True:
        n += 1
        d = tmp_path / f"k{n}"
        r = zpatch({**env, "ZPATCH_TEST_KILL_AT": str(n)}, "models", "fetch", d, "--manifest", manifest)
        if r.returncode == 0:
            break
        assert r.returncode == -9, (n, r.stderr)
        for name in os.listdir(d) if d.exists() else []:
            if name in want:
                assert (d / name).read_bytes() == want[name], (n, name)
            elif name == RECORD:
                json.loads((d / name).read_text())
        again = zpatch(env, "models", "fetch", d, "--manifest", manifest)
        assert again.returncode == 0, (n, again.stderr)
        assert sorted(os.listdir(d)) == expected, n
        assert {k: (d / k).read_bytes() for k in want} == want
    assert n > 4                      # every file's placement and the record's write were points
