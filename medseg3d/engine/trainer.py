"""The training loop: patches from the cached preprocessing, Dice + CE (or the configured loss), validation by
sliding window with Dice per class or region, ``last.pt`` every epoch and ``best.pt`` on the best validation
Dice, a CSV log, TensorBoard events and ``progress.png``, all inside one run folder that also holds the
resolved config and the splits.

Length: ``train.epochs`` x ``train.iters_per_epoch``, or ``train.iterations`` in total, cut short by the
wall-clock ``train.budget``. The learning rate follows the schedule per iteration (linear warm-up, then poly
or cosine). ``resume=RUN_DIR`` continues from ``RUN_DIR/last.pt`` exactly: weights, optimizer, scheduler,
epoch and iteration counters, the best metric, and every random state (torch, numpy, python, the batch
sampler and each MONAI random transform), so the resumed run repeats and skips nothing. Batches are drawn
with a seeded sampler in the main process (``num_workers: 0``, the default); with worker processes the
workers prefetch ahead, so a resumed run is equivalent but not bit-identical.

Multi-domain runs (``data.domains``, u2net3d): every domain has its own data, labels, channels and splits;
each batch comes from one domain (``data.domain_sampling``), validation is reported per domain.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from monai import transforms as mt
from monai.data import Dataset, PersistentDataset, list_data_collate
from monai.utils import convert_to_tensor, set_determinism

from ..config import Config, DataSource, dump_config, load_config, parse_duration
from ..data.datasets import DatasetInfo, load_source, load_splits, make_splits
from ..data.labels import labels_to_regions
from ..data.slices import model_in_channels, resolve_slices
from ..data.transforms import LoadCased, augment_transforms, preprocess_transforms
from ..errors import MedsegError, medseg_cause
from ..inference.inferer import predict_logits
from ..io.scan import atomic_write
from ..models import build_model
from ..registry import MODELS
from .checkpoint import load_checkpoint, save_checkpoint
from .losses import build_loss
from .metrics import case_metrics, masks_of, structures, summarise, write_table


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


def cache_dir_for(cfg: Config, info: DatasetInfo, map_labels: bool = True) -> Path:
    """A cache folder keyed by everything that changes the preprocessed arrays."""
    base = Path(cfg.data.cache_dir or os.environ.get("MEDSEG3D_CACHE", Path.home() / ".cache" / "medseg3d"))
    key = json.dumps({"pre": cfg.preprocess.model_dump(), "labels": info.labels, "root": str(info.root),
                      "channels": info.channels, "v": 1, **({} if map_labels else {"raw_labels": True})},
                     sort_keys=True)
    return base / "preprocessed" / hashlib.sha256(key.encode()).hexdigest()[:16]


def model_params(cfg: Config) -> dict[str, Any]:
    """``model.params`` completed from the rest of the config: ``input_image_size`` (the AE-regularised net's
    VAE needs the training patch size) is filled in from ``train.patch_size`` for any net that takes it, and
    ``domains`` from ``data.domains``."""
    params = dict(cfg.model.params)
    try:
        sig = inspect.signature(MODELS.get(cfg.model.name).__init__).parameters
    except ValueError:
        sig = {}
    patch = list(cfg.train.patch_size)
    if "input_image_size" in sig:
        if params.get("input_image_size") is None:
            params["input_image_size"] = patch
        elif list(params["input_image_size"]) != patch:
            raise MedsegError(f"model.params.input_image_size {list(params['input_image_size'])} must equal "
                              f"train.patch_size {patch} (leave it out and it is taken from the patch size)")
    if cfg.data.domains:
        if params.get("domains") not in (None, list(cfg.data.domains)):
            raise MedsegError(f"model.params.domains {params['domains']} differs from data.domains "
                              f"{list(cfg.data.domains)}; leave it out")
        params["domains"] = list(cfg.data.domains)
    return params


def build_model_from_config(cfg: Config, in_channels: int | dict, out_channels: int | dict) -> torch.nn.Module:
    """The config's network; for a multi-domain config ``in_channels``/``out_channels`` are dicts per domain."""
    m = cfg.model
    in_channels = model_in_channels(cfg, in_channels)  # 2.5D: each channel once per context slice
    try:
        return build_model(m.name, m.spatial_dims, in_channels, out_channels, **model_params(cfg))
    except TypeError as e:
        raise MedsegError(f"model.params: {e}") from None
    except ValueError as e:
        raise MedsegError(f"model.params: {e}") from None


