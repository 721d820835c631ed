"""The GPU memory plan: which models go on which GPUs, and how many tokens of KV cache each
gets, or why they cannot — decided before any host is touched, by arithmetic alone.

Inputs (the `serving_gpus` and `serving_models` settings, tasks/serving.py):

    gpus:   {count: 2, memory_mib: 24564}     memory.total as `nvidia-smi` reports it
    models: - name: qwen-2.5-coder-32b        the served name workers ask for
              model: Qwen/Qwen2.5-Coder-32B-Instruct-AWQ
              architecture: qwen2.5-32b       one of ARCHITECTURES, or the fields below
              quantization: awq               none | awq | gptq | w4a16 | fp8
              tensor_parallel_size: 2
              gpu_memory_utilization: 0.62
              max_model_len: 32768
              mode: always-on                 always-on | on-demand
              # optional: weights_gib (measured size of the checkpoint), kv_cache_dtype
              # (auto | fp8), overhead_gib, and the architecture's own fields:
              # parameters_b, embedding_parameters_b, layers, attention_heads, kv_heads,
              # head_dim

How vLLM spends a GPU, which the plan follows (vLLM 0.1x "V1" engine):
- An instance reserves `gpu_memory_utilization` x the GPU's total memory on EACH GPU it
  uses, and refuses to start when that much is not free. Instances on one GPU therefore
  add up: two tensor-parallel-2 models at 0.85 cannot share two GPUs.
- Inside that reservation: the weights (split over the tensor-parallel ranks), then the
  overhead (OVERHEAD_GIB: the profiling run's activation peak, CUDA graphs, the CUDA context
  and NCCL buffers), and what is left is KV cache, in blocks of 16 tokens.
- KV cache per token per GPU = 2 (K and V) x layers x KV heads on that GPU x head dim x
  bytes per element; a GPU holds KV heads / tensor_parallel_size of them (at least one).
- An instance must hold at least one sequence of max_model_len tokens, or it refuses.

Always-on models are placed first and stay; on-demand models are loaded next to them when
asked for, so each on-demand model must fit beside every always-on model on its GPUs. The
plan says whether the on-demand models fit all at once; when they do not, they must be
loaded one at a time (which the app does not enforce yet: see app.py).

Everything here is pure Python and is checked only against the arithmetic above; the
constants are estimates to be compared with vLLM's own log line ("Available KV cache
memory") on the real GPUs, and overridden per model (`overhead_gib`, `weights_gib`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from autocode.problems import Problems

GIB = 1024 ** 3
MIB = 1024 ** 2
KIB = 1024
# Per instance per GPU, inside its reservation: the profiling run's activation peak
# (max_num_batched_tokens of prefill, the sampler's logits), CUDA graphs, the CUDA context
# and NCCL's buffers. 1.5 GiB is an estimate for 14B-32B models at tensor parallel 1-2;
# `overhead_gib` overrides it per model once vLLM's startup log shows the real figure.
OVERHEAD_GIB = 1.5
# The most of one GPU all instances together may reserve: the driver, the other processes'
# CUDA contexts (~0.3-0.5 GiB each) and fragmentation need the rest, and vLLM refuses to
# start when less than its share is free.
MAX_GPU_SHARE = 0.95
BLOCK_TOKENS = 16
# Bytes per weight. int4 with group-wise (128) fp16 scales and 4-bit zeros: 4.16 bits.
# Embeddings and the LM head stay 16-bit in AWQ/GPTQ/compressed-tensors checkpoints.
WEIGHT_BYTES = {"none": 2.0, "fp8": 1.0, "awq": 0.52, "gptq": 0.52, "w4a16": 0.52}
QUANTIZATIONS = tuple(WEIGHT_BYTES)
KV_BYTES = {"auto": 2, "fp8": 1}
MODES = ("always-on", "on-demand")
# A served name is also its weights folder's name: no "/", no leading "." or "-".
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class Architecture:
    parameters_b: float            # all parameters, billions
    embedding_parameters_b: float  # token embeddings + LM head (kept 16-bit when quantised)
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int


# From the models' config.json and model cards (Qwen2.5 family: vocab 152064, untied LM
# head, so embeddings + head = 2 x 152064 x hidden).
ARCHITECTURES: dict[str, Architecture] = {
    "qwen2.5-32b": Architecture(32.5, 1.56, 64, 40, 8, 128),
    "qwen2.5-14b": Architecture(14.7, 1.56, 48, 40, 8, 128),
    "qwen2.5-7b": Architecture(7.61, 1.09, 28, 28, 4, 128),
}
ARCH_FIELDS = ("parameters_b", "embedding_parameters_b", "layers", "attention_heads",
               "kv_heads", "head_dim")


@dataclass(frozen=True)
class Model:
    name: str
    model: str
    arch: Architecture
    quantization: str
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    mode: str
    kv_cache_dtype: str = "auto"
    overhead_gib: float = OVERHEAD_GIB
    weights_gib_measured: float | None = None
    index: int = 0
    at: str = ""  # its place in the settings, e.g. models[0] or serving_models[0]

    @property
    def weights_gib(self) -> float:
        if self.weights_gib_measured is not None:
            return self.weights_gib_measured
        return estimate_weights_gib(self.arch, self.quantization)

    @property
    def kv_heads_per_gpu(self) -> int:
        return max(1, math.ceil(self.arch.kv_heads / self.tensor_parallel_size))

    @property
    def kv_bytes_per_token_per_gpu(self) -> int:
        return (2 * self.arch.layers * self.kv_heads_per_gpu * self.arch.head_dim
                * KV_BYTES[self.kv_cache_dtype])

    @property
    def kv_bytes_per_token(self) -> int:
        """All ranks together: what one token of context costs the model."""
        return 2 * self.arch.layers * self.arch.kv_heads * self.arch.head_dim * \
            KV_BYTES[self.kv_cache_dtype]

    def fixed_gib_per_gpu(self) -> float:
        """Weights on one GPU plus the overhead: what it holds before any KV cache."""
        return self.weights_gib / self.tensor_parallel_size + self.overhead_gib

    def kv_gib_per_gpu(self, memory_gib: float, utilization: float | None = None) -> float:
        share = self.gpu_memory_utilization if utilization is None else utilization
        return share * memory_gib - self.fixed_gib_per_gpu()

    def kv_tokens(self, memory_gib: float, utilization: float | None = None) -> int:
        free = self.kv_gib_per_gpu(memory_gib, utilization)
        if free <= 0:
            return 0
        blocks = int(free * GIB // (self.kv_bytes_per_token_per_gpu * BLOCK_TOKENS))
        return blocks * BLOCK_TOKENS

    def utilization_for(self, memory_gib: float, tokens: int) -> float:
        """The least gpu_memory_utilization (to 0.01) holding `tokens` of KV cache."""
        need = self.fixed_gib_per_gpu() + tokens * self.kv_bytes_per_token_per_gpu / GIB
        return math.ceil(need / memory_gib * 100 - 1e-9) / 100


def estimate_weights_gib(arch: Architecture, quantization: str) -> float:
    embed = arch.embedding_parameters_b * 1e9
    rest = (arch.parameters_b - arch.embedding_parameters_b) * 1e9
    embed_bytes = 2.0 if quantization != "none" else WEIGHT_BYTES["none"]
    return (embed * embed_bytes + rest * WEIGHT_BYTES[quantization]) / GIB


@dataclass(frozen=True)
class Gpus:
    count: int
    memory_mib: int

    @property
    def memory_gib(self) -> float:
        return self.memory_mib * MIB / GIB


@dataclass
class Placement:
    model: Model
    gpus: tuple[int, ...]
    memory_gib: float  # of each of its GPUs

    @property
    def kv_tokens(self) -> int:
        return self.model.kv_tokens(self.memory_gib)

    @property
    def full_length_sequences(self) -> int:
        return self.kv_tokens // self.model.max_model_len


@dataclass
class Plan:
    gpus: Gpus
    models: list[Model]
    placements: list[Placement] = field(default_factory=list)
    # Each names its field as `models[i].setting` or `gpus.setting` (or the names the
    # caller gave those two) and unpacks as (field, text).
    problems: Problems = field(default_factory=Problems)
    on_demand_together: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def placement(self, name: str) -> Placement | None:
        return next((p for p in self.placements if p.model.name == name), None)

    def share(self, gpu: int, mode: str | None = None) -> float:
        return sum(p.model.gpu_memory_utilization for p in self.placements
                   if gpu in p.gpus and (mode is None or p.model.mode == mode))

    def table(self) -> str:
        return format_plan(self)


class PlanInputError(ValueError):
    """Settings the plan cannot read; `problems` holds them (each unpacks as (field,
    text))."""

    def __init__(self, problems: Problems):
        super().__init__("; ".join(f"{f}: {t}" for f, t in problems))
        self.problems = problems


# The seed's "vLLM Configuration" as written (technical-stack-design.md): both 32B models
# in bf16 at tensor parallel 2 and 0.85, the 14B coder on one GPU, loaded on demand. The
# plan refuses it; `autocode-plan --seed` shows why.
SEED_MODELS = [
    {"name": "qwen-2.5-coder-32b", "model": "Qwen/Qwen2.5-Coder-32B-Instruct",
     "architecture": "qwen2.5-32b", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.85, "max_model_len": 32768, "mode": "always-on"},
    {"name": "deepseek-r1-32b", "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
     "architecture": "qwen2.5-32b", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.85, "max_model_len": 32768, "mode": "always-on"},
    {"name": "qwen-2.5-coder-14b", "model": "Qwen/Qwen2.5-Coder-14B-Instruct",
     "architecture": "qwen2.5-14b", "tensor_parallel_size": 1,
     "gpu_memory_utilization": 0.85, "max_model_len": 32768, "mode": "on-demand"},
]
A5000_X2 = {"count": 2, "memory_mib": 24564}


# -- reading the settings -----------------------------------------------------------------

def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def parse_gpus(raw: Any, problems: Problems, at: str = "gpus") -> Gpus | None:
    if not isinstance(raw, Mapping):
        problems.append((at, f"{raw!r} must map count and memory_mib, e.g. "
                         "{count: 2, memory_mib: 24564} for two RTX A5000"))
        return None
    for key in sorted(set(raw) - {"count", "memory_mib"}):
        problems.append((f"{at}.{key}", "no such setting; use count and memory_mib"))
    count, memory = raw.get("count"), raw.get("memory_mib")
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
        problems.append((f"{at}.count", f"{count!r} is not a number of GPUs; write a whole "
                         "number, e.g. 2"))
        return None
    if not _positive_int(memory):
        problems.append((f"{at}.memory_mib", f"{memory!r} is not a memory size; write each "
                         "GPU's memory.total in MiB as `nvidia-smi --query-gpu=memory.total "
                         "--format=csv` prints it, e.g. 24564 for an RTX A5000"))
        return None
    return Gpus(count, memory)


def parse_model(raw: Any, index: int, problems: Problems, field: str = "models"
                ) -> Model | None:
    at = f"{field}[{index}]"
    if not isinstance(raw, Mapping):
        problems.append((at, f"{raw!r} must be a mapping with name, model, "
                         "tensor_parallel_size, gpu_memory_utilization, max_model_len, mode"))
        return None
    before = len(problems)
    known = {"name", "model", "architecture", "quantization", "tensor_parallel_size",
             "gpu_memory_utilization", "max_model_len", "mode", "kv_cache_dtype",
             "overhead_gib", "weights_gib", "revision", "sha256sums", *ARCH_FIELDS}
    for key in sorted(set(raw) - known):
        problems.append((f"{at}.{key}", f"no such model setting; use {', '.join(sorted(known))}"))
    name = raw.get("name")
    if not (isinstance(name, str) and NAME.match(name)):
        problems.append((f"{at}.name", f"{name!r} is not a model name; use letters, digits, "
                         "'.', '_' and '-', e.g. qwen-2.5-coder-32b"))
    label = f"model {name!r}" if isinstance(name, str) and name else at
    if not (isinstance(raw.get("model"), str) and raw.get("model")):
        problems.append((f"{at}.model", f"{label}: {raw.get('model')!r} is not a model id; "
                         "give its Hugging Face id, e.g. Qwen/Qwen2.5-Coder-32B-Instruct-AWQ"))
    arch_name = raw.get("architecture")
    base = ARCHITECTURES.get(arch_name) if isinstance(arch_name, str) else None
    if arch_name is not None and base is None:
        problems.append((f"{at}.architecture", f"{label}: unknown architecture "
                         f"{arch_name!r}; use one of {', '.join(ARCHITECTURES)}, or drop it "
                         f"and give {', '.join(ARCH_FIELDS)}"))
    arch_values: dict[str, Any] = {}
    for key in ARCH_FIELDS:
        value = raw.get(key, getattr(base, key) if base else None)
        if value is None:
            if arch_name is None or base is not None:
                problems.append((f"{at}.{key}", f"{label}: missing; the plan needs it (from "
                                 "the model's config.json), or set architecture to one of "
                                 f"{', '.join(ARCHITECTURES)}"))
            continue
        good = _positive_number(value) if key.endswith("_b") else _positive_int(value)
        if key == "embedding_parameters_b" and value == 0:
            good = True
        if not good:
            problems.append((f"{at}.{key}", f"{label}: {value!r} must be a positive "
                             f"{'number' if key.endswith('_b') else 'whole number'}"))
        arch_values[key] = value
    quant = raw.get("quantization", "none")
    if quant not in QUANTIZATIONS:
        problems.append((f"{at}.quantization", f"{label}: {quant!r} is not one of "
                         f"{', '.join(QUANTIZATIONS)} (it must match the checkpoint)"))
    tp = raw.get("tensor_parallel_size", 1)
    if not _positive_int(tp):
        problems.append((f"{at}.tensor_parallel_size", f"{label}: {tp!r} must be a whole "
                         "number of GPUs, e.g. 2"))
    util = raw.get("gpu_memory_utilization", 0.9)
    if not (_positive_number(util) and util <= 1):
        problems.append((f"{at}.gpu_memory_utilization", f"{label}: {util!r} must be a "
                         "fraction of each GPU above 0 and at most 1, e.g. 0.6"))
    max_len = raw.get("max_model_len")
    if not _positive_int(max_len):
        problems.append((f"{at}.max_model_len", f"{label}: {max_len!r} must be a whole "
                         "number of tokens, e.g. 32768"))
    mode = raw.get("mode", "always-on")
    if mode not in MODES:
        problems.append((f"{at}.mode", f"{label}: {mode!r} is not one of {', '.join(MODES)}"))
    kv_dtype = raw.get("kv_cache_dtype", "auto")
    if kv_dtype not in KV_BYTES:
        problems.append((f"{at}.kv_cache_dtype", f"{label}: {kv_dtype!r} is not one of "
                         f"{', '.join(KV_BYTES)}"))
    overhead = raw.get("overhead_gib", OVERHEAD_GIB)
    if not (_positive_number(overhead) or overhead == 0):
        problems.append((f"{at}.overhead_gib", f"{label}: {overhead!r} must be a number of "
                         "GiB, 0 or more"))
    weights = raw.get("weights_gib")
    if weights is not None and not _positive_number(weights):
        problems.append((f"{at}.weights_gib", f"{label}: {weights!r} must be a positive "
                         "number of GiB (the checkpoint's size), or be left out"))
    if len(problems) > before:
        return None
    arch = Architecture(**arch_values)
    if arch.embedding_parameters_b >= arch.parameters_b:
        problems.append((f"{at}.embedding_parameters_b", f"{label}: must be less than "
                         "parameters_b"))
        return None
    return Model(name=name, model=raw["model"], arch=arch, quantization=quant,
                 tensor_parallel_size=tp, gpu_memory_utilization=float(util),
                 max_model_len=max_len, mode=mode, kv_cache_dtype=kv_dtype,
                 overhead_gib=float(overhead),
                 weights_gib_measured=None if weights is None else float(weights),
                 index=index, at=at)


def parse(gpus_raw: Any, models_raw: Any, gpus_field: str = "gpus",
          models_field: str = "models") -> tuple[Gpus, list[Model]]:
    """The plan's inputs from the settings, or PlanInputError with every problem (named
    `gpus_field`..., `models_field`[i]...)."""
    problems = Problems()
    gpus = parse_gpus(gpus_raw, problems, gpus_field)
    models: list[Model] = []
    if not isinstance(models_raw, list):
        problems.append((models_field, f"{models_raw!r} must be a list of models"))
    else:
        for i, raw in enumerate(models_raw):
            model = parse_model(raw, i, problems, models_field)
            if model is not None:
                models.append(model)
        names = [m.name for m in models]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append((models_field, f"model name {name!r} is used twice; each served "
                             "name must be unique"))
    if problems or gpus is None:
        raise PlanInputError(problems)
    return gpus, models


# -- planning -----------------------------------------------------------------------------

def _gib(value: float) -> str:
    return f"{value:.1f} GiB"


def _quantised_hint(model: Model) -> str:
    if model.quantization != "none":
        return ""
    int4 = estimate_weights_gib(model.arch, "awq")
    return (f"a quantised variant (AWQ/GPTQ int4 weights are about {_gib(int4)}, "
            f"{_gib(int4 / model.tensor_parallel_size)} per GPU at tensor_parallel_size "
            f"{model.tensor_parallel_size}; set model to that checkpoint and quantization: awq)")


def _fit_one(plan: Plan, model: Model, memory_gib: float, at: str) -> bool:
    """Whether the model fits its own reservation; adds a problem when it does not."""
    label = f"model {model.name!r}"
    gpus = plan.gpus
    total_weights = model.weights_gib
    per_gpu_room = MAX_GPU_SHARE * memory_gib
    everything = MAX_GPU_SHARE * memory_gib * gpus.count
    one_seq_gib = model.max_model_len * model.kv_bytes_per_token_per_gpu / GIB
    need = model.fixed_gib_per_gpu() + one_seq_gib
    have = model.gpu_memory_utilization * memory_gib
    if total_weights + model.overhead_gib * gpus.count >= everything:
        fixes = [f for f in (_quantised_hint(model), "a smaller model") if f]
        plan.problems.append((f"{at}.model", (
            f"{label} ({model.model}) needs {_gib(total_weights)} of weights, more than all "
            f"{gpus.count} GPU(s) can give together ({_gib(everything)} at "
            f"{MAX_GPU_SHARE} of each); short by "
            f"{_gib(total_weights + model.overhead_gib * gpus.count - everything)}; use "
            f"{' or '.join(fixes)}")))
        return False
    if need <= have:
        return True
    fixes = []
    util = model.utilization_for(memory_gib, model.max_model_len)
    if util <= MAX_GPU_SHARE:
        fixes.append(f"gpu_memory_utilization {util:.2f} (if the GPUs have that much free)")
    tp = model.tensor_parallel_size
    bigger = [n for n in (2 * tp, 4 * tp, 8 * tp) if n <= gpus.count
              and model.arch.attention_heads % n == 0]
    for n in bigger:
        wider = replace(model, tensor_parallel_size=n)
        if wider.fixed_gib_per_gpu() + model.max_model_len * \
                wider.kv_bytes_per_token_per_gpu / GIB <= have:
            fixes.append(f"tensor_parallel_size {n}")
            break
    if model.fixed_gib_per_gpu() < have:
        tokens = model.kv_tokens(memory_gib)
        if tokens >= BLOCK_TOKENS:
            fixes.append(f"max_model_len {tokens} or less")
        if model.kv_cache_dtype == "auto" and \
                replace(model, kv_cache_dtype="fp8").kv_tokens(memory_gib) >= model.max_model_len:
            fixes.append("kv_cache_dtype fp8")
    hint = _quantised_hint(model)
    if hint:
        fixes.append(hint)
    if model.fixed_gib_per_gpu() >= have:
        what = (f"its weights ({_gib(model.weights_gib / tp)} per GPU) and overhead "
                f"({_gib(model.overhead_gib)}) leave no memory for the KV cache in "
                f"{model.gpu_memory_utilization} x {_gib(memory_gib)} = {_gib(have)} per GPU")
    else:
        what = (f"its KV cache holds {model.kv_tokens(memory_gib)} tokens, fewer than one "
                f"sequence of max_model_len {model.max_model_len} "
                f"({_gib(one_seq_gib)} per GPU)")
    if not fixes:
        fixes.append("a smaller model" if per_gpu_room < need else "fewer tokens")
    plan.problems.append((f"{at}.gpu_memory_utilization", (
        f"{label} does not fit: {what}; short by {_gib(need - have)} per GPU; use "
        f"{' or '.join(fixes)}")))
    return False


def make_plan(gpus: Gpus, models: Sequence[Model]) -> Plan:
    plan = Plan(gpus=gpus, models=list(models))
    memory = gpus.memory_gib
    candidates: list[tuple[Model, bool]] = []
    for model in models:
        at = model.at
        label = f"model {model.name!r}"
        tp = model.tensor_parallel_size
        if tp > gpus.count:
            plan.problems.append((f"{at}.tensor_parallel_size", (
                f"{label}: tensor_parallel_size {tp} needs {tp} GPUs, the orchestrator has "
                f"{gpus.count}; set tensor_parallel_size to at most {gpus.count} (and a "
                "quantised variant if it then does not fit), or set serving_gpus to the "
                "GPUs the host has")))
            continue
        if model.arch.attention_heads % tp or (model.arch.kv_heads % tp and
                                               tp % model.arch.kv_heads):
            plan.problems.append((f"{at}.tensor_parallel_size", (
                f"{label}: tensor_parallel_size {tp} does not divide its "
                f"{model.arch.attention_heads} attention heads and {model.arch.kv_heads} KV "
                "heads evenly, which vLLM requires; use 1, 2, 4 or 8 as they divide")))
            continue
        # Checked even when it does not fit, so a config gets every problem at once.
        fits = _fit_one(plan, model, memory, at)
        candidates.append((model, fits))
    # Always-on first, the widest and largest first, each on the least-claimed GPUs; then
    # each on-demand model beside the always-on ones. A model that does not fit still
    # claims its share here, so sharing problems are reported with the others.
    claims: list[Placement] = []

    def claimed(gpu: int) -> float:
        return sum(c.model.gpu_memory_utilization for c in claims if gpu in c.gpus)

    always = sorted((c for c in candidates if c[0].mode == "always-on"),
                    key=lambda c: (-c[0].tensor_parallel_size, -c[0].gpu_memory_utilization))
    for model, fits in always:
        order = sorted(range(gpus.count), key=lambda g: (claimed(g), g))
        chosen = tuple(sorted(order[:model.tensor_parallel_size]))
        over = [g for g in chosen if claimed(g) + model.gpu_memory_utilization
                > MAX_GPU_SHARE + 1e-9]
        if over:
            plan.problems.append(_sharing_problem(claims, model, chosen, over, memory))
            continue
        claims.append(Placement(model, chosen, memory))
        if fits:
            plan.placements.append(claims[-1])
    always_share = {g: claimed(g) for g in range(gpus.count)}
    for model, fits in (c for c in candidates if c[0].mode == "on-demand"):
        order = sorted(range(gpus.count), key=lambda g: (always_share[g], g))
        chosen = tuple(sorted(order[:model.tensor_parallel_size]))
        over = [g for g in chosen if always_share[g] + model.gpu_memory_utilization
                > MAX_GPU_SHARE + 1e-9]
        if over:
            plan.problems.append(_sharing_problem(claims, model, chosen, over, memory))
        elif fits:
            plan.placements.append(Placement(model, chosen, memory))
    plan.on_demand_together = all(
        plan.share(g) <= MAX_GPU_SHARE + 1e-9 for g in range(gpus.count))
    return plan


def _sharing_problem(claims: list[Placement], model: Model, chosen: tuple[int, ...],
                     over: list[int], memory: float) -> tuple[str, str]:
    mode = model.mode
    gpu = over[0]
    others = [p for p in claims if gpu in p.gpus]
    used = sum(p.model.gpu_memory_utilization for p in others)
    free = round(MAX_GPU_SHARE - used, 2)
    names = ", ".join(f"{p.model.name!r} at {p.model.gpu_memory_utilization}" for p in others)
    short = (used + model.gpu_memory_utilization - MAX_GPU_SHARE) * memory
    fixes = []
    if free > 0 and model.kv_tokens(memory, free) >= model.max_model_len:
        fixes.append(f"gpu_memory_utilization {free:.2f} for {model.name!r} (KV cache "
                     f"{model.kv_tokens(memory, free)} tokens)")
    if mode == "always-on":
        fixes.append(f"mode on-demand for {model.name!r}")
    fixes.append(f"the others' gpu_memory_utilization lowered so the models on GPU {gpu} "
                 f"add up to at most {MAX_GPU_SHARE}")
    gpus_text = ", ".join(str(g) for g in chosen)
    return (f"{model.at}.gpu_memory_utilization", (
        f"model {model.name!r} ({mode}, tensor_parallel_size "
        f"{model.tensor_parallel_size}) cannot share GPU {gpus_text} with {names}: vLLM "
        f"reserves gpu_memory_utilization of each GPU per instance, so GPU {gpu} would need "
        f"{used + model.gpu_memory_utilization:.2f} of itself, more than {MAX_GPU_SHARE}; "
        f"short by {_gib(short)} per GPU; use {' or '.join(fixes)}"))


def plan_from_settings(gpus_raw: Any, models_raw: Any) -> Plan:
    """parse() then make_plan(); raises PlanInputError when the settings are unreadable."""
    gpus, models = parse(gpus_raw, models_raw)
    return make_plan(gpus, models)


# -- the table ----------------------------------------------------------------------------

COLUMNS = ("model", "mode", "GPUs", "TP", "util", "reserved/GPU", "weights/GPU",
           "overhead", "KV/GPU", "KV tokens", "max_model_len", "full-length seqs")


def format_plan(plan: Plan) -> str:
    gpus = plan.gpus
    lines = [f"GPUs: {gpus.count} x {gpus.memory_mib} MiB ({_gib(gpus.memory_gib)}); all "
             f"instances on one GPU may reserve at most {MAX_GPU_SHARE} of it"]
    rows = [COLUMNS]
    for model in plan.models:
        placement = plan.placement(model.name)
        memory = gpus.memory_gib
        tp = model.tensor_parallel_size
        rows.append((
            model.name, model.mode,
            ",".join(map(str, placement.gpus)) if placement else "-",
            str(tp), f"{model.gpu_memory_utilization:.2f}",
            f"{model.gpu_memory_utilization * memory:.2f}",
            f"{model.weights_gib / tp:.2f}", f"{model.overhead_gib:.2f}",
            f"{max(0.0, model.kv_gib_per_gpu(memory)):.2f}",
            f"{model.kv_tokens(memory):,}" if placement else "-", f"{model.max_model_len:,}",
            str(model.kv_tokens(memory) // model.max_model_len) if placement else "REFUSED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip())
    lines.append("(GiB per GPU; KV per token: "
                 + ", ".join(f"{m.name} {m.kv_bytes_per_token // KIB} KiB"
                             for m in plan.models) + ")")
    for g in range(gpus.count):
        always = plan.share(g, "always-on")
        demand = [p for p in plan.placements if g in p.gpus and p.model.mode == "on-demand"]
        most = max((p.model.gpu_memory_utilization for p in demand), default=0.0)
        lines.append(f"GPU {g}: always-on {always:.2f}, largest on-demand {most:.2f}, "
                     f"at most {always + most:.2f} of {MAX_GPU_SHARE}")
    if any(p.model.mode == "on-demand" for p in plan.placements):
        lines.append("on-demand models: " + (
            "all can be loaded at once" if plan.on_demand_together else
            "one at a time only (together they do not fit)"))
    if plan.problems:
        lines.append(f"REFUSED: {len(plan.problems)} problem(s)")
        lines += [f"  {f}: {t}" for f, t in plan.problems]
    else:
        lines.append("fits")
    return "\n".join(lines)
