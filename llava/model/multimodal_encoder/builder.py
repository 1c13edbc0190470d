"""Build the vision tower named by a config's ``mm_vision_tower`` (or ``vision_tower``)."""

from __future__ import annotations

import os
import re

from .clip_encoder import CLIPVisionTower

# "org/name" as on the Hugging Face hub (no leading "/", "." or "~", exactly one slash).
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def vision_tower_name(config) -> str | None:
    """The tower's path or hub name: ``mm_vision_tower``, else the older key ``vision_tower``."""
    name = getattr(config, "mm_vision_tower", None)
    if name is None:
        name = getattr(config, "vision_tower", None)  # upstream's ModelArguments and very old configs
    return name


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """Build (and, unless ``delay_load=True``, load) the CLIP tower named by the config.

    Raises:
        ValueError: when the config names no tower, or names a local path that does not exist.
    """
    name = vision_tower_name(vision_tower_cfg)
    if not name:
        raise ValueError("the config has no mm_vision_tower (nor vision_tower): it is not a LLaVA model config")
    name = os.path.expanduser(str(name))
    if not os.path.exists(name) and not _HUB_NAME.match(name):
        raise ValueError(
            f"mm_vision_tower points to {name!r}, which is neither an existing folder nor a hub name "
            "(org/name); set mm_vision_tower in config.json to your local copy of the CLIP model"
        )
    return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
