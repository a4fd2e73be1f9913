"""benchmarks/run_all.py, on a folder of stand-in benchmarks: discovery, flags, RESULTS.md, failures."""

import pathlib
import shutil
import subprocess
import sys

RUN_ALL = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"

FAST_TABLE = '''"""Stand-in: prints a table, takes --quick and --plot."""
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--plot")
args = parser.parse_args()
print("model  ratio")
print(f"mlp    {0.5 if args.quick else 1.0:.2f}x")
with open(args.plot, "wb") as file:
    file.write(b"not really a png")
'''


def _folder(tmp_path) -> pathlib.Path:
    benchmarks = tmp_path / "benchmarks"
    benchmarks.mkdir()
    shutil.copy(RUN_ALL, benchmarks / "run_all.py")
    (benchmarks / "fast_table.py").write_text(FAST_TABLE)
    (benchmarks / "_helper.py").write_text("raise SystemExit('helpers are not benchmarks')\n")
    (benchmarks / "broken.py").write_text('"""Stand-in that fails."""\nraise SystemExit("out of memory")\n')
    return benchmarks


def _run(benchmarks, *args):
    return subprocess.run(
        [sys.executable, str(benchmarks / "run_all.py"), *args], capture_output=True, text=True, timeout=120
    )


def test_every_benchmark_runs_and_every_table_lands_in_results(tmp_path):
    benchmarks = _folder(tmp_path)
    done = _run(benchmarks, "--quick")
    assert done.returncode == 1  # one benchmark failed; the others still ran
    assert "[1/2] broken" in done.stdout and "[2/2] fast_table" in done.stdout
    assert "| mlp    0.50x" in done.stdout  # streamed as it came, --quick passed on
    results = (benchmarks / "RESULTS.md").read_text()
    assert "| tensorflow |" in results and "| Load average at start (1, 5, 15 min) |" in results
    assert "```\nmodel  ratio\nmlp    0.50x\n```" in results
    assert (
        "![fast_table](plots/fast_table.png)" in results
        and (benchmarks / "plots" / "fast_table.png").exists()
    )
    assert "| [broken](#broken) | failed (exit 1) |" in results and "out of memory" in results
    assert "helpers are not benchmarks" not in results


def test_results_written_by_someone_else_are_kept_without_force(tmp_path):
    benchmarks = _folder(tmp_path)
    (benchmarks / "RESULTS.md").write_text("# hand-written notes\n")
    done = _run(benchmarks, "--only", "fast_table")
    assert done.returncode == 2 and "pass --force to replace it" in done.stderr
    assert (benchmarks / "RESULTS.md").read_text() == "# hand-written notes\n"
    assert _run(benchmarks, "--only", "fast_table", "--force").returncode == 0
    assert "mlp    1.00x" in (benchmarks / "RESULTS.md").read_text()
    assert _run(benchmarks, "--only", "fast_table").returncode == 0  # its own file: rewritten
    unknown = _run(benchmarks, "--only", "nothing")
    assert unknown.returncode == 2 and "no benchmark named nothing" in unknown.stderr
