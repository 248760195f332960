pytest_plugins = ["edgex.plugins.testing"]
