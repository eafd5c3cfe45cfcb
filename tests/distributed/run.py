"""Runs under torchrun: one rank-side scenario of a test module, on every rank.

Usage: ``torchrun --nproc_per_node=2 run.py MODULE FUNCTION OUT_DIR`` (the tests call it through
``run_ranks``). Each rank calls ``MODULE.FUNCTION()`` after ``dormant.launch(seed=MODULE.SEED)``
and writes what it returns to ``OUT_DIR/rank<k>.json``; any exception fails the rank, and so
torchrun, with its traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import traceback

import torch.distributed as dist

import dormant


def main() -> None:
    module_name, function, out_dir = sys.argv[1:4]
    module = importlib.import_module(module_name)
    dormant.launch(seed=module.SEED)
    rank = dist.get_rank()
    try:
        result = getattr(module, function)()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # do not wait in barriers for a rank that will never come
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    # The result is written and every rank got here: leave without the interpreter's teardown,
    # where torch now and then aborts after FSDP2 training on gloo ("terminate called without
    # an active exception", no Python frame left: a C++ destructor at exit).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    tempfile.tempdir = os.environ.get("DORMANT_TEST_TMP")
    main()
