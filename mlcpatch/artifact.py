"""The artifact folder contract: its file names, its manifest.json, and the one check of both.

Both build backends write the manifest here (``write_manifest``); the runtime, ``serve``, the
loop and ``publish`` read it here (``read_manifest``, ``verify_artifact``). docs/DESIGN.md
("Artifact folder") is the contract; the browser engine (web/src/engine.js) keeps its own reader
with the same file names and the same rules for the ``files`` table.

``{"format": 1, ..., "files": {"<relative posix path>": {"size": int, "sha256": hex}}}`` lists
every file of the folder except manifest.json itself. Hashes catch corruption (a cut download, a
disk error), not tampering: whoever can write the folder can rewrite the manifest too, and an
artifact's library is native code that runs with the user's rights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import time
from typing import Any

from mlcpatch.errors import MlcpatchError

MANIFEST = "manifest.json"
CHAT_CONFIG = "mlc-chat-config.json"
TENSOR_CACHE = "tensor-cache.json"
MANIFEST_FORMAT = 1  # what write_manifest writes
KNOWN_FORMATS = (1,)  # what read_manifest accepts
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 4 * 1024 * 1024
_SHOWN_PROBLEMS = 3


class ArtifactError(MlcpatchError, RuntimeError):
    """The artifact folder is incomplete, corrupted, or used beyond its limits; the message
    names the file and what is wrong with it."""


def sha256_file(path: pathlib.Path, digest: Any = None) -> str:
    """The sha256 of a file's bytes, read in chunks (shards run to gigabytes).

    With ``digest`` (a running ``hashlib.sha256()``), the file is fed into it instead, for
    hashes over several files (cache keys); the digest's hex so far is returned.
    """
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_artifact_folder(folder: pathlib.Path) -> bool:
    """Whether ``folder`` looks like an artifact folder (a manifest and a chat config), before
    anything is verified; a build's hidden staging folder never counts."""
    return (
        not folder.name.startswith(".")
        and (folder / MANIFEST).is_file()
        and (folder / CHAT_CONFIG).is_file()
    )


def safe_relative(name: object) -> bool:
    """A plain relative posix path with no '..', '.', empty or absolute part: naming "../x" or
    "/etc/x" in a manifest or config must not make anything read outside the folder."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in name.split("/"))


def inside(folder: pathlib.Path, name: object, what: str) -> pathlib.Path:
    """`folder / name`, refused unless `name` is safe and, symlinks resolved, stays inside."""
    if not safe_relative(name):
        raise ArtifactError(f"{folder}: {what} {name!r} is not a relative path inside the folder")
    path = folder / str(name)
    if path.exists() and not path.resolve().is_relative_to(folder.resolve()):
        raise ArtifactError(f"{folder}: {what} {name!r} leads outside the folder (a symlink)")
    return path


@dataclasses.dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclasses.dataclass
class Manifest:
    """manifest.json, typed. ``extra`` keeps fields one backend adds (``backend``, ``mlc_llm``)
    as they were written, so reading and writing a manifest back changes nothing."""

    name: str
    files: dict[str, FileEntry]
    created_unix: int = 0
    tools: dict[str, str] = dataclasses.field(default_factory=dict)
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    patch: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    libraries: dict[str, str] = dataclasses.field(default_factory=dict)
    param_names: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"format": self.format, "name": self.name}
        body.update(created_unix=self.created_unix, tools=self.tools, source=self.source)
        body.update(patch=self.patch, options=self.options, libraries=self.libraries)
        body.update(param_names=self.param_names, **self.extra)
        body["files"] = {n: {"size": e.size, "sha256": e.sha256} for n, e in self.files.items()}
        return body

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """The strict reading: a known format and a non-empty ``files`` table of well-formed
        entries (the browser engine checks the same); the descriptive fields, when present,
        of the types written."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object")
        if data.get("format") not in KNOWN_FORMATS:
            raise ArtifactError(
                f"{where}: unknown manifest format {data.get('format')!r} "
                f"(this mlcpatch reads {', '.join(map(str, KNOWN_FORMATS))})"
            )
        files = data.get("files")
        if not isinstance(files, dict) or not files:
            raise ArtifactError(f'{where}: no "files" table (a non-empty object of name -> entry)')
        entries = {}
        for name, entry in files.items():
            if not safe_relative(name) or name == MANIFEST:
                raise ArtifactError(f"{where}: {name!r} is not a valid file name in an artifact")
            size = entry.get("size") if isinstance(entry, dict) else None
            sha256 = entry.get("sha256") if isinstance(entry, dict) else None
            if not (
                isinstance(size, int)
                and not isinstance(size, bool)
                and size >= 0
                and isinstance(sha256, str)
                and _SHA256.match(sha256)
            ):
                raise ArtifactError(f"{where}: entry {name!r} needs an integer size and a sha256")
            entries[name] = FileEntry(size, sha256)
        typed = {f.name for f in dataclasses.fields(cls)}
        fields: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("format", "files") or key not in typed or key == "extra":
                continue
            kind = {"name": str, "created_unix": int, "param_names": list}.get(key, dict)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ArtifactError(f"{where}: {key!r} should be a JSON {kind.__name__}")
            fields[key] = value
        if not all(isinstance(n, str) for n in fields.get("param_names", [])):
            raise ArtifactError(f"{where}: 'param_names' should list strings")
        extra = {k: v for k, v in data.items() if k not in typed or k == "extra"}
        return cls(
            name=fields.pop("name", ""),
            files=entries,
            extra=extra,
            format=data["format"],
            **fields,
        )


