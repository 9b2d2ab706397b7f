"""`zpatch models fetch DIR`: the field's model files (overlay/models.toml) from the Hugging Face Hub,
verified, laid out flat in DIR under the names `zpatch smoke --models DIR` looks for
(smoke/harness.py REAL_MODEL_FILES).

huggingface_hub does the transfer (its cache, resume within a run, progress bars, HF_ENDPOINT,
HF_HUB_OFFLINE, HF_TOKEN) and is imported only here, only when a download is needed. zpatch checks
what it got: size and sha256 against the manifest, or, where the manifest pins none, against what the
first fetch saw (DIR/.zpatch-models.json: trust on first use, never written into the overlay).
A file reaches DIR only verified and only whole: a hard link to the cache's blob (or a copy when DIR
is on another file system), made under a temporary name and renamed. One fetch at a time fills a DIR
(a flock on the folder: a second exits BUSY), and a record that is not what zpatch wrote is refused,
never guessed at."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import durable, locks
from .errors import Exit, ZpatchError, from_oserror

MANIFEST = Path("zimage_patcher") / "overlay" / "models.toml"     # relative to the overlay root
RECORD = ".zpatch-models.json"                                     # inside DIR
_FIELDS = {"name", "repo_id", "revision", "filename", "size", "sha256"}
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MANIFEST_MAX = 1 << 20          # bytes: a manifest lists a few files; more is not one (or is /dev/zero)
RECORD_MAX = 4 << 20            # bytes: the record holds a few lines per file


def _read_regular(path: Path, limit: int) -> bytes:
    """PATH's bytes, when it is a regular file of at most LIMIT bytes. Opened without blocking (a FIFO
    would wait for a writer forever) and checked before a byte is read (/dev/zero never ends):
    ValueError says what it is instead. OSError as open(2) and read(2) raise it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a FIFO, a socket or a device)")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than the {limit} such a file can hold")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:         # grew while read
            raise ValueError(f"more than the {limit} bytes such a file can hold")
        return data
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Model:
    role: str
    name: str
    repo_id: str
    revision: str
    filename: str
    size: int | None = None
    sha256: str | None = None

    @property
    def source(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "filename": self.filename}


# ---------------------------------------------------------------- the manifest

def load_manifest(path: Path) -> list[Model]:
    """The manifest's models, in file order; a ZpatchError (BAD_OVERLAY) naming the file and field."""
    def bad(what: str, hint: str = "fix models.toml (its header says what each field holds)") -> ZpatchError:
        return ZpatchError(f"{path}: {what}", Exit.BAD_OVERLAY, hint=hint)
    try:
        data = tomllib.loads(_read_regular(path, MANIFEST_MAX).decode("utf-8"))
    except FileNotFoundError:
        raise bad("no such manifest", "pass --manifest PATH, or run inside the zimage-patcher overlay") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise bad(f"not valid TOML ({e})") from None
    except ValueError as e:           # a FIFO, /dev/zero, a folder: refused before anything is read
        raise bad(f"not a models manifest: {e}", "pass --manifest the path of a models.toml file") from None
    except RecursionError:
        raise bad("nested too deeply to be a models manifest") from None
    except OSError as e:
        raise from_oserror(e, "cannot read the manifest", code=Exit.BAD_OVERLAY) from None
    if data.get("version") != 1:
        raise bad(f"version: {data.get('version')!r}, expected 1")
    if set(data) - {"version", "model"}:
        raise bad(f"unknown key {sorted(set(data) - {'version', 'model'})[0]!r}")
    tables = data.get("model")
    if not isinstance(tables, dict) or not tables:
        raise bad("no [model.ROLE] tables")
    models, names = [], set()
    for role, t in tables.items():
        where = f"model.{role}"
        if not isinstance(t, dict):
            raise bad(f"{where}: not a table")
        if set(t) - _FIELDS:
            raise bad(f"{where}: unknown field {sorted(set(t) - _FIELDS)[0]!r}")
        for key in ("name", "repo_id", "revision", "filename"):
            if not isinstance(t.get(key), str) or not t[key]:
                raise bad(f"{where}.{key}: missing or not a string")
        if not _NAME.fullmatch(t["name"]):       # a plain file name: nothing lands outside DIR
            raise bad(f"{where}.name: {t['name']!r} is not a plain file name")
        if t["name"] in names:
            raise bad(f"{where}.name: {t['name']!r} is named twice")
        names.add(t["name"])
        if not _REPO_ID.fullmatch(t["repo_id"]):
            raise bad(f"{where}.repo_id: {t['repo_id']!r} is not owner/name")
        parts = t["filename"].split("/")
        if t["filename"].startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise bad(f"{where}.filename: {t['filename']!r} is not a path inside the repository")
        size = t.get("size")
        if size is not None and (type(size) is not int or size <= 0):
            raise bad(f"{where}.size: {size!r} is not a positive number of bytes")
        sha = t.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise bad(f"{where}.sha256: {sha!r} is not 64 lowercase hex digits")
        models.append(Model(role, t["name"], t["repo_id"], t["revision"], t["filename"], size, sha))
    return models


