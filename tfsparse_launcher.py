"""Entry point of the `tfsparse` command.

Importing tfsparse imports Keras and TensorFlow, whose native start-up log lines would land on the
terminal before any command can quiet them; this module, outside the package, imports it with file
descriptor 2 sent to /dev/null (unless `--verbose` is given), then runs `tfsparse.cli.main`.
"""

import os
import sys


def main() -> int:
    try:
        return _import_and_run()
    except KeyboardInterrupt:
        # Ctrl-C while Keras and TensorFlow are still importing: one line, as for any other error.
        print("tfsparse: interrupted", file=sys.stderr)
        return 130


def _import_and_run() -> int:
    if "--verbose" in sys.argv[1:]:
        from tfsparse import cli
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            from tfsparse import cli
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
