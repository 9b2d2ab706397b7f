"""Obsolescence probes: a patch says, in its message, how to tell that upstream has done its job.

    Obsolete-If: grep <path> <extended regex>    upstream's <path> has a line matching the regex
    Obsolete-If: missing <path>                  upstream no longer has <path>
    Obsolete-If: defines <file.py> <name>        upstream's module defines <name>: a dotted path
                                                 through classes (`CLIPType.GEMMA3`, `VAE.decode`),
                                                 optionally with a parameter (`VAE.decode(vae_options)`)

A patch may carry several; any one firing makes it obsolete. They are read against a commit of the
upstream (its tree in the cache, no checkout), so `rebase` and `drift` can say "upstream implemented
this" even when the patch also conflicts. `check` requires every probe to be silent on the pin: a
probe that fires there is wrong, or the patch is already unnecessary.

`defines` answers "does upstream's module have this name" the way importing it would, but by
reading the source with Python's own parser: no upstream code runs, so a probe is as safe to
evaluate in the drift job (which holds a token) as on a laptop, and needs neither torch nor a
checkout. Probes that run a command or import upstream are deliberately not offered.
"""
from __future__ import annotations

import ast
import re
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import git
from .errors import Exit, ZpatchError
from .patchfile import Patch
from .worktree import rel_parts


MAX_SOURCE = 4_000_000      # bytes: Python's parser needs up to some 700 bytes of memory per byte of source
NAME = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(([A-Za-z_]\w*)\))?", re.ASCII)


@dataclass
class Probe:
    kind: str           # grep | missing | defines
    path: str
    pattern: str | None  # grep: the regex; defines: the dotted name, perhaps with "(param)"
    text: str           # as written, for reports

    def fires(self, repo: Path, commit: str) -> bool:
        entry = self._entry(repo, commit)
        if self.kind == "missing":   # the tree's listing, not the blob: a partial mirror lacks blobs, not names
            return entry is None
        if entry is None or entry[1] != "blob":      # absent, or a folder or submodule: not a file to read
            return False
        mode, _, blob = entry
        where = f"upstream's {self.path} at {commit[:12]}"
        if mode == "120000":         # its blob is the link's target text, not the file it points to
            raise ZpatchError(f"Obsolete-If: {self.text}: {where} is a symlink", Exit.BAD_OVERLAY,
                              hint="name the file the link points to")
        if self.kind == "defines":
            source = git.read_blob(repo, blob)
            if source is None:
                raise self._unreadable(where)
            if len(source) > MAX_SOURCE:
                raise ZpatchError(f"Obsolete-If: {self.text}: {where} is over {MAX_SOURCE // 1_000_000} MB",
                                  Exit.BAD_OVERLAY, hint="use a `grep` probe for a file that large")
            return defines(source, self.pattern, where=where)
        if not git.run(["cat-file", "-e", blob], cwd=repo, check=False).ok:
            raise self._unreadable(where)      # git grep would just find nothing in it
        try:
            r = git.run(["grep", "-q", "-E", "-e", self.pattern, commit, "--", self.path], cwd=repo,
                        check=False, timeout=20)
        except ZpatchError:
            raise ZpatchError(f"Obsolete-If: {self.text[:80]}: git grep took over 20 s", Exit.BAD_OVERLAY,
                              hint="simplify the regular expression (no nested repetition)")
        if r.returncode not in (0, 1):
            raise ZpatchError(f"Obsolete-If: {self.text}: git grep failed: {r.last_line()}", Exit.BAD_OVERLAY,
                              hint="fix the regular expression (POSIX extended syntax)")
        return r.returncode == 0

    def _entry(self, repo: Path, commit: str) -> tuple[str, str, str] | None:
        """(mode, type, object id) of the probe's path at COMMIT; None when the tree has no such path.
        A folder on the way that is a symlink is an error: the path may well exist through it."""
        parts = self.path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        out = git.run(["ls-tree", "-z", commit, "--", *prefixes], cwd=repo).stdout
        found = {}
        for item in out.split("\0"):
            meta, _, name = item.partition("\t")
            if name in prefixes:
                found[name] = tuple(meta.split())
        for folder in prefixes[:-1]:
            if found.get(folder, ("",))[0] == "120000":
                raise ZpatchError(f"Obsolete-If: {self.text}: upstream's {folder} at {commit[:12]} is a symlink",
                                  Exit.BAD_OVERLAY, hint="name the path through the folder the link points to")
        return found.get(self.path)

    def _unreadable(self, where: str) -> ZpatchError:
        return ZpatchError(f"Obsolete-If: {self.text}: {where} is not in the cache (a partial clone lacks its "
                           "content)", Exit.UNREACHABLE,
                           hint="fetch the upstream without a blob filter, or use a `missing` probe")


