"""mlci as a Dagger module: the same stages as `mlci run`, each in its own container, on any runner.

`dagger call pipeline` lints, tests, trains (train → export → evaluate), smoke-tests the serving image
as a service, gates, publishes the artifact and the serving image, and deploys. Every container runs the
mlci CLI, installed from --mlci-source (this repository by default), on the model repository given
as --source.
"""

from .main import GateFailed, Mlci, SmokeFailed, StageFailed

__all__ = ["GateFailed", "Mlci", "SmokeFailed", "StageFailed"]