# ---------------------------------------------------------------- verifying

def _sha256(path: Path) -> str:
    with open(path, "rb") as f:       # streamed: the files are gigabytes
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _damaged(path: Path, why: str) -> ZpatchError:
    """The record cannot be trusted: say so, change nothing, and give the one way out (the record is
    zpatch's own; moved aside, the next fetch records what it verifies, as at a first fetch)."""
    q = shlex.quote(str(path))
    return ZpatchError(f"{path}: damaged: {why}", Exit.BAD_OVERLAY,
                       hint=f"move it aside (mv {q} {q}.bak), then run again: the next fetch records the "
                            "files' hashes anew")


def _valid_entry(e) -> bool:
    """One file's record as _one writes it: a wrong type here would make every later check fail
    (a refusal whose hint, followed, ends in the same refusal), so it is the record that is damaged."""
    return (isinstance(e, dict)
            and all(isinstance(e.get(k), str) for k in ("repo_id", "revision", "filename"))
            and type(e.get("size")) is int and e["size"] >= 0
            and isinstance(e.get("sha256"), str) and _SHA256.fullmatch(e["sha256"]) is not None
            and ("stat" not in e or (isinstance(e["stat"], list) and len(e["stat"]) == 3
                                     and all(type(v) is int for v in e["stat"]))))


def _read_record(dest: Path) -> dict:
    """What DEST's record holds ({name: entry}); {} when there is none yet. Anything else than the
    record _write_record writes (not JSON, wrong types, a folder, a FIFO...) is a ZpatchError."""
    path = dest / RECORD
    try:
        raw = _read_regular(path, RECORD_MAX)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise _damaged(path, str(e)) from None
    except OSError as e:
        raise from_oserror(e, "cannot read the record of verified files", path=path,
                           otherwise=_damaged(path, e.strerror or str(e))) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _damaged(path, "not JSON") from None
    files = data.get("files", {}) if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise _damaged(path, "not the object `zpatch models fetch` writes ({\"files\": {NAME: ...}})")
    bad = next((name for name, e in files.items() if not _valid_entry(e)), None)
    if bad is not None:
        raise _damaged(path, f"the entry of {bad!r} lacks a field or has one of the wrong type")
    return files


def _write_record(dest: Path, files: dict) -> None:
    """Temp, fsync, rename. The temp file's name is this run's own: two fetches into one DIR (the second
    refused by the lock, or one whose killed run left its temp file) never trip on each other's."""
    data = {"comment": "written by `zpatch models fetch`: what each file was when first fetched; "
                       "copy size and sha256 into models.toml to pin them", "files": files}
    path = dest / RECORD
    fd, tmp = tempfile.mkstemp(prefix=f".{RECORD}.", suffix=".tmp", dir=dest)
    durable.fill_and_rename(fd, Path(tmp), path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
                            mode=0o644)
    durable.sync_dirs([dest])


# ---------------------------------------------------------------- downloading

def _is_network_error(e: BaseException) -> bool:
    """A transport failure of huggingface_hub's HTTP client (httpx, httpx2 or requests by version)."""
    return type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3") or \
        isinstance(e, (ConnectionError, TimeoutError))


