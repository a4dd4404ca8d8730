"""``python -m soprano.ops [--json]``: the same report as ``soprano-tts env``."""
import sys

from ..cli import main

sys.exit(main(["env", *sys.argv[1:]]))
