"""Splicing visual tokens into the text: ``splice_image_features`` and ``prepare_inputs_labels_for_multimodal``.

The pure-function tests use an embedding whose row for token id ``t`` is ``(t, -t)`` and image features whose
rows are ``(100 + r, 1)`` (image A) / ``(200 + r, 2)`` (image B), so every expected row is written out by hand.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_splice import splice_image_features

IMG = IMAGE_TOKEN_INDEX
PAD = 0
X = IGNORE_INDEX


def make_embedding(vocab: int = 50) -> nn.Embedding:
    table = nn.Embedding(vocab, 2)
    with torch.no_grad():
        ids = torch.arange(vocab, dtype=torch.float32)
        table.weight.copy_(torch.stack([ids, -ids], dim=1))  # row t = (t, -t)
    return table


def image_rows(base: float, n: int, tag: float) -> torch.Tensor:
    """``[n, 2]`` rows ``(base + r, tag)``."""
    return torch.stack([base + torch.arange(n, dtype=torch.float32), torch.full((n,), tag)], dim=1)


def tok(t: int) -> list[float]:
    return [float(t), float(-t)]


def rows_a(n: int = 3) -> list[list[float]]:
    return [[100.0 + r, 1.0] for r in range(n)]


def rows_b(n: int = 5) -> list[list[float]]:
    return [[200.0 + r, 2.0] for r in range(n)]


ZERO = [0.0, 0.0]

# Sample 0: text 1 5 <image A: 3 rows> 6 7 -> 7 rows. Sample 1: 1 8 <image B: 5 rows> 9 10 11 12 -> 11 rows.
# Sample 2: text only 1 13 14 -> 3 rows.
EXPECTED_ROWS = [
    [tok(1), tok(5), *rows_a(), tok(6), tok(7)],
    [tok(1), tok(8), *rows_b(), tok(9), tok(10), tok(11), tok(12)],
    [tok(1), tok(13), tok(14)],
]
# labels: the prompt's labels with -100 on the 3 / 5 image rows (the first token is not trained on)
EXPECTED_LABELS = [
    [X, 5, X, X, X, 6, 7],
    [X, 8, X, X, X, X, X, 9, 10, 11, 12],
    [X, 13, 14],
]


def right_padded_batch():
    input_ids = torch.tensor([
        [1, 5, IMG, 6, 7, PAD, PAD],
        [1, 8, IMG, 9, 10, 11, 12],
        [1, 13, 14, PAD, PAD, PAD, PAD],
    ])
    mask = torch.tensor([
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0, 0],
    ])
    labels = torch.tensor([
        [X, 5, IMG, 6, 7, X, X],
        [X, 8, IMG, 9, 10, 11, 12],
        [X, 13, 14, X, X, X, X],
    ])
    return input_ids, mask, labels


def left_padded_batch():
    input_ids = torch.tensor([
        [PAD, PAD, 1, 5, IMG, 6, 7],
        [1, 8, IMG, 9, 10, 11, 12],
        [PAD, PAD, PAD, PAD, 1, 13, 14],
    ])
    mask = torch.tensor([
        [0, 0, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1],
    ])
    labels = torch.tensor([
        [X, X, X, 5, IMG, 6, 7],
        [X, 8, IMG, 9, 10, 11, 12],
        [X, X, X, X, X, 13, 14],
    ])
    return input_ids, mask, labels


def features():
    return [image_rows(100, 3, 1), image_rows(200, 5, 2)]


@pytest.mark.parametrize("batch", [right_padded_batch, left_padded_batch], ids=["input-right", "input-left"])
def test_right_padding_two_image_sizes_and_a_text_only_sample(batch):
    input_ids, mask, labels = batch()
    out = splice_image_features(input_ids, mask, labels, features(), make_embedding(), padding_side="right")

    expected_embeds = [
        EXPECTED_ROWS[0] + [ZERO] * 4,
        EXPECTED_ROWS[1],
        EXPECTED_ROWS[2] + [ZERO] * 8,
    ]
    assert out.inputs_embeds.tolist() == expected_embeds
    assert out.labels.tolist() == [
        EXPECTED_LABELS[0] + [X] * 4,
        EXPECTED_LABELS[1],
        EXPECTED_LABELS[2] + [X] * 8,
    ]
    assert out.attention_mask.tolist() == [
        [True] * 7 + [False] * 4,
        [True] * 11,
        [True] * 3 + [False] * 8,
    ]
    assert out.position_ids.tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        [0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0],
    ]


@pytest.mark.parametrize("batch", [right_padded_batch, left_padded_batch], ids=["input-right", "input-left"])
def test_left_padding(batch):
    input_ids, mask, labels = batch()
    out = splice_image_features(input_ids, mask, labels, features(), make_embedding(), padding_side="left")

    assert out.inputs_embeds.tolist() == [
        [ZERO] * 4 + EXPECTED_ROWS[0],
        EXPECTED_ROWS[1],
        [ZERO] * 8 + EXPECTED_ROWS[2],
    ]
    assert out.labels.tolist() == [
        [X] * 4 + EXPECTED_LABELS[0],
        EXPECTED_LABELS[1],
        [X] * 8 + EXPECTED_LABELS[2],
    ]
    assert out.attention_mask.tolist() == [
        [False] * 4 + [True] * 7,
        [True] * 11,
        [False] * 8 + [True] * 3,
    ]
    assert out.position_ids.tolist() == [
        [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2],
    ]


def test_truncation_at_max_length():
    input_ids, mask, labels = right_padded_batch()
    out = splice_image_features(input_ids, mask, labels, features(), make_embedding(), max_length=6)

    # each spliced sequence is cut to its first 6 rows, then the batch is padded to the longest (6)
    assert out.inputs_embeds.tolist() == [
        [tok(1), tok(5), *rows_a(), tok(6)],
        [tok(1), tok(8), *rows_b()[:4]],
        [tok(1), tok(13), tok(14), ZERO, ZERO, ZERO],
    ]
    assert out.labels.tolist() == [
        [X, 5, X, X, X, 6],
        [X, 8, X, X, X, X],
        [X, 13, 14, X, X, X],
    ]
    assert out.attention_mask.tolist() == [[True] * 6, [True] * 6, [True] * 3 + [False] * 3]
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 0, 0]]


def test_two_images_in_one_sample_and_no_mask_no_labels():
    input_ids = torch.tensor([[1, IMG, 4, IMG, 5]])
    out = splice_image_features(input_ids, None, None, features(), make_embedding())

    assert out.inputs_embeds.tolist() == [[tok(1), *rows_a(), tok(4), *rows_b(), tok(5)]]
    assert out.labels.tolist() == [[X] * 11]
    assert out.attention_mask.tolist() == [[True] * 11]
    assert out.position_ids.tolist() == [list(range(11))]


def test_image_count_mismatch_names_both_counts():
    input_ids, mask, labels = right_padded_batch()  # 2 <image> tokens, 1 text-only sample
    with pytest.raises(ValueError) as info:
        splice_image_features(input_ids, mask, labels, [image_rows(100, 3, 1)], make_embedding())
    message = str(info.value)
    assert re.search(r"\b2 <image> tokens\b", message), message
    assert re.search(r"\b1 images were given\b", message), message

    with pytest.raises(ValueError, match=r"2 <image> tokens .* 5 images"):
        splice_image_features(input_ids, mask, labels, [image_rows(0, 1, 0)] * 5, make_embedding())


def test_placeholder_image_for_text_only_sample_in_training():
    """Upstream's collator gives every text-only sample a placeholder image: images = <image> tokens + text-only."""
    input_ids = torch.tensor([
        [1, 5, IMG, 6, 7, PAD, PAD],
        [1, 13, 14, PAD, PAD, PAD, PAD],
        [1, 8, IMG, 9, 10, 11, 12],
    ])
    mask = (input_ids != PAD).long()
    labels = torch.where(input_ids == PAD, torch.full_like(input_ids, X), input_ids)
    placeholder = image_rows(900, 4, 9).requires_grad_(True)
    image_a, image_b = image_rows(100, 3, 1), image_rows(200, 5, 2)

    out = splice_image_features(input_ids, mask, labels, [image_a, placeholder, image_b], make_embedding())

    assert out.inputs_embeds.tolist() == [
        [tok(1), tok(5), *rows_a(), tok(6), tok(7)] + [ZERO] * 4,
        [tok(1), tok(13), tok(14)] + [ZERO] * 8,  # the placeholder adds no rows
        [tok(1), tok(8), *rows_b(), tok(9), tok(10), tok(11), tok(12)],  # image B, not the placeholder
    ]
    assert out.labels.tolist() == [
        [1, 5, X, X, X, 6, 7] + [X] * 4,
        [1, 13, 14] + [X] * 8,
        [1, 8, X, X, X, X, X, 9, 10, 11, 12],
    ]
    # the placeholder stays in the graph (ZeRO-3 / DDP need every rank to touch the projector), with zero grad
    out.inputs_embeds.sum().backward()
    assert placeholder.grad is not None
    assert placeholder.grad.abs().sum().item() == 0.0

    # without the placeholder the same batch also works (images = <image> tokens exactly)
    out2 = splice_image_features(input_ids, mask, labels, [image_a.detach(), image_b], make_embedding())
    assert out2.inputs_embeds.tolist() == out.inputs_embeds.tolist()