def _download(m: Model, *, offline: bool, progress: bool, manifest: Path) -> tuple[Path, bool]:
    """The cached file of M (downloaded unless cached) and whether it was cached before."""
    if offline:      # before the import, which reads it: then huggingface_hub makes no request at all
        os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import disable_progress_bars
    if not progress:           # -q and --json: nothing on the terminal but the result
        disable_progress_bars()
    offline = offline or constants.is_offline_mode()
    where = f"{m.repo_id}@{m.revision}:{m.filename}"
    login = "`hf auth login` (or set HF_TOKEN)"
    cached = isinstance(try_to_load_from_cache(m.repo_id, m.filename, revision=m.revision), str)
    try:
        path = hf_hub_download(repo_id=m.repo_id, filename=m.filename, revision=m.revision,
                               local_files_only=offline)
        return Path(path), cached
    except GatedRepoError as e:
        status = getattr(e.response, "status_code", "?")
        raise ZpatchError(f"{m.name}: {m.repo_id} is a gated repository (HTTP {status}): it needs an account "
                          "that accepted its terms", Exit.UNREACHABLE,
                          hint=f"accept them on {constants.ENDPOINT}/{m.repo_id}, then {login}") from None
    except RevisionNotFoundError:
        raise ZpatchError(f"{m.name}: {m.repo_id} has no revision {m.revision!r}", Exit.UNREACHABLE,
                          hint=f"check revision in {manifest}") from None
    except RemoteEntryNotFoundError:
        raise ZpatchError(f"{m.name}: {m.repo_id}@{m.revision} has no file {m.filename!r}", Exit.UNREACHABLE,
                          hint=f"check filename in {manifest}") from None
    except RepositoryNotFoundError:
        raise ZpatchError(f"{m.name}: repository {m.repo_id} not found, or private", Exit.UNREACHABLE,
                          hint=f"check repo_id in {manifest}; a private or gated one needs {login}") from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise ZpatchError(f"{m.name}: {constants.ENDPOINT} refused {where} (HTTP {status}: gated or private)",
                              Exit.UNREACHABLE, hint=f"accept its terms on {constants.ENDPOINT}/{m.repo_id}, "
                                                     f"then {login}") from None
        raise ZpatchError(f"{m.name}: {constants.ENDPOINT} answered HTTP {status} for {where}", Exit.UNREACHABLE,
                          hint="retry later; HF_ENDPOINT chooses another server") from None
    except LocalEntryNotFoundError as e:
        if offline:
            raise ZpatchError(f"{m.name}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and offline",
                              Exit.UNREACHABLE, hint="run once without --offline (and HF_HUB_OFFLINE) to download it"
                              ) from None
        cause = e.__cause__ or e
        raise ZpatchError(f"{m.name}: cannot reach {constants.ENDPOINT} ({type(cause).__name__}) and it is not cached",
                          Exit.UNREACHABLE, hint="check the network or HF_ENDPOINT, then run again") from None
    except OSError as e:     # a full disk stays FILESYSTEM; anything else is the transfer (a size mismatch...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        # a write names no file: the download goes into the Hugging Face cache, the file system that refused
        raise from_oserror(e, f"cannot store the download of {m.name}", path=e.filename or constants.HF_HUB_CACHE,
                           otherwise=ZpatchError(
            f"{m.name}: download of {where} failed: {first}", Exit.UNREACHABLE,
            hint="run again: the transfer restarts")) from None
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise ZpatchError(f"{m.name}: download of {where} from {constants.ENDPOINT} failed ({type(e).__name__}: {e})",
                          Exit.UNREACHABLE, hint="check the network or HF_ENDPOINT, then run again") from None


def _evict(pointer: Path) -> None:
    """Drop a download that failed verification from the cache, so the next run fetches it anew."""
    for p in {pointer.resolve(), pointer}:
        try:
            p.unlink()
        except OSError:
            pass


