"""The training loop: patches from the cached preprocessing, Dice + CE (or the configured loss), validation by
sliding window with Dice per class, ``last.pt`` every epoch and ``best.pt`` on the best validation Dice, a CSV
log, all inside one run folder that also holds the resolved config and the splits."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from monai import transforms as mt
from monai.data import DataLoader, Dataset, PersistentDataset
from monai.utils import set_determinism

from ..config import Config, dump_config, load_config, parse_duration
from ..data.datasets import DatasetInfo, load_dataset, load_splits, make_splits
from ..data.slices import model_in_channels, resolve_slices
from ..data.transforms import LoadCased, augment_transforms, preprocess_transforms
from ..errors import MedsegError
from ..inference.inferer import predict_logits
from ..models import build_model
from .checkpoint import save_checkpoint
from .losses import build_loss
from .metrics import dice_per_class


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MedsegError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("device 'cuda' was asked for but CUDA is not available on this machine")
    return dev


def cache_dir_for(cfg: Config, info: DatasetInfo) -> Path:
    """A cache folder keyed by everything that changes the preprocessed arrays."""
    base = Path(cfg.data.cache_dir or os.environ.get("MEDSEG3D_CACHE", Path.home() / ".cache" / "medseg3d"))
    key = json.dumps({"pre": cfg.preprocess.model_dump(), "labels": info.labels, "root": str(info.root),
                      "channels": info.channels, "v": 1}, sort_keys=True)
    return base / "preprocessed" / hashlib.sha256(key.encode()).hexdigest()[:16]


def build_model_from_config(cfg: Config, in_channels: int, out_channels: int) -> torch.nn.Module:
    m = cfg.model
    in_channels = model_in_channels(cfg, in_channels)  # 2.5D: each channel once per context slice
    try:
        return build_model(m.name, m.spatial_dims, in_channels, out_channels, **m.params)
    except TypeError as e:
        raise MedsegError(f"model.params: {e}") from None
    except ValueError as e:
        raise MedsegError(f"model.params: {e}") from None


class Trainer:
    """Trains one config into one run folder. ``Trainer(cfg).fit()`` returns the run folder."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.info = load_dataset(cfg.data.root, cfg.data.layout, cfg.data.dataset_json, cfg.data.channels,
                                 cfg.data.labels)
        self.cfg = resolve_slices(cfg, self.info)  # 2D: the slice axis and patch, recorded resolved
        self.class_names = list(self.info.labels)
        self.label_values = list(self.info.labels.values())
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # ---- set-up -------------------------------------------------------------------------------------------
    def _new_run_dir(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(self.cfg.output_dir) / f"{self.cfg.name}_{stamp}"
        run, i = base, 1
        while run.exists():
            run, i = Path(f"{base}_{i}"), i + 1
        return run

    def _splits(self) -> tuple[list[dict], list[dict]]:
        d = self.cfg.data
        ids = [c["id"] for c in self.info.training]
        splits = load_splits(d.splits_file) if d.splits_file else make_splits(ids, d.num_folds, self.cfg.train.seed)
        (self.run_dir / "splits.json").write_text(json.dumps(splits, indent=1))
        by_id = {c["id"]: c for c in self.info.training}
        if d.fold == "all":
            return self.info.training, []
        if d.fold >= len(splits):
            raise MedsegError(f"data.fold is {d.fold} but there are only {len(splits)} folds")
        missing = [i for s in ("train", "val") for i in splits[d.fold][s] if i not in by_id]
        if missing:
            raise MedsegError(f"{d.splits_file}: unknown case id(s) {missing[:5]}")
        return [by_id[i] for i in splits[d.fold]["train"]], [by_id[i] for i in splits[d.fold]["val"]]

    def _datasets(self, train_cases: list[dict], val_cases: list[dict]):
        cfg = self.cfg
        pre = mt.Compose([LoadCased(("image", "label"), channels=len(self.info.channels)),
                          *preprocess_transforms(cfg, self.label_values)])
        cache = cache_dir_for(cfg, self.info)
        cache.mkdir(parents=True, exist_ok=True)
        cached_train = PersistentDataset(train_cases, transform=pre, cache_dir=cache)
        cached_val = PersistentDataset(val_cases, transform=pre, cache_dir=cache) if val_cases else None
        aug = mt.Compose(augment_transforms(cfg))
        aug.set_random_state(seed=cfg.train.seed)
        return Dataset(cached_train, transform=aug), cached_val

    # ---- loop ---------------------------------------------------------------------------------------------
    def fit(self) -> Path:
        cfg, t = self.cfg, self.cfg.train
        set_determinism(seed=t.seed)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        train_cases, val_cases = self._splits()
        train_ds, val_ds = self._datasets(train_cases, val_cases)
        loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True, num_workers=t.num_workers,
                            drop_last=False, persistent_workers=t.num_workers > 0)

        n_in, n_out = len(self.info.channels), len(self.class_names)
        model = build_model_from_config(cfg, n_in, n_out).to(self.device)
        opt = self._optimizer(model)
        sched = self._scheduler(opt)
        loss_fn = build_loss(t.loss, multilabel=False, **t.loss_params)
        use_amp = t.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        budget = parse_duration(t.budget) if t.budget else math.inf

        log_path = self.run_dir / "log.csv"
        fields = ["epoch", "iterations", "train_loss", "val_dice_mean"] + \
                 [f"val_dice_{n}" for n in self.class_names[1:]] + ["lr", "epoch_seconds"]
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

        batches = self._forever(loader)
        best, start, it_total = -math.inf, time.monotonic(), 0
        print(f"run folder: {self.run_dir}", flush=True)
        print(f"model {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
              f"{self.device}; {len(train_cases)} training / {len(val_cases)} validation cases", flush=True)
        for epoch in range(t.epochs):
            t0 = time.monotonic()
            model.train()
            losses: list[float] = []
            bar = _progress(t.iters_per_epoch, f"epoch {epoch + 1}/{t.epochs}")
            for _ in range(t.iters_per_epoch):
                batch = next(batches)
                x = batch["image"].to(self.device)
                y = batch["label"].to(self.device)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, enabled=use_amp):
                    out = model(x)
                    loss = loss_fn(out, y, x)
                if not torch.isfinite(loss):
                    raise MedsegError(f"training diverged at epoch {epoch + 1}: the loss is {loss.item()}")
                scaler.scale(loss).backward()
                if t.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(opt)
                scaler.update()
                losses.append(loss.item())
                it_total += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
                if time.monotonic() - start > budget:
                    break
            bar.close()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            val = self.validate(model, val_ds) if val_ds is not None and (
                (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs or time.monotonic() - start > budget) else None
            mean = float(np.nanmean(val)) if val is not None and not np.all(np.isnan(val)) else float("nan")
            row = [epoch + 1, it_total, float(np.mean(losses))] + [mean] + \
                  (list(val) if val is not None else [float("nan")] * (n_out - 1)) + [lr, time.monotonic() - t0]
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
            state = self._state(model, opt, sched, epoch + 1, it_total, best)
            save_checkpoint(state, self.run_dir / "last.pt")
            if val is not None and mean > best:
                best = mean
                save_checkpoint({**state, "best_metric": best}, self.run_dir / "best.pt")
            msg = f"epoch {epoch + 1}: loss {np.mean(losses):.4f}"
            if val is not None:
                per = ", ".join(f"{n} {d:.3f}" for n, d in zip(self.class_names[1:], val))
                msg += f"; val Dice {mean:.3f} ({per})"
            print(msg + f"; {time.monotonic() - t0:.1f}s", flush=True)
            if time.monotonic() - start > budget:
                print(f"stopping: the wall-clock budget of {t.budget} is spent", flush=True)
                break
        if not (self.run_dir / "best.pt").exists():
            save_checkpoint(self._state(model, opt, sched, epoch + 1, it_total, best), self.run_dir / "best.pt")
        return self.run_dir

    @staticmethod
    def _forever(loader) -> Iterator[dict]:
        while True:
            yield from loader

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        t = self.cfg.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                                   weight_decay=t.weight_decay)
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _scheduler(self, opt: torch.optim.Optimizer):
        t = self.cfg.train
        if t.scheduler == "poly":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - min(e, t.epochs) / t.epochs) ** t.poly_power)
        if t.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, val_ds) -> list[float]:
        """Dice per foreground class over the validation cases (sliding window on the preprocessed grid)."""
        classes = list(range(1, len(self.class_names)))
        scores = []
        for item in val_ds:
            logits = predict_logits(model, _plain(item["image"])[None], self.cfg, self.device)
            pred = logits.argmax(1)[0]
            scores.append(dice_per_class(pred, _plain(item["label"])[0].long(), classes))
        return list(np.nanmean(np.array(scores, dtype=float), axis=0)) if scores else [float("nan")] * len(classes)

    def _state(self, model, opt, sched, epoch: int, iteration: int, best: float) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "iteration": iteration, "best_metric": best if best > -math.inf else None,
            "config": self.cfg.model_dump(mode="json"), "channels": list(self.info.channels),
            "labels": dict(self.info.labels),
        }


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def train(config: Any, overrides: list[str] | None = None, run_dir: str | Path | None = None) -> Path:
    """Train from a config (path, dict or Config) and return the run folder."""
    cfg = load_config(config, overrides)
    return Trainer(cfg, run_dir).fit()
