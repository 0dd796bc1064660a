"""Where a worker's CPU time goes: py-spy samples of running workers, summarised.

py-spy records only threads that are on the CPU (an event loop waiting in epoll is idle and is
not sampled), so shares are of the Python time actually spent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

NATIVE = "(no Python frame)"
# Entry points every stack of the main thread passes through: they say nothing.
_ENTRY = ("service/__main__.py", "service/cli.py", "service/server.py")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::\d+)?\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<module>[^/]+?)(?:\.py)?(?:/|$)")


def find_py_spy() -> str | None:
    here = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(
    pids: list[int], seconds: int, out_dir: Path
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """One py-spy per process, recording for `seconds` (raw collapsed stacks)."""
    py_spy = find_py_spy()
    assert py_spy is not None, "py-spy is not installed"
    started = []
    for pid in pids:
        out = out_dir / f"py-spy-{pid}.txt"
        command = [py_spy, "record", "-p", str(pid), "-f", "raw", "-r", "200", "-d", str(seconds),
                   "-o", str(out)]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append((process, out))
    return started


def finish(started: list[tuple[subprocess.Popen[bytes], Path]], timeout: float) -> list[Path]:
    for process, _ in started:
        process.wait(timeout=timeout)
    return [out for _, out in started if out.exists()]


def category(path: str) -> str:
    """What a frame's file belongs to: our module, a package, or a standard library module.
    py-spy shortens paths to what follows their sys.path entry ("psycopg/_cursor_base.py")."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/service/" in path or path.startswith("service/"):
        return "service/" + path.rsplit("service/", 1)[1]
    stdlib = _STDLIB.search(path)
    if stdlib:
        return stdlib.group("module")
    return path


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text)
    if match is None:
        return text, text
    path = match.group("path")
    short = category(path)
    return f"{match.group('function')} ({short})", short


def summarize(files: list[Path], top: int = 20) -> dict[str, Any]:
    """Shares of samples: by the package the CPU was in (leaf frame), by our own functions
    (inclusive: the function or anything it called), and by leaf function."""
    total = idle = 0
    leaf_functions: Counter[str] = Counter()
    leaf_packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            # A sample without a Python frame: the process was in C code of its own (uvloop's
            # loop, httptools), not called from Python.
            frames = [_frame(f) for f in stack.split(";")] if stack else [(NATIVE, NATIVE)]
            if stack.rsplit(";", 1)[-1].startswith("_worker (concurrent/futures/thread.py"):
                # An executor thread waiting for work: py-spy counts it as active here, though
                # it is blocked on its queue (its work would show as deeper frames).
                idle += count
                continue
            total += count
            leaf_functions[frames[-1][0]] += count
            leaf_packages[frames[-1][1].split("/", 1)[0]] += count
            ours = {name for name, where in frames if where.startswith("service/")}
            for name in {n for n in ours if not n.endswith(tuple(f"({e})" for e in _ENTRY))}:
                inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "idle_executor_samples_left_out": idle,
        "by_package_percent": shares(leaf_packages) if total else [],
        "our_functions_inclusive_percent": shares(inclusive) if total else [],
        "by_leaf_function_percent": shares(leaf_functions) if total else [],
    }
