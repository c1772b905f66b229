"""The async-context-manager half of every transport object, written once."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ResourceBase:
    """``async with x:`` starts ``x`` and always closes it; subclasses define start and close."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
