"""LLaVA-1.6 (anyres) through the evaluation entry points, on the tiny LLaVA-1.6 checkpoint: run_llava, model_vqa,
model_vqa_loader (batch sizes 1 and 2, images of different aspect ratios), model_vqa_science, model_vqa_mmbench and
lmms-eval's ``llava`` call sequence.

Each entry point must hand every image's ORIGINAL ``(width, height)`` to the model, in image order: the counts below
depend on it (a wrong or post-resize size picks another tile grid or cuts other rows), so asserting them checks it.
Oracles, worked out by hand from the released ``image_grid_pinpoints`` (336-px tiles, 24x24 patches per tile):

=========  =========  =================  ========================  ==================================================
image      size       best pinpoint      patches (1 + tiles) x576  unreduced tokens: 576 + rows x (cols + newline)
=========  =========  =================  ========================  ==================================================
square     672x672    672x672 (2x2)      5 x 576 = 2880            576 + 48 x 49 = 2928 (no padding)
wide       500x300    672x336 (2x1)      3 x 576 = 1728            576 + 24 x 41 = 1560 (48 cols -> int(500*24/300))
tall       336x672    336x672 (1x2)      3 x 576 = 1728            576 + 48 x 25 = 1776 (no padding)
narrow     300x700    336x1008 (1x3)     4 x 576 = 2304            576 + 56 x 25 = 1976 (72 rows -> int(700*24/300))
=========  =========  =================  ========================  ==================================================
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from anyres_images import SIZES, direct_greedy, make_image, to_b64

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval import model_vqa, model_vqa_loader, model_vqa_mmbench, model_vqa_science, run_llava
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token

PATCHES = {"square": 2880, "wide": 1728, "tall": 1728, "narrow": 2304}
UNREDUCED = {"square": 2928, "wide": 1560, "tall": 1776, "narrow": 1976}
# questions in this order: model_vqa_loader at batch size 2 sees (square, narrow) = 5 and 4 tiles (a list of stacks),
# then (wide, tall) = 3 and 3 tiles (one [2, 3, 3, 336, 336] tensor)
ORDER = ["square", "narrow", "wide", "tall"]
SUMMARY = re.compile(r"^visual tokens: (.*) \((none|prumerge|prumerge\+)\)$", re.M)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``images/<name>.png`` for the four sizes and ``questions.jsonl`` asking one question about each."""
    root = tmp_path_factory.mktemp("anyres_eval")
    (root / "images").mkdir()
    for name in SIZES:
        make_image(name).save(root / "images" / f"{name}.png")
    texts = ["What color is this?", "Describe the image.", "Is there a cat?", "What shape is it?"]
    (root / "questions.jsonl").write_text("".join(
        json.dumps({"question_id": i + 1, "image": f"{name}.png", "text": text}) + "\n"
        for i, (name, text) in enumerate(zip(ORDER, texts))))
    return root


def _vqa_args(ckpt, data, answers, *extra):
    return ["--model-path", str(ckpt), "--question-file", str(data / "questions.jsonl"),
            "--image-folder", str(data / "images"), "--answers-file", str(answers), "--temperature", "0",
            "--max_new_tokens", "4", "--device", "cpu", "--conv-mode", "vicuna_v1", *extra]


# --- run_llava ----------------------------------------------------------------------------------------------------


def test_run_llava_two_images_report_patches_and_tokens_in_image_order(capsys, tiny16_checkpoint, tiny16_loaded,
                                                                       data):
    files = f"{data / 'images' / 'square.png'},{data / 'images' / 'wide.png'}"
    rc = run_llava.main(["--model-path", str(tiny16_checkpoint), "--image-file", files, "--query", "Compare them.",
                         "--max_new_tokens", "5", "--temperature", "0", "--device", "cpu", "--token-reduction", "none"])
    out = capsys.readouterr().out
    assert rc == 0, out
    match = SUMMARY.search(out)
    assert match and match.group(0) == "visual tokens: 2880 -> 2928, 1728 -> 1560 (none)", out
    conv = conv_templates["llava_v1"].copy()  # "v1" in the name
    conv.append_message(conv.roles[0], "<image>\n<image>\nCompare them.")
    conv.append_message(conv.roles[1], None)
    expected = direct_greedy(tiny16_loaded, conv.get_prompt(), [make_image("square"), make_image("wide")], 5)[0].strip()
    assert out[: match.start()].strip() == expected


