"""Profiles, seeding and device choice.

Every chapter starts with ``cfg = get_profile(PROFILE)``. The three profiles trade fidelity for
time (see the book's introduction, section *Profiles*):

=========  ==========================================  =========================  ===============
profile    model                                       data                       budget
=========  ==========================================  =========================  ===============
smoke      tiny random BERT (2 layers, 128 hidden)     <= 64 examples per split   <= 60 s, 2 CPUs
small      packaged MiniLM-L6 (offline)                real data, subsets         <= 4 min, 2 CPUs
record     packaged MiniLM-L6, fp32, 3 seeds           whole training splits      <= 15 min, 2 CPUs
full       hub checkpoints (bert-base-uncased, ...)    full data sets             GPU (Colab T4)
=========  ==========================================  =========================  ===============

``record`` is the longer CPU run behind ``make records-<part>``: it resolves what four minutes
cannot, its precision is pinned to fp32 (so a refresh on a CPU with or without native bf16 does
not flip a verdict), and its results are committed as ``<chapter>.record.json``.

``auto`` means ``full`` when CUDA is available and ``small`` otherwise; the environment variable
``TLUTILS_PROFILE`` overrides ``auto`` so that jupyter-book, nbval and papermill can steer every
chapter without editing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from tlutils.errors import ConfigError

PROFILE_NAMES = ("smoke", "small", "record", "full")
PROFILE_ENV = "TLUTILS_PROFILE"
OUTPUT_ENV = "TLUTILS_OUTPUT_DIR"


@dataclass(frozen=True)
class Profile:
    """Concrete settings one profile stands for.

    Chapters read these instead of hard-coding sizes, and override single fields with
    :meth:`replace` where an experiment needs something else (say so in the prose).
    """

    name: str
    model_name: str
    max_train_examples: Optional[int]  # None = the whole split
    max_eval_examples: Optional[int]
    max_length: int
    batch_size: int
    eval_batch_size: int
    epochs: int
    learning_rate: float
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    mixed_precision: str = "auto"  # "auto" | "no" | "bf16" | "fp16"
    seeds: tuple[int, ...] = (0,)  # offsets added to a chapter's SEED where it repeats a run

    def replace(self, **changes: Any) -> "Profile":
        """A copy with some fields changed: ``cfg.replace(epochs=1)``."""
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", model_name="tiny-bert", max_train_examples=64, max_eval_examples=64,
        max_length=128, batch_size=16, eval_batch_size=64, epochs=2, learning_rate=1e-3,
    ),
    "small": Profile(
        name="small", model_name="minilm", max_train_examples=1200, max_eval_examples=None,
        max_length=128, batch_size=32, eval_batch_size=64, epochs=2, learning_rate=2e-4,
    ),  # eval 64: MiniLM predicts fastest there on 2 cores (233 pairs/s bf16, 134 AVX2 fp32; 218, 122 at 128)
    "record": Profile(
        name="record", model_name="minilm", max_train_examples=None, max_eval_examples=None,
        max_length=128, batch_size=32, eval_batch_size=128, epochs=2, learning_rate=2e-4,
        mixed_precision="no", seeds=(0, 1, 2),
    ),
    "full": Profile(
        name="full", model_name="bert-base-uncased", max_train_examples=None,
        max_eval_examples=None, max_length=128, batch_size=32, eval_batch_size=256, epochs=3,
        learning_rate=2e-5,
    ),
}


def resolve_profile_name(name: str = "auto") -> str:
    """Turn ``"auto"`` into a concrete profile name (``TLUTILS_PROFILE`` wins over CUDA)."""
    if name == "auto":
        name = os.environ.get(PROFILE_ENV, "").strip() or (
            "full" if torch.cuda.is_available() else "small"
        )
    if name not in PROFILES:
        raise ConfigError(
            f"Unknown profile {name!r}: use one of {', '.join(PROFILE_NAMES)} or 'auto' "
            f"(check {PROFILE_ENV}={os.environ.get(PROFILE_ENV)!r})."
        )
    return name


def get_profile(name: str = "auto", **overrides: Any) -> Profile:
    """The settings of profile ``name`` (``smoke``, ``small``, ``full`` or ``auto``).

    Args:
        name: a profile name; ``"auto"`` resolves through :func:`resolve_profile_name`.
        **overrides: fields to change, e.g. ``epochs=1``.

    Example:
        >>> get_profile("smoke").model_name
        'tiny-bert'
    """
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"Unknown profile field(s) {', '.join(unknown)}: use {', '.join(sorted(known))}.")
    return PROFILES[resolve_profile_name(name)].replace(**overrides)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
_BELOW_BF16 = {"default", "sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512", "avx512_core",
               "avx512_core_vnni", "avx512_e1", "avx512_e2", "avx512_e3"}  # caps without native bf16 kernels


def isa_caps() -> dict[str, str]:
    """The instruction-set caps set in the environment (``ATEN_CPU_CAPABILITY=avx2``,
    ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``): the libraries then use no
    newer instructions than these, which is how a run on a newer CPU measures an AVX2-only one."""
    return {name: os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name, "").strip()}


def read_cpuinfo() -> dict[str, Any]:
    """This CPU's ``model`` name and its instruction-set ``flags`` (a set), read from
    ``/proc/cpuinfo``; ``{"model": None, "flags": set()}`` where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": None, "flags": set()}
    lines = text.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"model": model, "flags": set(flags)}


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX) and no ISA cap in
    the environment (:func:`isa_caps`) keeps the libraries from using them.

    Without them PyTorch emulates bf16 and autocast makes training *slower*, so
    :func:`resolve_mixed_precision` only turns it on where it pays.
    """
    if any(value.strip().lower() in _BELOW_BF16 for value in isa_caps().values()):
        return False
    flags = read_cpuinfo()["flags"]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(mode: str = "auto", cpu: Optional[bool] = None) -> str:
    """Pick ``"bf16"``, ``"fp16"`` or ``"no"`` for this machine.

    ``auto``: bf16 on GPUs that support it (Ampere and newer), fp16 on older GPUs (T4),
    bf16 on CPUs with native bf16 instructions, otherwise full precision.
    """
    if mode not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision={mode!r}: use 'auto', 'no', 'bf16' or 'fp16'.")
    on_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    if mode != "auto":
        if mode == "fp16" and on_cpu:
            raise ConfigError("mixed_precision='fp16' needs a GPU; use 'bf16' or 'no' on a CPU.")
        return mode
    if on_cpu:
        return "bf16" if cpu_supports_bf16() else "no"
    return "bf16" if gpu_supports_bf16() else "fp16"


def gpu_supports_bf16(device: Optional[int] = None) -> bool:
    """True on GPUs with bf16 tensor cores: compute capability 8.0 or newer (Ampere, Hopper).

    ``torch.cuda.is_bf16_supported()`` is also true on a T4 (sm_75), where bf16 is emulated
    without tensor cores and slower than fp16, so the capability decides.
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)


