"""The static report on the layouts it must handle: real transformers models, real peft."""
import models
import pytest
import torch
from peft import LoraConfig, get_peft_model

from tracer.static.discovery import static_report
from tracer.load.model import load_model
from tracer.render.static import render_static, render_tree


@pytest.fixture(scope="module")
def builtin_report():
    return static_report(models.builtin_model())


def test_5x_layout_finds_tower_under_model_not_top_level(builtin_report):
    enc = builtin_report.audio_encoder
    assert (enc.path, enc.cls, enc.found_by) == ("model.audio_tower", "Qwen2AudioEncoder", "name 'audio_tower'")
    assert (enc.num_layers, enc.hidden_size, enc.layer_class) == (2, 64, "Qwen2AudioEncoderLayer")
    assert [n for n, _ in enc.layer_children] == ["self_attn", "self_attn_layer_norm", "activation_fn",
                                                  "fc1", "fc2", "final_layer_norm"]
    lm = builtin_report.language_model
    assert (lm.path, lm.cls, lm.num_layers, lm.hidden_size) == ("model.language_model", "Qwen2Model", 2, 64)


def test_components_add_up_to_total(builtin_report):
    r = builtin_report
    assert sum(r.components.values()) == r.params_total == sum(
        p.numel() for p in models.builtin_model().parameters())
    assert r.components["head"] == 262 * 64  # lm_head, untied
    assert r.components["projector"] == 64 * 64 + 64
    assert r.components["other"] == 0


def test_lora_candidates_per_component_and_o_proj_gap(builtin_report):
    c = builtin_report.lora_candidates
    assert c["q_proj"] == {"audio_encoder": 2, "language_model": 2}
    assert c["out_proj"] == {"audio_encoder": 2}
    assert c["o_proj"] == {"language_model": 2}
    assert c["gate_proj"] == {"language_model": 2}
    gaps = {(g.name, g.component): g.use_instead for g in builtin_report.target_gaps}
    assert gaps[("o_proj", "audio_encoder")] == ["out_proj"]
    assert gaps[("out_proj", "language_model")] == ["o_proj"]
    assert ("q_proj", "audio_encoder") not in gaps


def test_strategy_audio_tower_with_encoder_targets(builtin_report):
    s = builtin_report.strategy
    assert s.chosen == "audio_tower"
    assert s.hidden_size == 64
    assert s.lora_targets == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def test_legacy_4x_layout_tower_at_top_level():
    r = static_report(models.LegacyQwen2Audio())
    assert r.audio_encoder.path == "audio_tower"
    assert r.language_model.path == "language_model"
    assert r.language_model.cls == "Qwen2ForCausalLM"
    # the 4.x head lives inside the *ForCausalLM, and is still counted as the head
    assert r.components["head"] == 262 * 64
    assert r.strategy.chosen == "audio_tower"
    # its hidden state is its layers' owner's output (confirmation measures that, not the logits)
    assert r.language_model.layers_path == "language_model.model.layers"


def test_tree_indents_the_children_of_a_last_child():
    """The 4.x layout's language_model comes last and has children: they stay under it, not at the edge."""
    lines = render_tree(static_report(models.LegacyQwen2Audio()).tree, depth=2).splitlines()
    assert lines[0].split() == ["module", "params"]
    at = next(i for i, line in enumerate(lines) if line.startswith("└── language_model: Qwen2ForCausalLM"))
    assert lines[at + 1].startswith("    ├── model: Qwen2Model")
    assert lines[at + 2].startswith("    └── lm_head: Linear")