def test_run_llava_default_reduction_on_a_tall_image(capsys, tiny16_checkpoint, data):
    rc = run_llava.main(["--model-path", str(tiny16_checkpoint), "--image-file", str(data / "images" / "tall.png"),
                         "--query", "What is it?", "--max_new_tokens", "3", "--temperature", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    match = re.search(r"^visual tokens: 1728 -> (\d+) \(prumerge\)$", out, re.M)
    assert match, out
    assert 1 < int(match.group(1)) < 1728


# --- model_vqa, model_vqa_loader ------------------------------------------------------------------------------------


def test_model_vqa_metadata_has_tokens_and_patches_per_image(tiny16_checkpoint, data):
    answers = data / "out" / "vqa_none.jsonl"
    assert model_vqa.main(_vqa_args(tiny16_checkpoint, data, answers, "--token-reduction", "none")) == 0
    rows = _read(answers)
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    assert [r["model_id"] for r in rows] == ["llava-v1.6-vicuna-tiny"] * 4
    assert [r["metadata"] for r in rows] == [
        {"visual_tokens": [UNREDUCED[n]], "patches": [PATCHES[n]], "token_reduction": "none"} for n in ORDER]


def test_loader_collate_keeps_each_images_original_size_in_batch_order(tiny16_loaded, data):
    tokenizer, model, image_processor, _ = tiny16_loaded
    questions = _read(data / "questions.jsonl")
    loader = model_vqa_loader.create_data_loader(questions, str(data / "images"), tokenizer, image_processor,
                                                 model.config, batch_size=2, num_workers=0)
    (ids1, mask1, images1, sizes1), (_, _, images2, sizes2) = list(loader)
    assert sizes1 == [(672, 672), (300, 700)] and sizes2 == [(500, 300), (336, 672)]
    assert isinstance(images1, list) and [tuple(t.shape) for t in images1] == [(5, 3, 336, 336), (4, 3, 336, 336)]
    assert isinstance(images2, torch.Tensor) and tuple(images2.shape) == (2, 3, 3, 336, 336)
    assert ids1.shape == mask1.shape and (mask1[:, -1] == 1).all()  # left padded


def test_loader_batch_of_two_mixed_aspect_ratios_equals_one_at_a_time(tiny16_checkpoint, data):
    runs = {}
    for batch_size in ("1", "2"):
        answers = data / "out" / f"loader_bs{batch_size}.jsonl"
        assert model_vqa_loader.main(_vqa_args(tiny16_checkpoint, data, answers, "--batch-size", batch_size,
                                               "--num-workers", "0")) == 0
        runs[batch_size] = [(r["question_id"], r["prompt"], r["text"], r["metadata"]) for r in _read(answers)]
    assert runs["2"] == runs["1"]
    metadata = [m for *_, m in runs["1"]]
    assert [m["patches"] for m in metadata] == [[PATCHES[n]] for n in ORDER]
    assert all(m["token_reduction"] == "prumerge" for m in metadata)
    tokens = [m["visual_tokens"][0] for m in metadata]
    assert all(1 < t < PATCHES[n] for t, n in zip(tokens, ORDER)), tokens
    assert len(set(tokens[:2])) == 2 or len(set(tokens[2:])) == 2  # a batch really mixed different lengths


# --- model_vqa_science, model_vqa_mmbench -------------------------------------------------------------------------


def test_science_with_and_without_image(tiny16_checkpoint, data, tmp_path):
    questions = tmp_path / "sqa.json"
    questions.write_text(json.dumps([
        {"id": "1", "image": "square.png",
         "conversations": [{"from": "human", "value": "<image>\nWhich shape?\nOptions: (A) a (B) b"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Which word is a noun?\nOptions: (A) run (B) cat"}]},
        {"id": "3", "image": "narrow.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat color?\nOptions: (A) red (B) blue"}]},
    ]))
    answers = tmp_path / "sqa_answers.jsonl"
    assert model_vqa_science.main([
        "--model-path", str(tiny16_checkpoint), "--question-file", str(questions), "--image-folder",
        str(data / "images"), "--answers-file", str(answers), "--single-pred-prompt", "--temperature", "0",
        "--conv-mode", "vicuna_v1", "--max_new_tokens", "2", "--device", "cpu", "--token-reduction", "none"]) == 0
    rows = _read(answers)
    assert [r["metadata"] for r in rows] == [
        {"visual_tokens": [2928], "patches": [2880], "token_reduction": "none"},
        {"visual_tokens": [], "patches": [], "token_reduction": "none"},
        {"visual_tokens": [1976], "patches": [2304], "token_reduction": "none"},
    ]


def test_mmbench_base64_images(tiny16_checkpoint, tmp_path):
    table = tmp_path / "mmbench.tsv"
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n"
    rows = [f"{i}\tWhat is shown?\t\tcircle\tsquare\t\t\tA\tshape\t{to_b64(make_image(name))}\tx\ty\t\tdev\n"
            for i, name in enumerate(["wide", "square"])]
    table.write_text(header + "".join(rows))
    answers = tmp_path / "mmb_answers.jsonl"
    assert model_vqa_mmbench.main([
        "--model-path", str(tiny16_checkpoint), "--question-file", str(table), "--answers-file", str(answers),
        "--single-pred-prompt", "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "2",
        "--device", "cpu", "--token-reduction", "none"]) == 0
    assert [(r["question_id"], r["metadata"]) for r in _read(answers)] == [
        (0, {"visual_tokens": [1560], "patches": [1728], "token_reduction": "none"}),
        (1, {"visual_tokens": [2928], "patches": [2880], "token_reduction": "none"}),
    ]


# --- lmms-eval's llava model ----------------------------------------------------------------------------------------


class LmmsEvalLlava:
    """The calls lmms-eval's ``llava`` model (lmms_eval/models/llava.py) makes, in its order, with its arguments."""

    def __init__(self, pretrained: str) -> None:
        from llava.model.builder import load_pretrained_model

        llava_model_args = {"multimodal": True, "attn_implementation": "sdpa"}
        self.tokenizer, self.model, self.image_processor, self.max_length = load_pretrained_model(
            pretrained, None, get_model_name_from_path(pretrained), device_map="cpu", **llava_model_args)
        self.config = self.model.config
        self.model.eval()
        self.model.tie_weights()

    def pad_sequence(self, input_ids, padding_value):
        if self.tokenizer.padding_side == "left":
            input_ids = [torch.flip(ids, [0]) for ids in input_ids]
        input_ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=padding_value)
        if self.tokenizer.padding_side == "left":
            input_ids = torch.flip(input_ids, [1])
        return input_ids

    def image_tensor(self, visuals):
        image_tensor = process_images(visuals, self.image_processor, self.config)
        if type(image_tensor) is list:
            return [image.to(dtype=self.model.dtype, device=self.model.device) for image in image_tensor]
        return image_tensor.to(dtype=self.model.dtype, device=self.model.device)

    def prompt(self, context: str) -> str:
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + context)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def generate_until(self, contexts: list[str], visuals: list[Image.Image], max_new_tokens: int) -> list[str]:
        image_tensor = self.image_tensor(visuals)
        gen_kwargs = {"image_sizes": [visuals[idx].size for idx in range(len(visuals))], "max_new_tokens":
                      max_new_tokens, "temperature": 0, "top_p": None, "num_beams": 1}
        input_ids_list = [tokenizer_image_token(self.prompt(c), self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
                          for c in contexts]
        pad_token_ids = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        input_ids = self.pad_sequence(input_ids_list, padding_value=pad_token_ids)
        attention_masks = input_ids.ne(pad_token_ids)
        cont = self.model.generate(
            input_ids, attention_mask=attention_masks, pad_token_id=pad_token_ids, images=image_tensor,
            image_sizes=gen_kwargs["image_sizes"], do_sample=True if gen_kwargs["temperature"] > 0 else False,
            temperature=gen_kwargs["temperature"], top_p=gen_kwargs["top_p"], num_beams=gen_kwargs["num_beams"],
            max_new_tokens=gen_kwargs["max_new_tokens"], use_cache=True)
        return self.tokenizer.batch_decode(cont, skip_special_tokens=True)

    def loglikelihood(self, context: str, continuation: str, visuals: list[Image.Image]):
        """lmms-eval's loglikelihood: a forward with ``images`` and labels but no ``image_sizes``."""
        image = self.image_tensor(visuals)
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + context)
        conv.append_message(conv.roles[1], continuation)
        input_ids = tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX,
                                          return_tensors="pt").unsqueeze(0)
        with torch.inference_mode():
            return self.model(input_ids=input_ids, labels=input_ids.clone(), images=image, use_cache=True)


