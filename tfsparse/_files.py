"""Model files for the command line: loading in Keras' safe mode, and atomic writes.

Every failure is a `ValueError` whose message is one sentence a user can act on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable

import keras

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


class OutputExistsError(FileExistsError, ValueError):
    """The output path exists and `overwrite=True` was not given.

    Both a `FileExistsError` and a `ValueError` (as `io.UnsupportedOperation` is both an `OSError`
    and a `ValueError`), so that callers catching either kind of bad input catch it.
    """


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_input_file(path: str, suffixes: tuple[str, ...]) -> str:
    """`path` if it is an existing file with one of `suffixes`; a `ValueError` otherwise."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a model file.")
    if not path.lower().endswith(suffixes):
        raise ValueError(f"{path}: expected a file ending in {' or '.join(suffixes)}.")
    return path


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` or `.h5` model in Keras' safe mode (no code from the file is run).

    Pruned models load too: tfsparse's layers are registered with Keras. The model is not compiled.

    Example:

    ```python
    model = load_model("model.keras")
    ```
    """
    check_input_file(path, MODEL_SUFFIXES)
    if path.lower().endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a valid .keras file (a .keras file is a zip archive).")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds (ValueError, OSError, KeyError, TypeError)
        message = str(error)
        if "Lambda" in message and "safe_mode" in message:
            raise ValueError(
                f"{path} contains a Lambda layer, which would run Python code stored in the file; "
                "tfsparse loads models in Keras' safe mode and refuses it. Replace the Lambda with "
                "a registered custom layer, or prune the model in Python."
            ) from None
        if "Could not locate" in message or "Unknown layer" in message:
            raise ValueError(
                f"{path} uses a class Keras cannot find ({_one_line(message)[:200]}); "
                "import the module that registers it, or prune the model in Python."
            ) from None
        raise ValueError(f"{path} cannot be loaded as a Keras model: {_one_line(message)[:300]}") from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a Keras model.")
    return model


def check_output_file(path: str, force: bool, suffixes: tuple[str, ...]) -> str:
    """`path` if it can be written: right suffix, existing writable folder, not there yet unless `force`.

    Checked before any slow work (loading, pruning, converting), so that a bad output path fails
    at once.
    """
    if not path.lower().endswith(suffixes):
        raise ValueError(f"{path}: the output must end in {' or '.join(suffixes)}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: the folder {folder} does not exist.")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give a file name.")
    if os.path.lexists(path) and not force:
        raise ValueError(f"{path} exists; pass --force to replace it.")
    check_writable_folder(path)
    return path


def check_output_argument(
    path,
    overwrite: bool,
    suffixes: tuple[str, ...] = (),
    must_be_file: bool = True,
    overwrite_argument: str = "overwrite",
) -> str:
    """`path` as a string if a Python function may write its output there, else a `ValueError`.

    The API's twin of `check_output_file`, worded for arguments: the suffix (when `suffixes` is
    given), an existing writable folder, not a folder itself (unless `must_be_file=False`, for
    outputs that are folders), and not there yet unless `overwrite` (an `OutputExistsError` naming
    `overwrite_argument`).

    Example:

    ```python
    check_output_argument("report.html", overwrite=False, suffixes=(".html", ".htm"))
    ```
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"Argument `path` must be a file path. Received: path={path!r}") from None
    if suffixes and not path.lower().endswith(suffixes):
        raise ValueError(f"Argument `path` must end in {' or '.join(suffixes)}. Received: path={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"Argument `path`: the folder {folder!r} does not exist. Received: path={path!r}")
    if must_be_file and os.path.isdir(path):
        raise ValueError(f"Argument `path` is a folder; give a file name. Received: path={path!r}")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(
            f"Argument `path`: {path!r} exists; pass `{overwrite_argument}=True` to replace it."
        )
    check_writable_folder(path)
    return path


def check_writable_folder(path: str) -> None:
    """Refuses `path` when its folder does not take new files (permissions, read-only disk, quota).

    A probe file is created and removed: `os.access` says yes to root on a read-only mount.

    Example:

    ```python
    check_writable_folder("/usr/pruned.keras")  # ValueError: ... cannot write in the folder /usr ...
    ```
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".tfsparse-probe.")
    except OSError as error:
        raise ValueError(
            f"{path}: cannot write in the folder {folder} ({error.strerror or error}); choose another output path."
        ) from None
    os.close(handle)
    os.remove(probe)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive
    return True


def remove_stale_temporaries(folder: str, prefix: str, suffix: str = "") -> list[str]:
    """Removes temporaries named `<prefix><pid>.<anything><suffix>` whose process has ended.

    Temporary files and folders carry the id of the process that made them; one killed before it
    could clean up (SIGKILL, power loss) leaves them behind, and the next run removes them.
    Those of live processes are left alone.

    Args:
        folder: where to look.
        prefix: the name's start, up to the process id.
        suffix: the name's end.

    Returns:
        The paths removed.

    Example:

    ```python
    remove_stale_temporaries(".", ".pruned.keras.", ".tmp.keras")
    ```
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        full = os.path.join(folder, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(full)
        removed.append(full)
    return removed


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Calls `write(temporary_path)` beside `path`, then renames: `path` is never half written.

    The temporary path keeps `path`'s suffix, since Keras picks the format from it, and carries
    the process id, so that a later run removes what a killed one left behind.

    Example:

    ```python
    write_atomically("pruned.keras", model.save)
    ```
    """
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = os.path.splitext(base)[1]
    remove_stale_temporaries(folder, f".{base}.", f".tmp{suffix}")
    try:
        handle, temporary = tempfile.mkstemp(
            dir=folder, prefix=f".{base}.{os.getpid()}.", suffix=f".tmp{suffix}"
        )
    except OSError as error:
        raise ValueError(
            f"{path}: cannot write in the folder {folder} ({error.strerror or error}); choose another output path."
        ) from None
    os.close(handle)
    try:
        try:
            write(temporary)
        except OSError as error:
            # The error names the hidden temporary file; the user knows the output path.
            raise OSError(f"{path} could not be written: {error.strerror or error}") from error
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
