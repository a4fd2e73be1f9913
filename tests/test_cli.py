"""The `tfsparse` command, run as a subprocess (plus cheap argument checks run in-process)."""

import concurrent.futures
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import make_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfsparse
from tfsparse import _files, analysis, cli, demo
from tfsparse.mask_updates import collect_wrappers, prune_to


def _run(*args, cwd):
    """(exit status, stdout, stderr lines) of the installed command's entry point."""
    result = subprocess.run(
        [sys.executable, "-m", "tfsparse_launcher", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, [line for line in result.stderr.splitlines() if line.strip()]


def _main(capfd, *args):
    """Runs the command in this process: (exit status, stdout, stderr lines)."""
    status = cli.main([str(arg) for arg in args])
    out, err = capfd.readouterr()
    return status, out, err.splitlines()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    model = make_cnn()
    model.save(folder / "tiny.keras")
    pruned = tfsparse.prune_low_magnitude(make_cnn(), pruning_schedule=tfsparse.ConstantSparsity(0.8, 0))
    prune_to(collect_wrappers(pruned), lambda wrapper: 0.8)
    pruned.save(folder / "pruned_wrapped.keras")
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2)(inputs))).save(
        folder / "lambda.keras"
    )
    (folder / "corrupt.keras").write_bytes(b"not a zip archive" * 8)
    (folder / "corrupt.tflite").write_bytes(b"not a flatbuffer" * 8)
    np.save(folder / "calibration.npy", np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32))
    np.save(folder / "wrong_shape.npy", np.zeros((32, 5), np.float32))
    return folder


