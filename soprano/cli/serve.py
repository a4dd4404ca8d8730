"""``soprano-tts serve``: run the streaming server (options as the Soprano-RS server's)."""
import argparse
import asyncio

from .options import (MODEL_SAMPLE_RATE, add_log_options, add_model_options, add_option,
                      add_sampling_options, float_range, int_range)


LIMITS = (
    "Limits: a WebSocket message over 64 KiB closes the session with 1009, a text message that "
    "is not UTF-8 with 1007; a session that does not read what it asks for (64 messages, 256 "
    "KiB of them or 64 audio frames queued, or one waiting --write-timeout) or sends nothing "
    "within --first-message-timeout is closed with 1008; sessions beyond --max-sessions get an "
    "error and 1013; messages beyond --max-messages-per-second are dropped, the first of a run "
    "answered with an error. Bad "
    "values are quoted back cut to 64 characters. /v1/audio/speech takes application/json "
    "bodies of at most 64 KiB (else 415 or 413, OpenAI-shaped). With API keys, a request or "
    "WebSocket upgrade without one of them is answered 401 (OpenAI-shaped, WWW-Authenticate: "
    "Bearer).")


def add_parser(sub):
    p = sub.add_parser("serve", help="run the streaming TTS server",
                       description="Run the WebSocket/HTTP text-to-speech server.",
                       epilog=LIMITS)
    add_option(p, "--host", default="127.0.0.1",
               help="address to bind; the default serves this machine only, --host 0.0.0.0 "
                    "serves every interface (containers need it) (default: %(default)s)")
    add_option(p, "--port", type=int_range(1, 65535), default=8080,
               help="port to listen on (default: %(default)s)")
    add_model_options(p)
    add_option(p, "-w", "--workers", type=int_range(1, 64), default=2,
               help="audio decoder threads; the LM steps every running job together on one "
                    "more thread (default: %(default)s)")
    add_option(p, "--tts-inflight", type=int_range(1, 1024), default=16,
               help="synthesis jobs running at once, batched into each decode step; more wait "
                    "in a bounded queue, beyond which clients get 'server busy' "
                    "(default: %(default)s)")
    add_option(p, "--min-words", type=int_range(0, 1000), default=2,
               help="minimum words per text chunk (default: %(default)s)")
    add_option(p, "--include-text", action="store_true",
               help="put each chunk's text in its audio frame headers")
    add_option(p, "--decoder-batch-size", type=int_range(1, 256), default=1,
               help="audio windows (of any jobs) a decoder thread decodes in one batched call "
                    "(default: %(default)s)")
    add_sampling_options(p)
    add_option(p, "--sample-rate", type=int_range(8000, 192000), default=MODEL_SAMPLE_RATE,
               help="output sample rate; other than 32000 is resampled (default: %(default)s)")
    add_option(p, "--max-new-tokens", type=int_range(1, 512), default=512,
               help="generated tokens per sentence at most (default: %(default)s)")
    add_option(p, "--allowed-origins", type=origin_list, default=(), metavar="ORIGINS",
               help="comma-separated origins (https://app.example:8443) whose web pages may "
                    "open WebSocket sessions, '*' for any; pages from other sites get 403 "
                    "(default: only the server's own page)")
    add_option(p, "--max-sessions", type=int_range(1, 100_000), default=128,
               help="WebSocket sessions open at once; one more is answered with an error "
                    "message and closed with 1013, try again later (default: %(default)s)")
    add_option(p, "--max-messages-per-second", type=int_range(0, 1_000_000), default=200,
               metavar="N",
               help="client messages a WebSocket session may send a second (bursts of N); "
                    "beyond it they are dropped and the first dropped is answered with one "
                    "'rate limited' error message, the session goes on; 0: no limit "
                    "(default: %(default)s)")
    add_option(p, "--api-key", type=api_key_list, action=ApiKeysAction, default=[],
               metavar="KEY",
               help="require this API key: 'Authorization: Bearer KEY' on /v1/audio/speech and "
                    "/v1/models, that header or ?api_key=KEY on the /v1/stream WebSocket (else "
                    "401); repeat it or give a comma-separated list for several keys. /healthz, "
                    "/metrics and the web page stay open (default: no key, all open)")
    add_option(p, "--api-key-file", default=None, metavar="PATH",
               help="more API keys, added to --api-key's: one per line (# comments); an "
                    "unreadable file or one with no key is an error")
    add_option(p, "--idle-timeout", type=float_range(0.0, lo_open=True), default=60.0,
               metavar="SECONDS",
               help="close an HTTP connection idle between requests, or still sending its "
                    "headers, after this long (default: %(default)s)")
    add_option(p, "--body-timeout", type=float_range(0.0, lo_open=True), default=30.0,
               metavar="SECONDS",
               help="close a connection whose request body has not all arrived after this "
                    "long (default: %(default)s)")
    add_option(p, "--first-message-timeout", type=float_range(0.0, lo_open=True),
               default=30.0, metavar="SECONDS",
               help="close a WebSocket session that sends no message this long after it "
                    "connects, with 1008 (default: %(default)s)")
    add_option(p, "--write-timeout", type=float_range(0.0, lo_open=True), default=30.0,
               metavar="SECONDS",
               help="close a WebSocket session (with 1008) or a /v1/audio/speech response "
                    "whose client has not taken what waits for it this long: a client that "
                    "stops reading must not keep a synthesis place (default: %(default)s)")
    add_log_options(p)
    return p


