"""OpenAI embeddings API bodies (requests, responses, errors) as pydantic models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from .vector_encoding import EmbeddingType

TokenIds = list[StrictInt]
EmbeddingInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]


def _bool_or_text(value: object) -> object:
    """`truncate` is a JSON boolean or one of NIM's names; anything else is one 400 naming `truncate`."""
    if isinstance(value, bool | str):
        return value
    raise ValueError("truncate must be true, false, NONE, START, END or CHUNK")


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore", strict=True)  # 8.0, "8", true are no int

    input: EmbeddingInput = Field(
        description="A string, an array of strings, an array of token ids, or an array of token-id arrays."
    )
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Keep the first N dimensions and re-normalise."
    )
    user: StrictStr | None = None
    input_type: Literal["query", "passage"] | None = Field(
        default=None,
        description="`query` prepends the model's query instruction, `passage` (the default) its passage "
        "instruction; a `NAME-query` / `NAME-passage` model name sets it too (a conflicting value is a 400).",
    )
    truncate: Annotated[bool | StrictStr, BeforeValidator(_bool_or_text)] = Field(  # strings: long_inputs.truncation_of
        default=True,
        description="Inputs over the model's window: `END` or true keeps their start, `START` their end, `NONE` or "
        "false answers 400, `CHUNK` embeds every window and returns their token-weighted mean (NVIDIA NIM's names; "
        "lower case accepted).",
    )
    return_chunks: bool = Field(
        default=False, description="With truncate CHUNK: each input's window vectors and character spans too."
    )
    embedding_type: EmbeddingType = Field(
        default="float",
        description="`int8` / `uint8` (fixed ranges [-1, 1]), `binary` / `ubinary` (sign bits, 8 a byte): "
        "sentence-transformers' quantize_embeddings; after `dimensions`.",
    )


class ChunkEmbedding(BaseModel):
    """One window of a long input (`return_chunks`): characters [start, stop) of the input."""

    embedding: list[float] | list[int] | str
    start: int
    stop: int
    tokens: int  # the window's text tokens (its weight in the input's vector)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str  # float: numbers; int8, uint8, binary, ubinary: integers; base64
    chunks: list[ChunkEmbedding] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ScoreBand(BaseModel):
    """The model's cosines on STS pairs whose human score (0-5) lies in `gold`."""

    label: str  # unrelated [0, 2), related [2, 4), paraphrase [4, 5]
    gold: list[float]
    pairs: int
    p25: float
    median: float
    p75: float


class LanguageScoreBands(BaseModel):
    source: str  # the STS set the pairs come from (shipped in the package)
    pairs: int
    bands: list[ScoreBand]
    thresholds: dict[str, float]  # a score at or above thresholds[label] reads as `label` (related, paraphrase)
    ordered: bool  # the medians rise with the human score; false: the model's scores say little (no words)


class ScoreBands(BaseModel):
    """What a cosine means for this model, measured at export (export/score_bands.py): per language (zh, en)."""

    input_type: str  # the instruction the texts were embedded with
    languages: dict[str, LanguageScoreBands]


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
    m3: bool = False  # bge-m3: /embed_sparse, /embed_colbert and /v1/similarity serve it too
    # NAME-query / NAME-passage: the served name or alias they are a variant of, and the input_type they imply
    # (null for served names and aliases; a model picker lists only the cards without a parent)
    parent: str | None = None
    input_type: Literal["query", "passage"] | None = None
    score_bands: ScoreBands | None = None  # null for models exported before score bands were measured


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


# -- bge-m3: sparse, ColBERT and scoring -------------------------------------------------------
M3Input = StrictStr | list[StrictStr]


class SparseRequest(BaseModel):
    """`POST /embed_sparse` (TEI's shape: `inputs`; OpenAI's `input` is accepted too)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    inputs: M3Input = Field(validation_alias=AliasChoices("inputs", "input"), description="A string or strings.")
    model: StrictStr | None = Field(default=None, description="A served bge-m3 model (default: the only one).")
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="base64: per input {indices: little-endian int32, values: little-endian float32}, base64.",
    )
    input_type: Literal["query", "passage"] = "passage"
    prompt_name: Literal["query", "passage", "document"] | None = Field(
        default=None, description="TEI's field: the query or passage (document) instruction; wins over input_type."
    )


class ColbertRequest(SparseRequest):
    """`POST /embed_colbert`: per input its token vectors (base64: {shape, data} little-endian float32)."""


class SparseValue(BaseModel):
    index: int
    value: float


class ScoreWeights(BaseModel):
    """Hybrid weights (FlagEmbedding's `weights_for_different_modes`; equal by default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dense: Annotated[float, Field(ge=0)] = 1.0
    sparse: Annotated[float, Field(ge=0)] = 1.0
    colbert: Annotated[float, Field(ge=0)] = 1.0


class SimilarityRequest(BaseModel):
    """`POST /v1/similarity`: one query against N passages with every bge-m3 score."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    query: StrictStr
    passages: list[StrictStr] = Field(validation_alias=AliasChoices("passages", "documents"))
    model: StrictStr | None = None
    weights: ScoreWeights = Field(default_factory=ScoreWeights)


class PassageScore(BaseModel):
    index: int
    dense: float
    sparse: float
    colbert: float
    sparse_dense: float = Field(serialization_alias="sparse+dense")
    hybrid: float


class SimilarityResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[PassageScore]
    model: str
    weights: ScoreWeights
    usage: Usage
