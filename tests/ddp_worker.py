"""lstmcli under torchrun, recording the token ids of every training row each rank is given (for counting).

Usage: torchrun --nproc_per_node N tests/ddp_worker.py RECORD_DIR lstmcli-arguments...
"""

import json
import os
import sys
from pathlib import Path

from lstmcli import tokenized
from lstmcli import train as train_module
from lstmcli.cli import main

record_dir, arguments = Path(sys.argv[1]), sys.argv[2:]
rank = int(os.environ["RANK"])
splits, consumed = {}, []
real_build, real_plan = tokenized.build, train_module.epoch_plan


def build(directory, *args, **kwargs):
    splits[directory.name] = split = real_build(directory, *args, **kwargs)
    return split


def epoch_plan(lengths, batch_size, bucket_size, seed, epoch, num_batches=None):
    plan = real_plan(lengths, batch_size, bucket_size, seed, epoch, num_batches)
    encoded = splits[f"train-rank{rank}"].encoded
    for rows in plan:
        for row in rows:
            consumed.append([epoch, encoded.row(row).tolist()])
    return plan


tokenized.build, train_module.epoch_plan = build, epoch_plan
code = main(arguments)
(record_dir / f"rank{rank}.json").write_text(json.dumps(consumed))
sys.exit(code)
