import logging
import os
import sys

# Before anything imports gradio (it reads this once): the tests send no usage analytics.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))
logging.getLogger("engine").setLevel(logging.INFO)


@pytest.fixture
def rng():
    """A fresh generator per test: new random inputs every run are seeded from the clock, printed on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)