def model_from_checkpoint(ckpt: dict, domain: str | None = None) -> tuple[torch.nn.Module, Config, dict]:
    """Rebuild a checkpoint's network with its weights. Returns ``(model, config, head)`` where ``head`` holds
    the ``channels``, ``labels``, ``regions`` (None for softmax training) and ``domain`` (None for
    single-domain models; the first domain unless ``domain`` names another) the outputs belong to."""
    from ..config import validate_config

    cfg = validate_config(ckpt["config"], source=ckpt.get("path", "checkpoint"))
    doms = ckpt.get("domains")
    if doms:
        name = domain or next(iter(doms))
        if name not in doms:
            raise MedsegError(f"{ckpt.get('path', 'checkpoint')}: unknown domain '{name}'; the model has "
                              f"{', '.join(doms)}")
        n_in = {d: len(v["channels"]) for d, v in doms.items()}
        n_out = {d: len(v["regions"] or v["labels"]) for d, v in doms.items()}
        head = {**doms[name], "domain": name}
    else:
        if domain is not None:
            raise MedsegError(f"{ckpt.get('path', 'checkpoint')}: --domain given but the model has no domains")
        regions = ckpt.get("regions")
        n_in, n_out = len(ckpt["channels"]), len(regions or ckpt["labels"])
        head = {"channels": ckpt["channels"], "labels": ckpt["labels"], "regions": regions, "domain": None}
    model = build_model_from_config(cfg, n_in, n_out)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise MedsegError(f"{ckpt.get('path')}: weights do not fit model '{cfg.model.name}' "
                          f"({str(e).splitlines()[0]})") from None
    return model, cfg, head


@dataclass
class DomainData:
    """One data set of a run (the only one unless ``data.domains``)."""

    name: str  # '' for a single-domain run
    src: DataSource
    info: DatasetInfo
    regions: dict[str, list[int]] | None  # region training targets (data.target == "regions")
    structs: dict[str, list[int]]  # what metrics are reported on: regions, else foreground labels
    train_cases: list[dict] = field(default_factory=list)
    val_cases: list[dict] = field(default_factory=list)
    train_ds: Any = None
    val_ds: Any = None
    aug: Any = None

    @property
    def n_out(self) -> int:
        return len(self.regions) if self.regions else len(self.info.labels)

    @property
    def prefix(self) -> str:
        return f"{self.name}_" if self.name else ""


