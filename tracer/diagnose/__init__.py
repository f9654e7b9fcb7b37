"""Judgement: why a LoRA layer got no gradient, notes no single layer carries, the verdict, the static claims confirmed."""