def _table(stdout: str) -> dict[str, list[str]]:
    """The demo's table as {model name: [accuracy, sparsity, parameters, size, gzipped, latency]}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Model ") and "Accuracy" in line)
    rows = {}
    for line in lines[start + 2 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != 7:  # the notes under the table
            break
        rows[cells[0]] = cells[1:]
    return rows


def test_demo_trains_prunes_exports_and_prints_one_table(tmp_path):
    status, stdout, stderr = _run("demo", "--epochs", "1", "--output-dir", tmp_path / "demo", cwd=tmp_path)
    assert status == 0 and stderr == [], stderr
    assert "Traceback" not in stdout
    assert stdout.count("43/43") >= 2  # Keras' progress bars, dense training and pruning
    rows = _table(stdout)
    assert list(rows) == [
        "Keras, dense",
        "Keras, pruned",
        "TFLite float32, dense",
        "TFLite float32, sparse",
        "TFLite int8, sparse",
        "TFLite float32, structured",
    ]
    percent = {name: [float(cell.rstrip("%")) for cell in row[:2]] for name, row in rows.items()}
    assert percent["Keras, dense"][1] == 0.0
    structured = rows.pop("TFLite float32, structured")
    assert float(structured[0].rstrip("%")) > 50.0
    assert int(structured[2].split("/ ")[1].replace(",", "")) < 38_282 / 2
    for name in list(rows)[1:]:
        accuracy, sparsity = percent[name]
        assert accuracy > 50.0 and 85.0 < sparsity < 90.5, (name, rows[name])
        assert rows[name][2].endswith("/ 38,282")
        latency = rows[name][5]
        assert re.fullmatch(r"[\d.]+ (us|ms)", latency) if name.startswith("TFLite") else latency == "-"
    kilobytes = {name: float(row[3].split()[0]) for name, row in rows.items()}
    assert kilobytes["TFLite float32, sparse"] < kilobytes["TFLite float32, dense"] / 3
    assert sorted(os.listdir(tmp_path / "demo")) == sorted(demo.FILES.values())


def test_inspect_reports_the_masked_sparsity_of_a_pruned_model(files):
    status, stdout, stderr = _run("inspect", "pruned_wrapped.keras", cwd=files)
    assert status == 0 and stderr == [], stderr
    totals = [line for line in stdout.splitlines() if line.startswith("Total")]
    assert totals[1].split()[1:3] == ["pruned", "weights*"] and totals[1].endswith("80.0%")
    assert re.search(r"^Parameters: 4,650 total, \d[\d,]* non-zero$", stdout, re.M)
    assert "FLOPs per example:" in stdout


def test_prune_then_export_int8_then_inspect_the_file(files, tmp_path, capfd):
    status, stdout, stderr = _run(
        "prune",
        files / "tiny.keras",
        "--sparsity",
        "0.8",
        "--scope",
        "global",
        "-o",
        "pruned.keras",
        cwd=tmp_path,
    )
    assert status == 0 and stderr == [], stderr
    assert "Wrote pruned.keras" in stdout and "80.0%" in stdout
    pruned = keras.saving.load_model(tmp_path / "pruned.keras")  # plain Keras layers
    assert not collect_wrappers(pruned)
    assert analysis.sparsity_report(pruned).prunable_totals.sparsity == pytest.approx(0.8, abs=0.001)

    status, stdout, stderr = _run(
        "export",
        "pruned.keras",
        "-o",
        "pruned.tflite",
        "--quantize",
        "int8",
        "--calibration",
        files / "calibration.npy",
        cwd=tmp_path,
    )
    assert status == 0 and all(line.startswith("tfsparse: warning: ") for line in stderr), stderr
    assert "Wrote pruned.tflite" in stdout and "TFLite (int8)" in stdout and "within tolerance" in stdout
    assert (tmp_path / "pruned.tflite").stat().st_size > 0
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary files left

    status, stdout, stderr = _main(capfd, "inspect", tmp_path / "pruned.tflite")
    assert status == 0
    assert "Encoding" in stdout and "int8" in stdout and "FULLY_CONNECTED" in stdout


BAD_INPUTS = {
    "missing file": (
        ("inspect", "missing.keras"),
        1,
        "tfsparse inspect: error: missing.keras: no such file.",
    ),
    "corrupt file": (
        ("prune", "corrupt.keras", "--sparsity", "0.5", "-o", "out.keras"),
        1,
        "tfsparse prune: error: corrupt.keras is not a valid .keras file",
    ),
    "Lambda layer": (
        ("export", "lambda.keras", "-o", "out.tflite"),
        1,
        "tfsparse export: error: lambda.keras contains a Lambda layer",
    ),
    "sparsity out of range": (
        ("prune", "tiny.keras", "--sparsity", "1.0", "-o", "out.keras"),
        2,
        "tfsparse prune: error: argument --sparsity: must be in [0, 1). Received: 1.0",
    ),
    "bad m-by-n": (
        ("prune", "tiny.keras", "--m-by-n", "4:2", "-o", "out.keras"),
        2,
        "tfsparse prune: error: argument --m-by-n: must be M:N with integers 0 < M < N",
    ),
    "existing output": (
        ("prune", "tiny.keras", "--sparsity", "0.5", "-o", "lambda.keras"),
        1,
        "tfsparse prune: error: lambda.keras exists; pass --force to replace it.",
    ),
}


@pytest.fixture(scope="module")
def bad_input_runs(files):
    """Every BAD_INPUTS command run once, two at a time (each process spends seconds importing
    TensorFlow), with the folder's files before and after."""
    before = {path.name: path.read_bytes() for path in files.iterdir()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(BAD_INPUTS, pool.map(lambda case: _run(*BAD_INPUTS[case][0], cwd=files), BAD_INPUTS)))
    after = {path.name: path.read_bytes() for path in files.iterdir()}
    return runs, before, after


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_a_non_zero_exit(bad_input_runs, case):
    runs, before, after = bad_input_runs
    _, expected_status, message = BAD_INPUTS[case]
    status, stdout, stderr = runs[case]
    assert status == expected_status
    assert len(stderr) == 1 and stderr[0].startswith(message), stderr
    assert stdout == ""
    assert after == before  # nothing written, nothing replaced


