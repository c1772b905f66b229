"""The adapter SDK through which agencies publish to and receive from Tiaki."""

__all__: list[str] = []
