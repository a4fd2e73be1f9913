"""Runs every benchmark in benchmarks/ and writes benchmarks/RESULTS.md: machine, versions, every table.

A benchmark is any `benchmarks/*.py` whose name does not start with "_" (helpers) other than this
file; each runs in its own process, one after the other, its output streamed here as it comes
(which benchmark, and each model or task as the script reports it). Conventions a benchmark can
follow to fit in: it prints its tables on stdout; it accepts `--quick` for a short run (passed with
`--quick` here; scripts that predate the flag get the shorter settings listed in QUICK_ARGUMENTS);
and it accepts `--plot PATH` to save a PNG, which then goes to benchmarks/plots/ and is linked from
RESULTS.md. Scripts compare with tfmot themselves where tfmot can do the job.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--list] [--output FILE] [--force]

RESULTS.md is rewritten by each run; a file at `--output` that this command did not write is
replaced only with `--force`. Timings are only as good as the machine is idle: the load average at
the start is recorded with the results.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PLOTS = os.path.join(HERE, "plots")
MARKER = "<!-- written by benchmarks/run_all.py; run it again to update -->"
# Shorter settings for scripts written before `--quick` existed.
QUICK_ARGUMENTS = {
    "training_overhead": ["--repeats", "3"],
    "tflite_size": ["--epochs", "2", "--runs", "100"],
}
HEARTBEAT_SECONDS = 60  # a line after this long without output from a benchmark
PACKAGES = (
    "tensorflow",
    "keras",
    "tensorflow-model-optimization",
    "tf-keras",
    "ai-edge-litert",
    "jax",
    "numpy",
)


def discover() -> list[str]:
    """The benchmark scripts in this folder, by name, without helpers and this file."""
    names = []
    for entry in sorted(os.listdir(HERE)):
        if entry.endswith(".py") and not entry.startswith("_") and entry != os.path.basename(__file__):
            names.append(entry[:-3])
    return names


def _source(name: str) -> str:
    with open(os.path.join(HERE, f"{name}.py"), encoding="utf-8") as file:
        return file.read()


def _accepts(source: str, flag: str) -> bool:
    return re.search(rf"add_argument\(\s*['\"]{re.escape(flag)}['\"]", source) is not None


def summary_line(name: str) -> str:
    """The first line of a benchmark's docstring: what it measures."""
    docstring = ast.get_docstring(ast.parse(_source(name))) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else name


def command(name: str, quick: bool) -> tuple[list[str], str | None]:
    """(argv, plot path or None) to run benchmark `name`."""
    source = _source(name)
    argv = [sys.executable, os.path.join(HERE, f"{name}.py")]
    if quick:
        argv += ["--quick"] if _accepts(source, "--quick") else QUICK_ARGUMENTS.get(name, [])
    plot = None
    if _accepts(source, "--plot"):
        plot = os.path.join(PLOTS, f"{name}.png")
        argv += ["--plot", plot]
    return argv, plot


def _pump(stream, received: queue.Queue) -> None:
    for line in stream:
        received.put(line)
    received.put(None)


def _shown(argv: list[str]) -> str:
    """The command as a user types it from the repository root."""
    return " ".join(["python", *(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in argv[1:])])


