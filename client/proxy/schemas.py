"""OpenAI embeddings API bodies (requests, responses, errors) as pydantic models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

TokenIds = list[StrictInt]
EmbeddingInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput = Field(
        description="A string, an array of strings, an array of token ids, or an array of token-id arrays."
    )
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Keep the first N dimensions and re-normalise."
    )
    user: StrictStr | None = None
    input_type: Literal["query", "passage"] = Field(
        default="passage",
        description="`query` prepends the model's retrieval instruction (bge); passages get none.",
    )
    truncate: bool = Field(default=True, description="false: inputs over the model's window are a 400 error.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "bge-triton"
    dimensions: int
    max_tokens: int
    pooling: str
    query_instruction: str  # prepended for input_type=query
    passage_instruction: str  # prepended for input_type=passage (e5's "passage: "; empty for bge)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()