IN_PROCESS_ERRORS = {
    "corrupt tflite": (("inspect", "corrupt.tflite"), 1, "is not a TFLite flatbuffer"),
    "int8 without calibration": (
        ("export", "tiny.keras", "-o", "x.tflite", "--quantize", "int8"),
        2,
        "--calibration",
    ),
    "calibration of the wrong shape": (
        ("export", "tiny.keras", "-o", "x.tflite", "--quantize", "int8", "--calibration", "wrong_shape.npy"),
        1,
        "wrong_shape.npy holds an array of shape (32, 5); the model takes inputs of shape (samples, 8, 8, 1)",
    ),
    "no sparsity": (("prune", "tiny.keras", "-o", "x.keras"), 2, "give --sparsity"),
    "m-by-n against sparsity": (
        ("prune", "tiny.keras", "--sparsity", "0.8", "--m-by-n", "2:4", "-o", "x.keras"),
        2,
        "does not match --m-by-n 2:4",
    ),
    "m-by-n with global scope": (
        ("prune", "tiny.keras", "--m-by-n", "2:4", "--scope", "global", "-o", "x.keras"),
        2,
        "cannot be combined",
    ),
    "output of the wrong kind": (
        ("prune", "tiny.keras", "--sparsity", "0.5", "-o", "x.h5"),
        1,
        "must end in .keras",
    ),
    "demo over its own files": (("demo", "--output-dir", "."), 1, "digits_dense.keras exists; pass --force"),
    "unknown command": (("compress",), 2, "invalid choice: 'compress'"),
}


@pytest.mark.parametrize("case", IN_PROCESS_ERRORS)
def test_more_bad_input_in_process(files, case, capfd, monkeypatch):
    monkeypatch.chdir(files)
    (files / "digits_dense.keras").write_bytes(b"an earlier demo's file")
    args, expected_status, fragment = IN_PROCESS_ERRORS[case]
    status, stdout, stderr = _main(capfd, *args)
    assert status == expected_status
    assert len(stderr) == 1 and re.match(r"tfsparse( \w+)?: error: ", stderr[0]), stderr
    assert fragment in stderr[0] and stdout == ""
    assert not (files / "x.tflite").exists() and not (files / "x.keras").exists()