def api_key_list(text: str) -> list[str]:
    """``--api-key``: one key or a comma-separated list (never quoted back in an error)."""
    from ..server.auth import parse_key_list
    try:
        return parse_key_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


api_key_list.__name__ = "API key"


class ApiKeysAction(argparse.Action):
    """Repeatable ``--api-key``: the flags' keys together; given at all, they replace
    ``SOPRANO_API_KEY``'s (flag beats environment)."""

    def __call__(self, parser, namespace, values, option_string=None):
        keys = getattr(namespace, self.dest)
        setattr(namespace, self.dest, (keys if keys is not self.default else []) + values)


def origin_list(text: str) -> tuple[str, ...]:
    """``--allowed-origins``: "*" or scheme://host[:port] origins, lower case, comma-separated."""
    origins = tuple(o.strip().lower().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if origin != "*" and not (sep and scheme in ("http", "https") and host
                                  and "/" not in host):
            raise argparse.ArgumentTypeError(
                f"'{origin}' is not an origin: give scheme://host[:port] or '*'")
    return origins


origin_list.__name__ = "origins"


def api_keys(args) -> tuple[str, ...]:
    from ..server.auth import read_key_file
    keys = list(args.api_key)
    if args.api_key_file is not None:
        keys += read_key_file(args.api_key_file)
    return tuple(keys)


def run(args) -> int:
    from ..server.app import ServerSettings, serve
    settings = ServerSettings(
        model=args.model_path or args.model_id, decoder_path=args.decoder_path,
        device=args.device, cache_dir=args.cache_dir,
        download=args.download, backend=args.backend, workers=args.workers,
        threads=args.threads, max_batch=args.tts_inflight,
        min_words=args.min_words, include_text=args.include_text,
        decoder_batch_size=args.decoder_batch_size,
        sample_rate=args.sample_rate, temperature=args.temperature, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
        retries=args.hallucination_retries, max_sessions=args.max_sessions,
        max_messages_per_second=args.max_messages_per_second,
        idle_timeout=args.idle_timeout, body_timeout=args.body_timeout,
        first_message_timeout=args.first_message_timeout, write_timeout=args.write_timeout,
        allowed_origins=args.allowed_origins, api_keys=api_keys(args))
    if args.device == "metal":
        from ..errors import SopranoError
        raise SopranoError("device 'metal' (Apple GPUs) is not supported by soprano-tts; "
                           "use --device cpu or cuda")
    return asyncio.run(serve(settings, args.host, args.port))
