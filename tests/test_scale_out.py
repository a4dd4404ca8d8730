"""deploy/nginx.conf in front of two real replicas on loopback: WebSocket sessions, health
checks and OpenAI speech requests are spread over both, and killing one replica loses only its
own sessions."""
import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from tornado.httpclient import AsyncHTTPClient

from helpers import assert_same_audio, collect, connect, free_port, send

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


def nginx_config(port: int, replicas: list[int], workdir: Path) -> Path:
    conf = DEPLOY.read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n"
                      for p in replicas)
    conf = re.sub(r"(        server 127\.0\.0\.1:\d+ [^\n]*\n)+", servers, conf)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("access_log /dev/stdout upstream;",
                        f"access_log {workdir}/access.log upstream;")
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


@pytest.fixture
def cluster(start_server, tmp_path):
    """nginx (deploy/nginx.conf) on a free loopback port in front of two live replicas:
    (nginx port, [(replica process, replica port)] * 2, nginx's access log)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is required for the scale-out test: apt-get install nginx")
    live = [start_server() for _ in range(2)]
    replicas = [(s.proc, s.port) for s in live]
    port = free_port()
    conf = nginx_config(port, [p for _, p in replicas], tmp_path)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g",
                             f"daemon off; pid {tmp_path}/nginx.pid; "
                             f"error_log {tmp_path}/error.log;"])
    yield port, replicas, tmp_path / "access.log"
    proc.terminate()
    proc.wait(timeout=10)
    for s in live:  # the test kills one; the other must still drain cleanly
        if s.proc.poll() is None:
            assert s.stop() == 0, s.stderr()


async def wait_healthy(port):
    client = AsyncHTTPClient()
    for _ in range(100):
        try:
            r = await client.fetch(f"http://127.0.0.1:{port}/healthz", raise_error=False)
            if r.code == 200:
                return
        except ConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("nginx never became healthy")


def upstreams(access_log: Path, path: str) -> set:
    lines = [line for line in access_log.read_text().splitlines() if f" {path} " in line]
    return {line.rsplit("upstream=", 1)[1] for line in lines}


TEXT = "Through the load balancer this sentence travels to a replica."


@pytest.mark.slow  # two replicas and nginx; test_deploy.py checks nginx takes the config
def test_traffic_spreads_and_a_dead_replica_loses_only_its_sessions(cluster, expected):
    port, replicas, access_log = cluster

    async def speak(text, timeout=60):
        ws = await connect(port)
        await send(ws, type="text", text=text)
        await send(ws, type="flush")
        try:
            return await collect(ws, timeout)
        finally:
            ws.close()

    async def round_one():
        await wait_healthy(port)
        client = AsyncHTTPClient()
        for _ in range(4):
            r = await client.fetch(f"http://127.0.0.1:{port}/healthz")
            assert r.body == b"ok"
        return await asyncio.gather(*(speak(TEXT) for _ in range(6)))

    for _, audio, messages in asyncio.run(round_one()):
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(TEXT))
    async def speech_round():
        client = AsyncHTTPClient()
        body = json.dumps({"model": "soprano", "input": TEXT, "voice": "default",
                           "response_format": "pcm"})
        return await asyncio.gather(*(client.fetch(
            f"http://127.0.0.1:{port}/v1/audio/speech", method="POST", body=body,
            headers={"Content-Type": "application/json"}, request_timeout=60)
            for _ in range(4)))

    for response in asyncio.run(speech_round()):
        assert_same_audio(np.frombuffer(response.body, "<i2"), expected(TEXT))
    time.sleep(0.2)  # nginx writes its log line when the connection closes
    replica_addrs = {f"127.0.0.1:{p}" for _, p in replicas}
    assert upstreams(access_log, "/v1/stream") == replica_addrs
    assert upstreams(access_log, "/healthz") == replica_addrs
    assert upstreams(access_log, "/v1/audio/speech") == replica_addrs

    long_text = " ".join([TEXT] * 6)

    async def kill_one():
        sockets = [await connect(port) for _ in range(4)]
        for ws in sockets:
            await send(ws, type="text", text=long_text)
            await send(ws, type="flush")
        for ws in sockets:
            assert isinstance(await asyncio.wait_for(ws.read_message(), 60), bytes)
        replicas[0][0].send_signal(signal.SIGKILL)
        outcomes = []
        for ws in sockets:
            try:
                await collect(ws, timeout=60)
                outcomes.append("done")
            except AssertionError:
                outcomes.append("lost")
        after = await asyncio.gather(*(speak(TEXT) for _ in range(3)))
        return outcomes, after

    outcomes, after = asyncio.run(kill_one())
    assert sorted(set(outcomes)) == ["done", "lost"], outcomes
    for _, audio, messages in after:
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(TEXT))
    assert replicas[0][0].wait(timeout=10) == -signal.SIGKILL
