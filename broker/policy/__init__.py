"""The sharing-policy language and its engine (issue 4)."""

__all__: list[str] = []
