"""Stand-in model tables with hand-worked scores, shared by the serving tests.

Embeddings (D = 2), the last row of each table being the OOV row:
  users  u1 = [1, 0]   u2 = [0, 1]   ODD_USER = [1, 1]   OOV = [0.5, 0.5]
  items  i1 = [1, 2]   i2 = [3, -1]  i3 = [-1, 1]        OOV = [0, 0]

Ranking score = scale * dot(user, item); version 1 has scale 1, version 2 scale 10:
          i1    i2    i3
  u1       1     3    -1
  u2       2    -1     1
  ODD      3     2     0
  OOV    1.5     1     0      (any unseen or empty user id)
Retrieval top 3 (all items), best first:
  u1: i2 3, i1 1, i3 -1     u2: i1 2, i3 1, i2 -1     OOV: i1 1.5, i2 1, i3 0
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np

from serving import standin_models

# An id with an accent, a comma, a quote and CJK characters, served as the exact string.
ODD_USER = 'é,"用户'
USERS = ("u1", "u2", ODD_USER)
ITEMS = ("i1", "i2", "i3")

USER_EMBEDDINGS = np.array([[1, 0], [0, 1], [1, 1], [0.5, 0.5]], dtype=np.float32)
ITEM_EMBEDDINGS = np.array([[1, 2], [3, -1], [-1, 1], [0, 0]], dtype=np.float32)

SCORES_V1 = {
    ("u1", "i1"): 1.0,
    ("u1", "i2"): 3.0,
    ("u1", "i3"): -1.0,
    ("u2", "i1"): 2.0,
    ("u2", "i2"): -1.0,
    ("u2", "i3"): 1.0,
    (ODD_USER, "i1"): 3.0,
    (ODD_USER, "i2"): 2.0,
    (ODD_USER, "i3"): 0.0,
}
OOV_USER_SCORES_V1 = {"i1": 1.5, "i2": 1.0, "i3": 0.0}
TOP_ITEMS_V1 = {"u1": ["i2", "i1", "i3"], "u2": ["i1", "i3", "i2"], None: ["i1", "i2", "i3"]}
TOP_SCORES_V1 = {"u1": [3.0, 1.0, -1.0], "u2": [2.0, 1.0, -1.0], None: [1.5, 1.0, 0.0]}
VERSION_2_SCALE = 10.0


def spec(scale: float = 1.0) -> standin_models.StandInSpec:
    """Return the hand-worked tables with every score multiplied by `scale`."""
    return standin_models.StandInSpec(
        user_tokens=USERS,
        item_tokens=ITEMS,
        user_embeddings=USER_EMBEDDINGS,
        item_embeddings=ITEM_EMBEDDINGS,
        score_scale=scale,
        top_k=3,
    )


EXAMPLE_ROWS = {"user_id": ["u1", "u2"], "item_id": ["i2", "i3"]}


def install_version(prebuilt: pathlib.Path, model_dir: pathlib.Path, version: int) -> pathlib.Path:
    """Copy a prebuilt version into `model_dir/<version>` atomically: a temp folder, then rename."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".tmp-{version}"
    shutil.copytree(prebuilt, staging)
    final = model_dir / str(version)
    os.rename(staging, final)
    return final
