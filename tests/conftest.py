import os

pytest_plugins = ["edgex.plugins.testing"]

# Tests judge edgex itself: third-party plugins installed on the machine must not interfere.
os.environ.setdefault("EDGEX_DISABLE_PLUGIN_AUTOLOAD", "1")
