"""Shared helpers for the benchmarks: timing, child peak RSS, and time-to-text in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Median wall time of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_child(code: str, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run Python `code` in a child; return (seconds, peak RSS in MiB, stdout)."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) // 1024, proc.stdout


def time_to_text(argv: Sequence[str], marker: bytes, *, env: dict[str, str] | None = None,
                 size: tuple[int, int] = (120, 40), timeout: float = 60.0) -> tuple[float, int]:
    """Start `argv` in a pty of `size`; seconds until `marker` appears on screen, and bytes read by then."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        # An installed cockpit runs from byte code; without it every start would compile our
        # modules from source again (~0.13 s here), which no user pays.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ.update(env or {})
        os.environ["COLUMNS"], os.environ["LINES"] = str(size[0]), str(size[1])
        os.environ.setdefault("TERM", "xterm-256color")
        os.execvp(argv[0], list(argv))
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    start = time.perf_counter()
    buf = b""
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                if marker in buf:
                    return time.perf_counter() - start, len(buf)
        raise TimeoutError(f"{marker!r} did not appear within {timeout}s; screen tail: {buf[-400:]!r}")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)


def report(name: str, value: float, unit: str, target: str = "") -> None:
    print(f"{name:<58} {value:>10.3f} {unit:<4} {target}")