def test_peft_wrapped_paths_and_wrapped_layers_counted_once():
    model = get_peft_model(models.builtin_model(), LoraConfig(target_modules=["q_proj", "v_proj"], r=4))
    r = static_report(model)
    assert r.audio_encoder.path == "base_model.model.model.audio_tower"
    assert r.language_model.path == "base_model.model.model.language_model"
    # the LoRA wrapper is the candidate, not its base_layer/lora_A/lora_B internals
    assert r.lora_candidates["q_proj"] == {"audio_encoder": 2, "language_model": 2}
    assert "base_layer" not in r.lora_candidates and "default" not in r.lora_candidates
    # trainable = lora_A (r x in) + lora_B (out x r) on 8 layers; the LM's v_proj is 64 -> 32 (2 kv heads)
    tower = 4 * (4 * 64 + 64 * 4)
    lm_q, lm_v = 2 * (4 * 64 + 64 * 4), 2 * (4 * 64 + 32 * 4)
    assert r.params_trainable == tower + lm_q + lm_v


def test_whisper_encoder_found_by_class():
    r = static_report(models.whisper())
    assert r.audio_encoder.path == "model.encoder"
    assert r.audio_encoder.found_by == "class 'WhisperEncoder'"
    assert r.language_model.path == "model.decoder"
    assert r.strategy.chosen == "audio_tower"


def test_text_only_full_forward_and_tied_weights_counted_once():
    model = models.text_only_lm(tied=True)
    r = static_report(model)
    assert r.audio_encoder is None
    assert r.strategy.chosen == "full_forward"
    assert "no audio encoder" in r.strategy.reason
    assert r.strategy.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                       "down_proj"]
    assert r.shared_parameters == [["lm_head.weight", "model.embed_tokens.weight"]]
    unique = sum(p.numel() for p in model.parameters())  # parameters() dedupes
    assert r.params_total == unique
    assert r.params_total < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


def test_7b_config_on_meta_matches_public_counts(root):
    loaded = load_model(config=f"{root}/samples/qwen2-audio-7b.json", device=torch.device("cpu"),
                        dtype=torch.bfloat16, static_only=True)
    assert loaded.on_meta and next(loaded.model.parameters()).is_meta
    r = static_report(loaded.model)
    assert r.params_total == 8_397_094_912
    assert r.components == {"audio_encoder": 636_968_960, "projector": 5_246_976,
                            "language_model": 7_115_771_904, "head": 639_107_072, "other": 0}
    assert r.audio_encoder.num_layers == 32 and r.language_model.num_layers == 32
    assert r.lora_candidates["o_proj"] == {"language_model": 32}


def test_text_report_has_8_steps_and_collapsed_layers(builtin_report):
    sections = render_static(builtin_report, depth=4)
    assert [s.tag for s in sections] == [f"STEP {n}" for n in range(1, 9)]
    text = "\n".join(s.text() for s in sections)
    assert "0-1 ×2: Qwen2AudioEncoderLayer" in text
    assert "'o_proj' matches nothing in audio_encoder; it uses out_proj" in text


def test_tree_depth_limit(builtin_report):
    shallow = render_tree(builtin_report.tree, depth=1)
    assert "model: Qwen2AudioModel" in shallow and "audio_tower" not in shallow


def test_phi4_multimodal_encoder_is_the_owner_of_its_layers_and_vision_is_not_the_lm():
    """Phi-4-multimodal nests its audio encoder in the LM's embedding (audio_embed.encoder, conformer blocks
    in `encoders`) beside the speech projections and an image tower. Built on meta at full size."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM
    with torch.device("meta"):
        model = Phi4MultimodalForCausalLM(Phi4MultimodalConfig())
    r = static_report(model)
    assert r.audio_encoder.path == "model.embed_tokens_extend.audio_embed.encoder"
    assert r.audio_encoder.num_layers == model.config.audio_config.num_blocks == 24
    assert r.language_model.path == "model" and r.language_model.num_layers == 32
    of = r.component_of
    assert of["model.embed_tokens_extend.audio_embed.up_proj_for_speech"] == "projector"
    assert of["model.embed_tokens_extend.image_embed"] == "other"
    assert of["model.layers.0.mlp.down_proj"] == "language_model" and of["lm_head"] == "head"
    encoder_params = sum(p.numel() for p in model.model.embed_tokens_extend.audio_embed.encoder.parameters())
    assert r.components["audio_encoder"] == encoder_params
