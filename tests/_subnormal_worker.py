"""A ``tools/train_net.py`` run in a fresh process, then a report of its subnormal-float mode.

    python tests/_subnormal_worker.py --config-file CFG MODEL.DEVICE cpu ...

Runs train_net's own ``main`` through its ``launch_cli`` and prints, as the last line of stdout,
``{"status": <exit status>, "flushed": <share of a probe's subnormal results that were 0>}``
measured on every intra-op thread after the run.
"""

import json

from _tools import load_tool

from d2dist.engine import argument_parser, launch_cli
from d2dist.engine.subnormals import subnormals_flushed

if __name__ == "__main__":
    status = launch_cli(load_tool("train_net").main, argument_parser().parse_args())
    print(json.dumps({"status": status, "flushed": subnormals_flushed()}))
