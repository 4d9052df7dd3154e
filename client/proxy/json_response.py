"""The proxy's JSON response class: orjson, with numpy arrays written directly (embeddings are most of the
bytes)."""

from __future__ import annotations

import orjson
from fastapi.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
