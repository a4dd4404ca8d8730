"""API keys (``--api-key``, ``SOPRANO_API_KEY``, ``--api-key-file``; ``soprano/server/auth.py``).

A live server with four keys from three sources: the official ``openai`` client and raw HTTP with
a key, a wrong one and none; the WebSocket with the key in its header or query, a wrong one and
none (401 before the upgrade); the endpoints that stay open; no key in the server's log. The
checker itself is unit-tested (every key compared through ``hmac.compare_digest``).
"""
import asyncio
import json
import subprocess
import urllib.error
import urllib.request

import openai
import pytest
from tornado.websocket import websocket_connect

from helpers import CLI, SENTENCE, RawWebSocket, speaks
from soprano.client import StreamClient, StreamError
from soprano.server import auth

KEYS = ("sk-flag-one-7d1e", "sk-flag-two-90ab", "sk-flag-three-c3f0", "sk-file-four-44aa")
WRONG = "sk-wrong-key-0000"


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    """A live server (debug logging) with KEYS: one flag, a comma list, a file with comments."""
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# deploy keys\n\n  {KEYS[3]}  \n# old: sk-revoked\n")
    s = start_server("--log", "debug", "--api-key", KEYS[0], "--api-key", f"{KEYS[1]},{KEYS[2]}",
                     "--api-key-file", str(key_file))
    yield s
    assert s.stop() == 0, s.stderr()


