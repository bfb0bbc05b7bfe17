"""Process-level settings: memory for long gradient passes, and what a command prints.

Output. Progress bars (tqdm, with ETA) go to stderr through :func:`progress_bar`; notes and
per-step lines go through the ``gisp`` logger. :func:`configure_output` (the CLI's ``--quiet`` and
``--log-level``) sets both, and transformers' own logging and bars, in one place.

Memory.
glibc's allocator keeps freed blocks in per-thread arenas (autograd's backward runs on its own
thread) and raises its mmap threshold as large blocks are freed, so after a few micro-batches of
different lengths a process holds about twice the memory it uses: measured on the demo's scoring,
2.2 GB resident between batches for 1.0 GB live (``benchmarks/results/demo_memory.json``).
Serving blocks of at least :data:`MMAP_THRESHOLD` bytes from ``mmap`` returns them to the system
when freed, so the resident peak follows the live peak. Without glibc's mallopt: nothing to do.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20  # 1 MiB: activations and logits of any real batch; small tensors stay on the heap


def return_freed_memory() -> bool:
    """Make large freed blocks go back to the system (glibc only); True when applied.

    Fixing the threshold also stops glibc from raising it dynamically. Called by the command line
    before any work; Python users may call it themselves.
    """
    try:  # the symbols already loaded into this process (libc among them): no library search
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt (macOS): nothing to do
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    logger.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", MMAP_THRESHOLD, ok)
    return ok


LOG_LEVELS = ("debug", "info", "warning", "error")
_bars = {"enabled": True}


class _BarSafeHandler(logging.StreamHandler):
    """Writes each record above the progress bars (``tqdm.write``) instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise; report as logging does
            self.handleError(record)


def configure_output(log_level: str = "warning", quiet: bool = False) -> None:
    """Send gisp's log records at ``log_level`` and above to stderr as ``gisp: MESSAGE`` lines, at
    the same level for transformers and Python warnings; ``quiet`` means errors only and no progress
    bars (gisp's, transformers' and the hub's), so stdout carries only each command's result."""
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    level = logging.ERROR if quiet else getattr(logging, log_level.upper())
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gisp: %(message)s"))
    root = logging.getLogger("gisp")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)  # warnings.warn from torch / transformers obey the level too
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.handlers[:] = [logging.StreamHandler(sys.stderr)]
    py_warnings.setLevel(level)
    py_warnings.propagate = False
    if quiet:
        warnings.simplefilter("ignore")
    # transformers' info is its own chatter (every config it reads): it follows gisp's level from
    # warning up, and at debug. It reads these when first imported; its loggers are set below in
    # case it already is.
    hf_level = level if level != logging.INFO else logging.WARNING
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(hf_level).lower()
    _bars["enabled"] = not quiet
    if quiet:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        _bars["hub_silenced"] = True
    elif _bars.pop("hub_silenced", False):  # a later command in the same process (the API, tests) is not quiet
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(hf_level)
        if quiet and hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            _bars["hf_silenced"] = True
        elif not quiet and _bars.pop("hf_silenced", False):  # only what --quiet turned off (not the user's choice)
            hf_logging.enable_progress_bar()


@contextmanager
def scoped_environ(*names: str) -> Iterator[None]:
    """Within the block the variables ``names`` may change; afterwards they are as before."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def command_output() -> Iterator[None]:
    """Within the block, :func:`configure_output` may change what is printed; afterwards
    everything it touches is as before (gisp's and ``py.warnings``' loggers, warning capture and
    filters, transformers' verbosity and bars, the hub's variable), so one command's ``--quiet`` or
    ``--log-level`` does not outlive it in a process that goes on (the API after ``main()``, tests)."""
    loggers = {name: (logging.getLogger(name), logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                      logging.getLogger(name).propagate) for name in ("gisp", "py.warnings")}
    capturing = logging._warnings_showwarning is not None  # noqa: SLF001 - logging keeps no public flag
    filters, bars = list(warnings.filters), dict(_bars)
    hf = None
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    try:
        with scoped_environ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
            yield
    finally:
        for logger_, handlers, level, propagate in loggers.values():
            logger_.handlers[:], logger_.propagate = handlers, propagate
            logger_.setLevel(level)
        logging.captureWarnings(capturing)
        warnings.filters[:] = filters
        _bars.clear()
        _bars.update(bars)
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            verbosity, enabled = hf or (logging.WARNING, True)  # imported by the command: its defaults
            hf_logging.set_verbosity(verbosity)
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def bars_enabled() -> bool:
    """Whether progress bars are on (off under ``--quiet``)."""
    return _bars["enabled"]


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr (rate and ETA when the length is known), off when ``enabled`` is False
    (a caller's ``progress=False``) or output is quiet."""
    return tqdm(iterable, disable=not (enabled and _bars["enabled"]), **kwargs)


# --- what a checkpoint may make this process do --------------------------------------------------
# Loading runs no code a model directory or hub repository ships, and unpickles nothing, unless
# the user says so: ``--trust-remote-code`` / ``--allow-pickle`` on the command line (every
# command, every torchrun rank), or the variables below for the API.
TRUST_REMOTE_CODE_ENV = "GISP_TRUST_REMOTE_CODE"
ALLOW_PICKLE_ENV = "GISP_ALLOW_PICKLE"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def trust_remote_code() -> bool:
    """Whether a model's own Python code (``auto_map``) may run: ``GISP_TRUST_REMOTE_CODE=1``.
    gisp's exports never need it from gisp: their generic code is gisp's own, loaded from the package."""
    return _flag(TRUST_REMOTE_CODE_ENV)


def allow_pickle() -> bool:
    """Whether weights stored only as pickles (``pytorch_model.bin``) may load (restricted
    ``torch.load(weights_only=True)``): ``GISP_ALLOW_PICKLE=1``. Otherwise only safetensors and GGUF."""
    return _flag(ALLOW_PICKLE_ENV)