def test_outputs_are_written_atomically(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"the old model")

    def fails_halfway(temporary):
        with open(temporary, "wb") as file:
            file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _files.write_atomically(str(path), fails_halfway)
    assert path.read_bytes() == b"the old model" and os.listdir(tmp_path) == ["model.keras"]
    _files.write_atomically(str(path), lambda temporary: open(temporary, "wb").write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.keras"]
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder that refuses new files: read-only permissions, or /sys when running as root."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        _files.check_writable_folder("/sys/probe.keras")
    except ValueError:
        yield __import__("pathlib").Path("/sys")
    else:
        pytest.skip("no folder that refuses root's writes")


def test_an_unwritable_output_folder_fails_before_loading_naming_the_output(
    files, unwritable_folder, capfd, monkeypatch
):
    monkeypatch.chdir(files)
    loaded = []
    monkeypatch.setattr(_files, "load_model", lambda path: loaded.append(path))
    output = unwritable_folder / "pruned.keras"
    status, stdout, stderr = _main(capfd, "prune", "tiny.keras", "--sparsity", "0.5", "-o", output)
    assert status == 1 and not loaded
    assert stderr == [
        f"tfsparse prune: error: {output}: cannot write in the folder {unwritable_folder} (Permission denied); "
        "choose another output path."
    ]
    with pytest.raises(ValueError, match=f"{unwritable_folder / 'm.tflite'}: cannot write in the folder"):
        tfsparse.export.to_tflite(make_cnn(), str(unwritable_folder / "m.tflite"))


def test_a_failed_write_names_the_output_not_the_hidden_temporary_file(tmp_path):
    def fails(temporary):
        raise PermissionError(13, "Permission denied", temporary)

    with pytest.raises(OSError, match=r"^\S+model.keras could not be written: Permission denied$"):
        _files.write_atomically(str(tmp_path / "model.keras"), fails)
    assert os.listdir(tmp_path) == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next_one(tmp_path):
    # What SIGKILL left: a hidden file beside the output, and an export folder in the temp directory.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stray = tmp_path / f".model.keras.{dead_pid}.abc123.tmp.keras"
    stray.write_bytes(b"half a model")
    live = tmp_path / f".model.keras.{os.getppid()}.def456.tmp.keras"  # a run still writing
    live.write_bytes(b"in progress")
    stray_folder = tmp_path / f"tfsparse-export-{dead_pid}.xyz"
    stray_folder.mkdir()
    (stray_folder / "saved_model.pb").write_bytes(b"...")
    _files.write_atomically(
        str(tmp_path / "model.keras"), lambda temporary: open(temporary, "wb").write(b"new")
    )
    assert not stray.exists() and live.exists()
    assert _files.remove_stale_temporaries(str(tmp_path), "tfsparse-export-") == [str(stray_folder)]
    assert sorted(os.listdir(tmp_path)) == [live.name, "model.keras"]


def test_prune_of_a_model_with_nan_weights_names_the_layer_and_weight(tmp_path, capfd):
    model = make_cnn()
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    kernel[:2, 0] = np.nan
    dense.set_weights([kernel, bias])
    model.save(tmp_path / "diverged.keras")
    status, stdout, stderr = _main(
        capfd, "prune", tmp_path / "diverged.keras", "--sparsity", "0.5", "-o", tmp_path / "out.keras"
    )
    assert status == 1 and len(stderr) == 1, stderr
    assert f"Layer 'prune_low_magnitude_{dense.name}' weight 'kernel' has 2 NaN values" in stderr[0]
    assert "unexpected" not in stderr[0] and not (tmp_path / "out.keras").exists()


def test_ctrl_c_while_the_command_is_still_importing_is_one_line(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "tfsparse_launcher", "inspect", "missing.keras"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    # Python is up well within a second; importing TensorFlow takes seconds more.
    __import__("time").sleep(1.0)
    process.send_signal(__import__("signal").SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["tfsparse: interrupted"]


# -- arbitrary argument strings (Hypothesis) -------------------------------------------------------

CLI_PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_SPARSITY_TEXT = st.one_of(
    st.text(max_size=10),
    st.floats().map(repr),
    st.sampled_from(["0.5", "0", "0.99999999", "1", "-0", "nan", "inf", "1e-400", " 0.3 ", "0x1"]),
)
_M_BY_N_TEXT = st.one_of(
    st.text(max_size=8),
    st.tuples(st.integers(-2, 9), st.integers(-2, 9)).map(lambda pair: f"{pair[0]}:{pair[1]}"),
    st.sampled_from(["2:4", "1:99999999999999999999", "2:4:8", ":", "2:"]),
)


def _one_line_usage_error_or_success(status, stdout, stderr, command):
    if status == 0:
        assert stdout and not any("error" in line for line in stderr), stderr
        return True
    assert status == 2, (status, stderr)
    assert len(stderr) == 1 and stderr[0].startswith(f"tfsparse {command}: error: "), stderr
    return False


@CLI_PROPERTY_SETTINGS
@given(st.one_of(st.none(), _SPARSITY_TEXT), st.one_of(st.none(), _M_BY_N_TEXT))
def test_any_sparsity_and_m_by_n_text_is_a_one_line_usage_error_or_a_valid_run(
    files, capfd, sparsity, m_by_n
):
    capfd.readouterr()
    output = files / "property.keras"
    args = ["prune", files / "tiny.keras", "-o", output, "--force"]
    args += [] if sparsity is None else [f"--sparsity={sparsity}"]
    args += [] if m_by_n is None else [f"--m-by-n={m_by_n}"]
    status, stdout, stderr = _main(capfd, *args)
    if _one_line_usage_error_or_success(status, stdout, stderr, "prune"):
        kernels = [
            keras.ops.convert_to_numpy(w)
            for w in keras.saving.load_model(output).weights
            if len(w.shape) >= 2
        ]
        if m_by_n is None:  # every kernel at exactly the sparsity asked for
            assert [int((k == 0).sum()) for k in kernels] == [
                round(float(sparsity) * k.size) for k in kernels
            ]
        else:
            m = int(m_by_n.split(":")[0])
            assert all((k == 0).any() for k in kernels if k.shape[-2] > m)
        output.unlink()
    else:
        assert not output.exists()


@CLI_PROPERTY_SETTINGS
@given(
    st.one_of(
        st.text(max_size=10),
        st.sampled_from(["dynamic", "float16", "int8", "INT8", "Dynamic", "", " float16"]),
    )
)
def test_any_quantize_text_is_a_one_line_usage_error_or_a_valid_export(files, capfd, quantize):
    capfd.readouterr()
    output = files / "property.tflite"
    status, stdout, stderr = _main(
        capfd, "export", files / "tiny.keras", "-o", output, "--force", f"--quantize={quantize}"
    )
    if _one_line_usage_error_or_success(status, stdout, stderr, "export"):
        assert quantize in ("dynamic", "float16") and output.stat().st_size > 0
        output.unlink()
    else:
        assert not output.exists()


def test_structured_prune_writes_a_model_with_fewer_channels_that_loads_without_tfsparse(files, tmp_path):
    status, stdout, stderr = _run(
        "prune", files / "tiny.keras", "--structured", "--ratio", "0.5", "--round-to", "2", "-o", "small.keras",
        cwd=tmp_path,
    )  # fmt: skip
    assert status == 0 and stderr == [], stderr
    assert "Wrote small.keras: parameters 4,650 -> " in stdout and "FLOPs per example" in stdout
    small = keras.saving.load_model(tmp_path / "small.keras")
    conv = next(layer for layer in small.layers if type(layer) is keras.layers.Conv2D)
    dense = next(layer for layer in small.layers if isinstance(layer, keras.layers.Dense))
    assert conv.filters == 4 and dense.units == 16
    assert small.output_shape == (None, 10) and small.count_params() < 4650 / 2


def test_inspect_groups_prints_the_coupled_channels(files, capfd):
    status, stdout, stderr = _main(capfd, "inspect", files / "tiny.keras", "--groups")
    assert status == 0, stderr
    assert stdout.startswith("DependencyGraph of 'tiny_cnn'")
    assert re.search(r"group +\d+: +8 channels, prunable .*conv2d\w*\(out\).*batch_normalization", stdout)
    status, stdout, _ = _main(capfd, "inspect", files / "tiny.keras", "--groups", "--json")
    groups = json.loads(stdout)["groups"]
    assert status == 0 and [(g["channels"], g["prunable"]) for g in groups][:2] == [(1, False), (8, True)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", "tiny.keras", "--structured", "--sparsity", "0.5", "-o", "x.keras"], "--sparsity is for"),
        (["prune", "tiny.keras", "--structured", "-o", "x.keras"], "--structured needs --ratio"),
        (["prune", "tiny.keras", "--ratio", "0.5", "-o", "x.keras"], "add --structured"),
        (["prune", "tiny.keras", "--structured", "--ratio", "1.5", "-o", "x.keras"], "must be in"),
        (["inspect", "corrupt.tflite", "--groups"], "--groups reads"),
    ],
)
def test_structured_options_in_the_wrong_place_are_refused(files, capfd, monkeypatch, args, message):
    monkeypatch.chdir(files)
    status, _, stderr = _main(capfd, *args)
    assert status == 2 and message in stderr[-1], stderr
