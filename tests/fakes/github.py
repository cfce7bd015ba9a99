"""A fake GitHub REST API for releases: find by tag, create, list assets (paginated), upload to
the release's upload_url, download (through a redirect, like GitHub's storage), delete.

``digests=False`` leaves out the asset ``digest`` field, as GitHub did before mid-2025, so the
client must download and hash; ``corrupt_uploads=N`` flips a byte of the next N uploads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from urllib.parse import unquote

from fakes.http import FakeServer, Request, Response

REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclasses.dataclass
class Asset:
    id: int
    release_id: int
    name: str
    data: bytes


@dataclasses.dataclass
class Release:
    id: int
    repo: str
    tag: str


class FakeGitHub(FakeServer):
    def __init__(self, token: str, *, digests: bool = True, page_size: int = 100) -> None:
        super().__init__()
        self.token = token
        self.digests = digests
        self.page_size = page_size
        self.corrupt_uploads = 0
        self.upload_base: str | None = None  # hand out upload URLs on another base (a test)
        self.releases: dict[int, Release] = {}
        self.assets: dict[int, Asset] = {}
        self._next_id = 1
        self.route("GET", rf"^/repos/{REPO}/releases/tags/(?P<tag>.+)$", self._release_by_tag)
        self.route("POST", rf"^/repos/{REPO}/releases$", self._create_release)
        self.route("GET", rf"^/repos/{REPO}/releases/(?P<id>\d+)/assets$", self._list_assets)
        self.route("POST", rf"^/uploads/repos/{REPO}/releases/(?P<id>\d+)/assets$", self._upload)
        self.route("GET", rf"^/repos/{REPO}/releases/assets/(?P<id>\d+)$", self._get_asset)
        self.route("DELETE", rf"^/repos/{REPO}/releases/assets/(?P<id>\d+)$", self._delete_asset)
        self.route("GET", r"^/storage/(?P<id>\d+)$", self._storage)

    def stored(self, repo: str, tag: str) -> dict[str, str]:
        """asset name -> sha256 of the bytes the server holds."""
        release = next(r for r in self.releases.values() if (r.repo, r.tag) == (repo, tag))
        return {
            a.name: hashlib.sha256(a.data).hexdigest()
            for a in self.assets.values()
            if a.release_id == release.id
        }

    # --- helpers ----------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _auth(self, request: Request, *, write: bool) -> Response | None:
        header = request.headers.get("authorization")
        if header is not None and header not in (f"Bearer {self.token}", f"token {self.token}"):
            return Response.json(401, {"message": "Bad credentials"})
        if header is None and write:
            return Response.json(401, {"message": "Requires authentication"})
        return None

    def _release_json(self, release: Release) -> dict[str, object]:
        base = f"{self.url}/repos/{release.repo}/releases/{release.id}"
        return {
            "id": release.id,
            "tag_name": release.tag,
            "name": release.tag,
            "url": base,
            "assets_url": f"{base}/assets",
            "upload_url": f"{self.upload_base or self.url}/uploads/repos/{release.repo}"
            f"/releases/{release.id}"
            "/assets{?name,label}",
            "assets": [
                self._asset_json(a) for a in self.assets.values() if a.release_id == release.id
            ],
        }

    def _asset_json(self, asset: Asset) -> dict[str, object]:
        release = self.releases[asset.release_id]
        return {
            "id": asset.id,
            "name": asset.name,
            "size": len(asset.data),
            "state": "uploaded",
            "content_type": "application/octet-stream",
            "digest": f"sha256:{hashlib.sha256(asset.data).hexdigest()}" if self.digests else None,
            "url": f"{self.url}/repos/{release.repo}/releases/assets/{asset.id}",
            "browser_download_url": f"{self.url}/storage/{asset.id}",
        }

    # --- endpoints --------------------------------------------------------------------------
    def _release_by_tag(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=False):
            return denied
        for release in self.releases.values():
            if (release.repo, release.tag) == (args["repo"], unquote(args["tag"])):
                return Response.json(200, self._release_json(release))
        return Response.json(404, {"message": "Not Found"})

    def _create_release(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        tag = request.json()["tag_name"]
        if any((r.repo, r.tag) == (args["repo"], tag) for r in self.releases.values()):
            return Response.json(
                422, {"message": "Validation Failed", "errors": [{"code": "already_exists"}]}
            )
        release = Release(self._new_id(), args["repo"], tag)
        self.releases[release.id] = release
        return Response.json(201, self._release_json(release))

    def _list_assets(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=False):
            return denied
        release_id = int(args["id"])
        per_page = min(int(request.query.get("per_page", ["30"])[0]), self.page_size)
        page = int(request.query.get("page", ["1"])[0])
        assets = sorted(
            (a for a in self.assets.values() if a.release_id == release_id), key=lambda a: a.id
        )
        chunk = assets[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(assets):
            next_url = f"{self.url}{request.path}?per_page={per_page}&page={page + 1}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return Response.json(200, [self._asset_json(a) for a in chunk], headers)

    def _upload(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        release_id = int(args["id"])
        name = request.query["name"][0]
        if any(a.release_id == release_id and a.name == name for a in self.assets.values()):
            return Response.json(
                422, {"message": "Validation Failed", "errors": [{"code": "already_exists"}]}
            )
        data = request.body
        if self.corrupt_uploads > 0 and data:
            self.corrupt_uploads -= 1
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        asset = Asset(self._new_id(), release_id, name, data)
        self.assets[asset.id] = asset
        return Response.json(201, self._asset_json(asset))

    def _get_asset(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=False):
            return denied
        asset = self.assets.get(int(args["id"]))
        if asset is None:
            return Response.json(404, {"message": "Not Found"})
        if request.headers.get("accept") == "application/octet-stream":
            return Response(302, headers={"Location": f"{self.url}/storage/{asset.id}"})
        return Response.json(200, self._asset_json(asset))

    def _delete_asset(self, request: Request, args: dict[str, str]) -> Response:
        if denied := self._auth(request, write=True):
            return denied
        if self.assets.pop(int(args["id"]), None) is None:
            return Response.json(404, {"message": "Not Found"})
        return Response(204)

    def _storage(self, request: Request, args: dict[str, str]) -> Response:
        asset = self.assets.get(int(args["id"]))
        if asset is None:
            return Response.json(404, {"message": "Not Found"})
        return Response(200, asset.data, {"Content-Type": "application/octet-stream"})
