"""What can go wrong fetching or checking a model, one class per next step for the user:
check the network, fix the model id or files, fetch again, or fetch at all."""
from ..errors import SopranoError


class HubUnreachableError(SopranoError):
    """The hub (or the --hf-endpoint mirror) did not answer, after all retries."""


class DownloadError(SopranoError):
    """The hub answered, but not with what was asked for (no such repo, revision or file)."""


class VerificationError(SopranoError):
    """A file's size or checksum differs from the hub's metadata."""


class NotCachedError(SopranoError):
    """The model, or the metadata needed to check it offline, is not in the cache."""
