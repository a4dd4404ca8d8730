"""Fault injection for the fault tests (tests/test_server_faults.py): the model step or the audio
decoder raises inside a live server, for jobs whose text holds a marker, so the tests drive the
real error paths of a real process rather than a stand-in.

Off unless the server starts with ``SOPRANO_INJECT_FAULTS`` in its environment, e.g.
``step=kaboom`` or ``step=kaboom,decode=crash``: the scheduler then calls ``check`` with the
texts of the jobs in each decode step (``step``) and in each decoder call (``decode``). Unset,
as in production, ``MARKERS`` is empty and the scheduler never calls it.
"""
import os

ENV = "SOPRANO_INJECT_FAULTS"
PLACES = ("step", "decode")


class InjectedFault(RuntimeError):
    pass


def parse(spec: str) -> dict[str, str]:
    """``"step=a,decode=b"`` -> ``{"step": "a", "decode": "b"}``."""
    markers = {}
    for item in filter(None, spec.split(",")):
        place, _, marker = item.partition("=")
        if place not in PLACES or not marker:
            raise ValueError(f"{ENV}: expected step=MARKER or decode=MARKER, got {item!r}")
        markers[place] = marker
    return markers


MARKERS = parse(os.environ.get(ENV, ""))


def check(place: str, texts) -> None:
    """Raise ``InjectedFault`` if a marker is set for ``place`` and one of ``texts`` holds it."""
    marker = MARKERS.get(place)
    if marker is not None and any(marker in text for text in texts):
        raise InjectedFault(f"injected fault in the {place}")