def parse(patch: Patch) -> list[Probe]:
    out = []
    for text in patch.probes:
        if len(text) > 500 or not text.isprintable():
            raise ZpatchError(f"{patch.name}: Obsolete-If: {text[:60]!r}...: too long or with control characters",
                              Exit.BAD_OVERLAY, hint="a probe is one short line")
        try:
            words = shlex.split(text)
        except ValueError as e:
            raise ZpatchError(f"{patch.name}: Obsolete-If: {text}: {e}", Exit.BAD_OVERLAY,
                              hint="quote the regular expression with single quotes")
        if len(words) == 3 and words[0] == "grep":
            kind, path, pattern = words
        elif len(words) == 2 and words[0] == "missing":
            kind, path, pattern = words[0], words[1], None
        elif len(words) == 3 and words[0] == "defines":
            kind, path, pattern = words
            if not path.endswith(".py") or not NAME.fullmatch(pattern):
                raise ZpatchError(f"{patch.name}: Obsolete-If: {text!r}: `defines` takes a .py file and a dotted "
                                  "name, perhaps with one parameter", Exit.BAD_OVERLAY,
                                  hint="for example: Obsolete-If: defines comfy/sd.py 'VAE.decode(vae_options)'")
        else:
            raise ZpatchError(f"{patch.name}: Obsolete-If: {text!r} is not `grep PATH REGEX`, `missing PATH` "
                              "or `defines FILE.py NAME`", Exit.BAD_OVERLAY,
                              hint="see the README's section on obsolescence probes")
        try:
            rel_parts(path)
            if path != path.strip("/") or "/./" in f"/{path}/" or path.startswith(":"):
                raise ZpatchError("not normal", Exit.BAD_OVERLAY)
        except ZpatchError:
            raise ZpatchError(f"{patch.name}: Obsolete-If: {path!r} is not a path inside the upstream",
                              Exit.BAD_OVERLAY, hint="name a file of the upstream, relative to its root")
        out.append(Probe(kind, path, pattern, text))
    return out


def evaluate(patch: Patch, repo: Path, commit: str) -> tuple[list[str], list[ZpatchError]]:
    """The probes of PATCH that fire on COMMIT of REPO (as written), and the errors of those that
    could not be read (a malformed probe, an unreadable file): one bad probe does not hide the others."""
    try:
        found = parse(patch)
    except ZpatchError as e:
        return [], [e]
    hits, errors = [], []
    for p in found:
        try:
            if p.fires(repo, commit):
                hits.append(p.text)
        except ZpatchError as e:
            errors.append(e)
    return hits, errors


def fired(patch: Patch, repo: Path, commit: str) -> list[str]:
    """The probes of PATCH that fire on COMMIT of REPO, as written; raises the first error."""
    hits, errors = evaluate(patch, repo, commit)
    if errors:
        raise errors[0]
    return hits


def defines(source: bytes, name: str, where: str = "the module") -> bool:
    """Whether the module SOURCE defines NAME ("a.b.c" or "a.b(param)"): each part a def, class,
    assignment or import at module level or in the class before it (inside if/try/with blocks too,
    never inside a function's body); "(param)" asks that the last part be a function taking PARAM."""
    dotted, param = NAME.fullmatch(name).groups()
    try:
        with warnings.catch_warnings():      # upstream's invalid escapes are not the user's business
            warnings.simplefilter("ignore")
            body = ast.parse(source).body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ZpatchError(f"Obsolete-If: defines: {where} does not parse with this Python: "
                          f"{type(e).__name__}: {str(e)[:80]}", Exit.BAD_OVERLAY,
                          hint="use a `grep` probe for this file, or run zpatch with a newer Python")
    node = None
    for part in dotted.split("."):
        if node is not None:
            if not isinstance(node, ast.ClassDef):
                return False
            body = node.body
        node = _binding(body, part)
        if node is None:
            return False
    if param is None:
        return True
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return param in names


def _binding(body: list[ast.stmt], name: str) -> ast.AST | None:
    """The last statement in source order of BODY, and of the blocks nested in it (if, try, with,
    for, while, match; not functions), that binds NAME. A work list, not recursion: upstream's long
    elif chains nest a level per branch."""
    found = None
    todo = list(body)
    while todo:
        st = todo.pop()
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            hit = st.name == name
        elif isinstance(st, ast.AnnAssign) and st.value is None:
            hit = False          # `NAME: int` only annotates: importing binds nothing
        elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor, ast.With,
                             ast.AsyncWith)):
            if isinstance(st, ast.Assign):
                targets = st.targets
            elif isinstance(st, (ast.With, ast.AsyncWith)):
                targets = [i.optional_vars for i in st.items if i.optional_vars is not None]
            else:
                targets = [st.target]
            hit = any(isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id == name
                      for t in targets for n in ast.walk(t))
        elif isinstance(st, (ast.Import, ast.ImportFrom)):
            hit = any((a.asname or a.name.split(".")[0]) == name for a in st.names)
        else:
            hit = False
        if hit and (found is None or (st.lineno, st.col_offset) > (found.lineno, found.col_offset)):
            found = st
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            if block == "body" and _type_checking(st):
                continue         # only type checkers run it
            for sub in getattr(st, block, None) or []:
                todo.extend(sub.body if isinstance(sub, (ast.ExceptHandler, ast.match_case)) else [sub])
    return found


def _type_checking(st: ast.stmt) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`, false whenever the module is imported."""
    t = getattr(st, "test", None) if isinstance(st, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")
