"""TensorFlow's native start-up lines, kept out of the toolkit's normal output.

TensorFlow's C++ libraries write to file descriptor 2 before Python logging or ``TF_CPP_MIN_LOG_LEVEL``
can act on them: absl's "All log messages before absl::InitializeLog() ..." (once per shared library),
the oneDNN notice, "Could not find cuda drivers" on import, "failed call to cuInit" when the devices
are first listed, and oneDNN's notes on kernels falling back to Eigen while a model trains.
:func:`filtered` runs a block with descriptor 2 pointed at a temporary file and then writes back every
line that is not one of those: real errors still reach the terminal, in order (after the block).

Set ``MELANOMA_NATIVE_LOGS=1`` (``python cli.py --debug`` does) to see everything unfiltered.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

#: Lines TensorFlow/XLA/absl/CUDA print at start-up on a machine that works as intended.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|cuda_diagnostics\.cc|cuda_dnn\.cc|cuda_fft\.cc"
    r"|cuda_blas\.cc|failed call to cuInit|Could not find cuda drivers"
    r"|Unable to register cu(?:DNN|FFT|BLAS) factory|computation_placer\.cc|TF-TRT Warning"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions.*rebuild TensorFlow"
    r"|cpu_feature_guard\.cc|port\.cc:\d+\] oneDNN"
    r"|oneDNN supports DT_\w+ only on platforms with"  # a kernel falling back to Eigen while training
)
ENV = "MELANOMA_NATIVE_LOGS"
#: descriptor 2 is the process's: one thread at a time may point it elsewhere (a second thread saving the
#: first one's temporary file as "the terminal" would leave stderr there for good); re-entrant for nesting
_REDIRECT = threading.RLock()


def keep(line: str) -> bool:
    """True for a line that is not start-up noise."""
    return bool(line.strip()) and not NOISE.search(line)


@contextlib.contextmanager
def filtered() -> Iterator[None]:
    """Run the block with native writes to stderr filtered through :data:`NOISE` (see the module doc)."""
    if os.environ.get(ENV) or not _has_fd2():
        yield
        return
    with _REDIRECT:
        yield from _redirected()


def _redirected() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            lines = [line for line in text.splitlines() if keep(line)]
            if lines:
                sys.stderr.write("\n".join(lines) + "\n")
                sys.stderr.flush()


def _has_fd2() -> bool:
    try:
        os.fstat(2)
        return True
    except OSError:
        return False