def _place(blob: Path, target: Path) -> str:
    """BLOB as TARGET, never half there: a hard link (no second copy of gigabytes) or, across file
    systems, a copy, under a temporary name renamed into place. Returns "linked" or "copied"."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(blob, tmp)
            how = "linked"
        except OSError as e:     # EXDEV, or a file system without hard links (or one that refuses them: EPERM)
            if e.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT):   # DIR refused: a copy would too
                raise from_oserror(e, "cannot place the verified file", path=target, code=Exit.FILESYSTEM) from None
            try:
                shutil.copyfile(blob, tmp)
                durable.sync_files([tmp])
            except OSError as e:  # named TARGET, on the file system that refused (copyfile names the source)
                raise from_oserror(e, "cannot copy the verified file into place", path=target,
                                   code=Exit.FILESYSTEM) from None
            how = "copied"
        os.replace(tmp, target)
        durable.sync_dirs([target.parent])
        return how
    except OSError as e:      # named TARGET, not the temporary name: the file and the folder the user knows
        raise from_oserror(e, "cannot place the verified file", path=target, code=Exit.FILESYSTEM) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:       # a read-only DIR refuses even to unlink what is not there (EROFS)
            pass


# ---------------------------------------------------------------- the command

def check_dir(dest: Path) -> Path:
    """DEST, absolute, when it is or can become a folder: a ZpatchError (USAGE) when it, or the nearest
    part of it that exists, is a file. `verify --models` asks before its first step."""
    dest = Path(dest).absolute()
    there = next((p for p in (dest, *dest.parents) if os.path.lexists(p)), None)
    if there is not None and not there.is_dir():
        where = "" if there == dest else f" ({there} is a file)"
        raise ZpatchError(f"{dest}: not a directory{where}", Exit.USAGE, hint="name a folder for the model files")
    return dest


class _Held:
    """DEST held for this fetch: flock on the folder itself (nothing is created in it; the kernel drops
    the lock when the process dies). Two fetches into one DIR would download the same gigabytes twice
    and each rewrite the record from what it read before the other's files were in it."""

    def __init__(self, dest: Path):
        self.dest, self.fd = dest, None

    def __enter__(self) -> "_Held":
        for _ in range(3):
            self.dest.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                locks.folder(fd, self.dest, busy=lambda: ZpatchError(
                    f"{self.dest}: another zpatch is fetching model files into it", Exit.BUSY,
                    hint="wait for it to finish, then rerun (what it verified is kept)"))
            except ZpatchError:
                os.close(fd)
                raise
            try:                  # the folder a fetch that failed at its first file removed as we opened it
                same = os.path.samestat(os.fstat(fd), os.stat(self.dest))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)
        raise ZpatchError(f"{self.dest}: removed and made again while this fetch started", Exit.BUSY,
                          hint="another zpatch is fetching into it: wait for it to finish, then rerun")

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def fetch(manifest: Path, dest: Path, *, only: str | None = None, offline: bool = False,
          progress: bool = True) -> dict:
    """Fetch, verify and lay out the manifest's files (or the one named ONLY: its name or role) in DEST.
    Returns {dir, manifest, record, files[]}; raises ZpatchError (see the command's help for the codes)."""
    models = load_manifest(manifest)
    if only is not None:
        models = [m for m in models if only in (m.name, m.role)]
        if not models:
            choices = ", ".join(m.name for m in load_manifest(manifest))
            raise ZpatchError(f"--only {only}: no such model in {manifest}", Exit.USAGE, hint=f"one of: {choices}")
    dest = check_dir(dest)
    try:
        return _fetch(manifest, dest, models, offline=offline, progress=progress)
    except OSError as e:     # the file system refused (FILESYSTEM), or DIR cannot be what it must: named, exit 12
        raise from_oserror(e, code=Exit.FILESYSTEM,
                           hint=f"check {dest} and the path to it, then rerun (what was verified is kept)") from None


def _clean_leftovers(dest: Path) -> None:
    """Remove the temporary files of a fetch that was killed here (the record's `.<record>.*.tmp`, a
    placement's `.<name>.<pid>.part`): DEST is held, so no live fetch owns one."""
    for entry in os.scandir(dest):
        n = entry.name
        if entry.is_file(follow_symlinks=False) and (
                (n.startswith(f".{RECORD}.") and n.endswith(".tmp")) or (n.startswith(".") and n.endswith(".part"))):
            os.unlink(entry.path)


