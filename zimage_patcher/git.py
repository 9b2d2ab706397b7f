"""The only module that runs git. Everything else asks it, so tests and errors see one seam."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from .durable import fault_point, sync_files
from .errors import Exit, GitError, ZpatchError, from_oserror, last_line

# Stable output regardless of the user's locale; the user's global config stays in force
# on purpose, because `url.<mirror>.insteadOf` is how offline mirrors are plugged in.
# GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the user's index; a kill would leave
# index.lock behind and `status` is promised read-only.
# GIT_LITERAL_PATHSPECS: zpatch names files, never patterns; without it a file called ":x.py" is read
# as pathspec magic and "[ab].py" as a glob that matches a.py
_ENV = {"LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0",
        "GIT_LITERAL_PATHSPECS": "1"}
# Inside a git hook, `git rebase -x` or some CI steps these point git at another repository;
# zpatch always names its repository by cwd. A deny-list, not an allow-list: the user's
# GIT_CONFIG_GLOBAL (a mirror's insteadOf) must survive, and scratch indexes pass GIT_INDEX_FILE.
_SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
          "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
          "GIT_QUARANTINE_PATH", "GIT_REPLACE_REF_BASE", "GIT_GRAFT_FILE", "GIT_SHALLOW_FILE",
          "GIT_GLOB_PATHSPECS", "GIT_NOGLOB_PATHSPECS", "GIT_ICASE_PATHSPECS")
_TRACE = bool(os.environ.get("ZPATCH_TRACE"))
# `git apply` reads apply.whitespace and apply.ignoreWhitespace from the user's config, before the
# command line (an invalid value fails every apply) and beside it (ignoreWhitespace=change matches
# context that differs in whitespace): run() sets both on every apply's command line, so the overlay's
# patches apply the same for every maintainer, and as hunks.py applies them
_APPLY_NEUTRAL = ("-c", "apply.whitespace=nowarn", "-c", "apply.ignoreWhitespace=no")


# The one spelling of the options that make `git format-patch` output byte-stable: no commit id,
# no version signature, full blob ids (3-way applies need them), no diffstat, "[PATCH]" unnumbered.
# export and the test fixtures use it.
FORMAT_PATCH_OPTIONS = ("--zero-commit", "--no-signature", "--full-index", "--no-stat", "--no-numbered")


class GitResult:
    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        return last_line(self.stderr)


# The git commands that change a user's repository (not a scratch index or object store): a crash
# test may kill zpatch after each one, to prove that the next command finishes what it began.
_CHANGES_A_REPOSITORY = {"switch", "checkout", "clone", "branch", "update-ref", "notes", "config", "sparse-checkout",
                         "remote", "add", "rm", "reset"}


def _subcommand(args: list[str]) -> str | None:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-c", "-C") else 1
    return args[i] if i < len(args) else None


_EXE: dict[str | None, str | None] = {}     # $PATH -> git found there: one PATH search per process


def _git_exe() -> str:
    path = os.environ.get("PATH")
    if path not in _EXE:
        import shutil
        _EXE[path] = shutil.which("git")
    exe = _EXE[path]
    if exe is None:
        raise ZpatchError("git is not installed or not on PATH", Exit.ENVIRONMENT,
                          hint="install git 2.25 or newer")
    return exe


def _stop(proc) -> None:
    """End a git that zpatch no longer waits for (a timeout, Ctrl-C, SIGTERM): SIGTERM first, which git
    answers by removing its lock files (a SIGKILL would leave index.lock behind), SIGKILL if it lingers."""
    import subprocess
    try:
        proc.terminate()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except BaseException:      # a second signal while waiting: do not leave git running
        proc.kill()
        raise


def run(args: list[str], cwd: Path | str | None = None, *, check: bool = True,
        input: str | bytes | None = None, env: dict | None = None, timeout: float | None = None,
        stream_stderr: bool = False) -> GitResult:
    """Run `git ARGS` in CWD; raise ZpatchError on failure when `check` (GitError: its exit code says
    why git failed, errors.classify_git).

    stream_stderr lets git's own progress meter reach the terminal (clones, fetches).
    """
    import subprocess      # here, not at the top: a command that runs no git (a no-op apply) never loads it
    if _subcommand(args) == "apply":
        args = [*_APPLY_NEUTRAL, *args]
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    full_env.update(_ENV)
    if env:
        full_env.update(env)
    text = not isinstance(input, bytes)
    exe = _git_exe()
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            [exe, *args], cwd=cwd, env=full_env, stdin=None if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=None if stream_stderr else subprocess.PIPE,
            text=text, errors="surrogateescape" if text else None)
    except OSError as e:
        if cwd is not None and e.filename == cwd:     # the chdir failed: the path the user gave
            raise from_oserror(e, "cannot run git there", path=cwd, code=Exit.BAD_CHECKOUT,
                               hint="check the path: it must be an existing directory") from None
        raise ZpatchError(f"{exe}: git cannot be run ({e.strerror or e})", Exit.ENVIRONMENT,
                          hint="reinstall git 2.25 or newer, or put a working git first on PATH") from None
    with proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise ZpatchError(f"git {' '.join(args[:2])} timed out after {timeout:.0f}s", Exit.UNREACHABLE,
                              hint="check the network or use a url.<mirror>.insteadOf mirror") from None
        except BaseException:          # Ctrl-C, SIGTERM (errors.Terminated): git cleans up, then we do
            _stop(proc)
            raise
    if _TRACE:   # ZPATCH_TRACE=1: every git call and its cost, like GIT_TRACE
        print(f"zpatch: git {' '.join(args)}  ({(time.perf_counter() - t0) * 1000:.1f} ms, rc {proc.returncode})",
              file=sys.stderr)
    out = stdout if text else stdout.decode("utf-8", "surrogateescape")
    err = stderr or ""
    if not text and isinstance(err, bytes):
        err = err.decode("utf-8", "surrogateescape")
    result = GitResult(proc.returncode, out, err)
    if _subcommand(args) in _CHANGES_A_REPOSITORY:
        fault_point()                  # the crash tests kill between git steps too, not only between writes
    if check and not result.ok:
        raise GitError(args, cwd, result.returncode, err)
    return result


def toplevel(path: Path) -> Path | None:
    """The work tree root that git would act on for PATH, or None when PATH is in no repository."""
    r = run(["rev-parse", "--show-toplevel"], cwd=path, check=False)
    return Path(r.stdout.strip()).resolve() if r.ok else None


def git_dir(path: Path) -> Path:
    r = run(["rev-parse", "--absolute-git-dir"], cwd=path)
    return Path(r.stdout.strip())


def head(path: Path) -> str | None:
    r = run(["rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=path, check=False)
    return r.stdout.strip() if r.ok else None


def has_commit(repo: Path, commit: str) -> bool:
    return run(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, check=False).ok


def tree_entries(repo: Path, rev: str, paths: list[str]) -> dict[str, tuple[str, str]]:
    """PATH -> (mode, blob id) at REV (paths absent at REV are left out)."""
    out = run(["ls-tree", "-z", "--full-tree", rev, "--", *paths], cwd=repo).stdout if paths else ""
    entries = {}
    for entry in out.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            mode, _kind, blob = meta.split()
            entries[path] = (mode, blob)
    return entries


def tree_blobs(repo: Path, rev: str, paths: list[str]) -> dict[str, str]:
    """Blob ids of PATHS at REV (paths absent at REV are left out)."""
    return {p: e[1] for p, e in tree_entries(repo, rev, paths).items()}


def changed_paths(repo: Path, paths: list[str] | None = None) -> dict[str, str]:
    """Tracked paths whose work tree or index differs from HEAD, and untracked ones, with their
    two-letter porcelain status. Restricted to PATHS when given."""
    args = ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"]
    if paths is not None:
        if not paths:
            return {}
        args += ["--", *paths]
    out = run(args, cwd=repo).stdout
    result = {}
    for entry in out.split("\0"):
        if entry:
            result[entry[3:]] = entry[:2]
    return result


def hash_object_bytes(data: bytes) -> str:
    """git's blob id of DATA, computed here to spare a process (the re-apply fast path)."""
    import hashlib
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def show_blob(repo: Path, rev: str, path: str, env: dict | None = None) -> bytes | None:
    """The exact bytes of PATH at REV ("" for the index), CRLF intact; None when absent."""
    r = run(["cat-file", "blob", f"{rev}:{path}"], cwd=repo, check=False, env=env, input=b"")
    return r.stdout.encode("utf-8", "surrogateescape") if r.ok else None


