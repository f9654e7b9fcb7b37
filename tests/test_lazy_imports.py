"""deepspeed is imported only when a job uses it: importing it prints "[WARNING] Setting accelerator to CPU"
(on a machine without a GPU) and costs seconds, on every run of a tracer that never touches a ZeRO engine."""
import importlib.util
import os
import subprocess
import sys

import pytest

# A traced pass of a PEFT LoRA model (the diagnosis reads every gradient) and bin/trace's static report, in one
# fresh interpreter: what that interpreter imported is the answer.
SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import dist_worker
from tracer.cli.main import main
from tracer.api.tracer import Tracer
model = dist_worker.build_model()
with Tracer(model) as tracer:
    dist_worker.loss_of(model, dist_worker.global_batch()).backward()
assert {{r["status"] for r in tracer.result()["lora"]}} == {{"ok"}}
assert main([{clip!r}, "--static-only", "--quiet"]) == 0
print("deepspeed imported:", "deepspeed" in sys.modules)
"""


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_is_not_imported_without_a_zero_engine(root):
    code = SCRIPT.format(root=root, tests=os.path.join(root, "tests"),
                         clip=os.path.join(root, "samples", "sample.wav"))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepspeed imported: False" in done.stdout
    assert "Setting accelerator" not in done.stdout + done.stderr  # DeepSpeed logs it to stdout
