"""``soprano-tts cache``: where the model cache is, what it holds, how big and how old.

One row per cached revision of every model in the cache (not only Soprano's: the table is about
disk use). Also home of the plain-text table and size/age formatting that ``list`` shares.
"""
import json
import time
from dataclasses import asdict
from datetime import datetime, timezone

from .options import add_listing_options


def add_parser(sub):
    p = sub.add_parser("cache", help="show cache location, models, sizes, ages",
                       description="Show the model cache: location, cached models with their "
                                   "revisions, sizes, states and ages.")
    add_listing_options(p)
    return p


def run(args) -> int:
    from .. import hub
    scan = hub.scan_cache(args.cache_dir)
    if args.json:
        print(json.dumps({
            "cache_dir": str(scan.cache_dir),
            "size": scan.size,
            "incomplete_size": scan.incomplete_size,
            "revisions": [dict(asdict(r), path=str(r.path),
                               last_modified=iso_time(r.last_modified),
                               last_accessed=iso_time(r.last_accessed))
                          for r in scan.revisions],
            "warnings": list(scan.warnings),
        }, indent=2))
        return 0
    print(f"cache: {scan.cache_dir}")
    rows = [(r.repo_id, r.commit[:12], ",".join(r.refs) or "-", format_size(r.size),
             str(len(r.files)), r.state, format_age(r.last_modified),
             format_age(r.last_accessed)) for r in scan.revisions]
    if rows:
        print(render_table(("MODEL", "REVISION", "REFS", "SIZE", "FILES", "STATE",
                            "MODIFIED", "ACCESSED"), rows))
    else:
        print("no models cached")
    print(f"total: {format_size(scan.size)} in {len(scan.revisions)} revision(s)"
          + (f", {format_size(scan.incomplete_size)} in interrupted downloads"
             if scan.incomplete_size else ""))
    for warning in scan.warnings:
        print(f"warning: {warning}")
    return 0


def render_table(headers, rows) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in lines)


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"


def format_age(timestamp: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= span:
            count = int(seconds // span)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
