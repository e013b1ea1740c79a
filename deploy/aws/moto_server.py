"""moto's server (DynamoDB and SQS emulator, PyPI moto[server]) with DynamoDB calls serialized.

moto evaluates a TransactWriteItems' conditions and applies its writes without a lock, and its
server answers requests on many threads: two transactions conditioned on the same item can then
both commit, which DynamoDB never allows (its transactions are serializable). One lock around
each DynamoDB request gives the emulator DynamoDB's isolation; SQS and the rest stay concurrent
(a long-polling ReceiveMessage must not stall the tables).

Usage: moto_server.py [-H HOST] [-p PORT]
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

dynamodb = threading.Lock()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    # moto builds some URLs (SQS queue URLs) from MOTO_PORT.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    moto = DomainDispatcherApplication(create_backend_app)

    def app(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with dynamodb:
                # The body is produced inside the lock, where moto does its work.
                return list(moto(environ, start_response))
        return moto(environ, start_response)

    run_simple(
        args.host,
        args.port,
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
