"""The three LLaVA-1.6 kinds (Vicuna, Mistral, Yi-34B) in their released layouts: class, template, tokenizer,
and an answer through ``run_llava`` with the template its name picks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava.conv_mode import infer_conv_mode
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM
from llava.model.builder import load_pretrained_model
from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

KINDS = {  # --lm: (folder, model class, template, stop string)
    "mistral": ("llava-v1.6-mistral-tiny", LlavaMistralForCausalLM, "mistral_instruct", "</s>"),
    "yi": ("llava-v1.6-34b-tiny", LlavaLlamaForCausalLM, "chatml_direct", "<|im_end|>"),
}


@pytest.mark.parametrize("lm", ["mistral", "yi"])
def test_each_kind_loads_with_its_class_template_and_tokenizer(tmp_path, lm):
    folder, model_class, template, stop = KINDS[lm]
    path = make_tiny_checkpoint(tmp_path, layout="v1.6", lm=lm)
    assert path.name == folder
    tokenizer, model, processor, _ = load_pretrained_model(str(path), None, folder, device="cpu",
                                                           token_reduction="prumerge")
    assert type(model) is model_class
    assert infer_conv_mode(folder) == template
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.convert_tokens_to_ids(stop) == tokenizer.eos_token_id  # the template's stop is one token

    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    image = Image.new("RGB", (640, 300), (30, 160, 90))
    pixels = process_images([image], processor, model.config)
    new = model.generate(ids, images=pixels, image_sizes=[image.size], max_new_tokens=4, do_sample=False)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 4
    assert model.last_visual_patch_counts == [3 * 576]
    assert 0 < model.last_visual_token_counts[0] < 1560
    assert torch.isfinite(model(input_ids=ids, images=pixels, image_sizes=[image.size]).logits).all()
