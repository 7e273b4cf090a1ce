"""Window runners: how a batch of sliding-window windows goes through the network.

:func:`make_runner` wraps a network for one window shape and returns a :class:`Runner`, a module that maps
windows ``(N, C_in, *window)`` to full-resolution logits ``(N, C_out, *window)`` (float32, on the windows'
device), so it drops into MONAI's ``sliding_window_inference`` (or any predictor) in place of the network.

Engines (CPU unless noted):

- ``torch``: the network itself, in fp32 or under ``torch.autocast`` in bfloat16 (CPU or GPU);
- ``onnxruntime``: the network exported to ONNX in memory (TorchScript-based exporter, ``dynamo=False``) and
  run by an ONNX Runtime session with all graph optimisations (fp32);
- ``openvino``: the same ONNX graph compiled by OpenVINO for the window's static shape, in fp32 or bf16
  (``INFERENCE_PRECISION_HINT``; bf16 on CPUs with AVX-512 BF16 or AMX).

``engine="auto"`` / ``precision="auto"`` choose by measuring the candidates on the first real window the runner
sees (each built, run once to warm up and once timed), keeping the fastest whose labels agree with the torch
fp32 labels on that window (at least :data:`MIN_AGREEMENT` of the voxels); the choice is cached on disk per
network architecture, window, device and machine (bf16 agreement per set of weights), so later runs build the
chosen engine at once. A candidate that cannot be built (an op the ONNX exporter does not know, a missing
package) is skipped with its reason in :meth:`Runner.describe`; a requested engine that cannot be built falls
back to torch fp32 with a warning. Networks whose output is a list (deep supervision) or a dict are exported
with their main output only (:func:`medseg3d.models.main_output`).

Windows run one at a time on the CPU: the peak memory is one window's (a batch of two 128³ No New-Net windows
in torch needs about 1.5 GB more), and a window's logits never depend on which other windows share its batch
(oneDNN picks other kernels for a batch of one, so batched results differ in the last bits). OpenVINO and ONNX
Runtime gain nothing from batches; torch does on very small networks (the 8-filter demo U-Net runs a batch of
two 48³ windows in the time of one), not on brats_nnn. On a GPU the windows of a batch run together. With
``skip_empty`` (the default) a window whose input is all zero (the
background outside the head after ``zscore_nonzero`` normalisation, or MONAI's zero padding) is not run: a
convolutional network gives the same output for an all-zero window wherever it lies, so that output is
computed once per window shape and reused, which is exact.

Threads: at most the cores this process may run on (``os.sched_getaffinity``); ``threads=None`` measures the
chosen engine with all of them and with one on the first real window (on a loaded machine one thread can be
several times faster) and keeps the faster; that choice is cached too, separately for a busy machine (load
above 1.5 x the free cores when the runner is made) and a quiet one. torch's intra-op thread count is
process-wide: a torch runner leaves it at its own count.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MedsegError
from ..io.scan import first_line
from ..models import MainOutput as _MainOutput
from ..runtime import cache_root, cpu_model, free_cores

ENGINES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
#: a candidate must give the torch fp32 label of at least this fraction of the calibration window's voxels
MIN_AGREEMENT = 0.995
#: cache file (under ``$MEDSEG3D_CACHE`` or ``~/.cache/medseg3d``) of the measured choices
CACHE_FILE = "engines.json"
_CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------ helpers
def _cpu_has_bf16() -> bool:
    """Whether the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - not installed or broken: not a candidate
        return None


