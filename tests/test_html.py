"""The interactive HTML report: its embedded data, its file handling, and the page rendered in Chromium."""

import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile

import keras
import numpy as np
import pytest
from conftest import make_cnn

import tfsparse
from tfsparse import analysis, cli
from tfsparse.analysis.html import QUANTILES
from tfsparse.mask_updates import collect_wrappers, prune_to
from tfsparse.masking import global_masks

NOW = 0.6  # sparsity the pruned model's layers are at


class StandInScan:
    """What a sensitivity scan hands the report: `results` and `metric`."""

    metric = "accuracy"
    results = {
        "conv2d": {0.0: 0.95, 0.5: 0.90, 0.7: 0.70, 0.9: 0.40},  # sensitive
        "dense": {0.0: 0.95, 0.5: 0.95, 0.7: 0.94, 0.9: 0.93},  # barely
    }


class StandInGraph:
    """What a channel dependency graph hands the report: `to_dict()` with groups."""

    def to_dict(self):
        return {
            "groups": [
                {
                    "index": 0,
                    "channels": 8,
                    "prunable": True,
                    "members": [
                        {"layer": "conv2d", "kind": "out"},
                        {"layer": "batch_normalization", "kind": "channels"},
                        {"layer": "depthwise_conv2d", "kind": "depthwise"},
                    ],
                },
                {
                    "index": 1,
                    "channels": 32,
                    "prunable": True,
                    "members": [{"layer": "dense", "kind": "out"}],
                },
            ]
        }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    keras.backend.clear_session()  # layer names 'conv2d', 'dense', ... whatever ran before
    keras.utils.set_random_seed(0)
    pruned = tfsparse.prune_low_magnitude(make_cnn(), pruning_schedule=tfsparse.ConstantSparsity(NOW, 0))
    prune_to(collect_wrappers(pruned), lambda wrapper: NOW)
    pruned.save(folder / "pruned.keras")
    make_cnn().save(folder / "plain.keras")
    tfsparse.export.to_tflite(pruned, folder / "pruned.tflite")
    return folder, pruned