def test_gradients_reach_image_features():
    input_ids, mask, labels = right_padded_batch()
    feats = [f.requires_grad_(True) for f in features()]
    out = splice_image_features(input_ids, mask, labels, feats, make_embedding())
    (out.inputs_embeds * torch.arange(11.0).view(1, 11, 1)).sum().backward()
    # sample 0's image A sits at rows 2, 3, 4; sample 1's image B at rows 2..6
    assert feats[0].grad.tolist() == [[2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]
    assert feats[1].grad.tolist() == [[2.0, 2.0], [3.0, 3.0], [4.0, 4.0], [5.0, 5.0], [6.0, 6.0]]


def test_bad_padding_side():
    input_ids, mask, labels = right_padded_batch()
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        splice_image_features(input_ids, mask, labels, features(), make_embedding(), padding_side="middle")


# ---------------------------------------------------------------- on the real tiny model


@pytest.fixture(scope="module")
def own_model(tiny_checkpoint):
    """A private copy of the tiny model (tests here change its config and reduction)."""
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(tiny_checkpoint), None, "llava-v1.5-tiny", device="cpu"
    )
    return tokenizer, model, image_processor


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_prepare_inputs_labels_for_multimodal_on_the_tiny_model(own_model, demo_image, padding_side):
    """Two images giving 3 and 4 tokens (1 and 2 "flat" anyres tiles at a budget of 2 centres per image: 2 for a
    lone tile, 1 + 1 for two tiles, each tile with its extra token), a text-only sample."""
    from llava.mm_utils import process_images
    from llava.model.token_reduction import TokenReduction

    _, model, image_processor = own_model
    tower = model.get_vision_tower()
    tower.set_token_reduction(TokenReduction("prumerge", budget=2))
    model.config.tokenizer_padding_side = padding_side
    model.config.tokenizer_model_max_length = 12
    try:
        pixels = process_images([demo_image], image_processor, model.config)  # [1, 3, 336, 336]
        flipped = pixels.flip(-1)
        images = [pixels[0], torch.cat([flipped, pixels], dim=0)]  # image 0: 1 tile, image 1: 2 tiles
        input_ids = torch.tensor([
            [1, 50, IMG, 60, 70, PAD],
            [1, 51, 52, IMG, 61, 71],
            [1, 80, 81, PAD, PAD, PAD],
        ])
        mask = (input_ids != PAD).long()
        labels = torch.where(input_ids == PAD, torch.full_like(input_ids, X), input_ids)
        position_ids = torch.zeros_like(input_ids)

        _, positions, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            input_ids, position_ids, mask, None, labels, images
        )

        # the oracle for the image rows: the tower then the projector, one tile at a time
        with torch.no_grad():
            projector = model.get_model().mm_projector
            image0 = projector(tower(pixels)[0])  # [3, D]
            image1 = torch.cat([projector(tower.encode(tile, budgets=[1]).tokens[0]) for tile in (flipped, pixels)])
            text = model.get_model().embed_tokens
        assert image0.shape[0] == 3 and image1.shape[0] == 4
        assert model.last_visual_token_counts == [3, 4]

        # spliced lengths: 4 text + 3 image rows = 7; 5 + 4 = 9 (under the limit of 12); 3 text -> T' = 9
        lengths = [7, 9, 3]
        assert embeds.shape == (3, 9, model.config.hidden_size)
        offsets = [9 - n if padding_side == "left" else 0 for n in lengths]

        def row(b, i):
            return embeds[b, offsets[b] + i]

        torch.testing.assert_close(row(0, 0), text(torch.tensor(1)))
        torch.testing.assert_close(row(0, 1), text(torch.tensor(50)))
        torch.testing.assert_close(torch.stack([row(0, i) for i in (2, 3, 4)]), image0)
        torch.testing.assert_close(row(0, 5), text(torch.tensor(60)))
        torch.testing.assert_close(row(0, 6), text(torch.tensor(70)))
        torch.testing.assert_close(row(1, 2), text(torch.tensor(52)))
        torch.testing.assert_close(torch.stack([row(1, i) for i in range(3, 7)]), image1)
        torch.testing.assert_close(row(1, 7), text(torch.tensor(61)))
        torch.testing.assert_close(row(2, 2), text(torch.tensor(81)))

        expected_labels = [
            [1, 50, X, X, X, 60, 70],
            [1, 51, 52, X, X, X, X, 61, 71],
            [1, 80, 81],
        ]
        pads = [[X] * (9 - n) for n in lengths]
        if padding_side == "left":
            assert new_labels.tolist() == [p + lab for p, lab in zip(pads, expected_labels)]
            assert new_mask.tolist() == [[0] * (9 - n) + [1] * n for n in lengths]
            assert positions.tolist() == [[0] * (9 - n) + list(range(n)) for n in lengths]
        else:
            assert new_labels.tolist() == [lab + p for p, lab in zip(pads, expected_labels)]
            assert new_mask.tolist() == [[1] * n + [0] * (9 - n) for n in lengths]
            assert positions.tolist() == [list(range(n)) + [0] * (9 - n) for n in lengths]
        assert new_mask.dtype == mask.dtype

        # truncation at tokenizer_model_max_length
        model.config.tokenizer_model_max_length = 8
        _, positions, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            input_ids, position_ids, mask, None, labels, images
        )
        lengths = [7, 8, 3]
        assert embeds.shape[1] == 8
        cut = [[1, 50, X, X, X, 60, 70], [1, 51, 52, X, X, X, X, 61], [1, 80, 81]]
        if padding_side == "left":
            assert new_labels.tolist() == [[X] * (8 - len(c)) + c for c in cut]
            assert positions.tolist() == [[0] * (8 - n) + list(range(n)) for n in lengths]
        else:
            assert new_labels.tolist() == [c + [X] * (8 - len(c)) for c in cut]
            assert positions.tolist() == [list(range(n)) + [0] * (8 - n) for n in lengths]
        torch.testing.assert_close(embeds[1, 3:7], image1)  # sample 1 fills all 8 rows on either side
    finally:
        tower.set_token_reduction(TokenReduction("prumerge"))
        model.config.tokenizer_padding_side = "right"
        model.config.tokenizer_model_max_length = 2048