def _load() -> tuple[float, float, float]:
    """The system load averages (1, 5, 15 minutes); zeros where the system does not say."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def _release_memory() -> None:
    """Hand memory freed by a discarded engine back to the system (glibc keeps freed heap pages otherwise, so a
    measured-then-discarded engine would raise the process's peak for good)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def label_agreement(a: torch.Tensor, b: torch.Tensor, sigmoid: bool = False) -> float:
    """Fraction of voxels whose labels agree between two logits tensors (N, C, ...): argmax over classes, or
    for ``sigmoid`` (region) outputs the sign of every region's logit."""
    if sigmoid:
        return float(((a > 0) == (b > 0)).all(1).float().mean())
    return float((a.argmax(1) == b.argmax(1)).float().mean())


# ------------------------------------------------------------------------------------------------ backends
class _Backend:
    """Runs one window (1, C, *window) and returns its logits as float32 on the window's device."""

    engine = ""

    def __init__(self, precision: str, threads: int):
        self.precision = precision
        self.threads = threads
        self.build_s = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _TorchBackend(_Backend):
    engine = "torch"

    def __init__(self, net: nn.Module, precision: str, threads: int, device: torch.device):
        super().__init__(precision, threads)
        self.net = net
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # torch's intra-op thread count is process-wide; switching it back and forth per window costs more than
        # a small window, so it is left at the runner's count
        if self.device.type == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.no_grad():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return self.net(x.to(self.device)).float()
            return self.net(x.to(self.device)).float()


def _trace_shape(net: nn.Module, shape: Sequence[int]) -> tuple[list[int], bool]:
    """The (1, C, *spatial) shape to trace the ONNX graph at, and whether its spatial axes may be left dynamic:
    a window that is a multiple of the network's ``divisor`` is traced at the smallest such size per axis (no
    padding is traced in, so the graph holds for every multiple; tracing runs the network, so small is cheap),
    any other window at its own size."""
    c, spatial = shape[0], list(shape[1:])
    div = getattr(getattr(net, "model", net), "divisor", None)
    if div is None:
        return [1, c, *spatial], False
    divs = [div] * len(spatial) if isinstance(div, int) else list(div)
    if len(divs) != len(spatial) or any(s % d for s, d in zip(spatial, divs)):
        return [1, c, *spatial], False
    return [1, c] + [min(s, 2 * d) for s, d in zip(spatial, divs)], True


@contextlib.contextmanager
def _quiet_stdout():
    """Silence the process's standard output (file descriptor 1): the TorchScript-based exporter prints the
    whole graph there from C++ when an op cannot be exported; the error itself is raised and recorded."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real stdout (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(net: nn.Module, window_shape: Sequence[int]) -> bytes:
    """The network's ONNX graph (input ``image`` (N, C, *spatial), output ``logits``; the batch axis is dynamic,
    and the spatial axes too when the window is a multiple of the network's divisor), as bytes."""
    shape, dynamic_spatial = _trace_shape(net, window_shape)
    axes = {0: "batch"}
    if dynamic_spatial:
        axes.update({2 + i: f"s{i}" for i in range(len(shape) - 2)})
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_stdout():
        warnings.simplefilter("ignore")  # tracer notes on Python scalars (sizes fixed at trace time)
        torch.onnx.export(net, (torch.zeros(shape),), buf, dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
    return buf.getvalue()


class _OrtBackend(_Backend):
    engine = "onnxruntime"

    def __init__(self, onnx_bytes: bytes, threads: int):
        super().__init__("fp32", threads)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # the CPU memory arena keeps its high-water mark (about 1.7 GB more than without it for a 128³ No New-Net
        # window) at no measurable gain in speed
        so.enable_cpu_mem_arena = False
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0]).to(x.device)


class _OpenVinoBackend(_Backend):
    engine = "openvino"

    def __init__(self, onnx_bytes: bytes, precision: str, threads: int):
        super().__init__(precision, threads)
        import openvino as ov

        self.core = ov.Core()
        if precision == "bf16" and "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeError("this CPU has no bfloat16 support in OpenVINO")
        self.model = self.core.read_model(onnx_bytes)
        self.compiled: dict[tuple[int, ...], Any] = {}  # one compiled model (and request) per window shape

    def compile(self, shape: tuple[int, ...]) -> None:
        self._request(tuple(shape))

    def _request(self, shape: tuple[int, ...]):
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape(list(shape))
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                      # explicit: OpenVINO's default on bf16-capable CPUs is bf16
                      "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
            self.compiled[shape] = self.core.compile_model(model, "CPU", config).create_infer_request()
        return self.compiled[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = self._request(tuple(arr.shape)).infer({0: arr})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)).to(x.device)


