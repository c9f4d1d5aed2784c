"""A joint text–image space learned on the catalogue's own (text, image) pairs (e-CLIP idea).

Two projection heads (linear or a small MLP) sit on top of FROZEN, precomputed unimodal
embeddings and are trained with open_clip's symmetric `ClipLoss` and a learnable temperature,
plus a text-neighbourhood distillation term (`neighbourhood_distillation`: each side's in-batch
similarities pulled toward the raw text encoder's). Design points, each because the seed or the
data demands it:

- No duplicate texts or images inside a batch (`DuplicateFreeBatchSampler`): two products with
  the same title (or the same image) would be each other's false negatives under the CLIP loss.
- Train/validation split by duplicate GROUPS (union of "same title" and "same image" links,
  `duplicate_groups` + sklearn `GroupShuffleSplit`), so no duplicate leaks across the split.
- Early stopping on validation loss (heads over frozen features overfit within tens of steps),
  the best state is restored; loss curves, Recall@1/5/10 and median rank before/after are reported.
- Deterministic for a seed: the torch RNG is forked and seeded, deterministic algorithms are on
  for the duration of training, the sampler uses its own numpy generator.
- Saved as safetensors weights + a JSON config (no pickle anywhere); encoder fingerprints recorded.

Unfreezing encoder layers is a config field, but with precomputed embeddings the encoders are not
in the loop, so any value > 0 is refused with a clear ValueError (it needs an end-to-end trainer
that re-encodes texts and images every step).
"""

from .config import ContrastiveConfig
from .loss import neighbourhood_distillation
from .model import (
    JOINT_COLUMNS,
    JointSpaceModel,
    ResidualHead,
    combine_joint,
    joint_embedding_frame,
    joint_matrix,
    one_sided_in_combined,
    regularised_cca,
    zero_shot_scores,
)
from .persistence import (
    config_from_json,
    load_joint_model,
    model_fingerprint,
    model_folder,
    save_joint_model,
)
from .sampling import DuplicateFreeBatchSampler, group_split, product_keys, training_rows
from .training import train_joint_space

__all__ = [
    "ContrastiveConfig",
    "DuplicateFreeBatchSampler",
    "JOINT_COLUMNS",
    "JointSpaceModel",
    "ResidualHead",
    "combine_joint",
    "config_from_json",
    "group_split",
    "joint_embedding_frame",
    "joint_matrix",
    "load_joint_model",
    "model_fingerprint",
    "model_folder",
    "neighbourhood_distillation",
    "one_sided_in_combined",
    "product_keys",
    "regularised_cca",
    "save_joint_model",
    "train_joint_space",
    "training_rows",
    "zero_shot_scores",
]
