# No ``pytest_plugins`` here: edgex's root ``pytest`` collects this folder too, where pytest
# refuses it outside the top-level conftest; the tests import the kit's functions instead.
import pytest


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    """Load this distribution's plugin and no other outside one (edgex's own suite turns
    third-party plugins off; ``EDGEX_LOAD_PLUGINS`` overrides that)."""
    monkeypatch.setenv("EDGEX_LOAD_PLUGINS", "rknn")
