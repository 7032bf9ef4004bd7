"""The simulator's commands never import torch (`engramtier.cli.build_parser`): it is most of a command's
start-up. Which modules a process has loaded is the process's own state, so this runs in a subprocess."""

import json
import subprocess
import sys

from engramtier.cli import build_parser, main

RUN = """
import json, sys
from engramtier.cli import main
trace, out = sys.argv[1], sys.argv[2]
codes = [main(["trace", "--synthetic-zipf", "1.0", "--vocab", "1000", "--tokens", "3000", "--table-size", "1009",
               "--layers", "1", "--heads", "2", "-o", trace, "--quiet"]),
         main(["stats", trace]),
         main(["mrc", trace, "--out", out, "--quiet", "--seeds", "1"])]
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
"""


def test_tracing_and_curves_never_import_torch(tmp_path):
    done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "t.trace"), str(tmp_path / "mrc")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"codes": [0, 0, 0], "torch": False}
    assert (tmp_path / "mrc" / "summary.json").is_file()


def test_a_run_registers_only_up_to_its_command_and_a_typo_still_sees_every_command(capsys):
    every = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"trace", "simulate", "train", "serve"} <= every
    assert set(build_parser("stats")._subparsers._group_actions[0].choices) < every
    assert set(build_parser("serve")._subparsers._group_actions[0].choices) == every
    assert main(["stat"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "invalid choice: 'stat'" in err and "'serve'" in err
