"""stagetree's Python trainer runtime: write a `Trainer`, run it as a worker with
`python -m stagetree.worker` (the engine's process or docker pool does that for you).

The generated protocol stubs (`stagetree.gen`) are made by `python/gen.sh`; only the
worker needs them, so `stagetree.schedule`, `stagetree.trainer` and
`stagetree.checkpoints` import without them.
"""

from .schedule import Hp, Schedule, round_value
from .trainer import Cancelled, Trainer

__all__ = ["Trainer", "Cancelled", "Hp", "Schedule", "round_value"]
__version__ = "0.1.0"
