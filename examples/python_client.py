"""The reference README's Python client (``websockets``), saving what it hears as a WAV file.

It stays line for line the Soprano-RS README example, to show that clients written for that
server work unchanged here. Changes: host, port, text and output path come from the command
line; the PCM is saved as a 16-bit mono WAV at the frames' sample rate instead of raw bytes; an
``error`` message ends the run (the original waited for ``done`` forever); an API key, for a
server started with ``--api-key``, is sent as ``Authorization: Bearer KEY``.

Usage: python examples/python_client.py [--api-key KEY] HOST PORT TEXT OUTPUT.wav
(or the key in SOPRANO_API_KEY, the variable the server reads; the flag wins)
Out of scope: barge-in (``stop``), reconnection, playback; ``soprano.client`` is the library.
"""
import asyncio
import json
import os
import sys
import wave

import websockets


async def tts_client(host, port, text, output, api_key=None):
    uri = f"ws://{host}:{port}/v1/stream"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with websockets.connect(uri, additional_headers=headers) as ws:
        # Configure
        await ws.send(json.dumps({"type": "config", "speed": 1.0}))

        # Send text
        await ws.send(json.dumps({
            "type": "text",
            "text": text
        }))

        # Flush
        await ws.send(json.dumps({"type": "flush"}))

        # Collect audio
        audio_data = bytearray()
        sample_rate = 32000  # the server's default, until a frame header says otherwise
        while True:
            msg = await ws.recv()
            if isinstance(msg, bytes):
                # Binary audio frame
                header_len = int.from_bytes(msg[:4], 'big')
                header = json.loads(msg[4:4+header_len])
                pcm = msg[4+header_len:]
                audio_data.extend(pcm)
                sample_rate = header['sample_rate']
                print(f"Chunk {header['chunk_id']}: {len(pcm)} bytes")
            else:
                data = json.loads(msg)
                if data.get("type") == "done":
                    break
                if data.get("type") == "error":
                    sys.exit(f"server error: {data['message']}")

        # Save audio
        with wave.open(output, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(audio_data)
        print(f"Audio saved to {output}")


if __name__ == "__main__":
    args, key = sys.argv[1:], os.environ.get("SOPRANO_API_KEY")
    if args[:1] == ["--api-key"] and len(args) > 1:
        key, args = args[1], args[2:]
    if len(args) != 4:
        sys.exit("usage: python_client.py [--api-key KEY] HOST PORT TEXT OUTPUT.wav")
    try:
        asyncio.run(tts_client(*args, api_key=key))
    except websockets.InvalidStatus as e:  # 401: no key, or a wrong one
        sys.exit(f"server refused the connection: HTTP {e.response.status_code}")
