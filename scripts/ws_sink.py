"""A WebSocket client that stays connected and discards whatever the server sends, with only
the Python standard library. scripts/schemathesis.sh keeps one open so that the management
API's `/@connections/{id}` calls are tested on a live connection as well as on gone ones.

Usage: python scripts/ws_sink.py ws://127.0.0.1:PORT/ws?name=NAME
Prints `connected` once the upgrade succeeded; exits when the server closes the connection.
"""

import base64
import os
import socket
import sys
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
path = url.path + (f"?{url.query}" if url.query else "")
sock = socket.create_connection((url.hostname, url.port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(
    (
        f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
)
head = b""
while b"\r\n\r\n" not in head:
    chunk = sock.recv(4096)
    if not chunk:
        sys.exit("the server closed the connection during the upgrade")
    head += chunk
status = head.split(b"\r\n", 1)[0].decode(errors="replace")
if " 101 " not in status:
    sys.exit(f"the upgrade was refused: {status}")
print("connected", flush=True)
# Compat mode: the server sends posted payloads and chat messages, and pings only after 30 s of
# silence (it closes after 10 min without a pong, far beyond a test run).
sock.settimeout(None)
while sock.recv(65536):
    pass