def file_table(folder: pathlib.Path) -> dict[str, FileEntry]:
    """Every file under ``folder`` except the manifest: relative path -> size and sha256."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            table[rel] = FileEntry(path.stat().st_size, sha256_file(path))
    return table


def write_manifest(
    folder: pathlib.Path,
    *,
    name: str,
    tools: dict[str, str],
    source: dict[str, Any],
    patch: dict[str, Any],
    options: dict[str, Any],
    libraries: dict[str, str],
    param_names: list[str],
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """List every file now in ``folder`` in its manifest.json; call it last."""
    manifest = Manifest(
        name=name,
        files=file_table(folder),
        created_unix=int(time.time()),
        tools=tools,
        source=source,
        patch=patch,
        options=options,
        libraries=libraries,
        param_names=param_names,
        extra=extra or {},
    )
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return manifest


def read_manifest(folder: pathlib.Path) -> Manifest:
    """The folder's manifest.json, read strictly (``Manifest.from_json``)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST} (is this an artifact folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_json(data, str(path))


def entry_problem(folder: pathlib.Path, name: str, entry: FileEntry) -> str | None:
    """What is wrong with one listed file (missing, not a plain file, size, sha256), or None."""
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return f"{name}: missing" if not path.exists() else f"{name}: not a regular file"
    size = path.stat().st_size
    if size != entry.size:
        return f"{name}: {size} bytes, manifest says {entry.size}"
    actual = sha256_file(path)
    if actual != entry.sha256:
        return f"{name}: sha256 mismatch ({actual[:12]}…, manifest says {entry.sha256[:12]}…)"
    return None


def require_listed(folder: pathlib.Path, manifest: Manifest, names: list[str]) -> None:
    """Files a loader will open must be listed, so a hash covers each of them."""
    missing = [n for n in names if n not in manifest.files]
    if missing:
        raise ArtifactError(
            f"{folder / MANIFEST} does not list {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            + ": the artifact is incomplete or was not built by mlcpatch"
        )


def verify_artifact(
    folder: pathlib.Path, manifest: Manifest | None = None, *, exact: bool = False
) -> Manifest:
    """The manifest, once every file it lists has its size and sha256; with ``exact`` (what
    leaves the machine) a file it does not list is refused too. ArtifactError names up to three
    problems."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder")
    manifest = manifest or read_manifest(folder)
    problems = [
        problem
        for name, entry in manifest.files.items()
        if (problem := entry_problem(folder, name, entry))
    ]
    if exact:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if (path.is_file() or path.is_symlink()) and rel != MANIFEST:
                if rel not in manifest.files:
                    problems.append(f"{rel}: not listed in {MANIFEST}")
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        shown = "; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise ArtifactError(
            f"{folder} does not match its {MANIFEST}: {shown} "
            "(damaged or changed since it was built: rebuild it)"
        )
    return manifest
