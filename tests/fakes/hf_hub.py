"""A fake Hugging Face Hub: the endpoints huggingface_hub calls to create a repo and commit files
through the classic LFS protocol (paths-info, preupload, LFS batch + PUT + verify, commit).

Stores what it receives, so tests compare the sha256 of the bytes the server holds.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from urllib.parse import parse_qs

from fakes.http import FakeServer, Request, Response

REPO = r"(?P<repo>[^/]+/[^/]+)"
_LFS_SUFFIXES = (".bin", ".wasm", ".so", ".safetensors", ".gguf")
_LFS_MIN_SIZE = 10 * 1024 * 1024
INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def info(self, path: str) -> dict[str, object]:
        entry: dict[str, object] = {
            "type": "file",
            "path": path,
            "size": len(self.data),
            "oid": git_blob_sha1(self.data),
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


@dataclasses.dataclass
class Repo:
    files: dict[str, StoredFile]
    commits: list[dict[str, object]]
    private: bool = False

    @property
    def head(self) -> str:
        return str(self.commits[-1]["oid"])


class FakeHub(FakeServer):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.read_only = False  # the token may read but not write (403 on writes)
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self._commit_count = 0
        self.route("POST", r"^/api/repos/create$", self._create)
        self.route("POST", rf"^/api/models/{REPO}/paths-info/(?P<rev>[^/]+)$", self._paths_info)
        self.route("POST", rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$", self._preupload)
        self.route("POST", rf"^/{REPO}\.git/info/lfs/objects/batch$", self._batch)
        self.route("PUT", r"^/lfs-storage/(?P<oid>[0-9a-f]{64})$", self._lfs_put)
        self.route("POST", r"^/lfs-verify/(?P<oid>[0-9a-f]{64})$", self._lfs_verify)
        self.route("POST", r"^/api/validate-yaml$", self._validate_yaml)
        self.route("POST", rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$", self._commit)
        self.route("GET", rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", self._resolve)

    # paths-info is a POST that only reads
    def is_write(self, request: Request) -> bool:
        return super().is_write(request) and not request.path.endswith("/paths-info/main")

    # --- helpers ----------------------------------------------------------------------------
    def _auth(self, request: Request, *, write: bool) -> Response | None:
        header = request.headers.get("authorization")
        if header is not None and header != f"Bearer {self.token}":
            return Response.json(401, {"error": INVALID_TOKEN})
        if header is None and write:
            return Response.json(401, {"error": INVALID_TOKEN})
        if write and self.read_only:
            return Response.json(403, {"error": "You don't have the rights to write to this repo"})
        return None

    def _repo(self, repo_id: str) -> Repo | Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return Response.json(
                404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            )
        return repo

    def _new_commit(self, repo: Repo, summary: str, paths: list[str]) -> str:
        self._commit_count += 1
        oid = hashlib.sha1(f"commit {self._commit_count}".encode()).hexdigest()
        repo.commits.append({"oid": oid, "summary": summary, "paths": paths})
        return oid

    def stored(self, repo_id: str) -> dict[str, str]:
        """path -> sha256 of the bytes the server holds."""
        return {p: f.sha256 for p, f in self.repos[repo_id].files.items()}

    # --- endpoints --------------------------------------------------------------------------
    def _create(self, request: Request, _: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        body = request.json()
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.repos:
            return Response.json(409, {"error": "You already created this model repo"})
        attributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in _LFS_SUFFIXES)
        repo = Repo({".gitattributes": StoredFile(attributes.encode(), False)}, [])
        repo.private = body.get("visibility") == "private" or bool(body.get("private"))
        self._new_commit(repo, "initial commit", [".gitattributes"])
        self.repos[repo_id] = repo
        return Response.json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _paths_info(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=False):
            return denied
        repo = self._repo(args["repo"])
        if isinstance(repo, Response):
            return repo
        paths = parse_qs(request.body.decode()).get("paths", [])
        return Response.json(200, [repo.files[p].info(p) for p in paths if p in repo.files])

    def _preupload(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        repo = self._repo(args["repo"])
        if isinstance(repo, Response):
            return repo
        files = []
        for f in request.json()["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(_LFS_SUFFIXES) or f["size"] >= _LFS_MIN_SIZE or b"\0" in sample
            stored = repo.files.get(f["path"])
            oid = None
            if stored is not None:
                oid = stored.sha256 if stored.lfs else git_blob_sha1(stored.data)
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return Response.json(200, {"files": files, "commitOid": repo.head})

    def _batch(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        if isinstance(repo := self._repo(args["repo"]), Response):
            return repo
        objects = []
        for obj in request.json()["objects"]:
            entry: dict[str, object] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_store:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.url}/lfs-verify/{obj['oid']}", "header": {}},
                }
            objects.append(entry)
        return Response.json(
            200,
            {"transfer": "basic", "objects": objects},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, request: Request, args: dict[str, str]) -> Response:
        # A presigned storage URL: no token, but the content must hash to the object id.
        if hashlib.sha256(request.body).hexdigest() != args["oid"]:
            return Response.json(400, {"error": "content does not match the object id"})
        self.lfs_store[args["oid"]] = request.body
        return Response(200, headers={"ETag": '"stored"'})

    def _lfs_verify(self, request: Request, args: dict[str, str]) -> Response:
        body = request.json()
        data = self.lfs_store.get(args["oid"])
        if data is None or len(data) != body.get("size") or body.get("oid") != args["oid"]:
            return Response.json(404, {"error": "object not stored"})
        return Response.json(200, {"success": True})

    def _validate_yaml(self, request: Request, _: dict[str, str]) -> Response:
        return Response.json(200, {"errors": [], "warnings": []})

    def _commit(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        if isinstance(repo := self._repo(args["repo"]), Response):
            return repo
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        changes: dict[str, StoredFile | None] = {}
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                changes[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                data = self.lfs_store.get(value["oid"])
                if data is None:
                    return Response.json(422, {"error": f"LFS object {value['oid']} not uploaded"})
                changes[value["path"]] = StoredFile(data, True)
            elif line["key"] == "deletedFile":
                changes[value["path"]] = None
        for path, stored in changes.items():
            if stored is None:
                repo.files.pop(path, None)
            else:
                repo.files[path] = stored
        oid = self._new_commit(repo, header["summary"], sorted(changes))
        return Response.json(
            200,
            {"commitUrl": f"{self.url}/{args['repo']}/commit/{oid}", "commitOid": oid},
        )

    def _resolve(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=False):
            return denied
        if isinstance(repo := self._repo(args["repo"]), Response):
            return repo
        stored = repo.files.get(args["path"])
        if stored is None:
            return Response.json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            )
        return Response(200, stored.data, {"Content-Type": "application/octet-stream"})