# ---------------------------------------------------------------- reading .git without git

def git_dir_of(repo: Path) -> Path | None:
    """The git dir of REPO without spawning git: .git is a directory or a 'gitdir:' file."""
    dot = repo / ".git"
    try:
        if dot.is_dir():
            return dot if (dot / "HEAD").exists() else None   # an empty .git is no repository
        if dot.is_file():
            text = dot.read_bytes().decode("utf-8", "replace").strip()
            if text.startswith("gitdir:"):
                p = Path(text[len("gitdir:"):].strip())
                return p if p.is_absolute() else (repo / p).resolve()
    except (OSError, ValueError):
        pass
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def read_head(repo: Path) -> str | None:
    """HEAD's commit read from files (the no-op fast path); None whenever that needs git
    (worktrees, reftable, another hash format, or anything unexpected in the files)."""
    gd = git_dir_of(repo)
    head = _read_text(gd / "HEAD") if gd else None
    if head is None:
        return None
    if head.startswith("ref: "):
        ref = head[5:]
        if ".." in ref or not ref.startswith("refs/"):
            return None
        loose = _read_text(gd / ref) if (gd / ref).is_file() else None
        if loose is not None:
            head = loose
        else:
            packed = _read_text(gd / "packed-refs") or ""
            head = next((l.split()[0] for l in packed.splitlines() if l.endswith(" " + ref)), "")
    if len(head) == 40 and all(c in "0123456789abcdef" for c in head):
        return head
    return None


def head_commit(repo: Path) -> str | None:
    return read_head(repo) or head(repo)


def ref_absent(repo: Path, ref: str) -> bool:
    """True when REPO's files show it has no ref REF (no loose file, no packed-refs line), so the
    question needs no git process; False whenever only git can tell (the ref is there, a linked
    worktree, reftable, anything unexpected)."""
    gd = git_dir_of(Path(repo))
    if (gd is None or ".." in ref or not ref.startswith("refs/") or not (gd / "refs").is_dir()
            or os.path.lexists(gd / "commondir") or os.path.lexists(gd / "reftable")
            or os.path.lexists(gd / ref)):
        return False
    try:
        packed = (gd / "packed-refs").read_bytes()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return (b" " + ref.encode() + b"\n") not in packed and not packed.endswith(b" " + ref.encode())


# ---------------------------------------------------------------- scratch indexes

