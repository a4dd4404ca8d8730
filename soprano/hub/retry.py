"""Bounded retries for hub requests, and one-line reasons when they fail for good.

huggingface_hub retries little by itself and its errors span lines of advice meant for its own
CLI; here transient failures (network errors, 408/429/5xx) are retried with exponential backoff
and anything else goes up at once, and what the user sees is one line with the cause.
"""
import logging
import socket
import time

import httpx2  # huggingface_hub's HTTP client: its transport errors are the transient ones
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .errors import HubUnreachableError

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
MAX_BACKOFF_S = 60.0
_NO_NETWORK_HINT = ("without network, copy a hub cache holding the model from another machine "
                    "and point --cache-dir at it, or give serve/generate a local model "
                    "directory with --model-path")


def _no_network(error: BaseException | None) -> bool:
    """A host name that does not resolve: no network (or no DNS) here, which waiting will not
    fix, so the user hears it at once instead of after a minute of retries."""
    while error is not None:
        if isinstance(error, socket.gaierror):
            return True
        error = error.__cause__ or error.__context__
    return False


def _is_transient(error: BaseException | None) -> bool:
    """Network trouble and 5xx/429 answers are worth another try; a 404 is not. The hub wraps
    some of them (a failed file lookup becomes LocalEntryNotFoundError), so follow the causes."""
    while error is not None:
        if isinstance(error, httpx2.TransportError):
            return True
        if isinstance(error, HfHubHTTPError) and error.response is not None \
                and error.response.status_code in TRANSIENT_STATUS:
            return True
        error = error.__cause__
    return False


def reason(error: BaseException) -> str:
    """One line saying what went wrong: the HTTP answer or network error itself, found under
    the hub's wrappers (a failed lookup is re-raised as LocalEntryNotFoundError from it)."""
    while error.__cause__ is not None and not isinstance(
            error, (HfHubHTTPError, httpx2.TransportError)):
        error = error.__cause__
    text = " ".join(str(error).split()) or "no details"
    if len(text) > 300:  # the hub's messages go on with advice that does not apply here
        text = text[:300].rsplit(". ", 1)[0] + "."
    return f"{type(error).__name__}: {text}"


def with_retries(what: str, call, retries: int, backoff: float, endpoint: str):
    """Run ``call``, retrying transient failures ``retries`` times, waiting backoff * 2**n."""
    for attempt in range(retries + 1):
        try:
            return call()
        except OfflineModeIsEnabled as e:
            raise HubUnreachableError(f"{what}: HF_HUB_OFFLINE is set, so the hub is not "
                                      f"asked; unset it to download, or {_NO_NETWORK_HINT}") from e
        except Exception as e:  # classified here; anything not transient goes up unchanged
            if _no_network(e):
                raise HubUnreachableError(
                    f"{what}: the hub at {endpoint} cannot be reached ({reason(e)}); "
                    f"{_NO_NETWORK_HINT}") from e
            if not _is_transient(e):
                raise
            if attempt == retries:
                raise HubUnreachableError(
                    f"{what}: the hub at {endpoint} failed {retries + 1} attempt(s) "
                    f"({reason(e)}). Check the network and --hf-endpoint; "
                    f"{_NO_NETWORK_HINT}") from e
            delay = min(backoff * 2 ** attempt, MAX_BACKOFF_S)
            logger.warning("%s failed (%s); retry %d/%d in %.1f s",
                           what, reason(e), attempt + 1, retries, delay)
            time.sleep(delay)
