"""Training one config into one run folder: set-up (data, splits, cached preprocessing, network, optimiser,
schedule, loss), then the small loop of :mod:`medseg3d.engine.loop` with its callbacks.

The run folder holds the resolved config, the splits, ``log.csv``, ``tensorboard/``, ``progress.png``,
``last.pt`` (every epoch) and ``best.pt`` (best validation Dice), the final validation's label maps
(``validation/``) and ``validation_metrics.csv``.

Length: ``train.epochs`` x ``train.iters_per_epoch``, or ``train.iterations`` in total, cut short by the
wall-clock ``train.budget``, which covers the whole command (preprocessing, validation and the final
validation included). The learning rate follows the schedule per iteration. ``resume=RUN_DIR`` continues from
``RUN_DIR/last.pt`` exactly: weights, optimizer, scheduler, counters, the best metric and every random state, so
the resumed run repeats and skips nothing. SIGINT and SIGTERM save a resumable checkpoint after the current step.

Multi-domain runs (``data.domains``, u2net3d): every domain has its own data, labels, channels and splits;
each batch comes from one domain (``data.domain_sampling``), validation is reported per domain.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch
from monai import transforms as mt
from monai.data import Dataset, PersistentDataset, list_data_collate
from monai.utils import set_determinism

from ..bundle import Head, ModelContract, build_network, load_checkpoint, training_mirror_axes
from ..bundle.checkpoint import save_checkpoint
from ..bundle.contract import weights_checksum
from ..config import Config, DataSource, dump_config, load_config, parse_duration
from ..data.check import check_dataset, format_problems, raise_for_errors
from ..data.datasets import DatasetInfo, load_source, load_splits, make_splits, validate_splits
from ..data.digest import add_digests
from ..data.slices import resolve_slices
from ..data.transforms import LoadCased, augment_transforms, preprocess_transforms
from ..errors import MedsegError, medseg_cause
from ..io.scan import atomic_write_all
from ..runtime import cache_root, loader_workers, pick_device, set_threads
from . import callbacks as cb
from . import distributed
from .loop import Loop, NonFiniteLoss, train_step
from .losses import build_loss
from .metrics import structures
from .state import TrainState, capture_rng, random_states, restore_rng
from ..inference.slices import window_shape
from .validation import final_validation, validate_on_grid


class TrainingInterrupted(MedsegError):
    """Training was stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        return 130 if self.signal_name == "SIGINT" else 143


def cache_base(cfg: Config) -> Path:
    """Where medseg3d caches: data.cache_dir, else $MEDSEG3D_CACHE, else ~/.cache/medseg3d."""
    return cache_root(cfg.data.cache_dir)


def cache_dir_for(cfg: Config, info: DatasetInfo, map_labels: bool = True) -> Path:
    """A cache folder keyed by everything that changes the preprocessed arrays (each case's entry is also keyed
    by its files' contents, see :func:`medseg3d.data.digest.add_digests`)."""
    base = cache_base(cfg)
    key = json.dumps({"pre": cfg.preprocess.model_dump(), "labels": info.labels, "root": str(info.root),
                      "channels": info.channels, "v": 1, **({} if map_labels else {"raw_labels": True})},
                     sort_keys=True)
    return base / "preprocessed" / hashlib.sha256(key.encode()).hexdigest()[:16]


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
    cached: tuple = ()  # the cached (preprocessed) training and validation datasets
    val_shapes: list = field(default_factory=list)  # the preprocessed validation cases' shapes

    @property
    def n_out(self) -> int:
        return len(self.regions) if self.regions else len(self.info.labels)

    @property
    def prefix(self) -> str:
        return f"{self.name}_" if self.name else ""

    @property
    def head(self) -> Head:
        return Head(list(self.info.channels), dict(self.info.labels), self.regions)