class ScratchIndex:
    """A throw-away index over REPO's object store: apply patches, read the result, never touch
    the work tree or the real index (what `git apply --cached` does under GIT_INDEX_FILE)."""

    def __init__(self, repo: Path, tmpdir: str, *, read_only: bool = False, index: str = "index"):
        """READ_ONLY: new objects go to TMPDIR too (the repository's store is only read), for
        `status` on a read-only checkout and for the cache. INDEX: the index file's name in TMPDIR."""
        self.repo = repo
        self.env = {"GIT_INDEX_FILE": os.path.join(tmpdir, index)}
        self._own = False             # the index file is one start() wrote (entries() can read it)
        self._trees: dict[bytes, str] = {}    # tree objects written here: body -> id
        self._blobs: dict[str, bytes] = {}    # blob contents read or written by apply: id -> bytes
        if read_only:
            objects = _objects_dir(repo) or run(["rev-parse", "--git-path", "objects"], cwd=repo).stdout.strip()
            os.makedirs(os.path.join(tmpdir, "objects", "pack"), exist_ok=True)   # git wants a store that exists
            self.env.update(GIT_OBJECT_DIRECTORY=os.path.join(tmpdir, "objects"),
                            GIT_ALTERNATE_OBJECT_DIRECTORIES=str((Path(repo) / objects).resolve()))

    def run(self, args: list[str], env: dict | None = None, **kw) -> GitResult:
        return run(args, cwd=self.repo, env={**self.env, **(env or {})}, **kw)

    def read_tree(self, rev: str) -> None:
        self.run(["read-tree", rev])
        self._own = False

    def start(self, rev: str, entries: dict[str, tuple[str, str]]) -> None:
        """A new index holding ENTRIES (path -> (mode, blob)), REV's entries of the paths a patch touches:
        what applying it needs, where `read-tree REV` loads the whole tree. Written here when every
        entry is a SHA-1 blob, link or gitlink (a process less per apply, and `entries` reads the result
        back from the file); otherwise `read-tree REV`."""
        data = _index_bytes(entries)
        if data is None:
            self.read_tree(rev)
            return
        with open(self.env["GIT_INDEX_FILE"], "wb") as f:
            f.write(data)
        self._own = True

    def set_blobs(self, entries: dict[str, tuple[str, str] | None]) -> None:
        """Set PATH -> (mode, blob), or remove PATH when None."""
        lines = []
        for path, entry in entries.items():
            if entry is None:
                lines.append(f"0 {'0' * 40}\t{path}")
            else:
                lines.append(f"{entry[0]} {entry[1]}\t{path}")
        if lines:
            self.run(["update-index", "--add", "--remove", "--index-info"], input="\n".join(lines) + "\n")

    def apply(self, patch_files: list[Path], *, reverse: bool = False, three_way: bool = False) -> GitResult:
        """`git apply --cached` of PATCH_FILES (all or nothing). Plain text patches on a scratch store are
        applied here (hunks.py); anything else, and any patch that does not apply, by git."""
        if not reverse and not three_way and self._apply_here(patch_files):
            return GitResult(0, "", "")
        args = ["apply", "--cached", "--whitespace=nowarn"]
        if reverse:
            args.append("--reverse")
        if three_way:
            args.append("--3way")
        return self.run(args + [str(p) for p in patch_files], check=False)

    def _apply_here(self, patch_files: list[Path]) -> bool:
        """Apply PATCH_FILES to the index file as git would, writing the new blobs to the scratch store;
        False (nothing written to the index) when git must: no scratch store, an index this does not
        read, a patch hunks.py does not take or that does not apply, a result that is not the blob the
        patch names although it started from the blob it names."""
        objects = self.env.get("GIT_OBJECT_DIRECTORY")
        found = _read_index(self.env["GIT_INDEX_FILE"], plain=True) if objects else None
        if found is None or any(stage for *_rest, stage in found):
            return False
        from . import hunks        # here: `zpatch apply` on a checkout (no scratch store) never needs it
        diffs = []
        for patch in patch_files:
            try:
                parsed = hunks.parse(Path(patch).read_bytes())
            except OSError:
                return False
            if parsed is None:
                return False
            diffs += parsed
        entries = {path: (mode, blob) for path, mode, blob, _stage in found}
        want = [entries[d.path][1] for d in diffs if d.path in entries and entries[d.path][1] not in self._blobs]
        if want:
            try:
                self._blobs.update(read_blobs(self.repo, list(dict.fromkeys(want)), env=self.env))
            except ZpatchError:
                return False
        written: dict[str, bytes] = {}
        for d in diffs:
            parts = d.path.split("/")
            if any("/".join(parts[:k]) in entries for k in range(1, len(parts))):
                return False                   # a folder of the path is a file, a link or a submodule here
            have = entries.get(d.path)
            if d.new:
                if have is not None or any(p.startswith(d.path + "/") for p in entries):
                    return False               # there already, or a folder here
                before = b""
            else:
                if have is None or have[0] != d.mode:
                    return False
                before = written.get(have[1], self._blobs.get(have[1]))
                if before is None:
                    return False
            after = hunks.apply_hunks(before, d.hunks)
            if after is None or d.delete and after:
                return False
            if d.delete:
                del entries[d.path]
                continue
            oid = hash_object_bytes(after)
            if (d.new or have[1] == d.old_id) and oid != d.new_id:
                return False                   # from the patch's own preimage, it must give its postimage
            written[oid] = after
            entries[d.path] = (d.mode, oid)
        data = _index_bytes(entries)
        if data is None:
            return False
        for oid, body in written.items():
            write_loose_object(objects, "blob", body)
        self._blobs.update(written)
        with open(self.env["GIT_INDEX_FILE"], "wb") as f:
            f.write(data)
        self._own = True
        return True

    def checkout_to(self, prefix: Path, paths: list[str]) -> None:
        """Write PATHS as git would check them out (smudge filters, eol) under PREFIX, one process."""
        if paths:
            self.run(["checkout-index", "-f", "-z", "--stdin", f"--prefix={prefix}/"],
                     input="".join(p + "\0" for p in paths))

    def commit_patches(self, base: str, patches: list[Path]) -> list[str]:
        """Commit PATCHES one after another on BASE without a work tree, as `git am` would (same
        authors, dates and messages; committer zpatch). Blobs missing from files the patches do not
        touch are fine (write-tree --missing-ok), so partial mirrors and blobless clones work.
        Raises CONFLICT naming the first patch that does not apply (series_cache.commit_patches keeps
        the result between runs)."""
        self.read_tree(base)
        parent, out = base, []
        for p in patches:
            r = self.apply([p])
            if not r.ok:
                raise ZpatchError(f"{Path(p).name}: does not apply on {parent[:12]}: {r.last_line()}", Exit.CONFLICT,
                                  hint="`zpatch check` shows the failing hunk")
            tree = self.write_tree(sha1=len(base) == 40)
            parent = self.commit_tree(tree, parent, p)
            out.append(parent)
        return out

    def write_tree(self, *, sha1: bool = False) -> str:
        """`git write-tree --missing-ok`. In a scratch store of its own, for a SHA-1 repository (SHA1),
        the trees are hashed and written here from the index file: a process less per patch of a
        rebase, a drift trial or a publish (tests/test_scratch_index.py compares the ids with git's).
        Anything else (an index version 4, an unmerged entry) goes to git."""
        objects = self.env.get("GIT_OBJECT_DIRECTORY")
        entries = _read_index(self.env["GIT_INDEX_FILE"]) if objects and sha1 else None
        if entries is not None and all(stage == 0 and mode != "040000" for _p, mode, _b, stage in entries):
            return _write_trees(objects, entries, self._trees)
        return self.run(["write-tree", "--missing-ok"]).stdout.strip()

    def commit_tree(self, tree: str, parent: str, patch: Path) -> str:
        """TREE as a commit on PARENT with PATCH's author, date and message, as `git am` makes it.
        In a scratch store of its own the commit object is written here, byte for byte what
        `git commit-tree` writes (tests/test_commit_objects.py compares them): a rebase makes two commits
        per patch, and a process each was a third of its time. Anything unusual goes to git."""
        info, msg = patch_message(self.repo, patch)
        body = commit_object(tree, parent, info, msg)
        objects = self.env.get("GIT_OBJECT_DIRECTORY")
        if body is not None and objects:
            return write_loose_object(objects, "commit", body)
        who = {"GIT_AUTHOR_NAME": info.get("author", ""), "GIT_AUTHOR_EMAIL": info.get("email", ""),
               "GIT_AUTHOR_DATE": info.get("date", ""), "GIT_COMMITTER_DATE": info.get("date", ""), **_IDENTITY}
        return self.run(["commit-tree", "--no-gpg-sign", tree, "-p", parent, "-F", "-"], env=who,
                        input=msg).stdout.strip()

    def format_patch(self, commit: str) -> bytes:
        return format_patch(self.repo, commit, env=self.env)

    def entries(self, paths: list[str]) -> dict[str, tuple[str, str, int]]:
        """PATH -> (mode, blob, stage) for PATHS present in the index (stage > 0: unmerged)."""
        if not paths:
            return {}
        if self._own:
            found = _read_index(self.env["GIT_INDEX_FILE"])
            if found is not None:
                want = set(paths)
                out: dict[str, tuple[str, str, int]] = {}
                for path, mode, blob, stage in found:
                    if path in want and (path not in out or stage > 0):
                        out[path] = (mode, blob, stage)
                return out
        out = {}
        for entry in self.run(["ls-files", "-s", "-z", "--", *paths]).stdout.split("\0"):
            if entry:
                meta, path = entry.split("\t", 1)
                mode, blob, stage = meta.split()
                if path not in out or int(stage) > 0:
                    out[path] = (mode, blob, int(stage))
        return out


