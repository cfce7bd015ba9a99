"""Publishing files as assets of a GitHub release, through the REST API.

An asset already there with the same size and sha256 is skipped (GitHub's ``digest`` field when it
has one, else the asset is downloaded and hashed); a different one is deleted and uploaded again.
Each asset is handled in one retried step that re-lists the release first, so a retry after a lost
response never leaves two copies or a half-uploaded asset behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from mlcpatch.publish.console import Console
from mlcpatch.publish.errors import AuthError, PublishError, TransientError, VerifyError
from mlcpatch.publish.payload import Payload
from mlcpatch.publish.plan import Plan, classify
from mlcpatch.publish.retry import RetryPolicy, causes, short_reason, with_retries
from mlcpatch.publish.tokens import Secret

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_RELEASE = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)@(?P<tag>[^\s@]+)$")
_URI_TEMPLATE = re.compile(r"\{[^}]*\}$")
_CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ReleaseRef:
    repo: str  # owner/name
    tag: str

    @classmethod
    def parse(cls, text: str) -> ReleaseRef:
        match = _RELEASE.match(text)
        if not match:
            raise PublishError(f"{text!r} is not OWNER/REPO@TAG")
        if any(part in (".", "..") for part in match["repo"].split("/")):
            raise PublishError(f"{text!r}: '.' and '..' are not repository names")
        problem = ref_name_problem(match["tag"])
        if problem:
            raise PublishError(f"{text!r}: {match['tag']!r} is not a valid tag name ({problem})")
        return cls(match["repo"], match["tag"])

    @property
    def quoted_tag(self) -> str:
        """The tag as one URL path segment: a '/' in a tag must not become a path step."""
        return quote(self.tag, safe="")


def ref_name_problem(name: str) -> str | None:
    """What git's ref-name rules (git check-ref-format) have against `name`, or None."""
    if not name or name == "@":
        return "empty or '@'"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in " ~^:?*[\\" for c in name):
        return "control characters, spaces and ~^:?*[\\ are not allowed"
    if ".." in name or "@{" in name or "//" in name:
        return "'..', '@{' and '//' are not allowed"
    if name.startswith("/") or name.endswith(("/", ".")):
        return "it may not start with '/' or end with '/' or '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "no part may start with '.' or end with '.lock'"
    return None


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _token_hosts(base_url: str) -> frozenset[str]:
    """Hosts the token may go to: the API's, and its uploads host (api.X -> uploads.X)."""
    host = urlsplit(base_url).hostname or ""
    hosts = {host}
    if host.startswith("api."):
        hosts.add("uploads." + host[len("api.") :])
    return frozenset(hosts)


def check_url(url: str, hosts: frozenset[str], what: str) -> None:
    """Refuse a URL the token must not be sent to: another host, or plain http off this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or (
        parts.scheme == "http" and host not in _LOCAL_HOSTS
    ):
        raise PublishError(f"{what} {url.split('?')[0]!r} is not https: the token is not sent")
    if host not in hosts:
        raise PublishError(
            f"{what} {url.split('?')[0]!r} is on host {host!r}, not one of "
            f"{', '.join(sorted(hosts))}: the token is not sent there"
        )


class HTTPStatusError(PublishError):
    """GitHub answered with a status that is neither success, auth failure nor transient."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_transient(exc: BaseException) -> bool:
    transient = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        TransientError,
        VerifyError,
    )
    return any(isinstance(e, transient) for e in causes(exc))


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


