"""The training dataset, collator and sampler on the tiny data in playground/data/train_tiny."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.train.args import DataArguments
from llava.train.data import DataCollatorForSupervisedDataset, DataError, LazySupervisedDataset, load_samples
from llava.train.model_setup import load_tokenizer
from llava.train.preprocess import conversation_for_version
from llava.train.sampler import LengthGroupedSampler

TINY_DATA = Path(__file__).resolve().parents[2] / "playground" / "data" / "train_tiny"
FINETUNE_JSON = TINY_DATA / "llava_tiny_finetune.json"


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    tok = load_tokenizer(str(tiny_checkpoint), model_max_length=64)
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="module")
def image_processor(tiny_clip):
    return AutoImageProcessor.from_pretrained(str(tiny_clip), backend="pil")


def make_dataset(path, tokenizer, image_processor, **data_kwargs) -> LazySupervisedDataset:
    data_args = DataArguments(data_path=str(path), image_folder=str(TINY_DATA), image_aspect_ratio="pad",
                              is_multimodal=True, **data_kwargs)
    return LazySupervisedDataset(str(path), tokenizer, data_args, template=conversation_for_version("v1"),
                                 image_processor=image_processor)


def write_json(tmp_path, samples, name="data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(samples))
    return path


def test_samples_and_batch(tokenizer, image_processor):
    dataset = make_dataset(FINETUNE_JSON, tokenizer, image_processor)
    samples = json.loads(FINETUNE_JSON.read_text())
    assert len(dataset) == len(samples) == 8
    items = [dataset[i] for i in range(4)]  # images (0, 1, 3) and a text-only sample (2)
    for item, sample in zip(items, samples):
        assert ((item["input_ids"] == IMAGE_TOKEN_INDEX).sum().item() == 1) == ("image" in sample)
        assert item["image"].shape == (3, 336, 336)
    assert torch.count_nonzero(items[2]["image"]) == 0  # text-only sample: a zero image, as upstream

    batch = DataCollatorForSupervisedDataset(tokenizer)(items)
    lengths = [min(len(x["input_ids"]), 64) for x in items]
    assert batch["input_ids"].shape == (4, max(lengths)) and batch["images"].shape == (4, 3, 336, 336)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for b, n in enumerate(lengths):
        assert torch.equal(batch["input_ids"][b, :n], items[b]["input_ids"][:n])
        assert (batch["input_ids"][b, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()


def test_lengths_for_grouping(tokenizer, image_processor):
    dataset = make_dataset(FINETUNE_JSON, tokenizer, image_processor)
    samples = json.loads(FINETUNE_JSON.read_text())
    words = [sum(len(t["value"].split()) for t in s["conversations"]) for s in samples]
    assert dataset.modality_lengths == [w if "image" in s else -w for w, s in zip(words, samples)]
    assert dataset.lengths == [w + (128 if "image" in s else 0) for w, s in zip(words, samples)]


@pytest.mark.parametrize(
    "sample, message",
    [
        ({"id": "x1", "image": "images/red_circle.png"}, "has no 'conversations'"),
        ({"id": "x1", "conversations": [{"from": "robot", "value": "hi"}]}, "unknown 'from' 'robot'"),
        ({"id": "x1", "conversations": []}, "non-empty list"),
    ],
    ids=["no-conversations", "unknown-from", "empty"],
)
def test_bad_samples_name_file_index_and_id(tmp_path, tokenizer, image_processor, sample, message):
    good = {"id": "ok", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = write_json(tmp_path, [good, sample])
    with pytest.raises(DataError) as err:
        make_dataset(path, tokenizer, image_processor)
    text = str(err.value)
    assert str(path) in text and "sample 1" in text and "'x1'" in text and message in text


def test_missing_image_names_file_index_id_and_path(tmp_path, tokenizer, image_processor):
    sample = {"id": "lost", "image": "images/nope.png",
              "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "hello"}]}
    path = write_json(tmp_path, [sample])
    dataset = make_dataset(path, tokenizer, image_processor)
    with pytest.raises(DataError) as err:
        dataset[0]
    text = str(err.value)
    assert str(path) in text and "sample 0" in text and "'lost'" in text and "nope.png" in text


def test_other_data_mistakes_are_errors(tmp_path, tokenizer, image_processor):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,\n "conversations": ]')
    with pytest.raises(DataError, match=r"broken.json is not valid JSON \(line 2"):
        load_samples(broken)
    with pytest.raises(FileNotFoundError, match="--data_path"):
        load_samples(tmp_path / "absent.json")
    tag_without_image = {"id": "t", "conversations": [{"from": "human", "value": "<image>\nhi"},
                                                      {"from": "gpt", "value": "x"}]}
    dataset = make_dataset(write_json(tmp_path, [tag_without_image]), tokenizer, image_processor)
    with pytest.raises(DataError, match="mentions <image> but the sample has no 'image'"):
        dataset[0]
    out_of_order = {"id": "o", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}
    dataset = make_dataset(write_json(tmp_path, [out_of_order], "o.json"), tokenizer, image_processor)
    with pytest.raises(DataError, match="'o'.*alternate"):
        dataset[0]


def test_modality_sampler_groups_and_is_deterministic():
    # 10 image samples (positive), 7 text-only (negative); 2 ranks x batch 2 -> megabatches of 4.
    lengths = [5, 9, 3, 12, 7, 2, 8, 6, 4, 11] + [-3, -8, -1, -5, -9, -2, -6]
    sampler = LengthGroupedSampler(2, world_size=2, lengths=lengths, seed=3, group_by_modality=True)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    assert order == list(LengthGroupedSampler(2, 2, lengths, seed=3, group_by_modality=True))
    megabatches = [order[i : i + 4] for i in range(0, len(order), 4)]
    for mb in megabatches[:-2]:  # full megabatches are of one modality; the leftovers are joined at the end
        assert len({lengths[i] > 0 for i in mb}) == 1
    assert Counter(lengths[i] > 0 for i in megabatches[-2] + megabatches[-1]) == {True: 2, False: 3}
    sampler.set_epoch(1)
    assert list(sampler) != order


#: the released LLaVA-1.6 image_grid_pinpoints, (width, height)
V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def test_anyres_samples_give_tiles_and_image_sizes(tiny_anyres_data, tokenizer, image_processor):
    # Best pinpoint by hand (largest kept resolution, then least waste): 1200x300 -> 1008x336 (3x1 tiles),
    # 200x600 -> 336x672 (1x2), 900x900 -> 672x672 (2x2); each stack is the whole image + its tiles.
    sizes_and_views = [((1200, 300), 1 + 3), ((200, 600), 1 + 2), ((900, 900), 1 + 4)]
    path = tiny_anyres_data / "anyres.json"
    data_args = DataArguments(data_path=str(path), image_folder=str(tiny_anyres_data), image_aspect_ratio="anyres",
                              image_grid_pinpoints=V16_PINPOINTS, is_multimodal=True)
    dataset = LazySupervisedDataset(str(path), tokenizer, data_args, template=conversation_for_version("v1"),
                                    image_processor=image_processor)
    items = [dataset[i] for i in range(4)]
    for item, (size, views) in zip(items, sizes_and_views):
        assert item["image"].shape == (views, 3, 336, 336) and item["image_size"] == size
    assert items[3]["image"].shape == (3, 336, 336) and items[3]["image_size"] == (336, 336)  # text-only: zeros
    assert torch.count_nonzero(items[3]["image"]) == 0

    batch = DataCollatorForSupervisedDataset(tokenizer)(items)
    assert isinstance(batch["images"], list)
    assert [tuple(im.shape) for im in batch["images"]] == [tuple(x["image"].shape) for x in items]
    assert batch["image_sizes"] == [(1200, 300), (200, 600), (900, 900), (336, 336)]
    # same-shaped stacks are still passed per image (the model lays out each image's tiles by its size)
    batch = DataCollatorForSupervisedDataset(tokenizer)([items[1], items[1]])
    assert isinstance(batch["images"], list) and len(batch["images"]) == 2
