"""Publishing a set of files to a Hugging Face Hub model repo through huggingface_hub.

Only files whose remote copy differs are committed (compared through the paths-info endpoint: the
LFS sha256 for large files, the git blob id for small ones), so re-publishing commits nothing.
Xet is switched off for the duration: the classic LFS protocol (batch, PUT, verify) is what the Hub
still accepts from every client, needs no extra service, and is what the tests' fake Hub speaks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from mlcpatch.publish.console import Console
from mlcpatch.publish.errors import AuthError, PublishError, VerifyError
from mlcpatch.publish.hashing import git_blob_sha1
from mlcpatch.publish.payload import Payload
from mlcpatch.publish.plan import Plan, classify
from mlcpatch.publish.retry import RetryPolicy, causes, short_reason, with_retries
from mlcpatch.publish.tokens import Secret

log = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "https://huggingface.co"
REVISION = "main"
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_PATHS_PER_REQUEST = 100


@contextlib.contextmanager
def _hub_session(timeout: float) -> Iterator[None]:
    """huggingface_hub's shared HTTP client with a timeout (its default has none), Xet off, and
    no progress bars (they flood CI logs; publish prints one line per verified file instead)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        _http,
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
        set_client_factory,
    )

    # The library has no public getter for its factory; keep whatever was there to put it back.
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    previous_xet = constants.HF_HUB_DISABLE_XET

    def factory() -> Any:
        client = previous()
        client.timeout = httpx2.Timeout(timeout)
        return client

    bars_were_disabled = are_progress_bars_disabled()
    set_client_factory(factory)
    constants.HF_HUB_DISABLE_XET = True
    disable_progress_bars()
    try:
        yield
    finally:
        set_client_factory(previous)
        constants.HF_HUB_DISABLE_XET = previous_xet
        if not bars_were_disabled:
            enable_progress_bars()


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    for e in causes(exc):
        if isinstance(e, httpx2.TransportError | VerifyError):
            return True
        if isinstance(e, HfHubHTTPError) and _status(e) in _TRANSIENT_STATUS:
            return True
    return False