_INDEX_MODES = ("100644", "100755", "120000", "160000")


def _index_bytes(entries: dict[str, tuple[str, str]]) -> bytes | None:
    """ENTRIES as an index file (version 2, as gitformat-index(5) lays it out: no stat data, which a
    scratch index without a work tree never uses); None when an entry is not one this writes (another
    hash, an odd mode, a name of 4095 bytes or more): git writes that index."""
    import hashlib
    import struct
    named = []
    for path, (mode, blob) in entries.items():
        name = path.encode("utf-8", "surrogateescape")
        if mode not in _INDEX_MODES or len(blob) != 40 or len(name) >= 0xFFF or not name:
            return None
        named.append((name, int(mode, 8), bytes.fromhex(blob)))
    out = [struct.pack(">4sII", b"DIRC", 2, len(named))]
    for name, mode, oid in sorted(named):            # git's order: the names' bytes
        entry = struct.pack(">10I20sH", 0, 0, 0, 0, 0, 0, mode, 0, 0, 0, oid, len(name)) + name
        out.append(entry + b"\0" * (8 - len(entry) % 8))     # NUL-padded to 8 bytes, at least one NUL
    data = b"".join(out)
    return data + hashlib.sha1(data).digest()


def _read_index(path: str, *, plain: bool = False) -> list[tuple[str, str, str, int]] | None:
    """(path, mode, blob, stage) of each entry of a version 2 or 3 SHA-1 index file that holds them all
    itself; None for anything else (git reads it then): a split index (core.splitIndex: the entries
    are in a shared file, the `link` extension names it) or a sparse one (`sdir`). PLAIN: None also when
    an entry carries a flag a rewrite from these tuples would drop (assume-valid, skip-worktree,
    intent-to-add)."""
    import struct
    try:
        with open(path, "rb") as f:
            data = f.read()
        sig, version, count = struct.unpack_from(">4sII", data, 0)
        if sig != b"DIRC" or version not in (2, 3):
            return None
        at, out = 12, []
        for _ in range(count):
            mode, = struct.unpack_from(">I", data, at + 24)
            flags, = struct.unpack_from(">H", data, at + 60)
            if plain and flags & 0xC000:                           # assume-valid, or extended flags
                return None
            start = at + 62 + (2 if flags & 0x4000 else 0)        # version 3: extended flags
            end = data.index(b"\0", start) if flags & 0xFFF == 0xFFF else start + (flags & 0xFFF)
            out.append((data[start:end].decode("utf-8", "surrogateescape"), f"{mode:06o}",
                        data[at + 40:at + 60].hex(), (flags >> 12) & 3))
            at += (end - at + 8) & ~7
        while at + 8 <= len(data) - 20:              # the extensions, before the trailing checksum
            sig, size = struct.unpack_from(">4sI", data, at)
            if sig in (b"link", b"sdir"):
                return None
            at += 8 + size
        return out
    except (OSError, ValueError, struct.error):
        return None


def _write_trees(objects: str, entries: list[tuple[str, str, str, int]], written: dict[bytes, str]) -> str:
    """The trees of index ENTRIES as loose objects in OBJECTS, as `git write-tree` makes them; the root's
    id. WRITTEN (body -> id) spares writing a tree again that an earlier call wrote."""
    root: dict = {}
    for path, mode, blob, _stage in entries:
        *folders, name = path.split("/")
        node = root
        for f in folders:
            node = node.setdefault(f, {})
        node[name] = (mode, blob)

    def tree(node: dict) -> str:
        items = []
        for name, v in node.items():
            raw = name.encode("utf-8", "surrogateescape")
            if isinstance(v, dict):               # git's order: a folder's name as if it ended in "/"
                items.append((raw + b"/", b"40000 " + raw, tree(v)))
            else:
                items.append((raw, v[0].encode() + b" " + raw, v[1]))
        body = b"".join(head + b"\0" + bytes.fromhex(oid) for _key, head, oid in sorted(items))
        if body not in written:
            written[body] = write_loose_object(objects, "tree", body)
        return written[body]

    return tree(root)