def request(port, path, key=None, body=None, authorization=None):
    """(status, headers, body) of GET ``path`` (POST when ``body``), with ``key`` as Bearer."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if authorization is not None:
        headers["Authorization"] = authorization
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav"}


def assert_401(status, headers, body, presented: bool):
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None
    assert ("Incorrect API key" if presented else "didn't provide an API key") in error["message"]


# --- HTTP -----------------------------------------------------------------------------------------
def client(port, key):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0,
                         timeout=60)


def test_openai_client_with_a_key_is_answered(keyed):
    audio = client(keyed.port, KEYS[0]).audio.speech.create(
        model="tts-1", voice="alloy", input="Hello.", response_format="wav").content
    assert audio[:4] == b"RIFF" and len(audio) > 44
    assert client(keyed.port, KEYS[3]).models.list().data[0].object == "model"


def test_openai_client_with_a_wrong_key_gets_authentication_error(keyed):
    with pytest.raises(openai.AuthenticationError) as e:
        client(keyed.port, WRONG).audio.speech.create(model="tts-1", voice="alloy",
                                                      input="Hello.")
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        client(keyed.port, WRONG).models.list()


def test_raw_http_needs_a_bearer_key(keyed):
    assert_401(*request(keyed.port, "/v1/audio/speech", body=SPEECH), presented=False)
    assert_401(*request(keyed.port, "/v1/audio/speech", WRONG, SPEECH), presented=True)
    assert_401(*request(keyed.port, "/v1/audio/speech", body=SPEECH,
                        authorization=f"Basic {KEYS[0]}"), presented=False)
    assert_401(*request(keyed.port, "/v1/models"), presented=False)
    # checked before the body: even a bad body gets 401, not 400/415
    assert request(keyed.port, "/v1/audio/speech", body={"nonsense": 1})[0] == 401
    status, headers, body = request(keyed.port, "/v1/audio/speech", KEYS[2], SPEECH)
    assert status == 200 and body[:4] == b"RIFF"


def test_every_configured_key_opens_the_api(keyed):
    for key in KEYS:
        assert request(keyed.port, "/v1/models", key)[0] == 200, key
    assert request(keyed.port, "/v1/models", KEYS[0][:-1])[0] == 401  # a prefix is not a key
    assert request(keyed.port, "/v1/models", "sk-revoked")[0] == 401  # commented out in the file


def test_health_metrics_and_page_stay_open(keyed):
    assert request(keyed.port, "/healthz")[:3:2] == (200, b"ok")
    status, _, metrics = request(keyed.port, "/metrics")
    assert status == 200
    assert b'soprano_errors_total{kind="unauthorized"}' in metrics
    for path in ("/", "/static/app.js"):
        assert request(keyed.port, path)[0] == 200, path
    assert b'<body data-api-key="required">' in request(keyed.port, "/")[2]  # the page asks


# --- WebSocket ------------------------------------------------------------------------------------
def upgrade(port, key=None, query=None):
    """(status, body) of a /v1/stream upgrade with ``key`` as Bearer and/or ``?api_key=query``."""
    ws = RawWebSocket(port, headers=[f"Authorization: Bearer {key}"] if key else [],
                      path="/v1/stream" + (f"?api_key={query}" if query is not None else ""))
    body = ws.buf
    ws.close()
    return ws.status, body


def test_websocket_takes_the_key_in_its_header_or_query(keyed):
    assert upgrade(keyed.port, key=KEYS[0])[0] == 101
    assert upgrade(keyed.port, query=KEYS[1])[0] == 101
    assert upgrade(keyed.port, key=KEYS[3], query=WRONG)[0] == 101  # the header first


def test_websocket_with_a_wrong_or_no_key_is_401_before_the_upgrade(keyed):
    for kwargs, presented in [({}, False), ({"key": WRONG}, True), ({"query": WRONG}, True),
                              ({"query": ""}, False)]:
        status, body = upgrade(keyed.port, **kwargs)
        assert status == 401, kwargs
        assert presented == ("Incorrect API key" in body.decode()), body


def test_websocket_with_the_key_in_its_url_speaks(keyed, expected):
    async def go():
        ws = await websocket_connect(f"ws://127.0.0.1:{keyed.port}/v1/stream?api_key={KEYS[2]}")
        assert json.loads(await ws.read_message())["type"] == "ready"
        await speaks(ws, SENTENCE, expected(SENTENCE))
        ws.close()
    asyncio.run(go())


def test_stream_client_sends_its_api_key(keyed):
    url = f"ws://127.0.0.1:{keyed.port}/v1/stream"

    async def go():
        async with StreamClient(url, api_key=KEYS[1]) as c:
            chunks = [chunk async for chunk in c.speak("Hello with a key.")]
        assert chunks and c.session_id
        for key, what in [(WRONG, "refused"), (None, "required")]:
            with pytest.raises(StreamError, match=f"API key {what}"):
                async with StreamClient(url, api_key=key):
                    pass
    asyncio.run(go())


def test_no_key_appears_in_the_log(keyed):
    """Runs after the others (file order): every key and the wrong one went over the wire."""
    upgrade(keyed.port, query=KEYS[0])
    log = keyed.stderr()
    assert "api_key=***" in log  # the request was logged, its key hidden
    for key in (*KEYS, WRONG):
        assert key not in log


# --- other key sources and bad ones -------------------------------------------------------------
def test_keys_from_the_environment_and_flags_replacing_them(start_server, monkeypatch):
    monkeypatch.setenv("SOPRANO_API_KEY", "env-key-a,env-key-b")
    live = start_server()
    assert [request(live.port, "/v1/models", k)[0] for k in ("env-key-a", "env-key-b", "x")] \
        == [200, 200, 401]
    assert live.stop() == 0
    live = start_server("--api-key", "flag-key")  # the flag beats the environment
    assert [request(live.port, "/v1/models", k)[0] for k in ("flag-key", "env-key-a")] \
        == [200, 401]
    assert live.stop() == 0


def serve_error(*flags) -> str:
    r = subprocess.run([*CLI, "serve", "--model-path", "/nonexistent", *flags],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    return r.stderr


def test_bad_key_files_and_keys_are_errors_that_never_quote_a_key(tmp_path):
    missing = tmp_path / "missing.txt"
    assert f"cannot read API key file {missing}" in serve_error("--api-key-file", str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    assert f"API key file {empty} holds no key" in serve_error("--api-key-file", str(empty))
    bad = tmp_path / "bad.txt"
    bad.write_text("good-key\nsecret with spaces\n")
    err = serve_error("--api-key-file", str(bad))
    assert f"{bad} line 2" in err and "secret" not in err
    err = serve_error("--api-key", "ok-key,,other")
    assert "--api-key" in err and "empty" in err and "ok-key" not in err


# --- the checker ---------------------------------------------------------------------------------
def test_checker_compares_every_key_in_constant_time(monkeypatch):
    calls = []

    def compare(a, b):
        calls.append((len(a), len(b)))
        return original(a, b)
    original = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    keys = auth.ApiKeys(["alpha", "beta", "gamma"])
    for presented, want in [("alpha", True), ("gamma", True), ("alph", False), ("", False),
                            (None, False), ("alpha ", False)]:
        calls.clear()
        assert keys.allows(presented) is want, presented
        # every key, whichever matched, and digests of one length: no early exit, no length leak
        assert calls == [(32, 32)] * 3
    assert auth.ApiKeys().allows(None) and not auth.ApiKeys()
    assert auth.ApiKeys(["a", "a"]).allows("a")


def test_bearer_header_and_redacted_uris():
    assert auth.bearer("Bearer abc") == "abc"
    assert auth.bearer("bearer  abc ") == "abc"
    assert auth.bearer("Basic abc") is None
    assert auth.bearer("Bearer") is None and auth.bearer(None) is None
    assert auth.redact("/v1/stream?api_key=secret") == "/v1/stream?api_key=***"
    assert auth.redact("/v1/stream?x=1&api_key=s%20t&y=2") == "/v1/stream?x=1&api_key=***&y=2"
    assert auth.redact("/v1/stream") == "/v1/stream"
    assert auth.parse_key_list(" a , b ") == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        auth.parse_key_list("a,")
