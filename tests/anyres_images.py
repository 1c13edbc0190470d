"""Test images for the LLaVA-1.6 entry-point tests: plain sizes with a few rectangles, so PruMerge has something
to pick, their base64 form for the serving tests, and the model's own greedy answer to compare entry points with."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token

#: name -> (width, height): 1 + 4, 1 + 2, 1 + 2 and 1 + 2 anyres tiles with the released image_grid_pinpoints
SIZES = {"square": (672, 672), "wide": (500, 300), "tall": (336, 672), "narrow": (300, 700)}
COLOURS = {"square": (200, 40, 40), "wide": (40, 200, 40), "tall": (40, 40, 200), "narrow": (200, 200, 40)}


def make_image(name: str) -> Image.Image:
    """The image called ``name`` in ``SIZES``: a plain colour with three rectangles."""
    width, height = SIZES[name]
    image = Image.new("RGB", (width, height), COLOURS[name])
    for i in range(3):
        box = (width * i // 4, height * i // 5, width * i // 4 + width // 6, height * i // 5 + height // 7)
        image.paste((250 - 60 * i, 250, 30 * i), box)
    return image


def to_b64(image: Image.Image) -> str:
    """PNG bytes of ``image`` in base64 (what the model worker and the web demo receive)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def direct_greedy(loaded, prompt: str, images: list[Image.Image], max_new_tokens: int) -> tuple[str, list[int]]:
    """The model's own greedy answer to ``prompt`` (given the images' real sizes) and the visual tokens it read per
    image; ``loaded`` is what ``load_pretrained_model`` returned."""
    tokenizer, model, image_processor, _ = loaded
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    with torch.inference_mode():
        out = model.generate(input_ids, images=process_images(images, image_processor, model.config),
                             image_sizes=[im.size for im in images], do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True), list(model.last_visual_token_counts)
