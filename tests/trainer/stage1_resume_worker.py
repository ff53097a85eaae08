"""Run Stage I in a subprocess for the resume test, optionally killing itself after an epoch.

Usage: python stage1_resume_worker.py JSON, where JSON contains "fn_args" (the FnArgs fields
`train_and_export` reads), "epochs_file" (each finished epoch is appended to it, one per
line) and "kill_after_epoch" (0 to run to the end). The kill is SIGKILL, sent right after
that epoch's checkpoint is saved, so nothing of the process gets to clean up.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import types

from trainer import stage1


def main() -> None:
    request = json.loads(sys.argv[1])
    fn_args = types.SimpleNamespace(train_steps=None, **request["fn_args"])

    def on_epoch_end(epoch: int, metrics: dict, model) -> None:
        with open(request["epochs_file"], "a") as out:
            out.write(f"{epoch}\n")
        if epoch == request["kill_after_epoch"]:
            os.kill(os.getpid(), signal.SIGKILL)

    stage1.train_and_export(fn_args, on_epoch_end)


if __name__ == "__main__":
    main()
