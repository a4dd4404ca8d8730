"""``soprano-tts list``: the models Soprano knows (built-in catalogue) and the ones in the cache.

A catalogue model shows even when not downloaded; a cached model shows when it is in the
catalogue or was fetched by ``soprano-tts download`` (other programs' models are ``cache``'s
business). States: not-downloaded, partial, complete, verified (defined in ``soprano.hub``).
"""
import json
from dataclasses import asdict

from .options import add_listing_options


def add_parser(sub):
    p = sub.add_parser("list", help="list known and cached models",
                       description="List the known Soprano models and the ones in the cache, "
                                   "with size and state.")
    add_listing_options(p)
    return p


def run(args) -> int:
    from .. import hub
    from .cache import format_size, render_table
    rows = hub.list_models(args.cache_dir)
    if args.json:
        print(json.dumps({"cache_dir": str(hub.cache_root(args.cache_dir)),
                          "models": [asdict(row) for row in rows]}, indent=2))
        return 0
    print(render_table(("MODEL", "FORMAT", "STATE", "SIZE", "DESCRIPTION"),
                       [(r.repo_id, r.layout, r.state, format_size(r.size), r.description)
                        for r in rows]))
    return 0