class Trainer:
    """Trains one config into one run folder. ``Trainer(cfg).fit()`` returns the run folder;
    ``Trainer(cfg, resume=RUN_DIR).fit()`` continues an interrupted run. ``started_at`` (``time.monotonic()``)
    is when the command began: the budget counts from there."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: str | Path | None = None,
                 started_at: float | None = None, extra_files: dict[str, str] | None = None):
        self.started_at = time.monotonic() if started_at is None else started_at
        self.extra_files = dict(extra_files or {})  # written into the run folder with config.yaml (a plan)
        self._close: list = []
        self.dist, self.device = distributed.from_env(pick_device(cfg.train.device))
        self.domains: list[DomainData] = []
        region_mode = cfg.data.target == "regions"
        for name, src in cfg.data.sources().items():
            info = load_source(src)
            regions = {k: list(v) for k, v in src.regions.items()} if src.regions else None
            self.domains.append(DomainData(name, src, info, regions if region_mode else None,
                                           structures(info.labels, regions)))
        self.info = self.domains[0].info
        self._check_data(cfg)
        self.cfg = cfg = resolve_slices(cfg, self.info)  # 2D: the slice axis and patch, recorded resolved
        self.multi = bool(cfg.data.domains)
        self.resume_from: dict | None = None
        if resume is not None:
            run_dir = Path(resume)
            if not (run_dir / "last.pt").is_file():
                raise MedsegError(f"{run_dir}: nothing to resume (no last.pt)")
            self.resume_from = load_checkpoint(run_dir / "last.pt")
            _check_same_run(self.resume_from["config"], cfg, run_dir / "last.pt")
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.run_dir = distributed.gather(self.run_dir, self.dist)[0]  # rank 0 names the run for every rank
        self.mirror_axes = training_mirror_axes(cfg)

    # ---- set-up -------------------------------------------------------------------------------------------
    def _check_data(self, cfg: Config) -> None:
        """Every training case checked before anything is written (``medseg3d check`` prints the same table):
        errors stop the run, warnings are printed."""
        problems = [p for dom in self.domains
                    for p in check_dataset(dom.info, dom.src.labels, dom.src.regions, len(dom.info.channels),
                                           test_cases=False, cache_dir=cache_base(cfg))]
        if problems and self.dist.main and (len(problems) > 1 or problems[0].severity != "error"):
            print(format_problems(problems), file=sys.stderr, flush=True)
        raise_for_errors(problems)

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
            given = json.loads(Path(d.splits_file).read_text()) if self.multi else load_splits(
                d.splits_file, [c["id"] for c in self.domains[0].info.training])
        all_splits: dict[str, list] = {}
        for dom in self.domains:
            ids = [c["id"] for c in dom.info.training]
            if previous is not None:
                splits = previous[dom.name] if self.multi else previous
            elif given is not None:
                if self.multi and (not isinstance(given, dict) or dom.name not in given):
                    raise MedsegError(f"{d.splits_file}: a multi-domain splits file maps each domain to "
                                      f"its splits; '{dom.name}' is missing")
                splits = validate_splits(given[dom.name], ids, d.splits_file) if self.multi else given
            else:
                splits = make_splits(ids, d.num_folds, self.cfg.train.seed, scheme=d.split_scheme)
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
        self._splits_json = all_splits if self.multi else all_splits[""]

    def _datasets(self) -> None:
        cfg = self.cfg
        for i, dom in enumerate(self.domains):
            values = None if dom.regions else list(dom.info.labels.values())
            pre = mt.Compose([LoadCased(("image", "label"), channels=len(dom.info.channels),
                                        label_values=list(dom.info.labels.values()),
                                        allow_2d=cfg.model.spatial_dims == 2),
                              *preprocess_transforms(cfg, values)])
            cache = cache_dir_for(cfg, dom.info, map_labels=values is not None)
            cache.mkdir(parents=True, exist_ok=True)
            # each case carries its files' content digest, so an edited file gets a new cache entry
            cases = add_digests(dom.train_cases + dom.val_cases, cache_base(cfg))
            train_cases, val_cases = cases[:len(dom.train_cases)], cases[len(dom.train_cases):]
            cached_train = PersistentDataset(train_cases, transform=pre, cache_dir=cache)
            dom.val_ds = PersistentDataset(val_cases, transform=pre, cache_dir=cache) if dom.val_cases else None
            dom.aug = mt.Compose(augment_transforms(cfg, dom.regions))
            dom.aug.set_random_state(seed=cfg.train.seed + i + 1000 * self.dist.rank)
            dom.train_ds = Dataset(cached_train, transform=dom.aug)
            dom.cached = (cached_train, dom.val_ds)

    def _preprocess_all(self) -> None:
        """Preprocess (or load from the cache) every case once before the first step, so a bad file stops the
        run before training, and the first epoch is not slowed by it (rank 0 first, then the others read its
        cache)."""
        if not self.dist.main:
            distributed.barrier(self.dist)
        shapes = []
        for dom in self.domains:
            for ds in dom.cached:
                if ds is None:
                    continue
                found = [tuple(ds[i]["image"].shape[1:]) for i in range(len(ds))]
                shapes += found
                if ds is dom.val_ds:
                    dom.val_shapes = found
        if self.dist.main:
            warning = patch_padding_warning(self.cfg, shapes)
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            distributed.barrier(self.dist)

    def _build_model(self) -> torch.nn.Module:
        if self.multi:
            n_in = {d.name: len(d.info.channels) for d in self.domains}
            n_out = {d.name: d.n_out for d in self.domains}
        else:
            n_in, n_out = len(self.info.channels), self.domains[0].n_out
        net = build_network(self.cfg, n_in, n_out)
        self._check_patch_fits(net)
        return net.to(self.device)

    def _check_patch_fits(self, net: torch.nn.Module) -> None:
        """A patch must leave the network's deepest level more than one voxel when the network normalises per
        sample (instance norm, or batch norm on a batch of one): that needs more than one value per channel.
        A network without such layers (FCN as in the paper) runs at a single voxel."""
        per_sample = any(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm) for m in net.modules())
        per_sample |= self.cfg.train.batch_size == 1 and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
        if not per_sample:
            return
        div = getattr(net, "divisor", 1)
        divs = [div] * len(self.cfg.train.patch_size) if isinstance(div, int) else list(div)
        patch = list(self.cfg.train.patch_size)
        if all(-(-p // d) <= 1 for p, d in zip(patch, divs)):
            need = [2 * d for d in divs]
            raise MedsegError(f"train.patch_size {patch} is too small for {self.cfg.model.name} as configured: its "
                              f"deepest level would be a single voxel (the network downsamples by {divs}); use a "
                              f"patch of at least {need}, or a shallower network (model.params)")

    def _log_fields(self) -> list[str]:
        f = ["epoch", "iterations", "train_loss", "val_loss", "val_dice_mean"]
        for dom in self.domains:
            if self.multi:
                f.append(f"val_dice_{dom.prefix}mean")
            f += [f"val_dice_{dom.prefix}{n}" for n in dom.structs]
        return f + ["lr", "epoch_seconds"]

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        t = self.cfg.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                                   weight_decay=t.weight_decay)
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _loss(self) -> torch.nn.Module:
        t = self.cfg.train
        return build_loss(t.loss, multilabel=self.cfg.data.target == "regions", **t.loss_params)

    def _contract(self, model: torch.nn.Module, extra: dict[str, Any]) -> ModelContract:
        first = self.domains[0]
        heads = {d.name: d.head for d in self.domains} if self.multi else {"": first.head}
        net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        return ModelContract(self.cfg, heads, self.mirror_axes, net.state_dict(), source=str(self.run_dir),
                             extra=extra)

    # ---- the run ------------------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train; returns the run folder. Errors in the data stop the run before its folder is written."""
        created = not self.run_dir.exists()
        try:
            out = self._fit()
            # every rank waits for rank 0's final validation before the process group goes: a rank that tore it
            # down while the other was still connected was seen to abort in gloo's threads
            distributed.barrier(self.dist)
            return out
        except BaseException as e:
            if not self.dist.main:
                raise
            cause = medseg_cause(e) if isinstance(e, RuntimeError) else None
            if created and not (self.run_dir / "last.pt").exists() and self.run_dir.exists() and (
                    isinstance(e, MedsegError) or cause is not None):
                shutil.rmtree(self.run_dir, ignore_errors=True)  # nothing of value was written yet
            if cause is not None:
                raise cause from None
            raise
        finally:
            distributed.finish(self.dist)

    def _fit(self) -> Path:
        cfg, t, d = self.cfg, self.cfg.train, self.dist
        set_determinism(seed=t.seed)
        set_threads(t.threads)
        net = self._build_model()  # a patch that does not fit the network is refused before any work or file
        self._splits()
        self._datasets()
        self._preprocess_all()
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            files = {"config.yaml": dump_config(cfg), "splits.json": json.dumps(self._splits_json, indent=1),
                     **self.extra_files}
            atomic_write_all({self.run_dir / name: _text_writer(text) for name, text in files.items()})

        opt = self._optimizer(net)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
        loss_fn = self._loss()
        amp = t.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        sampler = random.Random(t.seed + d.rank)  # batch indices and domains, one seeded stream per rank
        transform_states = {dom.name: random_states(dom.aug) for dom in self.domains}
        state = TrainState()
        if self.resume_from is not None:
            self._restore(self.resume_from, net, opt, sched, scaler, state, sampler, transform_states)
        model = net
        if d.enabled:  # gradients averaged over the ranks; a multi-domain step leaves other domains' heads unused
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.multi)

        def save(path: Path, finished: bool) -> None:
            rngs = distributed.gather(capture_rng(sampler, transform_states), d)  # every rank takes part
            if not d.main:
                return
            done = state.epoch + 1 if finished else state.epoch
            extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "epoch": done, "iteration": state.iteration, "best_metric": state.best,
                     "partial_losses": [] if finished else list(state.epoch_losses),
                     "rng": rngs[0], "world_size": d.world_size, **({"rng_ranks": rngs} if d.enabled else {})}
            save_checkpoint(self._contract(net, extra), path)

        batches = {dom.name: self._batches(dom, sampler) for dom in self.domains}
        self._close = [b.close for b in batches.values()]  # (a DataLoader's worker processes end with them)

        def step() -> float:
            dom = self._pick_domain(sampler, state.iteration)
            return train_step(model, next(batches[dom.name]), loss_fn, opt, sched, scaler, device=self.device,
                              amp=amp, grad_clip=t.grad_clip, domain=dom.name if self.multi else None)

        def validate() -> dict[str, float]:
            return validate_on_grid(net, self.domains, cfg, self.device, loss_fn, self.multi)

        def final() -> None:
            final_validation(net, cfg, self.domains, self.run_dir, self.device, self.mirror_axes, self.multi)

        def same_weights() -> None:  # under DDP the ranks must hold the same weights; a difference is a bug
            sums = distributed.gather(weights_checksum(net.state_dict()), d)
            if len(set(sums)) != 1:
                raise RuntimeError(f"the {d.world_size} training processes ended with different weights")
            if d.main:
                print(f"ranks in sync: the {d.world_size} processes hold the same weights (sha256 {sums[0][:12]})",
                      flush=True)

        callbacks = self._callbacks(net, opt, state, save, validate, final, same_weights)
        if d.main:
            n_params = sum(p.numel() for p in net.parameters())
            print(f"run folder: {self.run_dir}", flush=True)
            print(f"model {cfg.model.name} ({n_params / 1e6:.2f} M parameters) on {self.device}"
                  f"{f' x {d.world_size} processes' if d.enabled else ''}, {torch.get_num_threads()} thread(s), "
                  f"{self.workers()} loader worker(s); "
                  + "; ".join(f"{dom.name + ': ' if dom.name else ''}{len(dom.train_cases)} training / "
                              f"{len(dom.val_cases)} validation cases" for dom in self.domains), flush=True)
            if self.resume_from is not None:
                print(f"resuming at epoch {state.epoch + 1}, iteration {state.iteration}", flush=True)
        loop = Loop(step, state, iters_per_epoch=t.iters_per_epoch, total_iterations=cfg.total_iterations,
                    callbacks=callbacks)
        try:
            loop.run()
        except NonFiniteLoss as e:
            kept = (f"the last good checkpoint is {self.run_dir / 'last.pt'} (epoch {state.epoch})"
                    if (self.run_dir / "last.pt").exists() else "no epoch had finished, so nothing was saved")
            raise MedsegError(f"training diverged at epoch {state.epoch + 1}, iteration {state.iteration + 1}: "
                              f"{e}; {kept}; lower train.lr or turn on train.grad_clip") from None
        finally:
            for close in self._close:
                close()
        if state.stop in cb.SIGNAL_STOPS:
            raise TrainingInterrupted(
                f"interrupted by {state.stop} at epoch {state.epoch + 1}, iteration {state.iteration}; a checkpoint "
                f"was saved: continue with `medseg3d train {self.run_dir / 'config.yaml'} --resume {self.run_dir}`",
                state.stop)
        return self.run_dir

    def _callbacks(self, net, opt, state: TrainState, save, validate, final, same_weights) -> list[cb.Callback]:
        """The loop's callbacks, in order: budget, (rank sync), validation, log, checkpoints, plot, TensorBoard,
        progress, signals (their handlers put back before the final validation), the final validation. Ranks
        other than 0 only take part in the budget, signals, the stop sync and the checkpoints' random
        states."""
        t, d = self.cfg.train, self.dist
        has_val = d.main and any(dom.val_ds is not None for dom in self.domains)
        lr = lambda: opt.param_groups[0]["lr"]  # noqa: E731
        callbacks: list[cb.Callback] = []
        if t.budget:
            callbacks.append(cb.Budget(parse_duration(t.budget), self.started_at,
                                       *self._validation_estimates(net) if has_val else (0.0, 0.0),
                                       save_s=self._save_estimate(net)))
        signals = cb.Signals(synced=d.enabled)
        if d.enabled:
            callbacks.append(cb.SyncStop(lambda flag: distributed.any_rank(flag, d, self.device),
                                         lambda reason: distributed.gather(reason, d), signals, same_weights))
        if has_val:
            callbacks.append(cb.Validation(validate, t.val_every))
        if d.main:
            callbacks.append(cb.History(self.run_dir / "log.csv", self._log_fields(), lr))
        callbacks.append(cb.Checkpoints(self.run_dir, save, write=d.main))
        if d.main:
            callbacks.append(cb.ProgressPlot(self.run_dir / "progress.png"))
            if t.tensorboard:
                callbacks.append(cb.TensorBoard(self.run_dir / "tensorboard",
                                                state.iteration if self.resume_from is not None else None, lr))
            callbacks.append(cb.Progress())
        callbacks.append(signals)
        if has_val:
            callbacks.append(cb.FinalValidation(final))
        return callbacks

    def _restore(self, ck: dict, net, opt, sched, scaler, state: TrainState, sampler, transform_states) -> None:
        """Weights, optimiser, schedule, counters, best metric and every random state of ``last.pt``."""
        world = int(ck.get("world_size", 1))
        if world != self.dist.world_size:
            raise MedsegError(f"{self.run_dir / 'last.pt'}: the run trained on {world} process(es); resume it with "
                              f"the same number (now {self.dist.world_size}) to continue exactly")
        if int(ck["iteration"]) > self.cfg.total_iterations:
            raise MedsegError(f"{self.run_dir / 'last.pt'}: the run is already at iteration {ck['iteration']}, "
                              f"beyond the {self.cfg.total_iterations} the config asks for; give a longer "
                              f"train.iterations/epochs to continue it")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sched.lr_lambdas[0] = lr_factor(self.cfg)  # (the state holds the old length; a resume may change it)
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state.epoch, state.iteration = int(ck["epoch"]), int(ck["iteration"])
        state.epoch_losses = [float(v) for v in ck.get("partial_losses", [])]
        state.best_metric = ck["best_metric"] if ck.get("best_metric") is not None else -math.inf
        rng = ck["rng_ranks"][self.dist.rank] if "rng_ranks" in ck else ck["rng"]
        if not restore_rng(rng, sampler, transform_states):
            raise MedsegError(f"{self.run_dir / 'last.pt'}: the augmentation changed since the run started")
        log = self.run_dir / "log.csv"
        if log.is_file():
            with open(log) as f:
                state.history = [r for r in csv.DictReader(f) if int(r["epoch"]) <= state.epoch]

    def _validation_estimates(self, model: torch.nn.Module) -> tuple[float, float]:
        """Seconds a validation pass on the preprocessed grid and the final validation will take, before either
        has run: one timed forward pass of a batch of windows times the number of batches, plus per-case
        overheads."""
        cfg = self.cfg
        roi, sw = list(cfg.infer.window_size or cfg.train.patch_size), max(1, cfg.infer.sw_batch_size)
        n_batches, n_cases = 0, 0
        for dom in self.domains:
            for shape in dom.val_shapes:
                n_cases += 1
                if cfg.model.spatial_dims == 2:  # slices in batches of sw (a slice fits one window)
                    n_batches += math.ceil(shape[cfg.model.slice_axis] / sw)
                else:
                    n_batches += math.ceil(math.prod(_windows(s, r, cfg.infer.overlap) for s, r in zip(shape, roi))
                                           / sw)
        if not n_cases:
            return 0.0, 0.0
        x = torch.zeros(sw, *window_shape(cfg, len(self.domains[0].info.channels)), device=self.device)
        kw = {"domain": self.domains[0].name} if self.multi else {}
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(x, **kw)  # warm-up
                t0 = time.perf_counter()
                model(x, **kw)
                per_batch = time.perf_counter() - t0
        finally:
            model.train(was)
        grid = per_batch * n_batches + 0.05 * n_cases
        final = 1.3 * grid + 0.5 * n_cases  # reading, inversion to the scan's grid, postprocessing, HD95, writing
        if cfg.infer.engine == "auto" and os.environ.get("MEDSEG3D_ENGINE", "auto") == "auto":
            final += 3.0 + 6 * per_batch  # the engines measured on the first window (when not cached yet)
        return grid, final

    def _save_estimate(self, model: torch.nn.Module) -> float:
        """Seconds to write last.pt and progress.png once (weights + Adam's two moments)."""
        n_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
        return 0.5 + n_bytes / 200e6

    def _pick_domain(self, sampler: random.Random, it: int) -> DomainData:
        if len(self.domains) == 1:
            return self.domains[0]
        if self.cfg.data.domain_sampling == "round_robin":
            return self.domains[it % len(self.domains)]
        return self.domains[sampler.randrange(len(self.domains))]

    def workers(self) -> int:
        """DataLoader worker processes: ``train.num_workers``, else :func:`~medseg3d.runtime.loader_workers`."""
        n = self.cfg.train.num_workers
        return loader_workers(self.device.type) if n is None else n

    def _batches(self, dom: DomainData, sampler: random.Random) -> Iterator[dict]:
        """Endless batches of one domain: case indices drawn (with replacement, as nnU-Net) from the seeded
        sampler, each case augmented by the domain's MONAI transforms."""
        t = self.cfg.train
        n = len(dom.train_ds)
        if n == 0:
            raise MedsegError(f"{dom.prefix or ''}no training cases in fold {self.cfg.data.fold}")
        workers = self.workers()
        if workers == 0:
            while True:
                idx = [sampler.randrange(n) for _ in range(t.batch_size)]
                yield list_data_collate([_image_label(dom.train_ds[i]) for i in idx])
        from monai.data import DataLoader  # (its workers reseed MONAI's random transforms, each its own)

        def index_batches():
            while True:
                yield [sampler.randrange(n) for _ in range(t.batch_size)]

        yield from DataLoader(dom.train_ds, batch_sampler=index_batches(), num_workers=workers,
                              collate_fn=lambda b: list_data_collate([_image_label(x) for x in b]),
                              persistent_workers=True, pin_memory=self.device.type == "cuda")


