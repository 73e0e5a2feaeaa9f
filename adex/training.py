"""One training loop for advisors and the expert.

A *dataset* here is anything with ``__len__`` and ``batch(indices) -> batch`` where the
batch has ``.target`` (FloatTensor [B], real units) and a ``.to(device)``; a *model*
maps a batch to normalised predictions [B] and owns a ``normalizer``
(:class:`adex.nn.Normalizer`); a model may also define ``target_offset(batch)`` (FloatTensor
[B], real units, e.g. a per-element reference), which is then subtracted from the target
before normalising and added back to predictions. Early stopping keeps the weights of the epoch with the
lowest validation MAE.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from torch import nn


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices): ...


@dataclass
class TrainingConfig:
    """Optimisation settings (all overridable with ``--set training.KEY=VALUE``).

    Attributes:
        epochs: maximum number of epochs.
        batch_size: crystals (or vacancies) per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        loss: ``l1`` (MAE), ``mse`` or ``huber`` on normalised targets.
        scheduler: ``cosine`` (to 0 over ``epochs``), ``plateau`` (halve after
            ``patience // 3`` flat epochs) or ``none``.
        patience: stop after this many epochs without a better validation MAE.
        val_fraction, test_fraction: random split fractions (fixed ``seed``).
        seed: seeds the split, the initial weights and the batch order.
        limit: use only this many samples (smoke runs), drawn with ``seed``.
        threads: torch CPU threads (None: torch's default).
        max_minutes: stop after this wall time (the best epoch so far is kept).
        device: ``cpu``, ``cuda`` or ``auto``.
        ema_decay: if set (e.g. 0.999), keep an exponential moving average of the
            weights (and float buffers), updated after every optimizer step as
            ``ema = decay * ema + (1 - decay) * weights`` (as nequip's ``use_ema``);
            validation, early stopping and the returned model use the averaged
            weights. ``1 / (1 - decay)`` steps is the averaging horizon.
        ema_warmup: with ``ema_decay``, use ``min(ema_decay, (1 + n) / (10 + n))`` at
            update ``n`` (TensorFlow's ``num_updates`` rule): the horizon grows with the
            run, so a short run (few steps per epoch, small data) is not an average that
            still holds a large share of the initial weights (without it, after n
            updates the initial weights keep ``decay ** n``: 37 % after 1,000 steps at
            0.999).
        host_weight_power: experts only: weight each training vacancy's loss by
            ``n_host ** -p`` (``n_host``: training vacancies of its host compound),
            normalised to mean 1; 0 (default) counts every vacancy once, 0.5 keeps a host
            with 100 vacancies from weighing 100x a host with one, 1 weighs every host
            equally. Advisors have no hosts (setting it there is an error).
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: Literal["l1", "mse", "huber"] = "l1"
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    patience: int = 30
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None
    threads: int | None = None
    max_minutes: float | None = None
    device: str = "cpu"
    ema_decay: float | None = None
    ema_warmup: bool = False
    host_weight_power: float = 0.0

    def __post_init__(self) -> None:
        if self.host_weight_power < 0:
            raise ValueError(f"host_weight_power must be >= 0, got {self.host_weight_power}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit (--limit) must be a number of samples >= 1, got {self.limit}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (weights, dropout, batch order)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from adex.errors import ConfigError

        raise ConfigError("training.device: cuda requested but no GPU is available")
    return torch.device(name)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/val/test index arrays with a fixed seed (each non-empty if n >= 3)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return np.sort(train), np.sort(val), np.sort(test)


def _loss_fn(name: str) -> nn.Module:
    """The per-sample loss ([B] -> [B], no reduction)."""
    return {"l1": nn.L1Loss(reduction="none"), "mse": nn.MSELoss(reduction="none"),
            "huber": nn.HuberLoss(delta=1.0, reduction="none")}[name]


@torch.no_grad()
def predict(model: nn.Module, data: BatchSource, batch_size: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """Predictions in real units for every sample of ``data``: float64 [len(data)]."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.batch(np.arange(start, min(start + batch_size, len(data)))).to(device)
        out.append((model.normalizer.denorm(model(batch)) + target_offset(model, batch)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def target_offset(model: nn.Module, batch) -> torch.Tensor | float:
    """The model's ``target_offset(batch)`` ([B], real units) or 0."""
    offset = getattr(model, "target_offset", None)
    return offset(batch) if offset is not None else 0.0


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R^2 and count (units of the target)."""
    err = pred - target
    ss_tot = float(((target - target.mean()) ** 2).sum()) if len(target) else 0.0
    return {  # None (JSON null) where undefined, never NaN
        "mae": float(np.abs(err).mean()) if len(err) else None,
        "rmse": float(np.sqrt((err**2).mean())) if len(err) else None,
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else None,
        "n": int(len(err)),
    }


class WeightAverage:
    """Exponential moving average of a model's floating-point state (parameters and
    float buffers such as BatchNorm statistics; integer buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay of the next update: ``decay``, or with warmup ``min(decay, (1 + n) / (10 + n))``."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        for key, value in model.state_dict().items():
            avg = self.state[key]
            if avg.is_floating_point():
                avg.mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                avg.copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Within the block ``model`` holds the averaged weights; its own come back after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(live)


@dataclass
class FitResult:
    best_epoch: int
    best_val_mae: float
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped_because: str = "epochs"


def fit(
    model: nn.Module,
    train: BatchSource,
    val: BatchSource | None,
    config: TrainingConfig,
    description: str = "training",
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    parameters: Callable[[], list] | None = None,
    sample_weight: np.ndarray | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best-validation weights.

    Args:
        on_epoch: called at the start of each epoch with (epoch, model), e.g. to unfreeze
            layers on a schedule (``parameters`` then re-reads the trainable set).
        parameters: trainable parameters (default: those with ``requires_grad``).
        sample_weight: float [len(train)], the loss weight of each training sample
            (a batch's loss is the mean of weight x per-sample loss; weights of mean 1
            keep the loss scale), or None: all 1. Without a validation set the epoch is
            chosen by this weighted training loss.

    Under ``torchrun`` (see :mod:`adex.distributed`) the model is wrapped in
    ``DistributedDataParallel`` and each process trains on its share of every global
    batch of ``config.batch_size``.
    """
    from adex.distributed import context
    from adex.progress import progress_bar

    dist = context(config.device)
    device = resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    model.to(device)
    net = model  # what the training steps call: a DDP wrapper when distributed
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    loss_fn = _loss_fn(config.loss)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if sample_weight.shape != (len(train),) or not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
            raise ValueError(f"sample_weight must be {len(train)} finite weights >= 0, got shape {sample_weight.shape}")
    rng = np.random.default_rng(config.seed)

    def make_optimizer():
        params = parameters() if parameters else [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    optimizer = make_optimizer()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def lr_at(epoch: int) -> float:
        if config.scheduler == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        return optimizer.param_groups[0]["lr"]

    best_state = copy.deepcopy(model.state_dict())
    average = WeightAverage(model, config.ema_decay, config.ema_warmup) if config.ema_decay is not None else None
    best_val, best_epoch, flat = math.inf, -1, 0
    history: list[dict] = []
    start = time.perf_counter()
    stopped = "epochs"
    with progress_bar(info=True, disable=not dist.is_main) as progress:
        task = progress.add_task(description, total=config.epochs, info="")
        for epoch in range(config.epochs):
            if on_epoch is not None:
                on_epoch(epoch, model)
                now_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                if now_trainable != n_trainable:
                    lr_now = optimizer.param_groups[0]["lr"]
                    optimizer = make_optimizer()
                    for group in optimizer.param_groups:
                        group["lr"] = lr_now
                    n_trainable = now_trainable
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
            model.train()
            order = rng.permutation(len(train))
            total_loss, total_n = 0.0, 0
            for s in range(0, len(order), config.batch_size):
                chunk = order[s : s + config.batch_size]  # the global batch; each process takes its share
                if len(chunk) < 2 * dist.world_size and len(order) > 1:  # BatchNorm needs > 1 sample per process
                    continue
                idx = np.sort(chunk[dist.rank :: dist.world_size])
                batch = train.batch(idx).to(device)
                per_sample = loss_fn(net(batch), model.normalizer.norm(batch.target - target_offset(model, batch)))  # [B]
                if sample_weight is not None:
                    per_sample = per_sample * torch.as_tensor(sample_weight[idx], dtype=per_sample.dtype, device=device)
                loss = per_sample.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if average is not None:
                    average.update(model)
                total_loss += loss.item() * len(idx)
                total_n += len(idx)
            if dist.enabled:  # the epoch's loss over all processes (identical on each, so decisions agree)
                totals = torch.tensor([total_loss, total_n], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(totals)
                total_loss, total_n = float(totals[0]), int(totals[1])
            train_loss = total_loss / max(total_n, 1)
            with average.applied(model) if average is not None else contextlib.nullcontext(model) as evaluated:
                if val is not None and len(val):
                    val_pred = predict(evaluated, val, device=device)
                    val_mae = float(np.abs(val_pred - val.batch(np.arange(len(val))).target.numpy()).mean())
                else:
                    val_mae = train_loss * float(model.normalizer.std)
                improved = val_mae < best_val
                if improved:  # copied inside the block: the averaged weights, when averaging
                    best_state = copy.deepcopy(evaluated.state_dict())
            if config.scheduler == "plateau" and flat and flat % max(config.patience // 3, 1) == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
            if improved:
                best_val, best_epoch, flat = val_mae, epoch, 0
            else:
                flat += 1
            elapsed = time.perf_counter() - start
            history.append({"epoch": epoch, "train_loss": train_loss, "val_mae": val_mae, "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed})
            info = f"loss {train_loss:.4f}  val MAE {val_mae:.4f}  best {best_val:.4f} (epoch {best_epoch})"
            progress.update(task, advance=1, info=info)
            if not progress.console.is_terminal and not progress.disable:  # logs: one line per epoch
                progress.console.print(f"{description} epoch {epoch + 1}/{config.epochs} ({elapsed:.0f} s): {info}")
            if flat >= config.patience:
                stopped = f"early stopping (no better val MAE in {config.patience} epochs)"
                break
            if config.max_minutes is not None and elapsed > 60 * config.max_minutes:
                stopped = f"time limit ({config.max_minutes} min)"
                break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_val, len(history), time.perf_counter() - start, history, stopped)


def primary_scores(metrics: dict) -> tuple[str, dict]:
    """(split name, metrics) of the most honest split available: test, else val, else train."""
    for split in ("test", "val", "train"):
        if metrics.get(split):
            return split, metrics[split]
    raise ValueError("no evaluated split")


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.csv`` of a run: one row per epoch (nothing for an empty history)."""
    from adex.fileio import atomic_write_text

    if not history:
        return
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in keys) for row in history]
    atomic_write_text(run_dir / "history.csv", "\n".join(lines) + "\n")


def plot_run(run_dir: Path, history: list[dict], pred: np.ndarray, target: np.ndarray, label: str, unit: str) -> None:
    """``learning_curve.png`` (loss and val MAE per epoch) and ``parity.png`` (test set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["val_mae"] for h in history], label=f"validation MAE ({unit})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"MAE ({unit})")
        ax.set_yscale("log")
        ax.set_title(label)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "learning_curve.png", dpi=120)
        plt.close(fig)
    if len(pred):
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(target, pred, s=4, alpha=0.5)
        lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        mae = float(np.abs(pred - target).mean())
        ax.set_xlabel(f"DFT ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title(f"{label}: test MAE {mae:.3f} {unit}")
        fig.tight_layout()
        fig.savefig(run_dir / "parity.png", dpi=120)
        plt.close(fig)
