"""Release: smoke test, promotion with tag history, deploy targets and rollback."""

__all__: list[str] = []