class Trainer:
    """Trains one config into one run folder. ``Trainer(cfg).fit()`` returns the run folder;
    ``Trainer(cfg, resume=RUN_DIR).fit()`` continues an interrupted run."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: str | Path | None = None):
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.domains: list[DomainData] = []
        region_mode = cfg.data.target == "regions"
        for name, src in cfg.data.sources().items():
            info = load_source(src)
            regions = {k: list(v) for k, v in src.regions.items()} if src.regions else None
            self.domains.append(DomainData(name, src, info, regions if region_mode else None,
                                           structures(info.labels, regions)))
        first = self.domains[0]
        self.info = first.info
        self.cfg = cfg = resolve_slices(cfg, self.info)  # 2D: the slice axis and patch, recorded resolved
        self.resume_from: dict | None = None
        if resume is not None:
            run_dir = Path(resume)
            if not (run_dir / "last.pt").is_file():
                raise MedsegError(f"{run_dir}: nothing to resume (no last.pt)")
            self.resume_from = load_checkpoint(run_dir / "last.pt")
            _check_same_run(self.resume_from["config"], cfg, run_dir / "last.pt")
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.multi = bool(cfg.data.domains)

    # ---- set-up -------------------------------------------------------------------------------------------
    def _new_run_dir(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(self.cfg.output_dir) / f"{self.cfg.name}_{stamp}"
        run, i = base, 1
        while run.exists():
            run, i = Path(f"{base}_{i}"), i + 1
        return run

    def _splits(self) -> None:
        """Seeded k-fold splits (or data.splits_file), saved to splits.json (per domain for multi-domain runs);
        a resumed run re-reads its own splits.json."""
        d = self.cfg.data
        saved = self.run_dir / "splits.json"
        previous = json.loads(saved.read_text()) if self.resume_from is not None and saved.is_file() else None
        given = None
        if previous is None and d.splits_file:
            given = json.loads(Path(d.splits_file).read_text()) if self.multi else load_splits(d.splits_file)
        all_splits: dict[str, list] = {}
        for dom in self.domains:
            ids = [c["id"] for c in dom.info.training]
            if previous is not None:
                splits = previous[dom.name] if self.multi else previous
            elif given is not None:
                if self.multi and (not isinstance(given, dict) or dom.name not in given):
                    raise MedsegError(f"{d.splits_file}: a multi-domain splits file maps each domain to "
                                      f"its splits; '{dom.name}' is missing")
                splits = given[dom.name] if self.multi else given
            else:
                splits = make_splits(ids, d.num_folds, self.cfg.train.seed)
            all_splits[dom.name] = splits
            by_id = {c["id"]: c for c in dom.info.training}
            if d.fold == "all":
                dom.train_cases, dom.val_cases = list(dom.info.training), []
                continue
            if d.fold >= len(splits):
                raise MedsegError(f"data.fold is {d.fold} but there are only {len(splits)} folds")
            missing = [i for s in ("train", "val") for i in splits[d.fold][s] if i not in by_id]
            if missing:
                raise MedsegError(f"{d.splits_file or saved}: unknown case id(s) {missing[:5]}")
            dom.train_cases = [by_id[i] for i in splits[d.fold]["train"]]
            dom.val_cases = [by_id[i] for i in splits[d.fold]["val"]]
        out = all_splits if self.multi else all_splits[""]
        saved.write_text(json.dumps(out, indent=1))

    def _datasets(self) -> None:
        cfg = self.cfg
        for i, dom in enumerate(self.domains):
            values = None if dom.regions else list(dom.info.labels.values())
            pre = mt.Compose([LoadCased(("image", "label"), channels=len(dom.info.channels),
                                        label_values=list(dom.info.labels.values())),
                              *preprocess_transforms(cfg, values)])
            cache = cache_dir_for(cfg, dom.info, map_labels=values is not None)
            cache.mkdir(parents=True, exist_ok=True)
            cached_train = PersistentDataset(dom.train_cases, transform=pre, cache_dir=cache)
            dom.val_ds = PersistentDataset(dom.val_cases, transform=pre, cache_dir=cache) if dom.val_cases else None
            dom.aug = mt.Compose(augment_transforms(cfg, dom.regions))
            dom.aug.set_random_state(seed=cfg.train.seed + i)
            dom.train_ds = Dataset(cached_train, transform=dom.aug)

    def _build_model(self) -> torch.nn.Module:
        if self.multi:
            n_in = {d.name: len(d.info.channels) for d in self.domains}
            n_out = {d.name: d.n_out for d in self.domains}
        else:
            n_in, n_out = len(self.info.channels), self.domains[0].n_out
        return build_model_from_config(self.cfg, n_in, n_out).to(self.device)

    def _log_fields(self) -> list[str]:
        f = ["epoch", "iterations", "train_loss", "val_loss", "val_dice_mean"]
        for dom in self.domains:
            if self.multi:
                f.append(f"val_dice_{dom.prefix}mean")
            f += [f"val_dice_{dom.prefix}{n}" for n in dom.structs]
        return f + ["lr", "epoch_seconds"]

    # ---- loop ---------------------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train; returns the run folder. A bad case file raises its MedsegError (not MONAI's wrapper)."""
        try:
            return self._fit()
        except RuntimeError as e:
            cause = medseg_cause(e)
            if cause is None:
                raise
            raise cause from None

    def _fit(self) -> Path:
        cfg, t = self.cfg, self.cfg.train
        set_determinism(seed=t.seed)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        self._splits()
        self._datasets()
        model = self._build_model()
        opt = self._optimizer(model)
        sched = self._scheduler(opt)
        loss_fn = self._loss()
        use_amp = t.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        budget = parse_duration(t.budget) if t.budget else math.inf
        total_epochs, total_iters = cfg.total_epochs, cfg.total_iterations
        sampler = random.Random(t.seed)  # batch indices and domains, one seeded stream

        best, start_epoch, it_total = -math.inf, 0, 0
        log_path = self.run_dir / "log.csv"
        fields = self._log_fields()
        history: list[dict] = []
        partial: list[float] = []  # losses of an epoch cut by the budget, continued on --resume
        if self.resume_from is not None:
            ck = self.resume_from
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, it_total = int(ck["epoch"]), int(ck["iteration"])
            partial = [float(v) for v in ck.get("partial_losses", [])]
            best = ck["best_metric"] if ck.get("best_metric") is not None else -math.inf
            self._set_rng(ck["rng"], sampler)
            if log_path.is_file():
                history = [r for r in csv.DictReader(open(log_path)) if int(r["epoch"]) <= start_epoch]
        _write_log(log_path, fields, history)
        writer = self._tensorboard(purge_step=it_total if self.resume_from is not None else None)

        n_params = sum(p.numel() for p in model.parameters())
        print(f"run folder: {self.run_dir}", flush=True)
        print(f"model {cfg.model.name} ({n_params / 1e6:.2f} M parameters) on {self.device}; "
              + "; ".join(f"{d.name + ': ' if d.name else ''}{len(d.train_cases)} training / {len(d.val_cases)} validation cases"
                          for d in self.domains), flush=True)
        if self.resume_from is not None:
            print(f"resuming at epoch {start_epoch + 1}, iteration {it_total}", flush=True)
        batches = {d.name: self._batches(d, sampler) for d in self.domains}
        bar = _progress(total_iters, it_total)
        clock = time.monotonic()
        epoch, done = start_epoch, start_epoch
        stopped = False
        for epoch in range(start_epoch, total_epochs):
            t0 = time.monotonic()
            model.train()
            losses, partial = list(partial), []
            epoch_end = min((epoch + 1) * t.iters_per_epoch, total_iters)
            n_it = epoch_end - it_total  # all of it, or what a budget stop left of it
            for k in range(n_it):
                dom = self._pick_domain(sampler, it_total)
                batch = next(batches[dom.name])
                x = batch["image"].to(self.device)
                y = batch["label"].to(self.device)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, enabled=use_amp):
                    out = model(x, domain=dom.name) if self.multi else model(x)
                    loss = loss_fn(out, y, x)
                loss_value = loss.item()  # one device sync per step
                if not math.isfinite(loss_value):
                    raise MedsegError(f"training diverged at epoch {epoch + 1}: the loss is {loss_value}")
                scaler.scale(loss).backward()
                if t.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                losses.append(loss_value)
                it_total += 1
                if writer is not None:
                    writer.add_scalar("train/loss", losses[-1], it_total)
                    writer.add_scalar("train/lr", opt.param_groups[0]["lr"], it_total)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{total_epochs}", loss=f"{np.mean(losses[-20:]):.4f}",
                                lr=f"{opt.param_groups[0]['lr']:.2e}")
                if time.monotonic() - clock > budget:
                    stopped = True
                    break
            lr = opt.param_groups[0]["lr"]
            last = epoch + 1 == total_epochs or stopped
            has_val = any(d.val_ds is not None for d in self.domains)
            val = self.validate(model, loss_fn, final=last) if has_val and (
                (epoch + 1) % t.val_every == 0 or last) else None
            row = {"epoch": epoch + 1, "iterations": it_total, "train_loss": float(np.mean(losses)),
                   **(val or {}), "lr": lr, "epoch_seconds": time.monotonic() - t0}
            row = {k: row.get(k, float("nan")) for k in fields}
            history.append(row)
            _append_log(log_path, fields, row)
            if writer is not None and val:
                for k, v in val.items():
                    writer.add_scalar(k.replace("val_", "val/", 1), v, it_total)
                writer.flush()
            mean = val["val_dice_mean"] if val else float("nan")
            if val is not None and math.isfinite(mean) and mean > best:
                best = mean
            # an epoch cut by the budget is not finished: --resume continues it where it stopped
            done = epoch + 1 if it_total == epoch_end else epoch
            state = self._state(model, opt, sched, scaler, done, it_total, best, sampler)
            state["partial_losses"] = [] if done == epoch + 1 else losses
            save_checkpoint(state, self.run_dir / "last.pt")
            if val is not None and math.isfinite(mean) and mean >= best:
                save_checkpoint(state, self.run_dir / "best.pt")
            write_progress_png(history, self.run_dir / "progress.png")
            msg = f"epoch {epoch + 1}/{total_epochs}: loss {row['train_loss']:.4f}"
            if val is not None:
                per = ", ".join(f"{k[9:]} {v:.3f}" for k, v in val.items() if k.startswith("val_dice_")
                                and k != "val_dice_mean")
                msg += f"; val Dice {mean:.3f} ({per})"
            bar.write(msg + f"; {row['epoch_seconds']:.1f}s")
            if stopped:
                bar.write(f"stopping: the wall-clock budget of {t.budget} is spent")
                break
        bar.close()
        if not (self.run_dir / "best.pt").exists():
            save_checkpoint(self._state(model, opt, sched, scaler, done, it_total, best, sampler),
                            self.run_dir / "best.pt")
        if any(d.val_ds is not None for d in self.domains) and not (self.run_dir / "validation_metrics.csv").exists():
            self.final_validation(model)  # a resumed run that had nothing left to train
        if writer is not None:
            writer.close()
        return self.run_dir

    def _pick_domain(self, sampler: random.Random, it: int) -> DomainData:
        if len(self.domains) == 1:
            return self.domains[0]
        if self.cfg.data.domain_sampling == "round_robin":
            return self.domains[it % len(self.domains)]
        return self.domains[sampler.randrange(len(self.domains))]

    def _batches(self, dom: DomainData, sampler: random.Random) -> Iterator[dict]:
        """Endless batches of one domain: case indices drawn (with replacement, as nnU-Net) from the seeded
        sampler, each case augmented by the domain's MONAI transforms."""
        t = self.cfg.train
        n = len(dom.train_ds)
        if n == 0:
            raise MedsegError(f"{dom.prefix or ''}no training cases in fold {self.cfg.data.fold}")
        if t.num_workers == 0:
            while True:
                idx = [sampler.randrange(n) for _ in range(t.batch_size)]
                yield list_data_collate([_image_label(dom.train_ds[i]) for i in idx])
        from torch.utils.data import DataLoader

        def index_batches():
            while True:
                yield [sampler.randrange(n) for _ in range(t.batch_size)]

        yield from DataLoader(dom.train_ds, batch_sampler=index_batches(), num_workers=t.num_workers,
                              collate_fn=lambda b: list_data_collate([_image_label(x) for x in b]),
                              persistent_workers=True)

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        t = self.cfg.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                                   weight_decay=t.weight_decay)
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _scheduler(self, opt: torch.optim.Optimizer):
        """Stepped once per iteration: linear warm-up over ``warmup_epochs``, then poly / cosine / constant
        over the remaining iterations."""
        return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(self.cfg))

    # ---- validation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _loss(self) -> torch.nn.Module:
        t = self.cfg.train
        return build_loss(t.loss, multilabel=self.cfg.data.target == "regions", **t.loss_params)

    def _val_cases(self, model: torch.nn.Module, dom: DomainData, loss_fn):
        """(case id, predicted masks, reference masks, voxel spacing, loss) per validation case of a domain."""
        values = list(dom.info.labels.values())
        for case, item in zip(dom.val_cases, dom.val_ds):
            image = convert_to_tensor(item["image"], track_meta=False)[None]
            logits = predict_logits(model, image, self.cfg, self.device, domain=dom.name or None)
            lab = convert_to_tensor(item["label"], track_meta=False)[0]
            if dom.regions:
                ref_values = lab.round().long()
                target = labels_to_regions(ref_values, dom.regions)[None]
                pred_masks = torch.sigmoid(logits[0].float()) > 0.5
            else:
                ref_values = torch.as_tensor(values)[lab.round().long()]
                target = lab[None, None]
                pred_masks = masks_of(torch.as_tensor(values)[logits.argmax(1)[0]], dom.structs)
            loss = float(loss_fn(logits, target, image))
            spacing = item["image"].pixdim.tolist() if hasattr(item["image"], "pixdim") else None
            yield case["id"], pred_masks, masks_of(ref_values, dom.structs), spacing, loss

    def validate(self, model: torch.nn.Module, loss_fn=None, final: bool = False) -> dict[str, float]:
        """Mean validation loss and Dice per class/region (per domain), as log columns. With ``final`` the same
        pass also computes HD95 and writes RUN/validation_metrics.csv (per case, then mean/std/n rows)."""
        loss_fn = loss_fn or self._loss()
        out: dict[str, float] = {}
        losses, means, table = [], [], []
        for dom in self.domains:
            if dom.val_ds is None:
                continue
            rows = []
            for cid, p, r, spacing, loss in self._val_cases(model, dom, loss_fn):
                m = case_metrics(p, r, list(dom.structs), spacing, hd95=final)
                rows.append(m)
                losses.append(loss)
                if final:
                    table.append({"case": cid, **({"domain": dom.name} if self.multi else {}),
                                  **{k.replace("_", f"_{dom.prefix}", 1): v for k, v in m.items()}})
            per = [float(np.nanmean([row[f"dice_{n}"] for row in rows])) if any(
                np.isfinite(row[f"dice_{n}"]) for row in rows) else float("nan") for n in dom.structs]
            dmean = float(np.nanmean(per)) if np.any(np.isfinite(per)) else float("nan")
            means.append(dmean)
            if self.multi:
                out[f"val_dice_{dom.prefix}mean"] = dmean
            out.update({f"val_dice_{dom.prefix}{n}": v for n, v in zip(dom.structs, per)})
        out["val_loss"] = float(np.mean(losses)) if losses else float("nan")
        out["val_dice_mean"] = float(np.nanmean(means)) if np.any(np.isfinite(means)) else float("nan")
        if final and table:
            self._write_validation_table(table)
        return out

    def _write_validation_table(self, rows: list[dict]) -> Path:
        keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("case", "domain")))
        keys = [k for k in keys if k.startswith("dice")] + [k for k in keys if not k.startswith("dice")]
        rows = [{"case": r["case"], **({"domain": r["domain"]} if self.multi else {}),
                 **{k: r.get(k, float("nan")) for k in keys}} for r in rows]
        path = write_table(rows, self.run_dir / "validation_metrics.csv", ("domain",) if self.multi else ())
        summary = summarise(rows, keys)[0]
        print("final validation (mean over cases): " + ", ".join(
            f"{k} {v:.3f}" for k, v in summary.items() if k != "case"), flush=True)
        return path

    def final_validation(self, model: torch.nn.Module) -> Path:
        """Dice and HD95 per case and class/region of the validation cases -> RUN/validation_metrics.csv."""
        self.validate(model, final=True)
        return self.run_dir / "validation_metrics.csv"

    # ---- state --------------------------------------------------------------------------------------------
    def _tensorboard(self, purge_step: int | None):
        if not self.cfg.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def _state(self, model, opt, sched, scaler, epoch: int, iteration: int, best: float,
               sampler: random.Random) -> dict[str, Any]:
        first = self.domains[0]
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "epoch": epoch, "iteration": iteration, "best_metric": best if best > -math.inf else None,
            "config": self.cfg.model_dump(mode="json"), "channels": list(first.info.channels),
            "labels": dict(first.info.labels), "regions": first.regions, "target": self.cfg.data.target,
            "rng": self._get_rng(sampler),
        }
        if self.multi:
            state["domains"] = {d.name: {"channels": list(d.info.channels), "labels": dict(d.info.labels),
                                         "regions": d.regions} for d in self.domains}
        return state

    def _get_rng(self, sampler: random.Random) -> dict[str, Any]:
        """Every random state as tensors and lists (loadable with weights_only=True)."""
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _mt_to_saved(np_state),
            "python": _py_to_saved(random.getstate()),
            "sampler": _py_to_saved(sampler.getstate()),
            "transforms": {d.name: [_mt_to_saved(r.get_state()) for r in _random_states(d.aug)]
                           for d in self.domains},
        }

    def _set_rng(self, rng: dict[str, Any], sampler: random.Random) -> None:
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(_mt_from_saved(rng["numpy"]))
        random.setstate(_py_from_saved(rng["python"]))
        sampler.setstate(_py_from_saved(rng["sampler"]))
        for d in self.domains:
            states = rng["transforms"].get(d.name, [])
            rs = _random_states(d.aug)
            if len(states) != len(rs):
                raise MedsegError(f"{self.run_dir / 'last.pt'}: the augmentation changed since the run started")
            for r, st in zip(rs, states):
                r.set_state(_mt_from_saved(st))