def _data(path) -> dict:
    text = open(path, encoding="utf-8").read()
    match = re.search(r'<script type="application/json" id="tfsparse-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def test_report_embeds_every_layer_with_the_analysis_counts(models, tmp_path):
    _, pruned = models
    path = analysis.html_report(pruned, tmp_path / "report.html")
    data = _data(path)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert list(layers) == [
        "conv2d",
        "batch_normalization",
        "depthwise_conv2d",
        "max_pooling2d",
        "dense",
        "dense_1",
    ]
    parameters = analysis.count_parameters(pruned)
    assert sum(layer["params"] for layer in layers.values()) == parameters.total == 4650
    assert sum(layer["nonzero"] for layer in layers.values()) == parameters.nonzero
    assert sum(layer["flops"] for layer in layers.values()) == analysis.count_flops(pruned)
    assert sum(layer["flops_sparse"] for layer in layers.values()) == analysis.count_flops(
        pruned, sparse=True
    )
    # Dense(32) on 128 inputs: 4,096 multiply-adds scale with the kept weights, 32 bias adds do not.
    assert layers["dense"]["flops"] == 2 * 128 * 32 + 32 and layers["dense"]["flops_fixed"] == 32
    assert layers["dense"]["prunable"] == 4096 and layers["dense"]["prunable_nonzero"] == round(
        4096 * (1 - NOW)
    )
    kernel = tfsparse.strip_pruning(pruned).get_layer("dense").kernel.numpy()
    quantiles = layers["dense"]["quantiles"]
    assert len(quantiles) == QUANTILES + 1 and quantiles[0] == 0.0
    assert quantiles[-1] == pytest.approx(np.abs(kernel).max(), rel=1e-4)
    assert quantiles[50] == pytest.approx(np.median(np.abs(kernel)), rel=1e-4)
    assert (
        layers["batch_normalization"]["prunable"] == 0 and layers["batch_normalization"]["quantiles"] is None
    )
    # Self-contained: nothing loaded from anywhere, and the page forbids it.
    text = open(path, encoding="utf-8").read()
    assert not re.search(r"\s(src|href)=", text) and "@import" not in text
    assert "default-src 'none'" in text


def test_report_reads_keras_and_tflite_files(models, tmp_path):
    folder, _ = models
    plain = _data(analysis.html_report(folder / "plain.keras", tmp_path / "plain.html"))
    prunable = [layer for layer in plain["layers"] if layer["prunable"]]
    assert len(prunable) == 4 and all(layer["prunable_nonzero"] == layer["prunable"] for layer in prunable)
    assert plain["source"] == "plain.keras" and plain["rules"] == ["uniform", "global"]
    lite = _data(analysis.html_report(folder / "pruned.tflite", tmp_path / "lite.html"))
    report = analysis.tflite_sparsity_report(str(folder / "pruned.tflite"))
    assert [layer["name"] for layer in lite["layers"]] == [row.layer for row in report.rows]
    assert sum(layer["nonzero"] for layer in lite["layers"]) == report.totals.nonzeros
    assert lite["rules"] == ["uniform"] and not lite["flops_available"]
    kernels = [layer for layer in lite["layers"] if layer["prunable"]]
    assert len(kernels) == 4  # conv, depthwise and two dense kernels; biases are rank 1


def test_report_is_written_atomically_and_never_over_a_file_without_overwrite(models, tmp_path):
    _, pruned = models
    path = tmp_path / "report.html"
    path.write_text("an earlier report")
    with pytest.raises(ValueError, match="exists; pass `overwrite=True`"):
        analysis.html_report(pruned, path)
    assert path.read_text() == "an earlier report"
    analysis.html_report(pruned, path, overwrite=True)
    assert "tfsparse-data" in path.read_text() and os.listdir(tmp_path) == ["report.html"]


BAD_ARGUMENTS = {
    "scan of a layer the model lacks": (
        {"scan": {"conv9": {0.0: 1.0}}},
        "results for layer 'conv9', which the model does not have",
    ),
    "scan sparsity out of range": (
        {"scan": {"dense": {1.5: 1.0}}},
        "layer 'dense' needs sparsities in \\[0, 1\\]",
    ),
    "scan without results": ({"scan": object()}, "Argument `scan` must be a sensitivity scan"),
    "graph group without members": (
        {"graph": {"groups": [{"index": 0, "channels": 4, "prunable": True}]}},
        'each group needs "index", "channels", "prunable" and "members"',
    ),
    "graph naming an unknown layer": (
        {
            "graph": {
                "groups": [
                    {"index": 3, "channels": 4, "prunable": True, "members": [{"layer": "x", "kind": "out"}]}
                ]
            }
        },
        "group 3 names layers the model does not have: \\['x'\\]",
    ),
    "wrong output suffix": ({"path": "report.txt"}, "must end in .html"),
    "not a model": ({"model_or_path": 42}, "must be a Keras model or the path"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_raise_a_value_error_naming_them(models, tmp_path, case):
    _, pruned = models
    arguments = {"model_or_path": pruned, "path": tmp_path / "report.html"}
    overrides, message = BAD_ARGUMENTS[case]
    arguments.update(overrides)
    if "path" in overrides:
        arguments["path"] = tmp_path / overrides["path"]
    with pytest.raises(ValueError, match=message):
        analysis.html_report(**arguments)
    assert os.listdir(tmp_path) == []


def test_scan_and_graph_are_embedded_and_tflite_refuses_them(models, tmp_path):
    folder, pruned = models
    data = _data(analysis.html_report(pruned, tmp_path / "r.html", scan=StandInScan(), graph=StandInGraph()))
    assert data["scan"]["metric"] == "accuracy" and data["scan"]["higher_is_better"]
    assert data["scan"]["curves"]["conv2d"][-1] == [0.9, 0.4]
    assert [group["index"] for group in data["groups"]] == [0, 1]
    losses = {"dense": {"0.0": 0.1, "0.9": 0.4}}  # a plain dict of results, keys as JSON gives them
    assert not _data(analysis.html_report(pruned, tmp_path / "l.html", scan=_Named(losses, "val_loss")))[
        "scan"
    ]["higher_is_better"]
    with pytest.raises(ValueError, match="a TFLite file keeps no layer names"):
        analysis.html_report(folder / "pruned.tflite", tmp_path / "t.html", scan=StandInScan())


class _Named:
    def __init__(self, results, metric):
        self.results, self.metric = results, metric


def test_report_command_writes_the_page_and_refuses_to_overwrite(models, tmp_path, capfd, monkeypatch):
    folder, _ = models
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", str(folder / "pruned.keras"), "-o", "r.html"]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("Wrote r.html") and err == ""
    assert _data(tmp_path / "r.html")["source"] == "pruned.keras"
    assert cli.main(["report", str(folder / "pruned.tflite"), "-o", "r.html"]) == 1
    out, err = capfd.readouterr()
    assert err.strip() == "tfsparse report: error: r.html exists; pass --force to replace it." and out == ""
    assert cli.main(["report", str(folder / "pruned.tflite"), "-o", "r.html", "--force"]) == 0
    assert _data(tmp_path / "r.html")["kind"] == "tflite"


# -- in a real browser -------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine: install the Debian package `chromium` (.ci/run does)")


def _browse(page, fragment: str, *flags: str) -> str:
    """Runs headless Chromium on `page#fragment` without network; returns its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",  # the suite runs as root in CI, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                *flags,
                f"{page.as_uri()}#{fragment}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Table(html.parser.HTMLParser):
    """Rows of the page's layer table ({layer: {column: value}}), in order, plus its other parts."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict[str, float]] = {}
        self.cards: dict[str, str] = {}
        self.curves, self.dots, self.groups, self.ready = [], {}, [], False
        self._row = self._card = None
        self._in_table = self._value = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body" and attrs.get("data-ready") == "1":
            self.ready = True
        if tag == "table":
            self._in_table = attrs.get("id") == "layers"
        if self._in_table and tag == "tr" and "data-layer" in attrs:
            self._row = self.rows.setdefault(attrs["data-layer"], {})
        if self._row is not None and tag == "td" and "data-value" in attrs:
            self._row[attrs["data-key"]] = float(attrs["data-value"])
        if tag == "div" and attrs.get("class") == "card":
            self._card = attrs.get("id")
        if tag == "b" and attrs.get("data-role") == "value":
            self._value = True
        if tag == "polyline":
            self.curves.append(attrs["data-layer"])
        if tag == "circle":
            self.dots[attrs["data-layer"]] = float(attrs["cx"])
        if tag == "tr" and "data-group" in attrs:
            self.groups.append(int(attrs["data-group"]))

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
            self._row = None

    def handle_data(self, data):
        if self._value and self._card:
            self.cards[self._card] = data
            self._value = False


def _render(page, fragment) -> _Table:
    table = _Table()
    table.feed(_browse(page, fragment, "--dump-dom"))
    assert table.ready, "the page's script did not finish"
    return table


def _global_reference(pruned, target) -> dict[str, float]:
    """Per-layer sparsity of one exact magnitude threshold across the prunable weights."""
    final = tfsparse.strip_pruning(pruned)
    names = ["conv2d", "depthwise_conv2d", "dense", "dense_1"]
    kernels = [np.abs(tfsparse.registry.prunable_weights(final.get_layer(n))[0].numpy()) for n in names]
    masks = global_masks(kernels, target)
    return {name: 1.0 - mask.mean() for name, mask in zip(names, masks)}


def test_browser_table_holds_every_layer_and_the_slider_moves_the_numbers(models, tmp_path):
    _, pruned = models
    page = tmp_path / "report.html"
    analysis.html_report(pruned, page)
    expected = [layer["name"] for layer in _data(page)["layers"]]
    low, high = _render(page, "target=0.7&rule=global"), _render(page, "target=0.9&rule=global")
    for rendered, target in ((low, 0.7), (high, 0.9)):
        assert sorted(rendered.rows) == sorted(expected)
        assert rendered.cards["target-reached"] == f"{target:.1%}"
        for name, sparsity in _global_reference(pruned, target).items():
            assert rendered.rows[name]["target_sparsity"] == pytest.approx(sparsity, abs=0.03), name
        assert rendered.rows["batch_normalization"]["target_nonzero"] == 16  # not pruned: as it is
    total = sum(row["target_nonzero"] for row in high.rows.values())
    assert total < sum(row["target_nonzero"] for row in low.rows.values())
    assert high.cards["target-params"] == f"{round(total):,}"
    assert sum(r["target_flops"] for r in high.rows.values()) < sum(
        r["target_flops"] for r in low.rows.values()
    )
    # The same numbers for every target before the slider moves: the model as it is.
    assert all(low.rows[n]["sparsity"] == high.rows[n]["sparsity"] for n in expected)

    uniform = _render(page, "target=0.8&rule=uniform&sort=params&order=desc")
    assert list(uniform.rows)[:2] == ["dense", "dense_1"]  # sorted by parameters, largest first
    for name in ("conv2d", "depthwise_conv2d", "dense", "dense_1"):
        assert uniform.rows[name]["target_sparsity"] == pytest.approx(0.8)


def test_browser_shows_sensitivity_curves_groups_and_a_screenshot(models, tmp_path):
    _, pruned = models
    page = tmp_path / "report.html"
    analysis.html_report(pruned, page, scan=StandInScan(), graph=StandInGraph())
    rendered = _render(page, "target=0.7&rule=scan")
    assert rendered.curves == ["conv2d", "dense"] and set(rendered.dots) == {"conv2d", "dense"}
    assert rendered.groups == [0, 1]
    sparsity = {name: row["target_sparsity"] for name, row in rendered.rows.items()}
    # The insensitive layer takes the cut; the sensitive one and unscanned ones stay where they are.
    assert sparsity["dense"] == pytest.approx((0.7 * 4560 - 464 * NOW) / 4096, abs=0.002)
    assert sparsity["conv2d"] == pytest.approx(round(72 * NOW) / 72)
    assert sparsity["dense_1"] == pytest.approx(NOW, abs=0.002)
    assert rendered.cards["target-reached"] == "70.0%"

    shot = tmp_path / "report.png"
    _browse(
        page, "target=0.7&rule=scan", f"--screenshot={shot}", "--window-size=1400,1500", "--hide-scrollbars"
    )
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == 1400 and shot.stat().st_size > 20_000
    # Kept where a person can look at it: the suite's temporary folder, or TFSPARSE_SCREENSHOT_DIR.
    if os.environ.get("TFSPARSE_SCREENSHOT_DIR"):
        shutil.copy(shot, os.path.join(os.environ["TFSPARSE_SCREENSHOT_DIR"], "report.png"))


def test_browser_renders_a_tflite_report(models, tmp_path):
    folder, _ = models
    page = tmp_path / "lite.html"
    analysis.html_report(folder / "pruned.tflite", page)
    layers = _data(page)["layers"]
    low, high = _render(page, "target=0.7"), _render(page, "target=0.95")
    assert sorted(low.rows) == sorted(layer["name"] for layer in layers)
    for layer in layers:  # kernels at the target; biases as they are (one is all zeros)
        now = 1 - layer["nonzero"] / layer["params"]
        expected = 0.95 if layer["prunable"] else now
        assert high.rows[layer["name"]]["target_sparsity"] == pytest.approx(expected), layer["name"]
    assert sum(r["target_nonzero"] for r in high.rows.values()) < sum(
        r["target_nonzero"] for r in low.rows.values()
    )
