"""``soprano-tts download``: fetch a model into the hub cache, check a cached one, or clean up.

Options and defaults are Soprano-RS's (``download [MODEL_ID] -c -f --hf-endpoint -r --timeout
--no-progress --no-verify --cleanup --max-age --verify``), plus ``--revision``. The work is done
by ``soprano.hub``; this module only maps options onto it and prints the outcome.
"""
import argparse
import logging
import sys

from .options import add_log_options, add_option, float_range, int_range


def comma_list(text: str) -> list:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated file names, got '{text}'")
    return names


def endpoint_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got '{text}'")
    return text.rstrip("/")


def add_parser(sub):
    p = sub.add_parser("download", help="download a model from the Hugging Face hub",
                       description="Download a model into the Hugging Face hub cache and check "
                                   "every file against the hub's checksums; or check a cached "
                                   "model offline (--verify); or delete unused ones (--cleanup).")
    add_option(p, "model_id", nargs="?", default=None, metavar="MODEL_ID",
               help="hub model id (default: ekwek/Soprano-1.1-80M; with --cleanup: every "
                    "Soprano model in the cache)")
    add_option(p, "-c", "--cache-dir", default=None, metavar="PATH",
               help="cache directory (default: the Hugging Face hub cache)")
    add_option(p, "-f", "--files", type=comma_list, default=None, metavar="FILES",
               help="comma-separated file names or glob patterns to fetch (default: the "
                    "model's files)")
    add_option(p, "--hf-endpoint", type=endpoint_url, default=None, metavar="URL",
               help="hub or mirror URL (default: $HF_ENDPOINT or https://huggingface.co)")
    add_option(p, "--revision", default="main", help="branch, tag or commit (default: main)")
    add_option(p, "-r", "--retries", type=int_range(0, 100), default=3, metavar="N",
               help="retries of a failed request, waiting 1, 2, 4... s between them "
                    "(default: %(default)s)")
    add_option(p, "--timeout", type=float_range(0.0, lo_open=True), default=300,
               metavar="SECONDS",
               help="seconds a request may wait for the server (default: %(default)s)")
    add_option(p, "--no-progress", action="store_true",
               help="no progress bars (they are off anyway when stderr is not a terminal)")
    mode = p.add_mutually_exclusive_group()
    add_option(mode, "--no-verify", action="store_true",
               help="skip the checksum check of downloaded files")
    add_option(mode, "--verify", action="store_true",
               help="check an already-downloaded model's sizes and checksums, offline")
    add_option(mode, "--cleanup", action="store_true",
               help="delete cached Soprano models not used for --max-age days")
    add_option(p, "--max-age", type=int_range(0), default=30, metavar="DAYS",
               help="age limit for --cleanup (default: %(default)s)")
    add_log_options(p)
    return p


def _gguf_load_problem(snapshot) -> str | None:
    """Why a backbone GGUF in ``snapshot`` (each is loaded, with its decoder) does not load on
    this machine's CPU, or None: a checksum proves the bytes are the hub's, not that they are a
    model soprano-tts runs."""
    from ..errors import SopranoError
    from ..model.locate import gguf_problem
    problem = gguf_problem(snapshot)
    if problem:
        return problem
    from ..api import SopranoTTS
    from ..model.locate import gguf_role
    for path in sorted(snapshot.rglob("*.gguf")):
        if gguf_role(path) != "decoder":
            try:
                SopranoTTS(path, device="cpu", max_batch=1)
            except SopranoError as e:
                return str(e)
    return None


def run(args) -> int:
    from .. import hub
    from .cache import format_size
    if not args.verbose and args.log != "debug":  # httpx2 logs every request at info level
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    if args.cleanup:
        removed = hub.cleanup(args.max_age, cache_dir=args.cache_dir, repo_id=args.model_id)
        for rev in removed:
            print(f"deleted {rev.repo_id}@{rev.commit[:12]} ({format_size(rev.size)})")
        print(f"freed {format_size(sum(r.size for r in removed))}: {len(removed)} revision(s) "
              f"unused for more than {args.max_age} days")
        return 0
    repo_id = args.model_id or hub.DEFAULT_MODEL_ID
    if args.verify:
        snapshot, results = hub.verify_cached(repo_id, revision=args.revision,
                                              cache_dir=args.cache_dir)
        for name, problem in results.items():
            print(f"{name}: {problem or 'ok'}")
        bad = [f"{name} ({problem})" for name, problem in results.items() if problem]
        if not bad and any(name.endswith(".gguf") for name in results):
            problem = _gguf_load_problem(snapshot)
            print(f"loads: {problem or 'ok'}")
            if problem:
                bad.append(f"the GGUF model does not load ({problem})")
        if bad:
            raise hub.VerificationError(
                f"{repo_id} in {snapshot}: {'; '.join(bad)}. Fetch it again with "
                f"`soprano-tts download {repo_id}`")
        print(f"{repo_id}: {len(results)} files match the hub's checksums ({snapshot})")
        return 0
    result = hub.download(repo_id, revision=args.revision, cache_dir=args.cache_dir,
                          files=args.files, endpoint=args.hf_endpoint, retries=args.retries,
                          timeout=args.timeout, verify=not args.no_verify,
                          progress=not args.no_progress and sys.stderr.isatty())
    checked = "checksums verified" if result.verified else "not verified (--no-verify)"
    print(f"{repo_id}@{result.commit[:12]}: {len(result.files)} files, "
          f"{format_size(result.size)}, {checked}")
    print(result.path)
    return 0
