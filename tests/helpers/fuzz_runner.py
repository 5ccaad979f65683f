"""Run many CLI invocations in one child process, one JSON line each, for the fuzz tests.

    python tests/helpers/fuzz_runner.py CASES.json

Each case is a list of CLI arguments. Before each it prints {"start": i}; after it, the exit code,
stderr, seconds and whether a Python exception escaped. If llama.cpp aborts, the process dies with
a signal and the last "start" line names the case that killed it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from glm4_local.cli import app


def main(cases_file: Path) -> None:
    runner = CliRunner()
    for i, args in enumerate(json.loads(cases_file.read_text())):
        print(json.dumps({"start": i}), flush=True)
        started = time.monotonic()
        result = runner.invoke(app, args, input="")
        escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
        print(json.dumps({"case": i, "code": result.exit_code, "stderr": result.stderr, "escaped": escaped,
                          "error": repr(result.exception) if escaped else None,
                          "seconds": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