def test_lmms_eval_call_sequence(tiny16_checkpoint):
    lmms = LmmsEvalLlava(str(tiny16_checkpoint))
    model = lmms.model
    square, wide = make_image("square"), make_image("wide")
    contexts = ["What is in the image? Answer briefly.", "Colour?"]
    with torch.inference_mode():
        batched = lmms.generate_until(contexts, [square, wide], 5)  # 5 and 3 tiles: process_images gives a list
        batch_tokens = list(model.last_visual_token_counts)
        assert list(model.last_visual_patch_counts) == [2880, 1728]
        alone = []
        for context, image in zip(contexts, [square, wide]):
            alone.extend(lmms.generate_until([context], [image], 5))
            alone_tokens = list(model.last_visual_token_counts)
            assert list(model.last_visual_patch_counts) == [PATCHES["square" if image is square else "wide"]]
            assert alone_tokens == [batch_tokens[0 if image is square else 1]]
    assert model.get_vision_tower().token_reduction.mode == "prumerge"  # lmms-eval passes no reduction: default
    assert all(1 < n < p for n, p in zip(batch_tokens, [2880, 1728])), batch_tokens
    assert batched == alone  # right-padded batch (the tokenizer's side), mixed tile counts: same greedy answers

    # loglikelihood tasks forward anyres images without image_sizes (as with upstream LLaVA): a clear error
    with pytest.raises(ValueError, match=r"needs image_sizes: pass image_sizes=\[image.size for each image\]"):
        lmms.loglikelihood("What is it?", "A square.", [square])


def test_generate_without_image_sizes_is_a_clear_error(tiny16_loaded):
    tokenizer, model, image_processor, _ = tiny16_loaded
    input_ids = tokenizer_image_token("USER: <image>\nHi ASSISTANT:", tokenizer, IMAGE_TOKEN_INDEX,
                                      return_tensors="pt").unsqueeze(0)
    pixels = process_images([make_image("tall")], image_processor, model.config)
    with torch.inference_mode(), pytest.raises(ValueError, match="anyres.*needs image_sizes"):
        model.generate(input_ids, images=pixels, max_new_tokens=1, do_sample=False)