def _fetch(manifest: Path, dest: Path, models: list[Model], *, offline: bool, progress: bool) -> dict:
    created = not dest.exists()
    with _Held(dest):
        _clean_leftovers(dest)
        record = _read_record(dest)        # damaged: refused before anything is written
        durable.fault_point("models-fetch")     # tests hold a fetch here, DIR locked, nothing fetched yet
        files = []
        try:
            for m in models:
                files.append(_one(m, dest, record, offline=offline, progress=progress, manifest=manifest))
                _write_record(dest, record)        # after each file: a later failure keeps what was verified
        except BaseException:
            if created and not files:          # a first file that failed leaves no empty DIR behind
                try:
                    dest.rmdir()
                except OSError:
                    pass
            raise
    return {"dir": str(dest), "manifest": str(manifest), "record": str(dest / RECORD), "files": files}


def _aside(path: Path) -> str:
    """The way out for a file of the user's in the way: moved aside, never deleted (it may be gigabytes
    they want, or the right file under a manifest that is wrong)."""
    q = shlex.quote(str(path))
    return f"move it aside (mv {q} {q}.bak)"


def _one(m: Model, dest: Path, record: dict, *, offline: bool, progress: bool, manifest: Path) -> dict:
    target = dest / m.name
    seen = record.get(m.name)
    if not (isinstance(seen, dict) and all(seen.get(k) == v for k, v in m.source.items())):
        seen = None                  # recorded for another source: the manifest changed since
    if m.sha256:                     # the manifest pins it; else what the first fetch recorded
        want_size, want_sha = m.size, m.sha256
    else:
        want_size, want_sha = m.size or (seen or {}).get("size"), (seen or {}).get("sha256")
    result = {"name": m.name, "role": m.role, **m.source, "path": str(target), "pinned": m.sha256 is not None,
              "recorded": False}

    def wrong(size: int, sha: str | None) -> bool:
        return (want_size is not None and size != want_size) or (want_sha is not None and sha != want_sha)

    def refuse(what: str, size: int, sha: str | None, hint: str) -> ZpatchError:
        against = "the manifest's pins" if m.sha256 else f"what {RECORD} recorded at the first fetch"
        want = ", ".join([f"{want_size} bytes"] * (want_size is not None) + [f"sha256 {want_sha}"] * bool(want_sha))
        got = f"{size} bytes" + (f", sha256 {sha}" if sha else "")
        return ZpatchError(f"{what}: {got}, not {against} ({want})", Exit.ENVIRONMENT, hint=hint)

    if target.is_file() and want_sha:
        # Already there: hashed again only when it changed since it was verified (git's stat trick).
        if seen and seen.get("stat") == _stat_key(target) and seen.get("sha256") == want_sha:
            size, sha = seen["size"], want_sha
        else:
            size, sha = target.stat().st_size, _sha256(target)
        if wrong(size, sha):
            raise refuse(str(target), size, sha, f"it is not the file the manifest names: {_aside(target)}, "
                                                 "then run again")
        record[m.name] = {**m.source, "size": size, "sha256": sha, "stat": _stat_key(target)}
        return {**result, "size": size, "sha256": sha, "state": "present"}

    pointer, cached = _download(m, offline=offline, progress=progress, manifest=manifest)
    blob = pointer.resolve()
    size = blob.stat().st_size
    sha = _sha256(blob) if want_size is None or size == want_size else None    # a wrong size needs no hash
    if wrong(size, sha):
        _evict(pointer)
        hint = (f"it was not kept, nor cached: run again for a fresh download; if {m.repo_id} changed the file "
                "on purpose, " + (f"update {manifest.name}" if m.sha256 else
                                  f"{_aside(dest / RECORD)} to accept it") + " (and pin a commit as its revision)")
        raise refuse(f"{m.name} from {m.repo_id}@{m.revision}", size, sha, hint)
    if target.is_file():             # a file put there by hand, no hash known: it must be the same bytes
        if _sha256(target) != sha:
            raise ZpatchError(f"{target}: exists and differs from {m.repo_id}@{m.revision}:{m.filename} "
                              f"({size} bytes, sha256 {sha})", Exit.ENVIRONMENT,
                              hint=f"{_aside(target)}, then run again")
        state = "present"
    else:
        result["placed"] = _place(blob, target)
        state = "cached" if cached else "fetched"
    result["recorded"] = not m.sha256 and not (seen or {}).get("sha256")
    record[m.name] = {**m.source, "size": size, "sha256": sha, "stat": _stat_key(target)}
    return {**result, "size": size, "sha256": sha, "state": state}