def hash_files(repo: Path, paths: list[str], *, filters: bool, durable: bool = False) -> list[str]:
    """Write the work-tree files PATHS (relative to REPO) into its object store in one process:
    as git would store them (FILTERS: clean filters, eol) or byte for byte. Their blob ids.
    DURABLE: the objects survive a power cut once this returns. git skips writing an object it has,
    and a loose one may have been written unsynced (by a scratch apply, say): so sync the loose files
    themselves and their folders (packs git syncs as it writes them)."""
    if not paths:
        return []
    args = ["hash-object", "-w", "--stdin-paths"] + ([] if filters else ["--no-filters"])
    ids = run(args, cwd=repo, input="".join(p + "\n" for p in paths)).stdout.split()
    if len(ids) != len(paths):
        raise ZpatchError(f"{repo}: git hash-object returned {len(ids)} ids for {len(paths)} files", Exit.ENVIRONMENT)
    if durable:
        objects = _objects_dir(repo) or Path(repo, run(["rev-parse", "--git-path", "objects"], cwd=repo).stdout.strip())
        sync_files([objects / i[:2] / i[2:] for i in ids])
    return ids


def _objects_dir(repo: Path) -> Path | None:
    """REPO's object store read from files, for a repository git has just worked in: its own .git
    (folder or gitfile) with objects/ and refs/ there and no commondir (a linked worktree's store is
    elsewhere), or REPO itself when it is a bare repository (the cache's mirrors). None: ask git
    (`rev-parse --git-path objects`)."""
    gd = git_dir_of(Path(repo))
    if gd is None and Path(repo, "HEAD").is_file() and not os.path.lexists(Path(repo, ".git")):
        gd = Path(repo)
    if gd is None or os.path.lexists(gd / "commondir"):
        return None
    objects = gd / "objects"
    return objects if objects.is_dir() and (gd / "refs").is_dir() else None


def missing_objects(repo: Path, ids: list[str]) -> set[str]:
    """The object ids of IDS that REPO lacks, from one process (`cat-file -e` asks one at a time)."""
    if not ids:
        return set()
    out = run(["cat-file", "--batch-check=%(objectname)"], cwd=repo, input="".join(i + "\n" for i in ids)).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" missing")}


def read_blob(repo: Path, blob: str) -> bytes | None:
    r = run(["cat-file", "blob", blob], cwd=repo, check=False, input=b"")
    return r.stdout.encode("utf-8", "surrogateescape") if r.ok else None


# ---------------------------------------------------------------- commits: edit mode and export

# A neutral configuration for the commands whose output is committed to the overlay, so a
# maintainer's own settings (noprefix, mnemonic prefixes, another diff algorithm, a signature,
# extra headers, more context) never change the bytes of a patch file.
_NEUTRAL = ("diff.noprefix=false", "diff.mnemonicPrefix=false", "diff.renames=true", "diff.algorithm=myers",
            "diff.context=3", "diff.interHunkContext=0", "diff.indentHeuristic=true", "diff.relative=false",
            "diff.suppressBlankEmpty=false", "core.quotePath=true",
            "format.numbered=false", "format.subjectPrefix=PATCH", "format.coverLetter=false",
            "format.thread=false", "format.from=false", "format.forceInBodyFrom=false", "format.notes=false",
            "i18n.logOutputEncoding=UTF-8", "log.showSignature=false")
# flags that beat any config, the repository's own included (format.attach, format.useAutoBase,
# diff.orderFile, an external diff or textconv driver), and no config from the user, the system or
# the environment (GIT_CONFIG_COUNT / GIT_CONFIG_PARAMETERS) at all
_NEUTRAL_FLAGS = ("--no-attach", "--no-thread", "--no-base", f"-O{os.devnull}", "--no-ext-diff", "--no-textconv",
                  "--no-notes")
_QUIET = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_COUNT": "0",
          "GIT_CONFIG_PARAMETERS": ""}
ZPATCH_NOTES = "refs/notes/zpatch"       # commit -> the patch file it came from (edit mode)
EDIT_BASE = "refs/zpatch/base"           # the pin the edit branch starts from (Electron keeps such a ref)
EDIT_BRANCH = "zpatch/edit"
COMMITTER = ("zpatch", "zpatch@localhost")     # of the commits zpatch makes from patches (edit, publish)
_IDENTITY = {"GIT_COMMITTER_NAME": COMMITTER[0], "GIT_COMMITTER_EMAIL": COMMITTER[1]}


def _neutral(args: list[str]) -> list[str]:
    """ARGS under the neutral config; the user's `safe.directory` entries still apply (git reads them
    only from the user's and the system's config, which the neutral run switches off: a checkout owned
    by another user, as in a Docker image, would be refused although the user allowed it)."""
    out = []
    for kv in _NEUTRAL:
        out += ["-c", kv]
    for d in _safe_directories():
        out += ["-c", f"safe.directory={d}"]
    return out + args


_SAFE: list[str] | None = None


def _safe_directories() -> list[str]:
    global _SAFE
    if _SAFE is None:
        r = run(["config", "--get-all", "safe.directory"], check=False)
        _SAFE = r.stdout.splitlines() if r.ok else []
    return _SAFE


def format_patch(repo: Path, commit: str, env: dict | None = None) -> bytes:
    """COMMIT as a mailbox patch, byte-stable: the one place the format options live."""
    # the user's and the system's config cannot reach the bytes either (format.headers, say)
    r = run(_neutral(["format-patch", "-1", "--stdout", *FORMAT_PATCH_OPTIONS, *_NEUTRAL_FLAGS, commit]), cwd=repo,
            input=b"", env={**_QUIET, **(env or {})})
    return r.stdout.encode("utf-8", "surrogateescape")


