"""When to show per-batch progress bars: only where someone is watching a terminal.

Written to a log file or CI, every refresh of a bar is one more line (a 250-epoch run made 4,400);
the per-epoch log lines say all a log needs. In Jupyter the per-epoch bar is shown instead.
"""

from __future__ import annotations

import os
import sys


def batch_bars_wanted() -> bool:
    """True when stderr is a terminal (and `CLASSIFIER_NO_BARS` is not set)."""
    if os.environ.get("CLASSIFIER_NO_BARS"):
        return False
    return sys.stderr.isatty()


def progress_bar_wanted() -> bool:
    """One bar over a long job (all epochs, decoding a folder): in a terminal and in Jupyter, not in a log."""
    return batch_bars_wanted() or ("ipykernel" in sys.modules and not os.environ.get("CLASSIFIER_NO_BARS"))
