"""Python scripts that use cnn_depth the way the README shows, run as real processes: local worker processes
never execute the user's script (its top level runs once, guarded or not), and callbacks defined in the
script keep the sweep in the script's own process instead of failing every run."""
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

# The README's "From Python" example in the shape a user saves it: no `if __name__ == "__main__":` guard,
# a Learner trained at top level, then a sweep; workers forced, tiny data.
README_SHAPE = """
import sys
with open(sys.argv[1], "a") as f:
    f.write("top level ran\\n")
from cnn_depth import dataloaders, depth_learner, run_sweep
dls = dataloaders("cifar10-sample", bs=16, max_per_class=4, device="cpu")
learn = depth_learner(dls, depth=1)
learn.fit_one_cycle(1, 3e-3); learn.validate()
df = run_sweep(depths=[1, 2], seeds=[0], epochs=1, max_per_class=10, bs=16, device="cpu", workers=2,
               out=sys.argv[2]{cbs})
print(df[["run_id", "status"]].to_string())
"""

MAIN_CALLBACK = """
from fastai.callback.core import Callback
class CountFits(Callback):
    def before_train(self):
        pass
"""


def run_script(tmp_path, source: str) -> tuple[subprocess.CompletedProcess, list[str], pd.DataFrame]:
    script, marker, out = tmp_path / "example.py", tmp_path / "marker.txt", tmp_path / "out"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), str(marker), str(out)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    lines = marker.read_text().splitlines() if marker.exists() else []
    results = pd.read_csv(out / "results.csv") if (out / "results.csv").exists() else pd.DataFrame()
    return proc, lines, results


@pytest.mark.slow
def test_an_unguarded_script_with_workers_runs_its_top_level_once(tmp_path):
    proc, lines, results = run_script(tmp_path, README_SHAPE.format(cbs=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines == ["top level ran"], proc.stdout + proc.stderr  # not again in each worker
    assert "2 runs at once" in proc.stdout and "on worker" in proc.stdout, proc.stdout
    assert sorted(results["run_id"]) == ["bn-d1-s0", "bn-d2-s0"]
    assert (results["status"] == "ok").all(), results[["run_id", "status", "error"]].to_string()
    assert (results["threads"] == 1).all()


@pytest.mark.slow
def test_callbacks_defined_in_the_script_run_the_sweep_serially(tmp_path):
    source = MAIN_CALLBACK + README_SHAPE.format(cbs=", cbs=[CountFits()]")
    proc, lines, results = run_script(tmp_path, source)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines == ["top level ran"]
    sweep_line = next(line for line in proc.stdout.splitlines() if line.startswith("sweep:"))
    assert "in this process" in sweep_line and "serially: CountFits is defined in __main__" in sweep_line, sweep_line
    assert "on worker" not in proc.stdout
    assert (results["status"] == "ok").all(), results[["run_id", "status", "error"]].to_string()