def format_patches(repo: Path, rng: str, env: dict | None = None) -> list[bytes]:
    """Every commit of RNG (oldest first) as format_patch would write it, from one process: each
    into a file of its own, so no message line can be mistaken for the start of the next patch."""
    return [data for _name, data in format_patch_files(repo, rng, env)]


def format_patch_files(repo: Path, rng: str, env: dict | None = None) -> list[tuple[str, bytes]]:
    """format_patches, with the file name each gets: the one format_patch_name gives commit number
    N of RNG (0001-Subject-words.patch for the oldest)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="zpatch-format-") as tmp:
        run(_neutral(["format-patch", "-o", tmp, "--suffix=.patch", *FORMAT_PATCH_OPTIONS, *_NEUTRAL_FLAGS, rng]),
            cwd=repo, input=b"", env={**_QUIET, **(env or {})})
        files = sorted(Path(tmp).iterdir(), key=lambda f: int(f.name.split("-", 1)[0]))
        return [(f.name, f.read_bytes()) for f in files]


def format_patch_name(repo: Path, commit: str, number: int) -> str:
    """The file name `git format-patch` gives COMMIT as patch NUMBER (0001-Subject-words.patch)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="zpatch-name-") as tmp:
        out = run(_neutral(["format-patch", "-1", f"--start-number={number}", "-o", tmp, "--suffix=.patch",
                            *FORMAT_PATCH_OPTIONS, *_NEUTRAL_FLAGS, commit]), cwd=repo, env=_QUIET)
        return Path(out.stdout.strip()).name


def log_subjects(repo: Path, args: list[str], env: dict | None = None) -> list[str] | None:
    """`git log ARGS` as 'SHA subject' entries, newest first; None when git refused (an -L range
    past the end of a file, say). Records are split on NUL, never on line ends: a subject holding a
    CR (which splitlines would break) stays one entry."""
    # bytes in (input=b""), so the output is decoded without text mode's newline translation: a CR
    # in a subject must reach the report as a CR, to be shown as \x0d there
    r = run(["log", "-s", "--format=%x00%H %s", *args], cwd=repo, env=env, check=False, input=b"")
    if not r.ok:
        return None
    return [rec.rstrip("\n") for rec in r.stdout.split("\0") if re.match(r"[0-9a-f]{40} ", rec)]


def commits_touching(repo: Path, old: str, new: str, files: list[str], limit: int | None = None) -> list[str]:
    """"<sha> <subject>" of the commits in OLD..NEW that touched FILES, newest first (rebase blames
    them for a conflict; drift lists them)."""
    out = log_subjects(repo, [f"{old}..{new}", "--", *files]) or []
    return out if limit is None else out[:limit]


def rev_parse(repo: Path, rev: str, kind: str = "commit") -> str | None:
    """The KIND object REV names in REPO; None when there is none. A git that cannot read the
    repository at all (another user's, damaged) raises: that is not "no such ref"."""
    args = ["rev-parse", "--verify", "-q", f"{rev}^{{{kind}}}"]
    r = run(args, cwd=repo, check=False)
    if r.ok:
        return r.stdout.strip()
    if (r.returncode == 1 and not r.stderr.strip()) or "dereferences to" in r.stderr:
        return None           # no such ref, or one that names another kind of object
    raise GitError(args, repo, r.returncode, r.stderr)


def rev_list(repo: Path, rng: str, *extra: str) -> list[str]:
    """Commits of RNG, oldest first."""
    return run(["rev-list", "--reverse", *extra, rng], cwd=repo).stdout.split()


def rev_list_parents(repo: Path, rng: str) -> list[tuple[str, list[str]]]:
    """Commits of RNG with their parents, oldest first (a merge has more than one)."""
    out = run(["rev-list", "--reverse", "--parents", rng], cwd=repo).stdout.splitlines()
    return [(ids[0], ids[1:]) for ids in (line.split() for line in out) if ids]


def files_of_commits(repo: Path, commits: list[str]) -> dict[str, list[str]]:
    """The paths each of COMMITS changes against its first parent, from one process."""
    if not commits:
        return {}
    out = run(["diff-tree", "--stdin", "--always", "--no-renames", "-r", "--name-only", "-z"], cwd=repo,
              input="".join(c + "\n" for c in commits)).stdout.split("\0")
    files: dict[str, list[str]] = {c: [] for c in commits}
    ahead = iter(commits)          # each commit's paths follow its id, in the order asked
    nxt, cur = next(ahead, None), None
    for field in filter(None, out):
        if field == nxt:
            cur, nxt = nxt, next(ahead, None)
        elif cur is not None:
            files[cur].append(field)
    return files


def read_objects(repo: Path, revs: list[str], env: dict | None = None) -> dict[str, tuple[str, bytes]]:
    """REV -> (type, contents) of each of REVS (object ids or names such as a ref) from one
    `cat-file --batch`; those that name nothing are left out."""
    if not revs:
        return {}
    out = run(["cat-file", "--batch"], cwd=repo, env=env, input="".join(r + "\n" for r in revs).encode()).stdout
    data, at, found = out.encode("utf-8", "surrogateescape"), 0, {}
    for rev in revs:
        end = data.index(b"\n", at)
        head = data[at:end].split()
        at = end + 1
        if len(head) == 3:                       # "<id> <type> <size>", then the bytes and a newline
            size = int(head[2])
            found[rev] = (head[1].decode("ascii"), data[at:at + size])
            at += size + 1
    return found


def read_blobs(repo: Path, ids: list[str], env: dict | None = None) -> dict[str, bytes]:
    """The contents of the blobs IDS, from one process; absent ones left out."""
    return {i: data for i, (kind, data) in read_objects(repo, ids, env=env).items() if kind == "blob"}


def notes(repo: Path, commits: list[str]) -> dict[str, str | None]:
    """note() of each of COMMITS, from two processes however many there are."""
    listed = {}
    r = run(["notes", f"--ref={ZPATCH_NOTES}", "list"], cwd=repo, check=False)
    for line in r.stdout.splitlines() if r.ok else []:
        parts = line.split()
        if len(parts) == 2:
            listed[parts[1]] = parts[0]
    texts = read_blobs(repo, list(dict.fromkeys(listed[c] for c in commits if c in listed)))
    return {c: texts[listed[c]].decode("utf-8", "surrogateescape").strip() if listed.get(c) in texts else None
            for c in commits}


