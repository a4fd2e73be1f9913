"""The `tfsparse` command: `demo`, `inspect`, `prune` and `export` from the shell.

Every failure ends the command with one line on stderr (`tfsparse <command>: error: ...`) and a
non-zero exit status (2 for a bad command line, 1 otherwise), never a traceback. TensorFlow's and
LiteRT's native logs are silenced while a command runs; `--verbose` keeps them and adds tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

import numpy as np

PROG = "tfsparse"


class CommandError(Exception):
    """A bad command line or input, reported as one line with exit status `status`."""

    def __init__(self, message: str, prog: str = PROG, status: int = 1):
        super().__init__(message)
        self.prog = prog
        self.status = status


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits; the command reports one line instead.
    def error(self, message):
        raise CommandError(f"{message} (see `{self.prog} --help`)", prog=self.prog, status=2)


# -- argument types --------------------------------------------------------------------------------


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1). Received: {text!r}") from None
    # float32 is what pruning computes in: a value just below 1 would round up to 1 (every weight).
    if not 0.0 <= value < 1.0 or np.float32(value) >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1). Received: {text}")
    return value


def _m_by_n(text: str) -> tuple[int, int]:
    try:
        m, n = (int(part) for part in text.split(":"))
    except ValueError:
        m = n = 0
    if not 0 < m < n:
        raise argparse.ArgumentTypeError(
            f"must be M:N with integers 0 < M < N, e.g. 2:4 (keep 2 of every 4 weights). Received: {text!r}"
        )
    return m, n


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


# -- commands --------------------------------------------------------------------------------------


def _run_demo(args) -> None:
    from tfsparse import demo

    result = demo.run_demo(
        epochs=args.epochs,
        sparsity=args.sparsity,
        output_dir=args.output_dir,
        force=args.force,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print()
    print(
        f"Digits CNN pruned to {result.target_sparsity:.0%} during fit (its prunable weights reached "
        f"{result.reached_sparsity:.1%}); accuracy on {result.test_samples} held-out digits, latency "
        "per image in LiteRT (median):"
    )
    print(result.table())
    if result.output_dir is not None:
        print(f"Files in {result.output_dir}: " + ", ".join(demo.FILES.values()))


def _model_summary(model) -> list[str]:
    from tfsparse import analysis

    parameters = analysis.count_parameters(model)
    lines = [f"Parameters: {parameters.total:,} total, {parameters.nonzero:,} non-zero"]
    try:
        dense, sparse = analysis.count_flops(model), analysis.count_flops(model, sparse=True)
    except ValueError as error:
        lines.append(f"FLOPs: not counted ({_one_line(error)})")
    else:
        lines.append(
            f"FLOPs per example: {dense:,} dense, {sparse:,} counting only non-zero weights "
            "(a multiply-add is 2 FLOPs)"
        )
    return lines


def _run_inspect(args) -> None:
    from tfsparse import _files, analysis

    if args.model.lower().endswith(".tflite"):
        if args.groups:
            raise CommandError(
                "--groups reads the channel groups of a Keras model (.keras or .h5); a .tflite file has none.",
                prog=f"{PROG} inspect",
                status=2,
            )
        _files.check_input_file(args.model, (".tflite",))
        report = analysis.tflite_sparsity_report(args.model)
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            print(report)
            print("Weights of a TFLite file are its constant float tensors and quantized integer tensors.")
        return
    _files.check_input_file(args.model, (*_files.MODEL_SUFFIXES, ".tflite"))
    model = _files.load_model(args.model)
    if args.groups:
        _print_groups(model, args.json)
        return
    report = analysis.sparsity_report(model)
    if args.json:
        data = report.as_dict()
        data["parameters"] = analysis.count_parameters(model)._asdict()
        with contextlib.suppress(ValueError):
            data["flops"] = {
                "dense": analysis.count_flops(model),
                "sparse": analysis.count_flops(model, sparse=True),
            }
        print(json.dumps(data, indent=2))
        return
    print(report)
    print("* pruned by tfsparse (kernels); biases and normalization weights are not pruned.")
    for line in _model_summary(model):
        print(line)


def _print_groups(model, as_json: bool) -> None:
    from tfsparse.mask_updates import collect_wrappers
    from tfsparse.prune import strip_pruning
    from tfsparse.structured import DependencyGraph

    graph = DependencyGraph(strip_pruning(model) if collect_wrappers(model) else model)
    if as_json:
        print(json.dumps(graph.to_dict(), indent=2))
        return
    print(graph)
    print("Channels of one group are removed together, from every layer listed; fixed groups touch a")
    print("model input or output and keep all their channels.")


def _load_model_to_prune(args):
    """The model `tfsparse prune` starts from, once the output path is known to be writable."""
    from tfsparse import _files
    from tfsparse.mask_updates import collect_wrappers
    from tfsparse.prune import strip_pruning

    _files.check_output_file(args.output, args.force, (".keras",))
    model = _files.load_model(args.model)
    if collect_wrappers(model):  # a checkpoint saved during pruning: start from its masked weights
        model = strip_pruning(model)
    return model


def _run_structured_prune(args) -> None:
    from tfsparse import _files, analysis, structured

    for flag, value in (("--sparsity", args.sparsity), ("--m-by-n", args.m_by_n)):
        if value is not None:
            raise CommandError(
                f"{flag} is for unstructured pruning (zeroing weights); with --structured give --ratio, "
                "the share of channels to remove.",
                prog=f"{PROG} prune",
                status=2,
            )
    if args.ratio is None:
        raise CommandError(
            "--structured needs --ratio R (in [0, 1)): the share of each group's channels to remove",
            prog=f"{PROG} prune",
            status=2,
        )
    model = _load_model_to_prune(args)
    plan = structured.plan(
        model,
        ratio=args.ratio,
        importance=args.importance or "l2",
        scope=args.scope,
        round_to=args.round_to or 1,
    )
    small = structured.apply(model, plan)
    _files.write_atomically(args.output, small.save)
    before, after = analysis.count_parameters(model).total, analysis.count_parameters(small).total
    print(plan)
    line = f"Wrote {args.output}: parameters {before:,} -> {after:,} ({after / max(before, 1):.1%})"
    with contextlib.suppress(ValueError):
        flops, small_flops = analysis.count_flops(model), analysis.count_flops(small)
        line += f", FLOPs per example {flops:,} -> {small_flops:,} ({small_flops / max(flops, 1):.1%})"
    print(line + ".")


def _run_prune(args) -> None:
    from tfsparse import _files, analysis
    from tfsparse.mask_updates import collect_wrappers, prune_to
    from tfsparse.prune import prune_low_magnitude, strip_pruning
    from tfsparse.schedules import ConstantSparsity

    if args.structured:
        return _run_structured_prune(args)
    for flag, value in (
        ("--ratio", args.ratio),
        ("--importance", args.importance),
        ("--round-to", args.round_to),
    ):
        if value is not None:
            raise CommandError(
                f"{flag} applies to structured pruning; add --structured (or give --sparsity for zeroing weights).",
                prog=f"{PROG} prune",
                status=2,
            )
    sparsity = args.sparsity
    if args.m_by_n is not None:
        m, n = args.m_by_n
        if args.scope == "global":
            raise CommandError(
                "--m-by-n and --scope global cannot be combined: an M:N pattern is chosen within each "
                "group of N weights, not by a threshold across layers.",
                prog=f"{PROG} prune",
                status=2,
            )
        if sparsity is not None and abs(sparsity - (1 - m / n)) > 1e-9:
            raise CommandError(
                f"--sparsity {sparsity:g} does not match --m-by-n {m}:{n}, which keeps {m} of every {n} "
                f"weights (sparsity {1 - m / n:g}); leave out --sparsity.",
                prog=f"{PROG} prune",
                status=2,
            )
        sparsity = 1 - m / n
    elif sparsity is None:
        raise CommandError(
            "give --sparsity S (in [0, 1)) or --m-by-n M:N (see `tfsparse prune --help`)",
            prog=f"{PROG} prune",
            status=2,
        )
    model = _load_model_to_prune(args)
    pruned = prune_low_magnitude(
        model,
        # With M:N the pattern fixes the sparsity; the schedule's value is unused (and 1 - M/N can
        # round to 1.0 for a huge N, which a schedule refuses).
        pruning_schedule=ConstantSparsity(sparsity if args.m_by_n is None else 0.5, 0),
        sparsity_m_by_n=args.m_by_n,
        scope=args.scope,
    )
    wrappers = collect_wrappers(pruned)
    if not wrappers:
        raise ValueError(f"{args.model}: the model has no layers tfsparse prunes (Dense, convolutions, ...).")
    prune_to(wrappers, lambda wrapper: sparsity)
    final = strip_pruning(pruned)
    _files.write_atomically(args.output, final.save)
    report = analysis.sparsity_report(final)
    print(report)
    pattern = f"{args.m_by_n[0]}:{args.m_by_n[1]} pattern" if args.m_by_n else f"{args.scope} scope"
    print(
        f"Wrote {args.output}: {len(wrappers)} layers pruned ({pattern}); pruned weights* at "
        f"{report.prunable_totals.sparsity:.1%} sparsity, all weights at {report.totals.sparsity:.1%}."
    )


def _load_calibration(path: str, model) -> list[np.ndarray]:
    from tfsparse import _files

    _files.check_input_file(path, (".npy", ".npz"))
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = [loaded]
        else:  # .npz: one array per input, in the order they were saved
            with loaded:
                arrays = [loaded[key] for key in loaded.files]
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable numpy file: {_one_line(error)}") from None
    if len(arrays) != len(model.inputs):
        raise ValueError(
            f"{path} holds {len(arrays)} arrays; the model has {len(model.inputs)} inputs "
            "(use a .npz file with one array per input, in input order)."
        )
    for array, tensor in zip(arrays, model.inputs):
        expected = tuple(tensor.shape[1:])
        if array.ndim != len(expected) + 1 or any(
            want is not None and want != got for want, got in zip(expected, array.shape[1:])
        ):
            shape = ", ".join("?" if d is None else str(d) for d in expected)
            raise ValueError(
                f"{path} holds an array of shape {array.shape}; the model takes inputs of shape "
                f"(samples, {shape})."
            )
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{path} holds {array.dtype} data; calibration inputs must be numeric.")
    return arrays


def _sample_inputs(model, count: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"the model's input has unknown dimensions {shape}; pass --calibration with sample inputs."
            )
        arrays.append(rng.standard_normal((count, *shape)).astype(str(tensor.dtype)))
    return arrays


def _run_export(args) -> None:
    from tfsparse import _files, analysis
    from tfsparse.export import to_tflite, verify_tflite

    if args.quantize == "int8" and args.calibration is None:
        raise CommandError(
            "--quantize int8 needs --calibration data.npy: a few hundred typical inputs to calibrate "
            "the activation ranges.",
            prog=f"{PROG} export",
            status=2,
        )
    _files.check_output_file(args.output, args.force, (".tflite",))
    _files.check_input_file(args.model, _files.MODEL_SUFFIXES)
    model = _files.load_model(args.model)
    data = _load_calibration(args.calibration, model) if args.calibration else None
    representative = None if data is None else (data if len(data) > 1 else data[0])
    flatbuffer = to_tflite(
        model,
        args.output,
        sparse=not args.no_sparse,
        quantize=args.quantize,
        representative_data=representative,
        overwrite=args.force,
    )
    samples = [array[:32] for array in data] if data is not None else _sample_inputs(model)
    report = verify_tflite(flatbuffer, model, samples if len(samples) > 1 else samples[0])
    print(analysis.tflite_sparsity_report(args.output))
    print(f"Wrote {args.output}. Checked in LiteRT on {len(samples[0])} samples: {report}")


def _run_report(args) -> None:
    from tfsparse import _files, analysis

    _files.check_output_file(args.output, args.force, (".html", ".htm"))
    analysis.html_report(args.model, args.output, overwrite=args.force)
    print(
        f"Wrote {args.output}: per-layer sparsity, parameters and FLOPs of {args.model}, with a slider "
        "for an overall target sparsity; open it in a browser (it needs no network)."
    )


# -- the parser and main ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `tfsparse` argument parser, with one subcommand per job."""
    from tfsparse import __version__

    parser = _Parser(
        prog=PROG,
        description="Pruning and sparsity for Keras 3 models: inspect, prune and export from the shell.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "--verbose", action="store_true", help="keep TensorFlow's logs and show tracebacks of errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="train, prune, export and measure a small CNN on scikit-learn's digits",
        description="Trains a small CNN on scikit-learn's bundled digits (no download), prunes it "
        "during fit with PolynomialDecay, strips it, exports dense, sparse and int8-sparse TFLite "
        "files, runs each in LiteRT and prints one table.",
    )
    demo.add_argument(
        "--epochs", type=_positive_int, default=8, help="epochs of dense training, then of pruning (8)"
    )
    demo.add_argument("--sparsity", type=_sparsity, default=0.9, help="final sparsity, in [0, 1) (0.9)")
    demo.add_argument("--output-dir", help="keep the model files here (default: a temporary folder, removed)")
    demo.add_argument("--force", action="store_true", help="replace the demo's files in --output-dir")
    demo.add_argument("--batch-size", type=_positive_int, default=32, help="training batch size (32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.set_defaults(handler=_run_demo)

    inspect = commands.add_parser(
        "inspect",
        parents=[common],
        help="per-weight sparsity of a .keras, .h5 or .tflite file",
        description="Prints a row per weight (layer, weight, shape, non-zeros, sparsity) and totals; "
        "for Keras files also parameters and FLOPs. For .tflite files, a row per constant weight "
        "tensor with its encoding (dense or sparse).",
    )
    inspect.add_argument("model", metavar="MODEL", help=".keras, .h5 or .tflite file")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument(
        "--groups",
        action="store_true",
        help="print the groups of coupled channels structured pruning removes",
    )
    inspect.set_defaults(handler=_run_inspect)

    prune = commands.add_parser(
        "prune",
        parents=[common],
        help="one-shot magnitude pruning of a .keras or .h5 model",
        description="Prunes the smallest weights of every prunable layer at once and saves the "
        "stripped model (plain Keras layers) as .keras.",
    )
    prune.add_argument("model", metavar="MODEL", help=".keras or .h5 file")
    prune.add_argument(
        "--sparsity", type=_sparsity, help="fraction of each pruned weight set to zero, in [0, 1)"
    )
    prune.add_argument(
        "--scope",
        choices=("layer", "global"),
        default="layer",
        help="each layer at the sparsity (layer), or one threshold across all layers (global)",
    )
    prune.add_argument("--m-by-n", type=_m_by_n, metavar="M:N", help="keep M of every N weights, e.g. 2:4")
    prune.add_argument("-o", "--output", required=True, help="the pruned model, a .keras file")
    prune.add_argument("--force", action="store_true", help="replace --output if it exists")
    prune.add_argument(
        "--structured",
        action="store_true",
        help="remove whole channels, filters, neurons and heads (a smaller, faster model) instead of zeroing weights",
    )
    prune.add_argument(
        "--ratio", type=_sparsity, help="with --structured: share of each group's channels removed"
    )
    prune.add_argument(
        "--importance",
        choices=("l1", "l2", "bn_scale", "lamp", "random"),
        help="with --structured: how channels are ranked (default l2)",
    )
    prune.add_argument(
        "--round-to",
        type=_positive_int,
        help="with --structured: keep channel counts at multiples of this (1)",
    )
    prune.set_defaults(handler=_run_prune)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="export a .keras or .h5 model to TFLite, checked in LiteRT",
        description="Converts the model to TFLite (sparse encoding for pruned weights unless "
        "--no-sparse), runs the file in LiteRT with its default delegates and compares it with "
        "the Keras model.",
    )
    export.add_argument("model", metavar="MODEL", help=".keras or .h5 file")
    export.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    export.add_argument(
        "--quantize",
        choices=("dynamic", "float16", "int8"),
        help="quantize weights (and activations for int8)",
    )
    export.add_argument(
        "--calibration",
        metavar="DATA",
        help="sample inputs (.npy, or .npz with one array per input): calibrate int8 and check the file",
    )
    export.add_argument("--no-sparse", action="store_true", help="store every weight dense")
    export.add_argument("--force", action="store_true", help="replace --output if it exists")
    export.set_defaults(handler=_run_export)

    report = commands.add_parser(
        "report",
        parents=[common],
        help="an interactive HTML report of a .keras, .h5 or .tflite file",
        description="Writes one self-contained HTML page (no network): per-layer sparsity, parameters "
        "and FLOPs as sortable bars, and a slider for an overall target sparsity that shows the "
        "per-layer sparsities (uniform or one global magnitude threshold) and the parameters and "
        "FLOPs they give.",
    )
    report.add_argument("model", metavar="MODEL", help=".keras, .h5 or .tflite file")
    report.add_argument("-o", "--output", required=True, help="the .html file to write")
    report.add_argument("--force", action="store_true", help="replace --output if it exists")
    report.set_defaults(handler=_run_report)
    return parser


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_native_logs(verbose: bool):
    """Sends file descriptor 2 (where TensorFlow and LiteRT log) to /dev/null; Python keeps stderr.

    Also shows only tfsparse's own Python warnings, each on one line.
    """
    if verbose:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    original = sys.stderr
    try:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace")
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"tfsparse(\.|$)")
            warnings.showwarning = _show_warning
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        sys.stderr.close()
        sys.stderr = original
        os.close(saved)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tfsparse` command with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Example:

    ```python
    main(["inspect", "model.keras"])
    ```
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except CommandError as error:
        print(f"{error.prog}: error: {_one_line(error)}", file=sys.stderr)
        return error.status
    prog = f"{PROG} {args.command}"
    with _quiet_native_logs(args.verbose):
        try:
            args.handler(args)
            sys.stdout.flush()
            return 0
        except CommandError as error:
            status, message = error.status, _one_line(error)
        except (ValueError, OSError, RuntimeError) as error:
            if args.verbose:
                traceback.print_exc()
            status, message = 1, _one_line(error)
        except KeyboardInterrupt:
            status, message = 130, "interrupted"
        except Exception as error:  # a bug, not bad input: still one line, the traceback on request
            if args.verbose:
                traceback.print_exc()
            status = 1
            message = f"unexpected {type(error).__name__}: {_one_line(error)} (run with --verbose for the traceback)"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
