"""Fixtures of the training tests: a tiny anyres (LLaVA-1.6) data set written on the spot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

#: (image size, colour, answer): 1, 2 and 4 grid tiles at the LLaVA-1.6 pinpoints (3x1, 1x2, 2x2)
ANYRES_IMAGES = (((1200, 300), (220, 30, 30), "Red."), ((200, 600), (30, 200, 40), "Green."),
                 ((900, 900), (30, 40, 220), "Blue."))


@pytest.fixture(scope="session")
def tiny_anyres_data(tmp_path_factory) -> Path:
    """A folder with ``anyres.json`` (three image samples of different aspect ratios, one text-only) and
    ``images/{0,1,2}.png``."""
    folder = tmp_path_factory.mktemp("anyres-data")
    (folder / "images").mkdir()
    samples = []
    for i, (size, colour, answer) in enumerate(ANYRES_IMAGES):
        Image.new("RGB", size, colour).save(folder / "images" / f"{i}.png")
        samples.append({"id": f"img{i}", "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this picture?"}, {"from": "gpt", "value": answer}]})
    samples.append({"id": "text", "conversations": [{"from": "human", "value": "Say hello."},
                                                    {"from": "gpt", "value": "Hello."}]})
    (folder / "anyres.json").write_text(json.dumps(samples))
    return folder
