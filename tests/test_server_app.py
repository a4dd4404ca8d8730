"""The Tornado app before the model is loaded: health is 503 and streams are refused politely."""
import json

from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.websocket import websocket_connect

from soprano.server.app import ServerSettings, ServerState, make_app


class LoadingServer(AsyncHTTPTestCase):
    def get_app(self):
        self.state = ServerState(ServerSettings(model="unused"))
        return make_app(self.state)

    def test_healthz_is_503_while_loading_and_names_a_load_error(self):
        r = self.fetch("/healthz")
        assert (r.code, r.body, r.headers["Content-Type"]) == (503, b"loading", "text/plain")
        self.state.load_error = "decoder.pth: file is missing"
        assert self.fetch("/healthz").body == b"error: decoder.pth: file is missing"

    @gen_test
    async def test_stream_refused_with_error_and_1013_while_loading(self):
        ws = await websocket_connect(f"ws://127.0.0.1:{self.get_http_port()}/v1/stream")
        msg = json.loads(await ws.read_message())
        assert msg == {"type": "error", "message": "model is still loading; retry shortly"}
        assert await ws.read_message() is None
        assert ws.close_code == 1013
