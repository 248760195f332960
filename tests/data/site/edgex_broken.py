"""A third-party plugin that cannot even be imported (for edgex's tests)."""

import a_module_that_does_not_exist  # noqa: F401
