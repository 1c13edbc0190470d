"""Register a worker with the controller by hand (e.g. one started with --no-register).

    python -m llava.serve.register_worker --controller-address http://127.0.0.1:21001 \\
        --worker-name http://127.0.0.1:21002 [--check-heart-beat] [--worker-token SECRET]

The controller asks the worker for its status (``/worker_get_status``), so the worker must be running. A controller
started with a shared secret needs it as ``--worker-token`` (default: the environment variable
``LLAVA_WORKER_TOKEN``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import httpx

HTTP_TIMEOUT = 10.0
WORKER_TOKEN_ENV = "LLAVA_WORKER_TOKEN"


def register_worker(controller_address: str, worker_name: str, check_heart_beat: bool,
                    worker_token: str | None = None) -> bool:
    """POST ``/register_worker`` (with ``worker_token`` when given); True when the controller registered the worker.

    Raises:
        httpx.HTTPError: the controller cannot be reached or answers with an error status.
    """
    body = {"worker_name": worker_name.rstrip("/"), "check_heart_beat": check_heart_beat, "worker_status": None}
    if worker_token:
        body["worker_token"] = worker_token
    response = httpx.post(controller_address.rstrip("/") + "/register_worker", timeout=HTTP_TIMEOUT, json=body)
    response.raise_for_status()
    body = response.json()
    # upstream controllers answer null; ours says whether the worker could be reached
    return body is None or bool(body.get("registered", True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Register a LLaVA model worker with the controller.")
    parser.add_argument("--controller-address", type=str, default="http://127.0.0.1:21001")
    parser.add_argument("--worker-name", type=str, required=True, help="the worker's address (http://host:port)")
    parser.add_argument("--check-heart-beat", action="store_true",
                        help="drop the worker when it sends no heartbeats")
    parser.add_argument("--worker-token", type=str, default=os.environ.get(WORKER_TOKEN_ENV),
                        help=f"the controller's shared secret (default: ${WORKER_TOKEN_ENV})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        registered = register_worker(args.controller_address, args.worker_name, args.check_heart_beat,
                                     args.worker_token)
    except httpx.HTTPError as err:
        print(f"error: cannot register with the controller at {args.controller_address}: {err}", file=sys.stderr)
        return 1
    if not registered:
        print(f"error: the controller could not reach the worker at {args.worker_name}", file=sys.stderr)
        return 1
    print(f"registered {args.worker_name} with {args.controller_address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
