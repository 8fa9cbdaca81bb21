"""The suite runs with portable numerics (mlci's default), put in force here, before any test module loads
numpy: an in-process pipeline could not set them any more (see mlci.numerics)."""

import os

from mlci.numerics import portable_environment

for _name, _value in portable_environment().items():
    if _value is None:
        os.environ.pop(_name, None)
    else:
        os.environ[_name] = _value
