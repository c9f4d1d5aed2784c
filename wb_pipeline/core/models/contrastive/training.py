"""`train_joint_space`: seeded, deterministic training with early stopping on validation loss, the best
state restored, a refit on all pairs, and a `TrainingReport` (loss curves, retrieval before / after)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from wb_pipeline.core.model_selection.folds import (
    duplicate_groups,
)
from wb_pipeline.core.model_selection.retrieval_metrics import (
    chance_metrics,
    retrieval_metrics,
)

from .config import ContrastiveConfig
from .loss import _PairLoss
from .model import JointSpaceModel
from .sampling import DuplicateFreeBatchSampler, group_split


@dataclass
class TrainingReport:
    """What happened in one `train_joint_space` call (JSON-serialisable via `to_json_dict`)."""

    n_pairs: int
    n_train_pairs: int
    n_validation_pairs: int
    steps: int
    epochs: float
    best_step: int
    best_validation_loss: float
    stopped_early: bool
    seconds: float
    final_temperature: float
    refit_steps: int = 0  # steps of the refit on all pairs (0: the kept model is the early-stopping one)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, batch loss)
    validation_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # stage → direction → metric

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics_frame(self) -> pd.DataFrame:
        """One row per (stage, direction): recall_at_k columns and median_rank, held-out pairs."""
        rows = [
            {"stage": stage, "direction": direction, **values}
            for stage, by_direction in self.metrics.items()
            for direction, values in by_direction.items()
        ]
        return pd.DataFrame(rows)


@contextlib.contextmanager
def _seeded_torch(seed: int, deterministic: bool, num_threads: int):
    """Seed torch inside a forked RNG state, switch deterministic algorithms on and set the thread
    count; all three are restored on exit."""
    previous_deterministic, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True)
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)
            torch.set_num_threads(previous_threads)


def _as_tensor(vectors: np.ndarray, what: str) -> torch.Tensor:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"train_joint_space: {what} vectors must be a non-empty [n, dim] matrix, got {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"train_joint_space: {bad} {what} vector row(s) hold NaN or infinite values")
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # own writable copy


def _train_steps(
    model: JointSpaceModel,
    optimizer: torch.optim.Optimizer,
    loss_fn: _PairLoss,
    sampler: DuplicateFreeBatchSampler,
    text: torch.Tensor,
    image: torch.Tensor,
    max_steps: int,
    after_step: Callable[[int, float], bool],
) -> int:
    """Steps of `loss_fn` over fresh epochs of `sampler` until `max_steps` or until `after_step(step, loss)`
    returns True; the number of steps taken."""
    step, epoch = 0, 0
    model.train()
    while step < max_steps:
        for batch in sampler.epoch(epoch):
            if len(batch) < 2:  # a lone pair has no negatives
                continue
            loss = loss_fn(model, text[batch], image[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if after_step(step, loss.item()) or step >= max_steps:
                return step
        epoch += 1
    return step


def train_joint_space(
    text_vectors: np.ndarray,
    image_vectors: np.ndarray,
    text_keys: Sequence[Any],
    image_keys: Sequence[Any],
    config: ContrastiveConfig = ContrastiveConfig(),
    progress: Callable[[str], None] | None = None,
) -> tuple[JointSpaceModel, TrainingReport]:
    """Train projection heads so that row i's text and image meet in one space.

    `text_keys` / `image_keys` (e.g. normalised title, image content hash) define duplicates: rows
    sharing either never share a batch and always land on the same side of the validation split.
    Returns the model and a `TrainingReport` with the held-out Recall@k / median rank at chance,
    before training (random heads) and after (the best validation-loss state). With
    `refit_on_all_pairs` the returned model is then retrained from scratch on every pair for the same
    number of epochs; otherwise it is the best validation-loss state itself."""
    text_t, image_t = _as_tensor(text_vectors, "text"), _as_tensor(image_vectors, "image")
    if len(text_t) != len(image_t) or len(text_keys) != len(text_t) or len(image_keys) != len(text_t):
        raise ValueError(
            f"train_joint_space: {len(text_t)} text vectors, {len(image_t)} image vectors, "
            f"{len(text_keys)} text keys, {len(image_keys)} image keys; all must be equal"
        )
    text_keys, image_keys = list(text_keys), list(image_keys)
    started = time.perf_counter()
    groups = duplicate_groups(text_keys, image_keys)
    train_rows, validation_rows = group_split(groups, config.validation_fraction, config.seed)
    if len(train_rows) < 2 or len(validation_rows) < 2:
        raise ValueError(
            f"train_joint_space: split gave {len(train_rows)} train and {len(validation_rows)} validation pairs; "
            "need at least 2 on each side"
        )
    sampler = DuplicateFreeBatchSampler(
        [text_keys[i] for i in train_rows], [image_keys[i] for i in train_rows], config.batch_size, config.seed
    )
    validation_batches = list(
        DuplicateFreeBatchSampler(
            [text_keys[i] for i in validation_rows],
            [image_keys[i] for i in validation_rows],
            config.batch_size,
            config.seed,
        ).epoch(0)
    )
    train_text, train_image = text_t[train_rows], image_t[train_rows]
    val_text, val_image = text_t[validation_rows], image_t[validation_rows]
    loss_fn = _PairLoss(config)

    with _seeded_torch(config.seed, config.deterministic, config.num_threads):
        model = JointSpaceModel(text_t.shape[1], image_t.shape[1], config)
        model.set_closed_form(train_text.numpy(), train_image.numpy())
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )

        @torch.no_grad()
        def validation_loss() -> float:
            model.eval()
            total = sum(loss_fn(model, val_text[b], val_image[b]).item() * len(b) for b in validation_batches)
            model.train()
            return total / sum(len(b) for b in validation_batches)

        def held_out_metrics(part: str = "joint") -> dict[str, dict[str, float]]:
            with torch.no_grad():
                if part == "heads":
                    text_side, image_side = model.head_text(val_text).numpy(), model.head_image(val_image).numpy()
                elif part == "closed_form":
                    text_side = F.normalize((val_text - model.text_cca_mean) @ model.text_cca_map, dim=-1).numpy()
                    image_side = F.normalize((val_image - model.image_cca_mean) @ model.image_cca_map, dim=-1).numpy()
                else:
                    text_side, image_side = model.project_text(val_text.numpy()), model.project_image(val_image.numpy())
            return retrieval_metrics(text_side, image_side, config.recall_ks)

        # 'before' = untrained heads alone: what training the heads has to beat.
        metrics = {
            "chance": chance_metrics(len(validation_rows), config.recall_ks),
            "before": held_out_metrics("heads"),
        }
        if model.closed_form_dim:
            metrics["closed_form"] = held_out_metrics("closed_form")
        best_loss = validation_loss()
        validation_curve = [(0, best_loss)]
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        best_step, stale, stopped_early = 0, 0, False
        train_curve: list[tuple[int, float]] = []

        def after_step(step: int, loss: float) -> bool:
            nonlocal best_loss, best_step, best_state, stale, stopped_early
            train_curve.append((step, loss))
            if step % config.eval_every_steps:
                return False
            current = validation_loss()
            validation_curve.append((step, current))
            if current < best_loss - config.min_improvement:
                best_loss, best_step, stale = current, step, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            if progress is not None:
                progress(f"step {step}: train loss {loss:.4f}, validation loss {current:.4f}")
            stopped_early = stale >= config.patience_evals
            return stopped_early

        step = _train_steps(model, optimizer, loss_fn, sampler, train_text, train_image, config.max_steps, after_step)
        model.load_state_dict(best_state)
        model.eval()
        if model.closed_form_dim:
            metrics["heads"] = held_out_metrics("heads")
        metrics["after"] = held_out_metrics()
        refit_steps = 0
        if config.refit_on_all_pairs and best_step > 0:
            # Same number of epochs on all pairs as the best validation state took on the training part.
            refit_steps = max(1, round(best_step * len(text_t) / len(train_rows)))
            model = JointSpaceModel(text_t.shape[1], image_t.shape[1], config)
            model.set_closed_form(text_t.numpy(), image_t.numpy())
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad],
                lr=config.learning_rate,
                weight_decay=config.weight_decay,
            )
            _train_steps(
                model,
                optimizer,
                loss_fn,
                DuplicateFreeBatchSampler(text_keys, image_keys, config.batch_size, config.seed),
                text_t,
                image_t,
                refit_steps,
                lambda step, loss: False,
            )
            model.eval()

    report = TrainingReport(
        n_pairs=len(text_t),
        n_train_pairs=len(train_rows),
        n_validation_pairs=len(validation_rows),
        steps=step,
        epochs=round(step * config.batch_size / max(len(train_rows), 1), 3),
        best_step=best_step,
        best_validation_loss=float(best_loss),
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        final_temperature=float(1.0 / model.logit_scale().item()),
        refit_steps=refit_steps,
        train_curve=train_curve,
        validation_curve=validation_curve,
        metrics=metrics,
    )
    return model, report