# ---- helpers -----------------------------------------------------------------------------------------------
_RESUME_FREE = {("train", "epochs"), ("train", "iterations"), ("train", "budget"), ("train", "device"),
                ("train", "num_workers"), ("data", "cache_dir"), ("output_dir",)}


def _check_same_run(saved: dict, cfg: Config, where: Path) -> None:
    """A resumed run must use the run's config; only its length, budget, device, workers and cache may change."""
    now = cfg.model_dump(mode="json")
    diffs: list[str] = []

    def walk(a: Any, b: Any, path: tuple) -> None:
        if path in _RESUME_FREE:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), path + (k,))
        elif a != b:
            diffs.append(".".join(path))

    walk(saved, now, ())
    if diffs:
        raise MedsegError(f"{where}: cannot resume with a different config ({', '.join(diffs[:6])} differ); only "
                          f"train.epochs/iterations/budget/device/num_workers and data.cache_dir may change")


def lr_factor(cfg: Config):
    """The learning-rate multiplier as a function of the iteration (a picklable callable)."""
    return _LRFactor(cfg.train.scheduler, cfg.total_iterations,
                     int(round(cfg.train.warmup_epochs * cfg.train.iters_per_epoch)), cfg.train.poly_power)


class _LRFactor:
    def __init__(self, kind: str, total: int, warmup: int, power: float):
        self.kind, self.total, self.warmup, self.power = kind, total, warmup, power

    def __call__(self, it: int) -> float:
        if self.warmup and it < self.warmup:
            return (it + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        frac = min(max(it - self.warmup, 0), span) / span
        if self.kind == "poly":
            return (1 - frac) ** self.power
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0


def _random_states(obj: Any, seen: set | None = None, depth: int = 0) -> list[np.random.RandomState]:
    """Every numpy RandomState inside a MONAI transform tree, in a fixed order."""
    from monai.transforms import Randomizable

    seen = set() if seen is None else seen
    out: list[np.random.RandomState] = []
    if id(obj) in seen or depth > 6:
        return out
    seen.add(id(obj))
    if isinstance(obj, Randomizable) and isinstance(getattr(obj, "R", None), np.random.RandomState):
        if id(obj.R) not in seen:
            seen.add(id(obj.R))
            out.append(obj.R)
    if isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and (isinstance(obj, Randomizable) or isinstance(obj, mt.Transform)):
        children = [v for k, v in sorted(vars(obj).items()) if k != "R"]
    else:
        children = []
    for c in children:
        if isinstance(c, (list, tuple, mt.Transform, Randomizable)):
            out += _random_states(c, seen, depth + 1)
    return out


def _mt_to_saved(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.as_tensor(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _mt_from_saved(d: dict) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _py_to_saved(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_from_saved(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _write_log(path: Path, fields: list[str], rows: list[dict]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k, float("nan"))) for k in fields})

    atomic_write(path, write)


def _append_log(path: Path, fields: list[str], row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow({k: _fmt(row[k]) for k in fields})


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def write_progress_png(history: list[dict], path: Path) -> Path | None:
    """nnU-Net-like progress plot: train/val loss, validation Dice per class/region, learning rate, per epoch.
    Written to a temporary file and renamed."""
    if not history:
        return None
    import matplotlib.pyplot as plt

    fig = progress_figure(history)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
    finally:
        plt.close(fig)


def progress_figure(history: list[dict]):
    """The progress plot of log rows as a matplotlib Figure (three panels: losses, validation Dice, lr)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    def col(k):  # log rows hold floats (this run) or strings (read back from log.csv on resume)
        return np.array([float("nan") if r.get(k) in (None, "") else float(r[k]) for r in history], dtype=float)

    ep = col("epoch")
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(ep, col("train_loss"), "b-o", ms=3, label="train loss")
    if np.any(np.isfinite(col("val_loss"))):
        axes[0].plot(ep, col("val_loss"), "r-o", ms=3, label="validation loss")
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right")
    dice_keys = [k for k in history[0] if k.startswith("val_dice_")]
    for k in dice_keys:
        v = col(k)
        if np.any(np.isfinite(v)):
            axes[1].plot(ep, v, "-o", ms=3, lw=2.5 if k == "val_dice_mean" else 1.2, label=k[9:])
    axes[1].set_ylabel("validation Dice")
    axes[1].set_ylim(0, 1)
    if axes[1].lines:
        axes[1].legend(loc="lower right", fontsize=8, ncol=2)
    axes[2].plot(ep, col("lr"), "k-o", ms=3)
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _image_label(item: Any) -> list[dict]:
    """The image and label of an augmented item (a list of patches from the random crop)."""
    items = item if isinstance(item, list) else [item]
    return [{"image": x["image"], "label": x["label"]} for x in items]


def _progress(total: int, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="it", leave=False, dynamic_ncols=True,
                disable=None)


def train(config: Any, overrides: list[str] | None = None, run_dir: str | Path | None = None,
          resume: str | Path | None = None) -> Path:
    """Train from a config (path, dict or Config) and return the run folder; ``resume=RUN_DIR`` continues an
    interrupted run from its last.pt."""
    cfg = load_config(config, overrides)
    return Trainer(cfg, run_dir, resume=resume).fit()