class HubPublisher:
    def __init__(
        self,
        repo_id: str,
        *,
        endpoint: str,
        token: Secret | None,
        policy: RetryPolicy,
        console: Console,
        private: bool = False,
    ) -> None:
        self.repo_id = repo_id
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.policy = policy
        self.console = console
        self.private = private

    @property
    def destination(self) -> str:
        return f"Hugging Face {self.repo_id} ({self.endpoint}, {REVISION})"

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        # token=False: never fall back to a token saved on disk; tokens come from HF_TOKEN only.
        token = self._token.reveal() if self._token else False
        return HfApi(endpoint=self.endpoint, token=token, library_name="mlcpatch")

    def _retry(self, what: str, step: Callable[[], Any]) -> Any:
        return with_retries(
            step, what=what, policy=self.policy, is_transient=is_transient, notify=self.console.warn
        )

    def _remote(self, api: Any, names: list[str]) -> dict[str, Any] | None:
        """path -> RepoFile for the names that exist on the Hub; None when the repo does not."""
        from huggingface_hub import RepoFile
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        found: dict[str, Any] = {}
        try:
            for start in range(0, len(names), _PATHS_PER_REQUEST):
                chunk = names[start : start + _PATHS_PER_REQUEST]
                for entry in api.get_paths_info(self.repo_id, chunk, revision=REVISION):
                    if isinstance(entry, RepoFile):
                        found[entry.path] = entry
        except RepositoryNotFoundError:
            return None
        except RevisionNotFoundError:  # a repo without a first commit
            return {}
        return found

    @staticmethod
    def _matches(payload: Payload, remote: Any) -> bool:
        if remote.size != payload.size:
            return False
        if remote.lfs is not None:
            return remote.lfs.sha256 == payload.sha256
        # Small files live in git itself: the Hub gives their git blob id, not a sha256.
        return remote.blob_id == git_blob_sha1(payload.read())

    def _plan(self, payloads: list[Payload], remote: dict[str, Any] | None) -> Plan:
        note = "repo exists" if remote is not None else "repo does not exist (or is private)"
        steps = [
            classify(p, None if p.name not in (remote or {}) else self._matches(p, remote[p.name]))
            for p in payloads
        ]
        return Plan(self.destination, note, steps)

    def _read(self, api: Any, names: list[str]) -> dict[str, Any] | None:
        return self._retry(f"reading {self.repo_id}", lambda: self._remote(api, names))

    def plan(self, payloads: list[Payload]) -> Plan:
        """What publish would do; reads from the Hub, writes nothing."""
        with self._errors(), _hub_session(self.policy.timeout):
            api = self._api()
            return self._plan(payloads, self._read(api, [p.name for p in payloads]))

    def publish(self, payloads: list[Payload], title: str) -> Plan:
        names = [p.name for p in payloads]
        with self._errors(), _hub_session(self.policy.timeout):
            api = self._api()
            remote = self._read(api, names)
            plan = self._plan(payloads, remote)
            if remote is None:
                plan.note = "creating the repo"
            for line in plan.lines(dry_run=False):
                self.console.say(line)
            if remote is None:
                self._retry(
                    f"creating {self.repo_id}",
                    # None, not False: an org whose repos default to private keeps that default.
                    lambda: api.create_repo(
                        self.repo_id, exist_ok=True, private=True if self.private else None
                    ),
                )
            if plan.to_send:
                by_name = {p.name: p for p in payloads}
                self._retry("committing", lambda: self._commit_changed(api, by_name, title))
                sent = [s.payload for s in plan.to_send]
                self._retry("verifying the upload", lambda: self._verify(api, sent))
            return plan

    def _commit_changed(self, api: Any, payloads: dict[str, Payload], title: str) -> None:
        # Re-read first: after a lost commit response the retry must not commit the files again.
        from huggingface_hub import CommitOperationAdd

        remote = self._remote(api, list(payloads)) or {}
        changed = [
            p
            for p in payloads.values()
            if p.name not in remote or not self._matches(p, remote[p.name])
        ]
        if not changed:
            return
        api.create_commit(
            self.repo_id,
            [CommitOperationAdd(p.name, p.hub_source()) for p in changed],
            commit_message=f"{title}: {len(changed)} file(s) from mlcpatch publish",
            revision=REVISION,
        )

    def _verify(self, api: Any, sent: list[Payload]) -> None:
        remote = self._remote(api, [p.name for p in sent]) or {}
        for p in sent:
            entry = remote.get(p.name)
            if entry is None:
                raise VerifyError(f"{p.name}: not on {self.repo_id} after the commit")
            if entry.lfs is not None:
                size, sha256 = entry.lfs.size, entry.lfs.sha256
            else:
                data = self._download(p.name)
                size, sha256 = len(data), hashlib.sha256(data).hexdigest()
            if (size, sha256) != (p.size, p.sha256):
                raise VerifyError(
                    f"{p.name}: the Hub holds {size} bytes sha256:{sha256[:12]}…, "
                    f"sent {p.size} bytes sha256:{p.sha256[:12]}…"
                )
            self.console.say(f"  verified {p.name}  {size} bytes  sha256:{sha256}")

    def _download(self, name: str) -> bytes:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, name, revision=REVISION, endpoint=self.endpoint)
        token = self._token.reveal() if self._token else False
        response = get_session().get(
            url,
            headers=build_hf_headers(token=token, library_name="mlcpatch"),
            follow_redirects=True,
        )
        hf_raise_for_status(response)
        return response.content

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Library exceptions -> one-line PublishErrors (401/403 -> AuthError)."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        try:
            yield
        except PublishError:
            raise
        except Exception as exc:
            log.debug("Hugging Face step failed", exc_info=True)
            chain = causes(exc)
            status = next((_status(e) for e in chain if isinstance(e, HfHubHTTPError)), None)
            if status in (401, 403):
                raise AuthError(
                    f"Hugging Face refused the token in HF_TOKEN (HTTP {status}) for "
                    f"{self.repo_id}: check that it is valid and may write to that repo"
                ) from None
            if any(isinstance(e, httpx2.TransportError) for e in chain):
                raise PublishError(
                    f"could not reach {self.endpoint} after {self.policy.retries} retries: "
                    f"{short_reason(exc)}"
                ) from None
            raise PublishError(f"Hugging Face {self.repo_id}: {short_reason(exc)}") from None
