"""The state of a rebase in progress (stopped at a conflict, or killed): one typed record with a schema
version, parsed strictly and written atomically here and nowhere else, as record.py does for apply
(git keeps its rebase in .git/rebase-merge/, read and written by sequencer.c alone).

Each entry of `done` (and `current`) is a patch's result as the rebase report gives it: name, state,
and what the state needs (the commit carried, the files and hunks of a conflict, the upstream commits
to blame, the probes that fired, the hash of the new text); they are checked field by field on load.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .durable import write_atomic
from .errors import Exit, ZpatchError

VERSION = 2
KIND = "rebase"
STATES = ("carried", "unchanged", "refreshed", "changed", "upstreamed", "obsolete", "conflict", "skipped")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LISTS = ("fired", "files", "upstream_commits", "probe_errors")


@dataclass
class RebaseState:
    upstream: str
    old_pin: str                        # the pin the series was made for
    onto: str                           # the target commit
    onto_ref: str                       # what the user named it
    tip: str                            # the series carried so far, as commits on ONTO
    ahead: int                          # first-parent commits from the old pin to ONTO
    todo: list[str]                     # patches still to carry, the current one first
    done: list[dict] = field(default_factory=list)
    started_from: dict[str, str] = field(default_factory=dict)   # patch -> sha256 when the rebase began
    old_tip: str | None = None          # the old series as commits on the old pin (for the 3-way and range-diff)
    current: dict | None = None         # the patch stopped at, with its conflict
    lock_after: str | None = None       # sha256 of upstream.lock once written: then the rebase is complete
    dry_run: bool = False               # a dry run's state lives in memory only
    version: int = VERSION

    def to_bytes(self) -> bytes:
        return json.dumps({"kind": KIND, **asdict(self)}, indent=1, sort_keys=True).encode()


def _names(entry: object) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "/" in entry["name"] \
            or entry["name"] in ("", ".", ".."):
        raise ValueError(entry)
    if not all(isinstance(x, str) for k in _LISTS for x in entry.get(k, [])):
        raise ValueError(entry)
    for h in entry.get("hunks", []):
        if not (isinstance(h["file"], str) and type(h["hunk"]) is int and len(h["lines"]) == 2
                and all(type(n) is int for n in h["lines"]) and all(isinstance(c, str) for c in h["upstream_commits"])):
            raise ValueError(h)


def parse(path: Path, data: bytes) -> RebaseState:
    """The state in DATA, every field checked; anything else names PATH and the way out."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or raw.pop("kind", KIND) != KIND or raw.get("version", 1) not in (1, VERSION):
            raise ValueError
        raw["version"] = VERSION
        st = RebaseState(**raw)
        if st.dry_run is not False:          # a dry run saves no state
            raise ValueError
        for sha in (st.old_pin, st.onto, st.tip, *([st.old_tip] if st.old_tip is not None else [])):
            if not (isinstance(sha, str) and _SHA1.fullmatch(sha)):
                raise ValueError(sha)
        if not (isinstance(st.upstream, str) and isinstance(st.onto_ref, str) and type(st.ahead) is int
                and isinstance(st.todo, list) and isinstance(st.done, list) and isinstance(st.started_from, dict)):
            raise ValueError
        if not all(isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in st.todo):
            raise ValueError
        for e in st.done:
            _names(e)
            if e.get("state") not in STATES:
                raise ValueError(e)
            if e.get("commit") is not None and not (isinstance(e["commit"], str) and _SHA1.fullmatch(e["commit"])):
                raise ValueError(e)
            if "data_sha256" in e and not (isinstance(e["data_sha256"], str) and _SHA256.fullmatch(e["data_sha256"])):
                raise ValueError(e)
        if st.current is not None:
            _names(st.current)
        if st.lock_after is not None and not (isinstance(st.lock_after, str) and _SHA256.fullmatch(st.lock_after)):
            raise ValueError
        if not all(isinstance(v, str) and _SHA256.fullmatch(v) for v in st.started_from.values()):
            raise ValueError
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError, UnicodeDecodeError):
        raise ZpatchError(f"{path}: the state of a rebase in progress is damaged", Exit.BAD_CHECKOUT,
                          hint="zpatch rebase --abort forgets it (and puts back any half-written files)")
    return st


def load(path: Path) -> RebaseState | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ZpatchError(f"{path}: cannot be read ({e.strerror})", Exit.BAD_CHECKOUT,
                          hint="zpatch rebase --abort forgets it")
    return parse(path, data)


def save(path: Path, st: RebaseState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, st.to_bytes(), sync=False)
