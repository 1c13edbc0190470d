"""Send one message to a served model and print the streamed reply (a smoke test of a running deployment).

    python -m llava.serve.test_message --controller-address http://127.0.0.1:21001 --model-name llava-v1.5-7b \\
        --message "Tell me a story." [--image-file view.jpg]

The worker is found through the controller unless ``--worker-address`` is given.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from ..constants import DEFAULT_IMAGE_TOKEN
from ..conversation import SeparatorStyle, default_conversation
from ._stream import ERROR_NONE, iter_stream_objects

HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def find_worker(controller_address: str, model_name: str) -> str:
    """Ask the controller for a worker serving ``model_name`` ("" when none); prints the models it knows."""
    base = controller_address.rstrip("/")
    httpx.post(base + "/refresh_all_workers", timeout=HTTP_TIMEOUT).raise_for_status()
    models = sorted(httpx.post(base + "/list_models", timeout=HTTP_TIMEOUT).json()["models"])
    print(f"Models: {models}")
    response = httpx.post(base + "/get_worker_address", json={"model": model_name}, timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    address = response.json()["address"]
    print(f"worker_addr: {address}")
    return address


def build_prompt(message: str, with_image: bool) -> tuple[str, str]:
    """The default conversation's prompt for one user message, and the string that ends the answer."""
    conv = default_conversation.copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{message}" if with_image else message)
    conv.append_message(conv.roles[1], None)
    stop = conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep
    return conv.get_prompt(), stop


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        worker_address = args.worker_address or find_worker(args.controller_address, args.model_name)
    except (httpx.HTTPError, KeyError, ValueError) as err:
        print(f"error: cannot query the controller at {args.controller_address}: {err}", file=sys.stderr)
        return 1
    if not worker_address:
        print(f"error: no worker serves {args.model_name}", file=sys.stderr)
        return 1

    prompt, stop = build_prompt(args.message, args.image_file is not None)
    payload = {"model": args.model_name, "prompt": prompt, "max_new_tokens": args.max_new_tokens,
               "temperature": args.temperature, "stop": stop}
    if args.image_file is not None:
        payload["images"] = [base64.b64encode(Path(args.image_file).read_bytes()).decode("ascii")]

    print(prompt, end="", flush=True)
    shown = 0
    last: dict = {}
    try:
        with httpx.stream("POST", worker_address.rstrip("/") + "/worker_generate_stream", json=payload,
                          headers={"User-Agent": "LLaVA Client"}, timeout=HTTP_TIMEOUT) as response:
            response.raise_for_status()
            for last in iter_stream_objects(response.iter_bytes()):
                if last.get("error_code", ERROR_NONE) != ERROR_NONE:
                    break
                reply = last["text"][len(prompt):]
                print(reply[shown:], end="", flush=True)  # the text only grows: print what is new
                shown = max(shown, len(reply))
    except (httpx.HTTPError, ValueError) as err:
        print(f"\nerror: the stream from {worker_address} failed: {err}", file=sys.stderr)
        return 1
    print()
    if last.get("error_code", ERROR_NONE) != ERROR_NONE:
        print(f"error (code {last['error_code']}): {last.get('text')}", file=sys.stderr)
        return 1
    if "visual_tokens" in last and last["visual_tokens"]:
        print(f"visual tokens: {last['visual_tokens']} ({last.get('token_reduction')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Send a test message to a served LLaVA model.")
    parser.add_argument("--controller-address", type=str, default="http://127.0.0.1:21001")
    parser.add_argument("--worker-address", type=str, default=None)
    parser.add_argument("--model-name", type=str, default="facebook/opt-350m")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--message", type=str, default="Tell me a story with more than 1000 words.")
    parser.add_argument("--image-file", type=str, default=None, help="send this image with the message")
    return parser


if __name__ == "__main__":
    sys.exit(main())
