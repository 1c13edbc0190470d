"""A model worker: loads one LLaVA model, registers with the controller, streams generations over HTTP.

    python -m llava.serve.model_worker --host 127.0.0.1 --port 21002 --controller-address http://127.0.0.1:21001 \\
        --worker-address http://127.0.0.1:21002 --model-path liuhaotian/llava-v1.5-7b [--token-reduction prumerge+]

Endpoints (JSON POST, as upstream LLaVA's worker):

* ``/worker_generate_stream`` {model, prompt, images: [base64], temperature, top_p, max_new_tokens, stop}:
  a stream of ``{"text": prompt + generated so far, "error_code": 0}`` objects, each followed by a NUL byte. The
  last object of a request with images also carries, one entry per image in request order:

  - ``"visual_tokens"``: the visual tokens the language model read (after reduction and, for an anyres
    LLaVA-1.6 model, the spatial layout with its row newlines), e.g. ``[2928]`` for a 672x672 image unreduced;
  - ``"patches"``: the patches the vision tower encoded (tiles x 576 for anyres: ``[2880]`` for 672x672,
    ``[1728]`` for 336x672; ``[576]`` per image for LLaVA-1.5);

  and ``"patches_per_image"`` (the tower's patches per image *tile*, 576 for CLIP ViT-L/14-336: the one number
  earlier workers sent, kept as it was so older clients still read it; use ``"patches"``) and
  ``"token_reduction"`` (the mode). Failures (wrong image count, bad image, out of memory, an anyres model
  without image sizes, ...) arrive as ``{"text": why, "error_code": 1}`` instead of a dropped connection.
* ``/worker_get_status``: ``{"model_names": [name], "speed": 1, "queue_length": n}``.

What one request may cost is bounded; each refusal is an ``error_code`` 1 stream object (HTTP 200, so the
controller relays it and clients parse it like any other), sent before any image is decoded:

* ``--max-request-bytes`` (default 32 MiB): a larger body (by its Content-Length, or as it arrives) is refused;
* ``--max-images`` (default 8): images per request;
* ``--max-total-pixels`` (default 64 Mpx): the pixels of all the request's images together, read from the image
  headers (each image is also held to ``llava.mm_utils``'s per-image limit, checked the same way);
* the context length: prompt tokens plus the visual-token upper bound (computed from the header sizes) must leave
  room for an answer, else the upstream "Exceeds max token length" text (``error_code`` 0, as upstream);
* ``max_new_tokens`` must be at least 1; the body must be a JSON object.

The checks themselves are pure functions in :mod:`llava.serve.request_limits`.

Controller: with ``--worker-token`` (default: the environment variable ``LLAVA_WORKER_TOKEN``) registrations and
heartbeats carry ``worker_token``, as a controller started with the same secret requires. On SIGTERM / Ctrl-C and at
the end of the app's lifespan the worker stops its heartbeats and POSTs ``/deregister_worker``, so the controller
stops routing to it at once rather than at heartbeat expiry. That protocol is :mod:`llava.serve.controller_link`;
the HTTP app is :mod:`llava.serve.worker_app`.

At most ``--limit-model-concurrency`` requests generate at once; the others wait (they count in queue_length).
The semaphore, counters and heartbeat thread belong to the :class:`ModelWorker` instance.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteriaList, TextIteratorStreamer

from ..constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
    WORKER_HEART_BEAT_INTERVAL,
)
from ..eval.common import default_device
from ..mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_image_from_base64,
    process_images,
    tokenizer_image_token,
)
from ..model.builder import load_pretrained_model
from ..model.token_reduction import add_token_reduction_args
from ..utils import build_logger, pretty_print_semaphore
from ._generation import (
    EXCEEDS_CONTEXT_MESSAGE,
    CallAfterFirstStep,
    GenerateParams,
    StopWhenSet,
    clamp_max_new_tokens,
    find_stop,
    stop_prefix_length,
)
from .controller_link import ControllerLink
from ._stream import ERROR_GENERATION, ERROR_NONE, encode_stream_object, error_object
from .request_limits import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TOTAL_PIXELS,
    image_sizes_within_budget,
    serving_context_len,
    visual_token_upper_bound,
)

try:
    import uvicorn
    from starlette.concurrency import iterate_in_threadpool
except ImportError as err:  # the serve extra is optional
    raise ImportError(f"the LLaVA model worker needs fastapi and uvicorn ({err}): pip install 'llava[serve]'") from err

from .worker_app import WorkerServer, create_app  # noqa: E402 (after the check that fastapi is there)

# A fixed name rather than __name__, which is "__main__" under `python -m`.
logger = logging.getLogger("llava.serve.model_worker")

WORKER_TOKEN_ENV = "LLAVA_WORKER_TOKEN"  # as llava.serve.controller


@dataclass
class _Generation:
    """What the generation thread hands back to the streaming side."""

    visual_tokens: list[int] = field(default_factory=list)
    patches: list[int] = field(default_factory=list)  # per image: the patches the tower encoded (tiles x N)
    error: BaseException | None = None


class ModelWorker:
    """One loaded model and the serving state around it (semaphore, queue length, heartbeat).

    Args:
        controller_addr / worker_addr: base URLs of the controller and of this worker as the controller reaches it.
        worker_id: short id for logs.
        no_register: do not register with the controller nor send heartbeats.
        model_path / model_base / model_name: as ``load_pretrained_model``; ``model_name`` defaults to the folder
            name (``get_model_name_from_path``).
        load_8bit / load_4bit / device / use_flash_attn: passed to ``load_pretrained_model``.
        limit_model_concurrency: requests generating at once; more wait.
        stream_interval: send a stream object every this many decoded text pieces (the last one always goes).
        token_reduction / token_budget: override the checkpoint's visual-token reduction.
        heart_beat_interval: seconds between heartbeats to the controller.
        worker_token: the controller's shared secret, sent with registrations, heartbeats and deregistration.
        max_request_bytes / max_images / max_total_pixels: what one request may send (see the module docstring);
            ``None`` for no limit.
    """

    def __init__(
        self,
        controller_addr: str,
        worker_addr: str,
        worker_id: str,
        no_register: bool,
        model_path: str,
        model_base: str | None,
        model_name: str | None,
        load_8bit: bool = False,
        load_4bit: bool = False,
        device: str | None = None,
        use_flash_attn: bool = False,
        *,
        limit_model_concurrency: int = 5,
        stream_interval: int = 1,
        token_reduction: str | None = None,
        token_budget: int | None = None,
        heart_beat_interval: float = WORKER_HEART_BEAT_INTERVAL,
        worker_token: str | None = None,
        max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
        max_images: int | None = DEFAULT_MAX_IMAGES,
        max_total_pixels: int | None = DEFAULT_MAX_TOTAL_PIXELS,
    ) -> None:
        if limit_model_concurrency < 1:
            raise ValueError(f"--limit-model-concurrency must be at least 1, got {limit_model_concurrency}")
        if stream_interval < 1:
            raise ValueError(f"--stream-interval must be at least 1, got {stream_interval}")
        self.worker_id = worker_id
        model_path = model_path.rstrip("/")
        self.model_name = model_name or get_model_name_from_path(model_path)
        self.limit_model_concurrency = limit_model_concurrency
        self.stream_interval = stream_interval
        self.max_request_bytes = max_request_bytes
        self.max_images = max_images
        self.max_total_pixels = max_total_pixels

        logger.info("loading model %s on worker %s ...", self.model_name, worker_id)
        self.tokenizer, self.model, self.image_processor, self.context_len = load_pretrained_model(
            model_path, model_base, self.model_name, load_8bit, load_4bit, device=device or default_device(),
            use_flash_attn=use_flash_attn, token_reduction=token_reduction, token_budget=token_budget,
        )
        self.context_len = serving_context_len(self.context_len, self.model.config)
        self.is_multimodal = self.image_processor is not None
        tower = self.model.get_vision_tower() if self.is_multimodal else None
        self.token_reduction_mode = tower.token_reduction.mode if tower is not None else None
        self.patches_per_image = tower.num_patches if tower is not None else None  # per tile: the stream's old key
        if self.is_multimodal:
            logger.info("worker %s: %s", worker_id, self.model.get_vision_tower().token_reduction.describe())
        else:
            logger.info("worker %s: %s is a language-only model (no images)", worker_id, self.model_name)

        self.semaphore: asyncio.Semaphore | None = None  # made by start(), on the serving event loop
        self.queue_length = 0  # requests waiting or generating; changed on the event loop only
        self.request_count = 0
        self._prefill_lock = threading.Lock()  # one prompt encoding at a time: last_visual_token_counts is shared
        self.controller = ControllerLink(
            controller_addr, worker_addr, status=self.get_status, queue_length=self.get_queue_length,
            describe=self._heart_beat_line, enabled=not no_register, heart_beat_interval=heart_beat_interval,
            worker_token=worker_token)

    # --- controller (llava.serve.controller_link) -------------------------------------------------------------

    def start(self) -> None:
        """Make the semaphore (call on the serving event loop) and start registering and heartbeating.

        Registration happens on the link's thread: the controller lists a worker only once it has answered
        ``/worker_get_status`` itself, which this one can do only after the server has started listening, i.e.
        after the lifespan startup that calls this.
        """
        self.semaphore = asyncio.Semaphore(self.limit_model_concurrency)
        self.controller.start()

    def stop(self) -> None:
        """Stop the heartbeats, then deregister from the controller (once; also safe when never started)."""
        self.controller.stop()

    def register_to_controller(self) -> bool:
        """Upstream's name: register once (``ControllerLink.register``)."""
        return self.controller.register()

    def send_heart_beat(self) -> bool:
        """Upstream's name: one heartbeat (``ControllerLink.heart_beat``)."""
        return self.controller.heart_beat()

    def deregister_from_controller(self) -> bool:
        """POST ``/deregister_worker`` once per start (``ControllerLink.deregister``)."""
        return self.controller.deregister()

    @property
    def worker_addr(self) -> str:
        """This worker's address as the controller reaches it."""
        return self.controller.worker_addr

    def _heart_beat_line(self) -> str:
        return (f"models {[self.model_name]}, semaphore {pretty_print_semaphore(self.semaphore)}, "
                f"requests {self.request_count}")

    def get_queue_length(self) -> int:
        return self.queue_length

    def get_status(self) -> dict[str, Any]:
        return {"model_names": [self.model_name], "speed": 1, "queue_length": self.get_queue_length()}

    # --- generation -----------------------------------------------------------------------------------------

    async def generate_stream_async(self, params: dict[str, Any]) -> AsyncIterator[bytes]:
        """The response body: wait for a slot, then relay :meth:`generate_stream_gate` as NUL-delimited JSON."""
        if self.semaphore is None:
            self.semaphore = asyncio.Semaphore(self.limit_model_concurrency)
        self.request_count += 1
        self.queue_length += 1
        cancel = threading.Event()
        try:
            async with self.semaphore:
                self.controller.beat_soon()
                async for obj in iterate_in_threadpool(self.generate_stream_gate(params, cancel)):
                    yield encode_stream_object(obj)
        finally:  # also when the client goes away: stop generating, free the slot
            cancel.set()
            self.queue_length -= 1
            self.controller.beat_soon()

    def generate_stream_gate(self, params: dict[str, Any], cancel: threading.Event | None = None
                             ) -> Iterator[dict[str, Any]]:
        """:meth:`generate_stream`, with every failure turned into an ``error_code`` 1 object."""
        try:
            yield from self.generate_stream(params, cancel)
        except torch.cuda.OutOfMemoryError as err:
            logger.error("out of GPU memory: %s", err)
            torch.cuda.empty_cache()
            yield error_object(f"the worker ran out of GPU memory ({err}); try a shorter request", ERROR_GENERATION)
        except ValueError as err:  # a bad request: image count, image data, parameters
            logger.info("bad request: %s", err)
            yield error_object(str(err), ERROR_GENERATION)
        except Exception as err:  # anything else must still reach the client as an error object
            logger.exception("generation failed")
            yield error_object(f"generation failed: {type(err).__name__}: {err}", ERROR_GENERATION)

    def generate_stream(self, params: dict[str, Any], cancel: threading.Event | None = None
                        ) -> Iterator[dict[str, Any]]:
        """Generate for one request, yielding ``{"text": prompt + generated so far, "error_code": 0}`` objects.

        Raises:
            ValueError: invalid parameters, a prompt whose ``<image>`` count differs from the number of images, or
                an image that is not valid base64 / not decodable / too large (checked before decoding).
        """
        request = GenerateParams.model_validate(params)
        cancel = cancel if cancel is not None else threading.Event()
        prompt = request.prompt
        num_image_tokens = prompt.count(DEFAULT_IMAGE_TOKEN)
        if num_image_tokens != len(request.images):
            raise ValueError(f"the prompt has {num_image_tokens} {DEFAULT_IMAGE_TOKEN} tokens but "
                             f"{len(request.images)} images were given")
        if request.images and not self.is_multimodal:
            raise ValueError(f"{self.model_name} is a language-only model: send no images")
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        if self.max_images is not None and len(request.images) > self.max_images:
            raise ValueError(f"{len(request.images)} images were given, more than this worker's limit of "
                             f"{self.max_images} per request")
        visual_bound = 0
        if request.images:  # before decoding any image: the pixel budget, then the context the request needs
            sizes = image_sizes_within_budget(request.images, self.max_total_pixels)
            visual_bound = visual_token_upper_bound(sizes, self.model.config, self.model.get_vision_tower())
        model_prompt = self._model_prompt(prompt)
        input_ids = tokenizer_image_token(model_prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        input_ids = input_ids.unsqueeze(0).to(self.model.device)  # [1, T]
        text_tokens = input_ids.shape[1] - len(request.images)
        max_new_tokens = clamp_max_new_tokens(request.max_new_tokens, text_tokens + visual_bound, self.context_len)
        if max_new_tokens < 1:
            yield {"text": prompt + EXCEEDS_CONTEXT_MESSAGE, "error_code": ERROR_NONE}
            return
        image_args = self._prepare_images(request.images)

        stops = request.stop_strings
        criteria = [StopWhenSet(cancel)]
        if stops:  # generated ids only: generate() sees no prompt ids when it is given embeddings
            criteria.append(KeywordsStoppingCriteria(stops, self.tokenizer, input_ids[:, :0]))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        gen_kwargs: dict[str, Any] = dict(
            inputs=input_ids, max_new_tokens=max_new_tokens, do_sample=request.do_sample, use_cache=True,
            streamer=streamer, stopping_criteria=StoppingCriteriaList(criteria),
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id, **image_args,
        )
        if request.do_sample:
            gen_kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=request.top_k)
        if request.repetition_penalty != 1.0:
            gen_kwargs["repetition_penalty"] = request.repetition_penalty

        result = _Generation()
        thread = threading.Thread(target=self._run_generate, args=(gen_kwargs, result, bool(request.images)),
                                  name="worker-generate", daemon=True)
        thread.start()
        generated = ""
        try:
            for pieces, new_text in enumerate(streamer, start=1):
                generated += new_text
                at = find_stop(generated, stops)
                if at is not None:
                    generated = generated[:at]
                    cancel.set()
                    break
                if pieces % self.stream_interval == 0:
                    shown = generated[: len(generated) - stop_prefix_length(generated, stops)]
                    yield {"text": prompt + shown, "error_code": ERROR_NONE}
        finally:  # done, a stop string, or the consumer closed us: in each case the model may stop now
            cancel.set()
        thread.join()
        if result.error is not None:
            raise result.error
        yield {"text": prompt + generated, "error_code": ERROR_NONE, "visual_tokens": result.visual_tokens,
               "patches": result.patches, "patches_per_image": self.patches_per_image,
               "token_reduction": self.token_reduction_mode}

    def _model_prompt(self, prompt: str) -> str:
        """The prompt as the model reads it: ``<im_start><image><im_end>`` when the model uses them."""
        if self.model.config.mm_use_im_start_end:
            return prompt.replace(DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN
                                  + DEFAULT_IM_END_TOKEN)
        return prompt

    def _prepare_images(self, images_b64: list[str]) -> dict[str, Any]:
        """Decode and preprocess the request's images (after the checks on their headers).

        Returns:
            The ``images`` / ``image_sizes`` arguments for ``generate``: pixel values on the tower's device and
            dtype, and the decoded images' original ``(width, height)``, in request order ({} without images).
        """
        if not images_b64:
            return {}
        images = [load_image_from_base64(b64).convert("RGB") for b64 in images_b64]  # size-checked before decoding
        image_sizes = [image.size for image in images]  # original sizes: process_images resizes / tiles copies
        pixel_values = process_images(images, self.image_processor, self.model.config)
        tower = self.model.get_vision_tower()
        if isinstance(pixel_values, list):  # anyres: [tiles_i, 3, H, W] each
            pixel_values = [p.to(tower.device, dtype=tower.dtype) for p in pixel_values]
        else:  # [B, 3, H, W], or [B, tiles, 3, H, W] for anyres images that share a shape
            pixel_values = pixel_values.to(tower.device, dtype=tower.dtype)
        return {"images": pixel_values, "image_sizes": image_sizes}

    def _run_generate(self, gen_kwargs: dict[str, Any], result: _Generation, has_images: bool) -> None:
        """Thread body: ``model.generate`` feeding the streamer; failures are stored in ``result``.

        The prefill lock is held from the start until the first step is done, so the visual-token counts the model
        records for this prompt are read before another request's prompt overwrites them.
        """
        self._prefill_lock.acquire()
        held = True

        def after_prefill() -> None:
            nonlocal held
            if has_images:
                result.visual_tokens = list(self.model.last_visual_token_counts)
                result.patches = list(getattr(self.model, "last_visual_patch_counts", None)
                                      or [self.patches_per_image] * len(result.visual_tokens))
            held = False
            self._prefill_lock.release()

        gen_kwargs["stopping_criteria"].append(CallAfterFirstStep(after_prefill))
        streamer = gen_kwargs["streamer"]
        try:
            with torch.inference_mode():
                self.model.generate(**gen_kwargs)
        except Exception as err:  # handed to the streaming side, which reports it to the client
            result.error = err
            streamer.end()
        finally:
            if held:
                self._prefill_lock.release()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A LLaVA model worker.")
    parser.add_argument("--host", type=str, default="127.0.0.1",
                        help="address to bind (default: localhost only; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=21002)
    parser.add_argument("--worker-address", type=str, default=None,
                        help="this worker's URL as the controller reaches it (default: http://HOST:PORT)")
    parser.add_argument("--controller-address", type=str, default="http://127.0.0.1:21001")
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--model-name", type=str, default=None)
    parser.add_argument("--device", type=str, default=None, help="cuda | cpu | mps (default: the best available)")
    parser.add_argument("--multi-modal", action="store_true",
                        help="deprecated, does nothing: images are enabled whenever the checkpoint has a vision tower")
    parser.add_argument("--limit-model-concurrency", type=int, default=5)
    parser.add_argument("--stream-interval", type=int, default=1)
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--use-flash-attn", action="store_true")
    parser.add_argument("--heart-beat-interval", type=float, default=WORKER_HEART_BEAT_INTERVAL,
                        help="seconds between heartbeats to the controller")
    parser.add_argument("--worker-token", type=str, default=os.environ.get(WORKER_TOKEN_ENV),
                        help=f"the controller's shared secret, sent when registering (default: ${WORKER_TOKEN_ENV})")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body accepted (default: 32 MiB)")
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                        help=f"most images in one request (default: {DEFAULT_MAX_IMAGES})")
    parser.add_argument("--max-total-pixels", type=int, default=DEFAULT_MAX_TOTAL_PIXELS,
                        help="most pixels of all the images of one request, read from their headers "
                             f"(default: {DEFAULT_MAX_TOTAL_PIXELS})")
    add_token_reduction_args(parser)
    return parser


