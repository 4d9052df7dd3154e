"""The torch engine (`bge-triton export --engine torch`): the ensemble's encoder step runs the checkpoint itself with
`transformers` in the Python backend (`triton_models/torch_runner.py`) instead of an ONNX graph.

FP16 with scaled-dot-product attention on CUDA (`--device cuda`: instance group KIND_GPU, one instance per GPU
Triton gives it), FP32 on the CPU, where the test suite runs it end to end. The tokenizer model, the token-budget
sub-batching, the outputs and the model facts are the onnxruntime engine's; pooling + normalisation is the same
arithmetic in numpy (`triton_models/numpy_pooling.py`), so the repository needs neither onnx nor onnxruntime (a GPU
host with only PyTorch runs it). The encoder folder holds `model.py` (torch_runner.py), `onnx_runner.py` (its
batching), and `checkpoint/` (the checkpoint's config and weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.model_facts import ModelFacts
from bge_triton.model_names import model_names

Engine = Literal["onnxruntime", "torch"]
Device = Literal["cpu", "cuda"]
ENGINES: tuple[Engine, ...] = ("onnxruntime", "torch")
DEVICES: tuple[Device, ...] = ("cpu", "cuda")
CHECKPOINT_DIR = "checkpoint"
# What AutoModel.from_pretrained needs of a checkpoint (the tokenizer lives in the tokenizer model's folder).
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


class EngineOptionsError(ValueError):
    """An engine/device/precision combination that cannot be served."""


def check_engine_options(engine: str, device: str, precision: str, target: str, m3: bool) -> str:
    """The dtype the torch engine runs in (fp32 on CPU, fp16 on CUDA); refuses what it cannot serve."""
    if engine not in ENGINES:
        raise EngineOptionsError(f"unknown engine {engine!r} ({', '.join(ENGINES)})")
    if device not in DEVICES:
        raise EngineOptionsError(f"unknown device {device!r} ({', '.join(DEVICES)})")
    if engine == "onnxruntime":
        if device == "cuda" and target != "local":
            raise EngineOptionsError(
                "--device cuda is for the local target (onnxruntime-gpu inside the Python backend); "
                "--target container-gpu already runs on the GPU (Triton's onnxruntime backend)"
            )
        return precision
    if target != "local":
        raise EngineOptionsError("--engine torch runs in the Python backend: use --target local")
    if m3:
        raise EngineOptionsError("--engine torch does not serve bge-m3's sparse/ColBERT heads yet; use onnxruntime")
    if precision == "int8":
        raise EngineOptionsError("--engine torch runs fp32 on the CPU and fp16 on CUDA; --precision int8 is ONNX-only")
    return "fp16" if device == "cuda" else "fp32"


def weight_files(checkpoint: Path) -> list[Path]:
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in Path(checkpoint).glob(pattern) if p.is_file()})
    if not any(p.name != "config.json" for p in files):
        raise FileNotFoundError(f"{checkpoint} has no safetensors / pytorch_model.bin weights")
    return files


def encoder_files(checkpoint: Path, sources_dir: Path) -> dict[str, Path]:
    """Version-folder path -> source: the runner, its batching module and the checkpoint's weights."""
    files = {"model.py": sources_dir / "torch_runner.py", "onnx_runner.py": sources_dir / "onnx_runner.py"}
    files.update({f"{CHECKPOINT_DIR}/{p.name}": p for p in weight_files(checkpoint)})
    return files


def copy_files(files: dict[str, Path], version_dir: Path) -> None:
    for dest, source in files.items():
        target = version_dir / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def pooling_files(sources_dir: Path) -> dict[str, Path]:
    return {"model.py": sources_dir / "numpy_pooling.py", "onnx_runner.py": sources_dir / "onnx_runner.py"}


def configure_pooling(config: mc.ModelConfig, facts: ModelFacts) -> mc.ModelConfig:
    """The local target's pooling config (Python backend, ragged inputs) with numpy pooling's parameters."""
    assert config.name == model_names(facts.name)["pooling"]
    for key in ("onnx_file", "pad_values", "intra_op_threads"):
        del config.parameters[key]
    config.parameters["pooling"].string_value = facts.pooling
    config.parameters["normalize"].string_value = "true" if facts.normalize else "false"
    config.parameters["engine"].string_value = "torch"
    return config


def place_onnx_encoder(config: mc.ModelConfig, device: Device) -> mc.ModelConfig:
    """The onnxruntime engine on the local target with `--device cuda`: the runner asks onnxruntime for the
    TensorRT/CUDA providers (onnxruntime-gpu) on the GPU of each instance of a KIND_GPU instance group."""
    config.parameters["device"].string_value = device
    if device == "cuda":
        count = config.instance_group[0].count if config.instance_group else 1
        del config.instance_group[:]
        config.instance_group.append(mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.KIND_GPU))
    return config


def configure_encoder(
    config: mc.ModelConfig, facts: ModelFacts, input_names: list[str], device: Device, dtype: str, instances: int
) -> mc.ModelConfig:
    """Turn the local target's encoder config (Python backend, ragged inputs, dynamic batching, token budget) into
    the torch engine's: the runner's parameters and, on CUDA, a GPU instance group."""
    assert config.name == model_names(facts.name)["encoder"]
    config.parameters["checkpoint_dir"].string_value = CHECKPOINT_DIR
    config.parameters["device"].string_value = device
    config.parameters["dtype"].string_value = dtype
    config.parameters["input_names"].string_value = json.dumps(input_names)
    config.parameters["engine"].string_value = "torch"
    del config.parameters["onnx_file"]
    del config.instance_group[:]
    kind = mc.ModelInstanceGroup.KIND_GPU if device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(mc.ModelInstanceGroup(count=instances, kind=kind))
    return config
