"""The activation-memory planner's table of the B0-B7 family on an 80 GB GPU: estimated GiB
per batch of 32 and the largest micro-batch in fp32, bf16 and bf16 with gradient
checkpointing (analytic: no GPU needed).

    python benchmarks/memory_table.py [BUDGET] [BATCH]
"""

import sys

from effscale.io.table import render
from effscale.model.memory import family_table

if __name__ == "__main__":
    budget = sys.argv[1] if len(sys.argv) > 1 else "80GB"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    print(render(family_table(budget, batch), "markdown"))