def is_main_process() -> bool:
    """True in the process that writes files: rank 0 under ``accelerate launch`` / ``torchrun``
    (they set ``RANK``), and always in a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def project_root(start: Optional[Path] = None) -> Optional[Path]:
    """The repository root (the folder holding ``_toc.yml`` and ``tlutils/``), if inside it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "tlutils").is_dir():
            return folder
    return None


def output_dir(chapter: str) -> Path:
    """Where a chapter writes its results: ``$TLUTILS_OUTPUT_DIR/<chapter>`` or
    ``<repository>/outputs/<chapter>`` (``./outputs/<chapter>`` outside the repository)."""
    base = os.environ.get(OUTPUT_ENV)
    root = Path(base) if base else (project_root() or Path.cwd()) / "outputs"
    path = root / chapter
    path.mkdir(parents=True, exist_ok=True)
    return path


class Stopwatch:
    """Wall time since creation, and where it went, in seconds.

    ``clock = Stopwatch(); ...; clock.lap("data"); ...; clock.lap("training")`` charges the time
    since the previous lap (or the start) to each stage; ``clock.laps`` is then
    ``{"data": ..., "training": ...}`` (a stage named twice adds up), ``clock.elapsed()`` the
    total and ``clock.since_lap()`` what no stage has been charged yet.
    """

    def __init__(self) -> None:
        self.start = self._lap_start = time.perf_counter()
        self.laps: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def since_lap(self) -> float:
        return time.perf_counter() - self._lap_start

    def lap(self, stage: str) -> float:
        """Charge the time since the previous lap to ``stage``; return the seconds charged."""
        now = time.perf_counter()
        seconds, self._lap_start = now - self._lap_start, now
        self.laps[stage] = self.laps.get(stage, 0.0) + seconds
        return seconds


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No progress bars from ``datasets`` or ``transformers`` inside the block.

    A bar per ``map``, ``add_column`` or ``save_pretrained`` is noise in a chapter, and in a
    notebook with ipywidgets it becomes a widget whose script the published page would fetch
    from a CDN. The previous state is restored afterwards.
    """
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_bars, transformers_bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            hf_logging.enable_progress_bar()