def patch_padding_warning(cfg: Config, shapes: list[tuple[int, ...]]) -> str | None:
    """The sentence that tells the user when a 3D ``train.patch_size`` is larger than every preprocessed image
    along an axis (``shapes``): training still runs, on patches zero-padded there, which costs time and memory
    for voxels that hold nothing. None when the patch fits some image along every axis."""
    patch = list(cfg.train.patch_size)
    if cfg.model.spatial_dims != 3 or not shapes:
        return None
    largest = [max(int(s[a]) for s in shapes) for a in range(3)]
    if all(p <= m for p, m in zip(patch, largest)):
        return None
    fit = [min(p, m) for p, m in zip(patch, largest)]
    spacing = cfg.preprocess.spacing
    at = f" at {' x '.join(f'{v:g}' for v in spacing)} mm" if spacing else ""
    return (f"train.patch_size {patch} is larger than every preprocessed image (the largest are "
            f"{' x '.join(map(str, largest))} voxels{at}); patches are zero-padded to the patch size, which costs "
            f"time and memory for nothing, so set train.patch_size to at most {fit}, rounded down to a multiple of "
            f"the network's downsampling factor")


def _text_writer(text: str):
    return lambda tmp: Path(tmp).write_text(text)


def _windows(size: int, roi: int, overlap: float) -> int:
    """Sliding windows along one axis (MONAI's scan: interval roi·(1 - overlap), the last window flush)."""
    if size <= roi:
        return 1
    interval = max(1, int(roi * (1 - overlap)))
    return math.ceil((size - roi) / interval) + 1


def _image_label(item: Any) -> list[dict]:
    """The image and label of an augmented item (a list of patches from the random crop)."""
    items = item if isinstance(item, list) else [item]
    return [{"image": x["image"], "label": x["label"]} for x in items]


# ---- helpers -----------------------------------------------------------------------------------------------
_RESUME_FREE = {("train", "epochs"), ("train", "iterations"), ("train", "budget"), ("train", "device"),
                ("train", "num_workers"), ("train", "threads"), ("data", "cache_dir"), ("output_dir",)}


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
                          f"train.epochs/iterations/budget/device/num_workers/threads and data.cache_dir may change")


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


def train(config: Any, overrides: list[str] | None = None, run_dir: str | Path | None = None,
          resume: str | Path | None = None, started_at: float | None = None) -> Path:
    """Train from a config (path, dict or Config) and return the run folder; ``resume=RUN_DIR`` continues an
    interrupted run from its last.pt."""
    started_at = time.monotonic() if started_at is None else started_at
    cfg = load_config(config, overrides)
    return Trainer(cfg, run_dir, resume=resume, started_at=started_at).fit()
