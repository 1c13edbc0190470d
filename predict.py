"""Cog predictor (``cog predict -i image=@view.jpg -i prompt="..."``): LLaVA-1.5 with PruMerge, streamed.

Environment: ``LLAVA_MODEL_PATH`` (default ``liuhaotian/llava-v1.5-13b``), ``LLAVA_MODEL_BASE`` (for LoRA
checkpoints), ``LLAVA_TOKEN_REDUCTION`` (none | prumerge | prumerge+; default: the checkpoint's own rule),
``LLAVA_TOKEN_BUDGET``, ``LLAVA_DEVICE`` (default: the best available). LLaVA-1.6 (anyres) checkpoints work too:
the image's original size goes to ``generate`` as ``image_sizes``; after a prediction the model's
``last_visual_patch_counts`` / ``last_visual_token_counts`` hold the patches encoded and the tokens read.
"""

from __future__ import annotations

import os
from threading import Thread

import torch
from cog import BasePredictor, ConcatenateIterator, Input, Path
from transformers import TextIteratorStreamer

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, conv_templates
from llava.eval.common import add_image_tokens, default_device
from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the model once per container."""
        model_path = os.environ.get("LLAVA_MODEL_PATH", "liuhaotian/llava-v1.5-13b")
        budget = os.environ.get("LLAVA_TOKEN_BUDGET") or None
        self.tokenizer, self.model, self.image_processor, self.context_len = load_pretrained_model(
            model_path,
            os.environ.get("LLAVA_MODEL_BASE") or None,
            get_model_name_from_path(model_path),
            device=os.environ.get("LLAVA_DEVICE") or default_device(),
            token_reduction=os.environ.get("LLAVA_TOKEN_REDUCTION") or None,
            token_budget=int(budget) if budget else None,
        )

    def predict(
        self,
        image: Path = Input(description="Input image"),
        prompt: str = Input(description="Prompt to use for text generation"),
        top_p: float = Input(description="Nucleus sampling: the smallest token set with this probability", ge=0.0, le=1.0, default=1.0),
        temperature: float = Input(description="Sampling temperature (0: greedy)", default=0.2, ge=0.0),
        max_tokens: int = Input(description="Maximum number of tokens to generate", default=1024, ge=0),
    ) -> ConcatenateIterator[str]:
        """Stream the answer to ``prompt`` about ``image``."""
        conv = conv_templates["llava_v1"].copy()
        conv.append_message(conv.roles[0], add_image_tokens(prompt, 1, self.model.config.mm_use_im_start_end))
        conv.append_message(conv.roles[1], None)
        full_prompt = conv.get_prompt()
        stop = conv.sep if conv.sep_style != SeparatorStyle.TWO else conv.sep2

        picture = load_image(str(image))
        pixels = process_images([picture], self.image_processor, self.model.config)  # anyres: [1, tiles, 3, H, W]
        if isinstance(pixels, list):
            pixels = [p.to(self.model.device, dtype=self.model.dtype) for p in pixels]
        else:
            pixels = pixels.to(self.model.device, dtype=self.model.dtype)
        input_ids = tokenizer_image_token(full_prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300.0)
        kwargs = dict(
            inputs=input_ids.unsqueeze(0).to(self.model.device),
            images=pixels,
            image_sizes=[picture.size],  # original (width, height): anyres (LLaVA-1.6) lays out tiles by it
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None,
            max_new_tokens=max_tokens,
            streamer=streamer,
            use_cache=True,
        )
        with torch.inference_mode():
            thread = Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
            thread.start()
            emitted = ""
            for chunk in streamer:
                emitted += chunk
                if stop and stop in emitted:
                    head = chunk[: len(chunk) - (len(emitted) - emitted.index(stop))]
                    if head:
                        yield head
                    break
                yield chunk
            thread.join()
