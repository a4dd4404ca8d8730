"""API keys (``--api-key``, ``SOPRANO_API_KEY``, ``--api-key-file``): parsing and checking.

With no key configured the server is open (the behaviour before keys existed). With one or more,
``/v1/audio/speech`` and ``/v1/models`` need ``Authorization: Bearer KEY`` and the ``/v1/stream``
WebSocket needs that header or ``?api_key=KEY`` (browsers cannot set headers on a WebSocket);
``/healthz``, ``/metrics``, the demo page and its static files stay open. A presented key is
compared with every configured key, each through SHA-256 and ``hmac.compare_digest``, so the time
taken depends neither on where a key differs nor on which key (if any) matched. Keys never
appear in logs or error messages: ``redact`` hides the query parameter in logged URLs.

Out of scope: per-key quotas or names, key rotation without a restart (restart with the new file).
"""
import hashlib
import hmac
import re
import urllib.parse

QUERY_PARAM = "api_key"
# RFC 6750's token characters; also keeps keys free of the comma that separates them in a list
_KEY = re.compile(r"[A-Za-z0-9\-._~+/=]+")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def check_key(key: str) -> str:
    """``key`` stripped, or ValueError; the message never quotes the key."""
    key = key.strip()
    if not key:
        raise ValueError("an API key is empty")
    if not _KEY.fullmatch(key):
        raise ValueError("an API key may hold only letters, digits and - . _ ~ + / = "
                         f"(one of {len(key)} characters does not)")
    return key


def parse_key_list(text: str) -> list[str]:
    """A comma-separated list of keys (``--api-key``, ``SOPRANO_API_KEY``)."""
    return [check_key(part) for part in text.split(",")]


def read_key_file(path: str) -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped. OSError or
    ValueError naming the file when it cannot be read, holds a bad key or no key at all."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OSError(f"cannot read API key file {path}: "
                      f"{e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                keys.append(check_key(line))
            except ValueError as e:
                raise ValueError(f"API key file {path} line {number}: {e}") from None
    if not keys:
        raise ValueError(f"API key file {path} holds no key (one per line, # comments)")
    return keys


class ApiKeys:
    """The configured keys, as SHA-256 digests; empty means no key is needed."""

    def __init__(self, keys=()):
        self._digests = tuple(_digest(k) for k in dict.fromkeys(keys))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def allows(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the keys (always true when none is configured)."""
        if not self._digests:
            return True
        digest = _digest(presented or "")
        match = False
        for key in self._digests:  # every key, no early exit
            match |= hmac.compare_digest(digest, key)
        return match and bool(presented)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def redact(uri: str) -> str:
    """``uri`` with the value of an ``api_key`` query parameter replaced by ``***``."""
    path, sep, query = uri.partition("?")
    if not sep or QUERY_PARAM not in query:
        return uri
    parts = [(k, "***" if k == QUERY_PARAM else v)
             for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)]
    return f"{path}?{urllib.parse.urlencode(parts, safe='*')}"