# ------------------------------------------------------------------------------------------------- cache
def _cache_path() -> Path:
    return cache_root() / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    """Merge ``entry`` under ``key`` into the cache file (temporary file + rename; a failure only loses the
    cache)."""
    try:
        data = _read_cache(path) or {"version": _CACHE_VERSION}
        data.setdefault("entries", {})[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def _weights_fingerprint(net: nn.Module) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            t = t.detach().float().cpu()
            h.update(name.encode())
            h.update(np.asarray([t.numel(), float(t.sum()), float(t.abs().sum())], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- runner
@dataclass(frozen=True)
class Candidate:
    engine: str
    precision: str

    def __str__(self) -> str:
        return f"{self.engine}/{self.precision}"


@dataclass
class _Stats:
    windows_run: int = 0
    windows_skipped: int = 0
    seconds: float = 0.0


class Runner(nn.Module):
    """Windows (N, C_in, *window) -> logits (N, C_out, *window), float32 on the windows' device. Made by
    :func:`make_runner`; :meth:`describe` says which engine, precision and threads run it and why."""

    def __init__(self, net: nn.Module, window_shape: Sequence[int], candidates: list[Candidate],
                 device: torch.device, threads: int | None, skip_empty: bool, sigmoid: bool,
                 cache: Path | None, requested: tuple[str, str], unavailable: dict[str, str]):
        super().__init__()
        self.net = net.eval()
        self.window_shape = tuple(int(s) for s in window_shape)
        self.device = device
        self.skip_empty = skip_empty
        self.sigmoid = sigmoid
        self.requested = requested
        self._threads_fixed = threads
        self._max_threads = free_cores() if device.type == "cpu" else 1
        self._candidates = candidates
        self._cache = cache
        self._backend: _Backend | None = None
        self._ready = False  # engine, precision and threads settled
        self._onnx: bytes | None = None
        self._zero: dict[tuple[int, ...], torch.Tensor] = {}
        self._pending_ref: _Backend | None = None  # torch fp32 for all-zero windows before calibration
        self._cached_entry: dict | None = None
        self.stats = _Stats()
        self.selection = "requested"
        self.failed: dict[str, str] = dict(unavailable)
        self.fallback: str | None = None
        self.measured: dict[str, Any] = {}
        self.agreement: dict[str, float] = {}
        self._arch_key = self._architecture_key()
        entry = self._read_entry()
        if len(candidates) == 1:
            cached_threads = entry.get("threads") if entry and self._measure_threads else None
            self._backend = self._build_or_fall_back(candidates[0], int(cached_threads or self._initial_threads()))
            self._ready = not self._measure_threads or cached_threads is not None
            if cached_threads is not None:
                self.measured = dict(entry.get("measured", {}))
                self.selection = "requested (threads from a cached measurement)"
        elif entry:
            self._from_cache(entry)
        if self._ready:
            self._onnx = None  # the graph is only needed to build engines

    # ---- building ----------------------------------------------------------------------------------------
    @property
    def _measure_threads(self) -> bool:
        return self._threads_fixed is None and self._max_threads > 1 and self.device.type == "cpu"

    def _initial_threads(self) -> int:
        return min(self._threads_fixed or self._max_threads, self._max_threads)

    def _onnx_bytes(self) -> bytes:
        if self._onnx is None:
            self._onnx = export_onnx(self.net, self.window_shape)
        return self._onnx

    def _build(self, cand: Candidate, threads: int) -> _Backend:
        t0 = time.perf_counter()
        if cand.engine == "torch":
            backend: _Backend = _TorchBackend(self.net, cand.precision, threads, self.device)
        elif cand.engine == "onnxruntime":
            backend = _OrtBackend(self._onnx_bytes(), threads)
        else:
            backend = _OpenVinoBackend(self._onnx_bytes(), cand.precision, threads)
            backend.compile((1, *self.window_shape))
        backend.build_s = time.perf_counter() - t0
        return backend

    def _build_or_fall_back(self, cand: Candidate, threads: int) -> _Backend:
        try:
            return self._build(cand, threads)
        except Exception as e:
            if cand == Candidate("torch", "fp32"):
                raise
            reason = first_line(e)
            self.failed[str(cand)] = reason
            self.fallback = f"{cand} could not be built ({reason}); running torch/fp32"
            warnings.warn(f"engine {cand}: {reason}; falling back to torch fp32", RuntimeWarning, stacklevel=4)
            return self._build(Candidate("torch", "fp32"), threads)

    # ---- the cache -----------------------------------------------------------------------------------------
    def _architecture_key(self) -> str:
        """What a measurement depends on: the architecture (not the weights), window, device, machine, library
        versions, the candidates asked for, and whether the machine was already busy (load above 1.5 x the free
        cores), so quiet and busy times keep their own thread choice."""
        sig = {"net": repr(self.net), "window": list(self.window_shape), "device": self.device.type,
               "cpu": cpu_model(), "cores": self._max_threads, "threads": self._threads_fixed,
               "busy": _load()[0] > 1.5 * self._max_threads,
               "torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "openvino": _version("openvino"),
               "candidates": [str(c) for c in self._candidates], "sigmoid": self.sigmoid}
        return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:24]

    def _read_entry(self) -> dict | None:
        if self._cache is None:
            return None
        entry = _read_cache(self._cache).get("entries", {}).get(self._arch_key)
        return entry if entry and entry.get("ranking") else None

    def _from_cache(self, entry: dict) -> None:
        """Use the ranking measured earlier for this architecture on this machine: build the fastest candidate
        whose agreement is known to be good; a bf16 candidate ranked first whose agreement with these weights is
        not yet known is checked on the first non-empty window (:meth:`_check_cached`)."""
        self._cached_entry = entry
        self.measured = dict(entry.get("measured", {}))
        self.failed.update(entry.get("failed", {}))
        agreement = self._known_agreement(entry)
        for name in entry["ranking"]:
            if name not in agreement:
                return  # checked on the first window
            if agreement[name] >= MIN_AGREEMENT:
                self.agreement = {name: agreement[name]}
                self._backend = self._build_or_fall_back(Candidate(*name.split("/")), int(entry.get("threads", 1)))
                self._ready, self._onnx = True, None
                self.selection = "cached measurement"
                return

    def _known_agreement(self, entry: dict) -> dict[str, float]:
        return {**entry.get("agreement_fp32", {}),
                **entry.get("agreement_bf16", {}).get(_weights_fingerprint(self.net), {})}

    def _store(self, ranking: list[str], threads: int) -> None:
        if self._cache is None:
            return
        old = _read_cache(self._cache).get("entries", {}).get(self._arch_key, {})
        fp32 = {**old.get("agreement_fp32", {}), **{n: a for n, a in self.agreement.items() if n.endswith("fp32")}}
        per_weights = dict(old.get("agreement_bf16", {}))
        if any(n.endswith("bf16") for n in self.agreement):
            fp = _weights_fingerprint(self.net)
            per_weights[fp] = {**per_weights.get(fp, {}),
                               **{n: a for n, a in self.agreement.items() if n.endswith("bf16")}}
        _write_cache(self._cache, self._arch_key, {
            "ranking": ranking, "threads": threads, "measured": self.measured, "failed": self.failed,
            "agreement_fp32": fp32, "agreement_bf16": per_weights,
            "load": [round(v, 2) for v in _load()], "when": time.strftime("%Y-%m-%d %H:%M:%S")})

    # ---- measuring -------------------------------------------------------------------------------------------
    def _timed(self, backend: _Backend, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        _sync(self.device)
        t0 = time.perf_counter()
        y = backend(x)
        _sync(self.device)
        return time.perf_counter() - t0, y

    def _final_build(self, cand: Candidate, t_all: float, out_all: torch.Tensor, x: torch.Tensor,
                     log: dict) -> tuple[_Backend, torch.Tensor]:
        """Build ``cand`` for good, on all free cores (``t_all`` seconds per warm window there, ``out_all`` its
        output for ``x``) or on one thread when that measures faster on ``x`` (on a loaded machine one thread can
        be several times faster); returns the backend and its output for ``x`` (thread counts may differ in the
        last bits; every later window is computed like this one). No other build of ``cand`` may be alive:
        ONNX Runtime and OpenVINO keep a memory arena per build, and two at once would double the peak memory."""
        n = self._initial_threads()
        if self._measure_threads and n > 1:
            try:
                one = self._build(cand, 1)
                self._timed(one, x)  # first run
                t_one, out_one = self._timed(one, x)
                log[f"{cand} {n} threads"] = round(t_all, 3)
                log[f"{cand} 1 thread"] = round(t_one, 3)
                if t_one < t_all:
                    return one, out_one
                del one, out_one
            except Exception as e:  # noqa: BLE001 - keep all cores
                log[f"{cand} 1 thread"] = first_line(e)
            _release_memory()
        return self._build(cand, n), out_all

    def _settle_threads(self, x: torch.Tensor) -> torch.Tensor:
        """A requested engine's first window: run it, then settle the thread count on it."""
        cand = Candidate(self._backend.engine, self._backend.precision)
        self._backend(x)  # first run
        t_all, out = self._timed(self._backend, x)
        self._backend = None  # released before a one-thread build is measured
        _release_memory()
        log: dict[str, Any] = {}
        self._backend, out = self._final_build(cand, t_all, out, x, log)
        self.measured, self._ready, self._onnx = log, True, None
        self._store([str(cand)], self._backend.threads)
        return out

    def _check_cached(self, x: torch.Tensor, entry: dict) -> torch.Tensor:
        """The cached ranking with a candidate whose agreement with these weights is unknown: check the
        candidates in ranking order against torch fp32 on the real window ``x`` until one agrees."""
        threads = int(entry.get("threads", 1))
        known = self._known_agreement(entry)
        ref = None
        for name in entry["ranking"]:
            cand = Candidate(*name.split("/"))
            if known.get(name, 1.0) < MIN_AGREEMENT:
                continue
            try:
                backend = self._build(cand, threads)
                y = backend(x)
            except Exception as e:  # noqa: BLE001 - skipped, with the reason
                self.failed[name] = first_line(e)
                continue
            if name not in known:
                if ref is None:
                    ref = _TorchBackend(self.net, "fp32", threads, self.device)(x)
                known[name] = label_agreement(y, ref, self.sigmoid)
            self.agreement[name] = known[name]
            if known[name] >= MIN_AGREEMENT:
                self._backend, self._ready, self._onnx = backend, True, None
                self.selection = "cached measurement (agreement checked)"
                self._store(entry["ranking"], threads)
                return y
            del backend, y
        self._backend, self._ready = self._build(Candidate("torch", "fp32"), threads), True
        self.selection = "cached measurement"
        return self._backend(x)

    def _calibrate(self, x: torch.Tensor) -> torch.Tensor:
        """Measure every candidate on the real window ``x`` (1, C, *window); keep the fastest whose labels agree
        with torch fp32; return its output for ``x``. One candidate is alive at a time (each engine keeps its
        own memory arena), and the chosen one is built again at the end."""
        threads = self._initial_threads()
        ref_backend = _TorchBackend(self.net, "fp32", threads, self.device)
        t_ref_first, ref = self._timed(ref_backend, x)
        log: dict[str, Any] = {"torch/fp32 first run": round(t_ref_first, 3)}
        timings: dict[str, float] = {}
        best: tuple[float, str, torch.Tensor] | None = None  # (seconds, candidate, its output for x)
        for cand in self._candidates:
            name = str(cand)
            if cand == Candidate("torch", "fp32"):
                continue
            try:
                backend = self._build(cand, threads)
                t_first, y = self._timed(backend, x)
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run is skipped, with the reason
                self.failed[name] = first_line(e)
                continue
            if backend.build_s > 0.01:
                log[f"{name} build"] = round(backend.build_s, 3)
            if t_first > 3 * min(best[0] if best else float("inf"), t_ref_first):  # clearly slower
                log[f"{name} first run"] = round(t_first, 3)
                del backend, y
                _release_memory()
                continue
            t, y = self._timed(backend, x)
            del backend
            _release_memory()
            self.agreement[name] = label_agreement(y, ref, self.sigmoid)
            log[name] = timings[name] = round(t, 3)
            if self.agreement[name] >= MIN_AGREEMENT and (best is None or t < best[0]):
                best = (t, name, y)
            del y
        if Candidate("torch", "fp32") in self._candidates and (best is None or best[0] > 0.5 * t_ref_first):
            t, _ = self._timed(ref_backend, x)  # torch fp32 may still win: time it warm
            log["torch/fp32"] = timings["torch/fp32"] = round(t, 3)
            self.agreement["torch/fp32"] = 1.0
            if best is None or t < best[0]:
                best = (t, "torch/fp32", ref)
        if best is None:  # no requested candidate agrees with torch fp32: run the reference itself
            best = (t_ref_first, "torch/fp32", ref)
            self.agreement["torch/fp32"] = 1.0
            self.fallback = "no candidate agreed with torch fp32 on the first window; running torch/fp32"
        t_all, chosen, out = best
        del best, ref
        _release_memory()
        self._backend, out = self._final_build(Candidate(*chosen.split("/")), t_all, out, x, log)
        self.measured, self.selection, self._ready, self._onnx = log, "measured", True, None
        ranking = [n for n in sorted(timings, key=timings.get) if self.agreement.get(n, 0) >= MIN_AGREEMENT]
        self._store(ranking or [chosen], self._backend.threads)
        return out

    # ---- running -------------------------------------------------------------------------------------------
    def _run_one(self, x: torch.Tensor, empty: bool) -> torch.Tensor:
        if self._ready:
            return self._backend(x)
        if empty:  # an all-zero window tells nothing about speed or agreement: not a calibration window
            if self._backend is not None:
                return self._backend(x)
            if self._pending_ref is None:
                self._pending_ref = _TorchBackend(self.net, "fp32", self._initial_threads(), self.device)
            return self._pending_ref(x)
        if self._backend is not None:
            return self._settle_threads(x)
        if self._cached_entry is not None:
            return self._check_cached(x, self._cached_entry)
        return self._calibrate(x)

    def _zero_output(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros((1, *shape), dtype=torch.float32, device=like.device)
        if not self._ready:  # the engine that runs later windows is not settled yet
            return self._run_one(zeros, empty=True)
        if shape not in self._zero:
            self._zero[shape] = self._backend(zeros)
        return self._zero[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(x, "as_tensor"):  # MONAI MetaTensor
            x = x.as_tensor()
        if x.dtype != torch.float32:
            x = x.float()
        t0 = time.perf_counter()
        n = x.shape[0]
        nonempty = x.reshape(n, -1).ne(0).any(1).tolist()
        run = [ne or not self.skip_empty for ne in nonempty]
        outs: list[torch.Tensor | None] = [None] * n
        if self.device.type != "cpu" and self._ready:  # an accelerator runs the batch at once
            idx = [i for i in range(n) if run[i]]
            if idx:
                y = self._backend(x[idx])
                for j, i in enumerate(idx):
                    outs[i] = y[j:j + 1]
                self.stats.windows_run += len(idx)
        for i in sorted(range(n), key=lambda i: not nonempty[i]):  # real windows first: they calibrate
            if outs[i] is not None:
                continue
            if run[i]:
                outs[i] = self._run_one(x[i:i + 1], empty=not nonempty[i])
                self.stats.windows_run += 1
            else:
                outs[i] = self._zero_output(tuple(x.shape[1:]), x)
                self.stats.windows_skipped += 1
        self.stats.seconds += time.perf_counter() - t0
        return torch.cat([o.to(x.device) for o in outs], dim=0)

    def train(self, mode: bool = True) -> Runner:
        """A runner is always in inference mode."""
        return super().train(False)

    # ---- reporting -------------------------------------------------------------------------------------------
    @property
    def engine(self) -> str | None:
        return self._backend.engine if self._backend else None

    @property
    def precision(self) -> str | None:
        return self._backend.precision if self._backend else None

    @property
    def threads(self) -> int | None:
        return self._backend.threads if self._backend else None

    def reset_stats(self) -> None:
        """Count windows and seconds from now on (e.g. per case)."""
        self.stats = _Stats()

    def describe(self) -> dict[str, Any]:
        """For the JSON report: ``engine``, ``precision``, ``threads`` (None until an 'auto' runner has seen
        its first non-empty window), ``device``, ``window``, ``skip_empty``, ``selection`` ('requested',
        'measured', 'cached measurement', ... or 'pending'), ``requested`` ({'engine', 'precision'}),
        ``fallback`` (why the engine running is not the one asked for, else None), ``failed`` (candidate ->
        reason), ``measured`` (seconds per window of each candidate on the calibration window), ``agreement``
        (label agreement with torch fp32 there), ``build_s`` (export + compile), ``windows_run``,
        ``windows_skipped`` and ``seconds`` (spent in the runner, calibration included)."""
        return {
            "engine": self.engine, "precision": self.precision, "threads": self.threads,
            "device": str(self.device), "window": list(self.window_shape), "skip_empty": self.skip_empty,
            "selection": self.selection if self._backend else "pending",
            "requested": {"engine": self.requested[0], "precision": self.requested[1]},
            "fallback": self.fallback, "failed": dict(self.failed), "measured": dict(self.measured),
            "agreement": {k: round(v, 6) for k, v in self.agreement.items()},
            "build_s": round(self._backend.build_s, 3) if self._backend else None,
            "windows_run": self.stats.windows_run, "windows_skipped": self.stats.windows_skipped,
            "seconds": round(self.stats.seconds, 3),
        }

    def extra_repr(self) -> str:
        d = self.describe()
        return f"engine={d['engine']}, precision={d['precision']}, threads={d['threads']}, window={d['window']}"


# --------------------------------------------------------------------------------------------- make_runner
def _candidates(engine: str, precision: str, device: torch.device) -> tuple[list[Candidate], dict[str, str]]:
    """The (engine, precision) pairs to consider, and the reasons others were left out."""
    if engine not in ("auto",) + ENGINES:
        raise MedsegError(f"unknown inference engine '{engine}'; use auto, {', '.join(ENGINES)}")
    if precision not in ("auto",) + PRECISIONS:
        raise MedsegError(f"unknown inference precision '{precision}'; use auto, {', '.join(PRECISIONS)}")
    if device.type != "cpu" and engine not in ("auto", "torch"):
        raise MedsegError(f"engine '{engine}' runs on the CPU only, not on {device.type}; use engine torch")
    if engine == "onnxruntime" and precision == "bf16":
        raise MedsegError("onnxruntime runs fp32 only on the CPU; use precision fp32, or engine openvino or torch "
                          "for bf16")
    skipped: dict[str, str] = {}
    out = []
    # the expected order on a CPU (fastest first); the measurement decides
    order = [Candidate("openvino", "bf16"), Candidate("openvino", "fp32"), Candidate("onnxruntime", "fp32"),
             Candidate("torch", "bf16"), Candidate("torch", "fp32")]
    bf16_ok = {"cpu": _cpu_has_bf16(),
               "cuda": device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
    for cand in order:
        if engine != "auto" and cand.engine != engine:
            continue
        if precision != "auto" and cand.precision != precision:
            continue
        if device.type != "cpu" and cand.engine != "torch":
            continue
        if cand.precision == "bf16" and precision == "auto" and not bf16_ok.get(device.type, False):
            skipped[str(cand)] = f"no native bfloat16 on this {device.type}"
            continue
        if cand.engine != "torch" and _version(cand.engine) is None:
            if engine == cand.engine:
                raise MedsegError(f"engine '{engine}' needs the {engine} package; pip install {engine}")
            skipped[str(cand)] = f"{cand.engine} is not installed"
            continue
        out.append(cand)
    if not out:  # e.g. onnxruntime with bf16 was refused above; openvino bf16 on a CPU without it is tried
        out = [Candidate("torch", "fp32")]
    return out, skipped


def make_runner(model: nn.Module, example_window_shape: Sequence[int], engine: str = "auto",
                precision: str = "auto", device: torch.device | str = "cpu", threads: int | None = None, *,
                skip_empty: bool = True, domain: str | None = None, sigmoid: bool = False,
                cache: bool | str | os.PathLike = True) -> Runner:
    """A :class:`Runner` for windows of ``example_window_shape`` = (C_in, *window) (a leading batch axis is
    ignored when the model's ``spatial_dims`` says there is one).

    ``engine``: 'auto', 'torch', 'onnxruntime' or 'openvino'; ``precision``: 'auto', 'fp32' or 'bf16' (see
    the module docstring). ``device``: where the windows run ('cpu', 'cuda', ...; ONNX Runtime and OpenVINO
    run on the CPU). ``threads``: intra-op threads, at most the free cores; None measures all of them against
    one. ``skip_empty``: reuse the output of an all-zero window instead of running it (exact). ``domain``: the
    sub-network of a multi-domain model. ``sigmoid``: the outputs are independent region logits (labels for
    the agreement check are then their signs). ``cache``: the measurement cache (True: under
    ``$MEDSEG3D_CACHE`` or ``~/.cache/medseg3d``; a path; False: measure every time)."""
    device = torch.device(device)
    shape = [int(s) for s in example_window_shape]
    sd = getattr(model, "spatial_dims", None)
    if sd is not None and len(shape) == sd + 2:
        shape = shape[1:]
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise MedsegError(f"window shape {list(example_window_shape)} must be (channels, *window) with positive sizes")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise MedsegError(f"threads must be a positive integer or None, got {threads!r}")
    candidates, skipped = _candidates(engine, precision, device)
    net = _MainOutput(model, domain).to(device).eval()
    cache_path = None if cache is False else (_cache_path() if cache is True else Path(cache))
    return Runner(net, shape, candidates, device, threads, skip_empty, sigmoid, cache_path,
                  (engine, precision), skipped)


__all__ = [
    "ENGINES",
    "MIN_AGREEMENT",
    "PRECISIONS",
    "Runner",
    "export_onnx",
    "free_cores",
    "label_agreement",
    "make_runner",
]
