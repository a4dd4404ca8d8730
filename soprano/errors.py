"""Errors users see: each names the file or option at fault and what is wrong with it."""


class SopranoError(Exception):
    """Base class for errors caused by input, files or environment rather than by a bug."""


class ModelFileError(SopranoError):
    """A model file is missing, unreadable, truncated or holds tensors of the wrong shape."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelNotFoundError(SopranoError):
    """The model is neither a local directory nor reachable on the hub."""
