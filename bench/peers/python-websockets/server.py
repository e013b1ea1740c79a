"""Benchmark peer for DynamoWave: a plain Python chat server written the way the websockets
docs show broadcasting (asyncio, ``websockets.serve``, a set of connections,
``websockets.broadcast``). It speaks the AWS serverless-chat sample's protocol: a client sends
{"action":"sendmessage","data":"..."} (or "message" instead of "data") and the server sends that
string, as is, to every connected client, the sender included. Other frames are ignored.
Listens on 127.0.0.1:$PORT (default 8082), any path (e.g. /ws).
"""

import asyncio
import json
import os

import websockets

PORT = int(os.environ.get("PORT", "8082"))
CONNECTIONS = set()


async def handler(websocket):
    CONNECTIONS.add(websocket)
    try:
        async for message in websocket:
            try:
                event = json.loads(message)
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("action") != "sendmessage":
                continue
            data = event.get("data")
            if data is None:
                data = event.get("message")
            if isinstance(data, str):
                websockets.broadcast(CONNECTIONS, data)
    except websockets.ConnectionClosed:
        pass
    finally:
        CONNECTIONS.remove(websocket)


async def main():
    async with websockets.serve(handler, "127.0.0.1", PORT):
        print(f"python-websockets chat on ws://127.0.0.1:{PORT}/ws", flush=True)
        await asyncio.get_running_loop().create_future()  # run forever


if __name__ == "__main__":
    asyncio.run(main())