def behind_ahead(repo: Path, base: str, target: str) -> tuple[int, int]:
    """Commits of BASE not in TARGET, and of TARGET not in BASE, from one walk: (0, n) means
    TARGET descends from BASE, n commits ahead."""
    left, right = run(["rev-list", "--count", "--left-right", f"{base}...{target}"], cwd=repo).stdout.split()
    return int(left), int(right)


def note(repo: Path, commit: str) -> str | None:
    r = run(["notes", f"--ref={ZPATCH_NOTES}", "show", commit], cwd=repo, check=False)
    return r.stdout.strip() if r.ok else None


def add_note(repo: Path, commit: str, text: str) -> None:
    run(["notes", f"--ref={ZPATCH_NOTES}", "add", "-f", "-m", text, commit], cwd=repo, env=_IDENTITY)


def mailinfo(repo: Path, patch: Path) -> dict[str, str]:
    """Author, email, date, subject and message body of a mailbox patch, read as `git am` reads it."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="zpatch-mail-") as tmp:
        msg, diff = os.path.join(tmp, "msg"), os.path.join(tmp, "patch")
        out = run(["mailinfo", msg, diff], cwd=repo, input=Path(patch).read_bytes()).stdout
        info = {}
        for line in out.splitlines():
            key, _, value = line.partition(": ")
            info[key.lower()] = value
        info["body"] = Path(msg).read_bytes().decode("utf-8", "surrogateescape")
    return info


_MESSAGES: dict[str, tuple[dict, str]] = {}


def patch_message(repo: Path, patch: Path) -> tuple[dict[str, str], str]:
    """mailinfo and the commit message of PATCH, computed once per content (a rebase asks for each
    patch twice: for the old series and the new; series_cache keeps them between runs)."""
    import hashlib
    key = hashlib.sha256(Path(patch).read_bytes()).hexdigest()
    if key not in _MESSAGES:
        info = mailinfo(repo, patch)
        _MESSAGES[key] = (info, commit_message(info))
    return _MESSAGES[key]


def remembered_message(sha256: str) -> tuple[dict[str, str], str] | None:
    """What patch_message computed for the patch whose bytes have this SHA256, if it did."""
    return _MESSAGES.get(sha256)


def remember_message(sha256: str, info: dict[str, str], msg: str) -> None:
    _MESSAGES[sha256] = (dict(info), msg)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MAIL_DATE = re.compile(r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([1-9]|[12][0-9]|3[01]) (%s) ([0-9]{4}) "
                        r"([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]) ([+-])([01][0-9])([0-5][0-9])" % "|".join(_MONTHS))
# git's "crud" (ident.c): what it strips from both ends of a name or email; it also drops < > and newlines
_CRUD = frozenset(chr(c) for c in range(33)) | frozenset(".,:;<>\"\\'")


def _git_date(date: str) -> str | None:
    """A mail Date: as format-patch writes it ("Thu, 4 Dec 2025 10:00:00 +0100"), as git stores it
    ("1764838800 +0100"); None for any other spelling (git's own date parser then reads it)."""
    import calendar
    m = _MAIL_DATE.fullmatch(date)
    if m is None:
        return None
    day, month, year, hh, mm, ss, sign, tzh, tzm = m.groups()
    local = calendar.timegm((int(year), _MONTHS.index(month) + 1, int(day), int(hh), int(mm), int(ss)))
    offset = (int(tzh) * 60 + int(tzm)) * (1 if sign == "+" else -1)
    if sign == "-" and offset == 0:
        return None          # "-0000" (no known zone): left to git
    return f"{local - offset * 60} {sign}{tzh}{tzm}"


def _plain(ident: str) -> bool:
    """Whether git writes NAME or EMAIL unchanged into a commit (no crud at the ends, no < > newline)."""
    return bool(ident) and ident[0] not in _CRUD and ident[-1] not in _CRUD and not any(c in "<>\n" for c in ident)


def commit_object(tree: str, parent: str, info: dict[str, str], msg: str) -> bytes | None:
    """The commit `git commit-tree TREE -p PARENT` writes for a patch's author INFO and message MSG with
    zpatch as committer at the author's date; None when git would change something on the way (an
    ident it cleans, a date it parses its own way, a message that is not UTF-8 or holds a NUL) or the
    store is not SHA-1."""
    name, email, date = info.get("author", ""), info.get("email", ""), _git_date(info.get("date", ""))
    if len(tree) != 40 or len(parent) != 40 or date is None or not (_plain(name) and _plain(email)) or "\0" in msg:
        return None
    body = (f"tree {tree}\nparent {parent}\nauthor {name} <{email}> {date}\n"
            f"committer {COMMITTER[0]} <{COMMITTER[1]}> {date}\n\n{msg}").encode("utf-8", "surrogateescape")
    try:
        body.decode("utf-8")     # git re-encodes a commit that is not valid UTF-8
    except UnicodeDecodeError:
        return None
    return body


def write_loose_object(objects: str, kind: str, body: bytes) -> str:
    """BODY as a loose object of KIND in the object folder OBJECTS, as git writes one (zlib, under a
    temporary name renamed into place; git does not sync loose objects by default either). Its id."""
    import hashlib
    import zlib
    data = f"{kind} {len(body)}\0".encode() + body
    oid = hashlib.sha1(data).hexdigest()
    place_loose_object(objects, oid, lambda: zlib.compress(data))
    return oid


def place_loose_object(objects: str, oid: str, compressed) -> None:
    """The loose object OID in the object folder OBJECTS, unless it is there: COMPRESSED() gives its
    file's bytes, written under a temporary name and renamed into place (as git does)."""
    folder = os.path.join(objects, oid[:2])
    path = os.path.join(folder, oid[2:])
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"tmp_obj_{os.getpid()}_{oid[2:10]}")
        with open(tmp, "wb") as f:
            f.write(compressed())
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)