def test_prepare_inputs_returns_inputs_unchanged_without_images(own_model):
    _, model, _ = own_model
    input_ids = torch.tensor([[1, 5, 6]])
    mask = torch.ones_like(input_ids)
    out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, None)
    assert out[0] is input_ids and out[2] is mask and out[4] is None


def test_prepare_inputs_mismatch_on_the_model(own_model, demo_image):
    from llava.mm_utils import process_images

    _, model, image_processor = own_model
    pixels = process_images([demo_image, demo_image], image_processor, model.config)  # 2 images
    input_ids = torch.tensor([[1, 5, IMG, 6]])  # 1 <image>
    with pytest.raises(ValueError, match=r"1 <image> tokens .* 2 images were given"):
        model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, pixels)


def test_image_token_inside_padding_is_ignored():
    """A -200 where the attention mask is 0 is padding: not counted, not embedded, no crash."""
    ids = torch.tensor([[IMG, 1, 5, IMG, 6]])
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    out = splice_image_features(ids, mask, None, [image_rows(100, 3, 1)], make_embedding())
    assert out.inputs_embeds[0].tolist() == [tok(1), tok(5), *rows_a(), tok(6)]
    assert out.attention_mask.tolist() == [[True] * 6]


def test_generate_from_a_prompt_that_is_only_the_image(tiny_loaded, demo_image):
    """A one-token prompt made of the image token is spliced (it is not a decoding step)."""
    from llava.mm_utils import process_images

    _, model, image_processor, _ = tiny_loaded
    pixels = process_images([demo_image], image_processor, model.config)
    new = model.generate(torch.tensor([[IMG]]), images=pixels, max_new_tokens=2, do_sample=False)
    assert new.shape == (1, 2)
    assert model.last_visual_token_counts[0] > 1
