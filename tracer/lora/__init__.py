"""LoRA with peft: where a PEFT model keeps its layers, attaching an adapter, a saved adapter's file checks."""
