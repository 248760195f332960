import os

import pytest

pytest_plugins = ["edgex.plugins.testing"]

# Tests judge edgex itself: third-party plugins installed on the machine must not interfere.
os.environ.setdefault("EDGEX_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny models train and run fastest so (and the CI box is shared)."""
    import torch  # here, not at the top: the conftest is loaded for tests that never touch torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