def run_one(name: str, quick: bool, index: int, count: int) -> dict:
    """Runs one benchmark, echoing its output as it comes; returns what RESULTS.md needs."""
    argv, plot = command(name, quick)
    shown = _shown(argv)
    print(f"\n[{index}/{count}] {name}: {summary_line(name)}\n        $ {shown}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    started = time.perf_counter()
    lines = []
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        received: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(process.stdout, received), daemon=True).start()
        while True:
            try:
                line = received.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:  # a long table still being measured: say the run is alive
                print(f"  {time.perf_counter() - started:6.0f}s | ({name} still running)", flush=True)
                continue
            if line is None:
                break
            lines.append(line.rstrip("\n"))
            print(f"  {time.perf_counter() - started:6.0f}s | {line}", end="", flush=True)
        status = process.wait()
        errors.seek(0)
        error_tail = errors.read()[-3000:]
    seconds = time.perf_counter() - started
    print(
        f"        {'done' if status == 0 else f'FAILED (exit status {status})'} in {seconds:.0f} s",
        flush=True,
    )
    return {
        "name": name,
        "summary": summary_line(name),
        "command": shown,
        "status": status,
        "seconds": seconds,
        "output": "\n".join(lines).strip(),
        "errors": error_tail if status != 0 else "",
        "plot": plot if plot and status == 0 and os.path.exists(plot) else None,
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            kilobytes = int(file.readline().split()[1])
        return f"{kilobytes / 2**20:.0f} GB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def machine() -> list[tuple[str, str]]:
    """(what, value) rows describing where the benchmarks ran."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} cores visible"),
        ("Memory", _memory_gb()),
        ("System", f"{platform.system()} {platform.release()}, Python {platform.python_version()}"),
        ("Load average at start (1, 5, 15 min)", load),
        ("tfsparse commit", _commit()),
        *[(package, _version(package)) for package in PACKAGES],
    ]


def results_markdown(results: list[dict], rows: list[tuple[str, str]], quick: bool, started: str) -> str:
    lines = [
        MARKER,
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run_all.py{' --quick' if quick else ''}` on {started} "
        f"({'quick settings: fewer repeats, epochs and sparsities' if quick else 'full settings'}). "
        "Each table is printed by its script exactly as below; how each is measured is in the "
        "script's docstring. Timings are medians of alternated runs and are as good as the machine "
        "was idle (load average below).",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {what} | {value} |" for what, value in rows],
        "",
        "| Benchmark | Status | Wall time |",
        "|---|---|---|",
    ]
    for result in results:
        status = "ok" if result["status"] == 0 else f"failed (exit {result['status']})"
        lines.append(
            f"| [{result['name']}](#{result['name'].replace('_', '-')}) | {status} | {result['seconds']:.0f} s |"
        )
    for result in results:
        lines += ["", f"## {result['name']}", "", result["summary"], "", f"`{result['command']}`", ""]
        lines += ["```", result["output"] or "(no output)", "```"]
        if result["plot"]:
            relative = os.path.relpath(result["plot"], HERE)
            lines += ["", f"![{result['name']}]({relative})"]
        if result["errors"]:
            lines += [
                "",
                "The run failed; the end of its error output:",
                "",
                "```",
                result["errors"].strip(),
                "```",
            ]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    # Beside the target, then renamed: a reader never sees half a file.
    handle, temporary = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(path)), prefix=".RESULTS.", suffix=".md"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short settings for every benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks found, with their commands")
    parser.add_argument(
        "--output", default=os.path.join(HERE, "RESULTS.md"), help="results file (RESULTS.md)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace --output even if run_all did not write it"
    )
    args = parser.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(
                f"argument --only: no benchmark named {', '.join(unknown)}; found: {', '.join(names)}"
            )
        names = [name for name in names if name in args.only]
    if args.list:
        for name in names:
            print(f"{name:<24} {summary_line(name)}\n{'':<24} $ {_shown(command(name, args.quick)[0])}")
        return 0
    if os.path.exists(args.output) and not args.force:
        with open(args.output, encoding="utf-8") as file:
            if file.readline().strip() != MARKER:
                parser.error(
                    f"{args.output} exists and was not written by run_all.py; pass --force to replace it"
                )

    os.makedirs(PLOTS, exist_ok=True)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    rows = machine()
    print(f"{len(names)} benchmarks{' (quick)' if args.quick else ''}: {', '.join(names)}")
    for what, value in rows:
        print(f"  {what}: {value}")
    results = [run_one(name, args.quick, index, len(names)) for index, name in enumerate(names, 1)]
    if hasattr(os, "getloadavg"):
        rows.insert(4, ("Load average at the end", ", ".join(f"{value:.2f}" for value in os.getloadavg())))
    _write(args.output, results_markdown(results, rows, args.quick, started))
    failed = [result["name"] for result in results if result["status"] != 0]
    print(f"\nWrote {os.path.relpath(args.output)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