class GitHubApi:
    """Authenticated requests with GitHub's headers, a timeout, and statuses mapped to errors."""

    def __init__(
        self,
        base_url: str,
        token: Secret | None,
        policy: RetryPolicy,
        console: Console,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._hosts = _token_hosts(self.base_url)
        check_url(self.base_url, self._hosts, "the GitHub API URL")
        self._token = token
        self.policy = policy
        self.console = console
        self._session = requests.Session()
        # The token goes on each request, not on the session: nothing long-lived holds it.
        self._session.headers.update(
            {
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "mlcpatch-publish",
            }
        )

    def retry(self, what: str, step: Callable[[], Any]) -> Any:
        return with_retries(
            step, what=what, policy=self.policy, is_transient=is_transient, notify=self.console.warn
        )

    def request(
        self, method: str, url: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> requests.Response:
        """One attempt; raises TransientError for statuses worth retrying."""
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        check_url(url, self._hosts, f"GitHub {method}")  # URLs the API hands back included
        headers = dict(kwargs.pop("headers", {}))
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        response = self._session.request(
            method, url, headers=headers, timeout=self.policy.timeout, **kwargs
        )
        if response.status_code in ok:
            return response
        where = f"GitHub {method} {url.split('?')[0]}"
        status = response.status_code
        rate_limited = status == 403 and response.headers.get("X-RateLimit-Remaining") == "0"
        if status in _TRANSIENT_STATUS or rate_limited:
            raise TransientError(f"{where}: HTTP {status} {_message(response)}".rstrip())
        if status in (401, 403):
            raise AuthError(
                f"GitHub refused the token in GITHUB_TOKEN (HTTP {status} {_message(response)}) "
                f"for {where}: check that it is valid and may write releases (contents: write)"
            )
        raise HTTPStatusError(status, f"{where}: HTTP {status} {_message(response)}".rstrip())

    def paginate(self, url: str) -> list[Any]:
        items: list[Any] = []
        next_url: str | None = url
        while next_url:
            response = self.request("GET", next_url)
            items.extend(response.json())
            next_url = response.links.get("next", {}).get("url")
        return items

    def download_sha256(self, asset: dict[str, Any]) -> tuple[int, str]:
        """Size and sha256 of an asset's stored bytes (redirects to storage drop the token)."""
        digest = hashlib.sha256()
        size = 0
        with self.request(
            "GET", asset["url"], headers={"Accept": "application/octet-stream"}, stream=True
        ) as response:
            for chunk in response.iter_content(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()


class ReleasePublisher:
    def __init__(self, ref: ReleaseRef, api: GitHubApi) -> None:
        self.ref = ref
        self.api = api

    @property
    def destination(self) -> str:
        return f"GitHub release {self.ref.repo}@{self.ref.tag} ({self.api.base_url})"

    def _find_release(self) -> dict[str, Any] | None:
        try:
            return self.api.request(
                "GET", f"/repos/{self.ref.repo}/releases/tags/{self.ref.quoted_tag}"
            ).json()
        except HTTPStatusError as exc:
            if exc.status == 404:
                return None
            raise

    def _find_or_create_release(self) -> dict[str, Any]:
        release = self._find_release()
        if release is not None:
            return release
        body: dict[str, Any] = {"tag_name": self.ref.tag, "name": self.ref.tag}
        # In a workflow, tag the commit being built rather than the default branch's head.
        if os.environ.get("GITHUB_SHA"):
            body["target_commitish"] = os.environ["GITHUB_SHA"]
        url = f"/repos/{self.ref.repo}/releases"
        try:
            return self.api.request("POST", url, ok=(201,), json=body).json()
        except HTTPStatusError as exc:
            if exc.status == 422:  # created meanwhile (or by our own attempt whose answer was lost)
                raise TransientError(exc.message) from None
            raise

    def _assets(self, release: dict[str, Any]) -> dict[str, dict[str, Any]]:
        url = f"/repos/{self.ref.repo}/releases/{release['id']}/assets?per_page=100"
        return {a["name"]: a for a in self.api.paginate(url)}

    def _stored(self, asset: dict[str, Any]) -> tuple[int, str]:
        digest = asset.get("digest")
        if isinstance(digest, str) and digest.startswith("sha256:"):
            return asset["size"], digest.removeprefix("sha256:")
        return self.api.download_sha256(asset)

    def _matches(self, payload: Payload, asset: dict[str, Any]) -> bool:
        if asset.get("state", "uploaded") != "uploaded" or asset.get("size") != payload.size:
            return False
        return self._stored(asset) == (payload.size, payload.sha256)

    def _plan(self, payloads: list[Payload], release: dict[str, Any] | None) -> Plan:
        assets = self._assets(release) if release else {}
        note = "release exists" if release else "release does not exist"
        steps = [
            classify(p, self._matches(p, assets[p.name]) if p.name in assets else None)
            for p in payloads
        ]
        return Plan(self.destination, note, steps)

    def _read(self, payloads: list[Payload]) -> tuple[dict[str, Any] | None, Plan]:
        def step() -> tuple[dict[str, Any] | None, Plan]:
            release = self._find_release()
            return release, self._plan(payloads, release)

        return self.api.retry(f"reading {self.destination}", step)

    def plan(self, payloads: list[Payload]) -> Plan:
        """What publish would do; only GET requests."""
        return self._read(payloads)[1]

    def publish(self, payloads: list[Payload]) -> Plan:
        release, plan = self._read(payloads)
        if release is None:
            plan.note = "creating the release"
            release = self.api.retry("creating the release", self._find_or_create_release)
        for line in plan.lines(dry_run=False):
            self.api.console.say(line)
        for step in plan.to_send:
            self.api.retry(
                f"uploading {step.payload.name}", lambda p=step.payload: self._sync(release, p)
            )
        return plan

    def _sync(self, release: dict[str, Any], payload: Payload) -> None:
        existing = self._assets(release).get(payload.name)
        if existing is not None:
            if self._matches(payload, existing):
                return  # uploaded by an attempt whose response was lost
            self.api.request(
                "DELETE", f"/repos/{self.ref.repo}/releases/assets/{existing['id']}", ok=(204, 404)
            )
        upload_url = _URI_TEMPLATE.sub("", release["upload_url"])
        with payload.open() as body:
            try:
                asset = self.api.request(
                    "POST",
                    upload_url,
                    ok=(201,),
                    params={"name": payload.name},
                    headers={"Content-Type": "application/octet-stream"},
                    data=body,
                ).json()
            except HTTPStatusError as exc:
                if exc.status == 422:  # a leftover asset of that name: the retry re-lists, deletes
                    raise TransientError(exc.message) from None
                raise
        self._verify(payload, asset)

    def _verify(self, payload: Payload, asset: dict[str, Any]) -> None:
        size, sha256 = self._stored(asset)
        if (size, sha256) != (payload.size, payload.sha256) or asset.get("size") != payload.size:
            raise VerifyError(
                f"{payload.name}: GitHub holds {size} bytes sha256:{sha256[:12]}…, "
                f"sent {payload.size} bytes sha256:{payload.sha256[:12]}…"
            )
        self.api.console.say(f"  verified {payload.name}  {size} bytes  sha256:{sha256}")


def wrap_errors(exc: Exception, base_url: str, retries: int) -> PublishError:
    """Whatever escaped the retries, as a one-line PublishError."""
    if isinstance(exc, PublishError):
        return exc
    if isinstance(exc, TransientError):
        return PublishError(f"{exc} (gave up after {retries} retries)")
    if isinstance(exc, requests.RequestException):
        return PublishError(
            f"could not reach {base_url} after {retries} retries: {short_reason(exc)}"
        )
    return PublishError(f"GitHub: {short_reason(exc)}")
