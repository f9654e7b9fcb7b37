"""The options of a trace, in one object validated once: ``TraceOptions`` (what ``bin/trace`` takes) is a
``RunOptions`` (what each strategy's runs take) with the rest added. Imports nothing heavy."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import TracerError
from ..records.vocab import LOSSES, STRATEGIES


@dataclass(frozen=True)
class RunOptions:
    """What each strategy's runs take (strategies.run_strategy)."""
    repeats: int = 3  # timed untraced passes per strategy
    warmup: int = 1  # untimed passes first
    loss: str = "pooled_l2"  # audio_tower's surrogate loss (vocab.LOSSES)
    progress: bool = False  # tqdm bars on stderr during the timed passes
    keep_calls: bool = False  # per-call records, for the Chrome trace
    steps: int = 0  # real AdamW steps on the LoRA parameters, each traced (0: one traced pass, no step)
    lr: float = 1e-3
    parallel: str | None = None  # under torchrun: "ddp" wraps what each strategy runs in DistributedDataParallel


@dataclass(frozen=True)
class TraceOptions(RunOptions):
    """Everything ``bin/trace`` takes besides the clip, the model and the output files (same defaults). The
    runs' part is inherited from RunOptions: the pipeline hands this object to the strategies as it is."""
    strategy: str = "both"  # "both" or one of vocab.STRATEGIES
    lora: bool = True  # attach LoRA with peft before the runs
    lora_targets: str = "auto"  # auto | comma list | regex
    lora_r: int = 8
    lora_config: str | None = None  # a LoraConfig as JSON
    adapter: str | None = None  # an existing adapter directory
    prompt: str | None = None
    target: str | None = None
    offset: float = 0.0
    duration: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    static_only: bool = False
    steps: int = 1  # as the CLI: one real AdamW step per strategy (a bare RunOptions takes none)

    def validate(self) -> None:
        """Cheap checks, before any heavy import: TracerError with the flag's name, as the CLI shows it."""
        from ..load.model import DTYPES
        if self.strategy not in ("both", *STRATEGIES):
            raise TracerError(f"--strategy {self.strategy!r}: choose both, {', '.join(STRATEGIES)}")
        if self.loss not in LOSSES:
            raise TracerError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.repeats < 1:
            raise TracerError(f"--repeats {self.repeats}: must be at least 1")
        if self.warmup < 0:
            raise TracerError(f"--warmup {self.warmup}: must be 0 or more")
        chosen = [flag for flag, on in (("--no-lora", not self.lora), ("--lora-config", self.lora_config),
                                        ("--adapter", self.adapter)) if on]
        if len(chosen) > 1:
            raise TracerError(f"{' and '.join(chosen)} exclude each other")
        if self.steps < 0:
            raise TracerError(f"--steps {self.steps}: must be 0 or more")
        if not self.lr >= 0:
            raise TracerError(f"--lr {self.lr}: must be 0 or more")
        if self.lora_r < 1:
            raise TracerError(f"--lora-r {self.lora_r}: must be at least 1")
        if self.dtype not in DTYPES:
            raise TracerError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
