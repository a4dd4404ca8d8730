"""``soprano-tts env``: versions, devices, CPU features, backends and the op x backend table.

What a bug report needs (``soprano.ops.report``); ``--json`` for machines. Imports torch only
when run, so building the man pages stays light.
"""
import json


def add_parser(sub):
    p = sub.add_parser("env", help="show versions, devices, CPU features and kernel backends",
                       description="Print what this machine has and which backend runs each op "
                                   "(what `--backend auto` picks): paste it into bug reports.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args) -> int:
    from ..ops import report
    info = report.collect()
    print(json.dumps(info, indent=2) if args.json else report.format_text(info))
    return 0