def commit_message(info: dict[str, str]) -> str:
    """The message `git am` would commit: subject, blank line, body, cleaned as git's stripspace
    cleans it (here, to spare a process per patch; tests/test_edit_export.py compares the two)."""
    return stripspace(info.get("subject", "") + "\n\n" + info.get("body", ""))


def stripspace(text: str) -> str:
    """git stripspace: trailing whitespace off every line (git's isspace: space, tab, CR, LF), runs of
    blank lines made one, none at the start or the end, and a final newline."""
    out: list[str] = []
    blank = False
    for line in text.split("\n"):
        line = line.rstrip(" \t\r")
        if not line:
            blank = True
            continue
        if blank and out:
            out.append("")
        blank = False
        out.append(line)
    return "".join(line + "\n" for line in out)


# ---------------------------------------------------------------- refresh: whose lines an edit touches

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def diff_hunks(repo: Path, old: str, new: str, path: str) -> list[tuple[int, int, int, int]] | None:
    """PATH's changes from tree-ish OLD to NEW as (old_start, old_len, new_start, new_len) hunks
    without context (git's numbering: a zero-length side starts at the line before); None when git
    calls the change binary."""
    out = run(_neutral(["diff-tree", "-p", "-U0", "--no-renames", "--no-ext-diff", "--no-textconv", old, new,
                        "--", path]), cwd=repo, env=_QUIET).stdout
    hunks = []
    for line in out.splitlines():
        if line.startswith("Binary files ") or line == "GIT binary patch":
            return None
        m = _HUNK.match(line)
        if m:
            a, b, c, d = m.groups()
            hunks.append((int(a), 1 if b is None else int(b), int(c), 1 if d is None else int(d)))
    return hunks


def diff_trees(repo: Path, old: str, new: str) -> bytes:
    """The patch from tree-ish OLD to NEW, full index lines, as `git apply` takes it."""
    r = run(_neutral(["diff-tree", "-p", "--full-index", "--binary", "--no-renames", "--no-ext-diff",
                      "--no-textconv", old, new]), cwd=repo, env=_QUIET, input=b"")
    return r.stdout.encode("utf-8", "surrogateescape")


def blame_commits(repo: Path, boundary: str, rev: str, path: str, first: int, last: int) -> set[str]:
    """The commits of BOUNDARY..REV that last changed lines FIRST..LAST of PATH at REV (lines older
    than BOUNDARY are its, and count as none)."""
    r = run(["blame", "--porcelain", "-L", f"{first},{last}", f"{boundary}..{rev}", "--", path], cwd=repo)
    found, skip = set(), set()
    current = None
    for line in r.stdout.splitlines():
        m = re.match(r"^([0-9a-f]{40}) \d+ \d+", line)
        if m:
            current = m.group(1)
            found.add(current)
        elif line == "boundary" and current:
            skip.add(current)
    return found - skip


def write_blobs(repo: Path, datas: list[bytes]) -> list[str]:
    """DATAS into REPO's object store byte for byte (they are already as git stores them), one process."""
    if not datas:
        return []
    import tempfile
    with tempfile.TemporaryDirectory(prefix="zpatch-blobs-") as tmp:
        names = []
        for i, data in enumerate(datas):
            name = os.path.join(tmp, str(i))
            with open(name, "wb") as f:
                f.write(data)
            names.append(name)
        ids = run(["hash-object", "-w", "--no-filters", "--stdin-paths"], cwd=repo,
                  input="".join(n + "\n" for n in names)).stdout.split()
    if len(ids) != len(datas):
        raise ZpatchError(f"{repo}: git hash-object returned {len(ids)} ids for {len(datas)} blobs", Exit.ENVIRONMENT)
    return ids


# ---------------------------------------------------------------- remotes: publish and forward

def redact(url: str) -> str:
    """URL with any user:password@ (a token) hidden, for messages."""
    return re.sub(r"(?<=//)[^/@\s]+@", "***@", url)


def check_remote(remote: str) -> None:
    """A remote given on the command line is a URL or a path, never an option for git."""
    if not remote or remote.startswith("-"):
        raise ZpatchError(f"{redact(remote)!r}: not a remote's URL or path", Exit.USAGE,
                          hint="give your fork's URL, e.g. git@github.com:me/ComfyUI-GGUF.git")


def remote_refs(remote: str, refs: list[str], env: dict | None = None) -> dict[str, str]:
    """REFS as REMOTE has them now (an absent ref is not in the dict)."""
    check_remote(remote)
    r = run(["ls-remote", remote, *refs], check=False, env={"GIT_TERMINAL_PROMPT": "0", **(env or {})})
    if not r.ok:
        why = next((line for line in r.stderr.splitlines() if line.startswith(("fatal:", "error:"))), r.last_line())
        raise ZpatchError(f"{redact(remote)}: cannot read the remote: {why}", Exit.UNREACHABLE,
                          hint="check the URL (your fork of the upstream) and your credentials")
    out = {}
    for line in r.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name in refs:
            out[name] = sha
    return out


def push_with_lease(repo: Path, remote: str, specs: list[str], lease_ref: str, expected: str | None,
                    env: dict | None = None) -> None:
    """Push SPECS from REPO to REMOTE in one atomic push, only if LEASE_REF there is still EXPECTED (None:
    absent): a push someone made meanwhile is refused, never overwritten."""
    check_remote(remote)
    r = run(["push", "--quiet", "--atomic", f"--force-with-lease={lease_ref}:{expected or ''}", remote, *specs],
            cwd=repo, check=False, env={"GIT_TERMINAL_PROMPT": "0", **(env or {})})
    if not r.ok:
        import shlex
        why = next((line for line in r.stderr.splitlines() if "rejected" in line or line.startswith(("fatal:", "error:"))),
                   r.last_line())
        raise ZpatchError(f"{redact(remote)}: push refused: {why}", Exit.GIT_REFUSED,
                          hint="someone pushed there meanwhile, or the remote refuses (credentials, a checked-out "
                               f"branch): git ls-remote {shlex.quote(redact(remote))} shows what is there")
