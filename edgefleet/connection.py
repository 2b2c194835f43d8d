"""Why no hub answered at a URL, in one line an operator can act on.

Shared by the API client (httpx) and ``edgefleet agent enrol`` (urllib, on a device with
only the agent's dependencies), so this module imports neither.
"""

from __future__ import annotations

import http.client
import json
import ssl

__all__ = ["NOT_A_HUB", "HubConnectionError", "connection_error", "enrol_error"]


class HubConnectionError(Exception):
    """No edgefleet hub answered at ``url``; ``reason`` says the likely cause."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no edgefleet hub at {url}: {reason}")
        self.url = url
        self.reason = reason


NOT_A_HUB = (
    "this is not an edgefleet hub (its /health is not the hub's; a device's local"
    " endpoint, 8780 by default, is not the hub's API, 8700 by default): check --hub"
)


def connection_error(url: str, e: Exception) -> HubConnectionError:
    """What an httpx (or urllib) failure to reach ``url`` most likely means, in one line."""
    text = f"{e} {getattr(e, 'reason', '')} {e.__cause__ or ''}"
    said = _short(_inner(e))
    if isinstance(e, ssl.SSLError) or "SSL" in text or "TLS" in text:
        if url.startswith("https:"):
            return HubConnectionError(
                url, f"TLS failed ({said}); a hub started by `edgefleet hub serve`"
                " speaks plain http: try http://"
            )  # fmt: skip
        return HubConnectionError(url, f"TLS error ({said}): check http:// vs https://")
    if "refused" in text.lower():
        return HubConnectionError(
            url, "connection refused: is the hub running (`edgefleet hub serve`), and on"
            " this port? (`edgefleet hub wait` waits for one that is starting)"
        )  # fmt: skip
    if _broken(e) or "reset by peer" in text:
        hint = ": if it speaks TLS, try https://" if url.startswith("http:") else ""
        return HubConnectionError(url, f"the server dropped the connection ({said}){hint}")
    if "Timeout" in type(e).__name__ or "timed out" in text:
        return HubConnectionError(url, "no answer in time: check the host and any firewall")
    if "Name or service not known" in text or "nodename nor servname" in text:
        return HubConnectionError(url, "unknown host name: check --hub")
    return HubConnectionError(url, f"{type(_inner(e)).__name__}: {said}")


def _inner(e: BaseException) -> BaseException:
    """urllib's URLError wraps the real error in ``reason``: that one says more."""
    reason = getattr(e, "reason", None)
    return reason if isinstance(reason, BaseException) else e


def _short(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:160]


def _broken(e: BaseException) -> bool:
    """The server closed or garbled the connection (httpx's RemoteProtocolError, urllib's
    RemoteDisconnected / BadStatusLine): often TLS spoken to by plain http."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, http.client.HTTPException) or "RemoteProtocol" in type(seen).__name__:
            return True
        seen = getattr(seen, "reason", None) or seen.__cause__
        if not isinstance(seen, BaseException):
            return False
    return False


def enrol_error(url: str, e: Exception) -> Exception:
    """``edgefleet agent enrol``'s urllib failure as one line: the hub's refusal with its
    reason, or why no hub answered at ``url``."""
    from urllib.error import HTTPError

    if isinstance(e, HTTPError):
        try:
            body = json.loads(e.read())
        except ValueError:
            body = None
        if e.code in (404, 405) or not isinstance(body, dict) or "error" in body:
            return HubConnectionError(url, NOT_A_HUB)  # the hub answers {"detail": ...}
        detail = body.get("detail", e.reason)
        return RuntimeError(f"the hub at {url} refused the enrolment ({e.code}): {detail}")
    if isinstance(e, ValueError):  # a 200 that is not the hub's JSON
        return HubConnectionError(url, NOT_A_HUB)
    return connection_error(url, e)