def default_worker_address(host: str, port: int) -> str:
    """``http://HOST:PORT``, with a wildcard bind address replaced by localhost."""
    reachable = "localhost" if host in ("", "0.0.0.0", "::") else host
    return f"http://{reachable}:{port}"


def worker_from_args(args: argparse.Namespace, worker_id: str) -> ModelWorker:
    return ModelWorker(
        args.controller_address, args.worker_address or default_worker_address(args.host, args.port), worker_id,
        args.no_register, args.model_path, args.model_base, args.model_name, args.load_8bit, args.load_4bit,
        args.device, use_flash_attn=args.use_flash_attn, limit_model_concurrency=args.limit_model_concurrency,
        stream_interval=args.stream_interval, token_reduction=args.token_reduction, token_budget=args.token_budget,
        heart_beat_interval=args.heart_beat_interval, worker_token=args.worker_token,
        max_request_bytes=args.max_request_bytes, max_images=args.max_images, max_total_pixels=args.max_total_pixels,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    worker_id = uuid.uuid4().hex[:6]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat otherwise
    build_logger(logger.name, f"model_worker_{worker_id}.log")
    logger.info("args: %s", {k: ("***" if k == "worker_token" and v else v) for k, v in vars(args).items()})
    if args.multi_modal:
        logger.warning("--multi-modal is deprecated and does nothing: images are enabled when the checkpoint has "
                       "a vision tower")
    try:
        worker = worker_from_args(args, worker_id)
    except (FileNotFoundError, ValueError, OSError) as err:  # a user's mistake: say what, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = uvicorn.Config(create_app(worker), host=args.host, port=args.port, log_level="info")
    WorkerServer(config, worker).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
