"""What every result records about where it came from: versions and machine.

torch is not imported here: a simulation never loads it, and it is most of a command's start-up. Its
version comes from the installed package, and the GPU is named when the run has loaded torch (a run
that never did used none).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import version

import numba
import numpy

from engramtier import __version__


def machine_info() -> dict:
    """Versions and hardware that decide what a measurement means."""

    info = {
        "engramtier": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "torch": version("torch"),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda": _gpu_name(),
    }
    return info


def _gpu_name() -> str | None:
    torch = sys.modules.get("torch")
    return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
