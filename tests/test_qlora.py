"""QLoRA: a base loaded in 4-bit or 8-bit by real bitsandbytes (0.50 runs both on CPU), counted in values not
packed storage, reported per component, and the prepare_model_for_kbit_training causes (../shared/CAUSES.md
row 7) named with a fix that, applied, makes the layers learn. Real backward passes; nothing mocked. Skips
where bitsandbytes is not installed, except the check that a 4-bit checkpoint then stops in one line."""
import json
import shutil
import subprocess
import sys
from functools import partial

import models
import pytest
import torch
from helpers import ROOT, tiny_inputs
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from tracer.api.tracer import Tracer
from tracer.static.discovery import static_report
from tracer.load.assets import BUILTIN_MODEL_DIR
from tracer.render.static import render_static
from tracer.collect.tensor_memory import TensorMemory

LEARNING = {"ok", "zero_init"}
needs_bnb = pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes not installed (pip install -e '.[qlora]')")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def reloaded(model, directory, **quantization):
    """``model`` saved and loaded back as a user loads a base: in 4-bit/8-bit through BitsAndBytesConfig, or in
    a dtype (``dtype=``)."""
    model.save_pretrained(directory)
    if "dtype" in quantization:
        return type(model).from_pretrained(directory, dtype=quantization["dtype"])
    from transformers import BitsAndBytesConfig
    return type(model).from_pretrained(directory, quantization_config=BitsAndBytesConfig(**quantization),
                                       device_map="cpu")


NF4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def traced(model, step):
    with Tracer(model) as tr:
        step()
    run = tr.result()
    return {r["path"].removeprefix("base_model.model."): r for r in run["lora"]}, run


@needs_bnb
def test_counts_are_equal_before_and_after_4bit_loading_and_the_report_names_the_quantization(tmp_path):
    full = models.builtin_model()
    before = static_report(full)
    quantized = reloaded(full, tmp_path, **NF4)
    after = static_report(quantized)
    assert type(quantized.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    # the packed storage holds half the values: 240,256 numel() in all, 311,936 values
    assert sum(p.numel() for p in quantized.parameters()) == 240_256
    assert after.params_total == before.params_total == quantized.num_parameters() == 311_936
    assert after.components == before.components
    assert [(r.path, r.params) for r in after.tree] == [(r.path, r.params) for r in before.tree]
    assert [r.params for r in after.top_level] == [r.params for r in before.top_level]
    q = after.quantization
    assert {c for c, v in q.items() if v.quantized} == {"audio_encoder", "projector", "language_model"}
    assert q["language_model"].formats == ["nf4"] and q["language_model"].compute_dtype == "float32"
    assert (q["language_model"].quantized_layers, q["language_model"].quantized_values) == (14, 73_728)
    assert not q["head"].quantized and q["head"].weight_bytes == 16_768 * 4  # lm_head stays float32
    # 4-bit: half a byte a value, plus a float32 absmax per block of 64
    assert q["projector"].weight_bytes == 4096 // 2 + 4096 // 64 * 4 + 64 * 4  # weight, absmax, float32 bias
    assert not any(v.quantized for v in before.quantization.values())
    assert sum(v.weight_bytes for v in before.quantization.values()) == 311_936 * 4
    text = "\n".join(s.body for s in render_static(after))
    assert "quantized   bitsandbytes: audio_encoder nf4, projector nf4, language_model nf4; compute float32" in text
    assert "    language_model  108.2 KiB  nf4, 14 quantized layers (73,728 values), compute float32" in text
    assert "quantized" not in "\n".join(s.body for s in render_static(before))  # full precision: as before
    static = json.loads(json.dumps(after.to_dict()))
    assert static["quantization"]["audio_encoder"] == {
        "quantized": True, "formats": ["nf4"], "compute_dtype": "float32", "quantized_layers": 12,
        "quantized_values": 65_536, "weight_bytes": q["audio_encoder"].weight_bytes}
    # memory: the weights once, in their real bytes (packed data and quant states)
    with TensorMemory(torch.device("cpu"), quantized) as tm:
        pass
    assert tm.parameters == sum(v.weight_bytes for v in q.values()) == 754_944  # 1,247,744 in float32


@needs_bnb
def test_8bit_counts_and_lora_on_linear8bitlt_learns(tmp_path):
    base = reloaded(models.text_only_lm(tied=False), tmp_path, load_in_8bit=True)
    report = static_report(base)
    assert report.params_total == models.text_only_lm(tied=False).num_parameters() == base.num_parameters()
    assert report.quantization["language_model"].formats == ["int8"]
    # int8: a byte a value, a float32 scale per output row (SCB)
    assert report.quantization["language_model"].weight_bytes > report.quantization["language_model"].quantized_values
    model = get_peft_model(prepare_model_for_kbit_training(base, use_gradient_checkpointing=False),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    ids = torch.randint(0, 100, (1, 8))
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert len(lora) == 4 and {r["status"] for r in lora.values()} == {"zero_init"}
    assert all(r["grad_norm_B"] > 0 for r in lora.values())


@needs_bnb
def test_kbit_preparation_after_the_adapter_on_a_4bit_base_is_named_and_preparing_first_fixes_it(tmp_path):
    """trl PR#4081: prepare_model_for_kbit_training after get_peft_model freezes the LoRA weights too."""
    loaded, inputs = tiny_inputs()
    base = reloaded(loaded.model, tmp_path / "a", **NF4)
    model = prepare_model_for_kbit_training(get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])))
    model.train()
    lora, _ = traced(model, lambda: model(**inputs.full).loss.backward())
    assert len(lora) == 4 and {r["status"] for r in lora.values()} == {"frozen"}
    layer = next(iter(lora.values()))
    assert "on a 4-/8-bit base" in layer["cause"] and "after get_peft_model" in layer["cause"]
    assert layer["hint"].startswith("call prepare_model_for_kbit_training(base) first, then get_peft_model")
    # the fix: prepare the base, then attach the adapter
    base = prepare_model_for_kbit_training(reloaded(loaded.model, tmp_path / "b", **NF4))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    model.train()
    lora, _ = traced(model, lambda: model(**inputs.full).loss.backward())
    assert len(lora) == 4 and {r["status"] for r in lora.values()} <= LEARNING


def _own_reentrant_checkpointing(model):
    """A reentrant checkpoint of one's own (Unsloth's, a training script's) around each LM layer; a 4-bit base
    gets no input-grad hook from get_peft_model (peft leaves that to prepare_model_for_kbit_training)."""
    for layer in model.base_model.model.model.layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)


@needs_bnb
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_reentrant_checkpointing_on_a_4bit_base_names_kbit_preparation_and_the_fix_works(tmp_path):
    ids = torch.randint(0, 100, (1, 8))
    base = reloaded(models.text_only_lm(tied=False), tmp_path / "a", **NF4)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    _own_reentrant_checkpointing(model)
    model.train()
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    layer = lora["model.layers.0.self_attn.q_proj"]
    assert layer["status"] == "no_grad_mode" and "reentrant checkpoint (CheckpointFunction)" in layer["cause"]
    assert ("prepare_model_for_kbit_training(base, gradient_checkpointing_kwargs={'use_reentrant': False}) "
            "before get_peft_model") in layer["hint"]
    # prepare's own default: reentrant checkpointing, which the note names (its input-grad hooks keep it working)
    base = prepare_model_for_kbit_training(reloaded(models.text_only_lm(tied=False), tmp_path / "b", **NF4))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    model.train()
    lora, run = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert {r["status"] for r in lora.values()} <= LEARNING
    assert [n for n in run["notes"] if n.startswith("gradient checkpointing is on and reentrant on this 4-/8-bit")]
    # the fix the hint gives: non-reentrant checkpointing from prepare_model_for_kbit_training itself
    base = prepare_model_for_kbit_training(reloaded(models.text_only_lm(tied=False), tmp_path / "c", **NF4),
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    model.train()
    lora, run = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert {r["status"] for r in lora.values()} <= LEARNING
    assert not [n for n in run["notes"] if "reentrant" in n]


def test_kbit_preparation_of_a_full_precision_base_is_noted_and_leaving_it_out_fixes_it(tmp_path):
    """peft PR#760: prepare_model_for_kbit_training on a base that is not 4-/8-bit upcasts it to float32."""
    ids = torch.randint(0, 100, (1, 8))
    base = prepare_model_for_kbit_training(reloaded(models.text_only_lm(tied=False), tmp_path, dtype=torch.bfloat16))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    lora, run = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert {r["status"] for r in lora.values()} == {"zero_init"}
    notes = [n for n in run["notes"] if "prepare_model_for_kbit_training upcasts" in n]
    assert len(notes) == 1 and notes[0].startswith("the base is not quantized, yet its frozen weights are float32")
    assert "says bfloat16" in notes[0] and "leave it out" in notes[0]
    # the fix: no prepare_model_for_kbit_training on a full-precision base (get_peft_model freezes it)
    base = type(base).from_pretrained(tmp_path, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    lora, run = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert {r["status"] for r in lora.values()} == {"zero_init"}
    assert not [n for n in run["notes"] if "prepare_model_for_kbit_training" in n]


def _checkpoint_dir(tmp_path, model, quantization: dict | None = None):
    """``model`` saved with the built-in processor; ``quantization``: written into config.json by hand (what a
    checkpoint saved in 4-bit carries), else the model's own (a quantized model saved as it is)."""
    directory = tmp_path / "ckpt"
    model.save_pretrained(directory)
    for name in ("chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUILTIN_MODEL_DIR / name, directory / name)
    if quantization is not None:
        config = json.loads((directory / "config.json").read_text())
        config["quantization_config"] = quantization
        (directory / "config.json").write_text(json.dumps(config))
    return directory


QUANT_4BIT = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
              "bnb_4bit_compute_dtype": "float32"}


def test_a_4bit_checkpoint_without_bitsandbytes_stops_in_one_line(tmp_path):
    directory = _checkpoint_dir(tmp_path, models.builtin_model(), QUANT_4BIT)
    # bitsandbytes hidden from this process the way an absent package is: find_spec() finds nothing
    code = ("import sys; sys.modules['bitsandbytes'] = None; sys.path.insert(0, sys.argv[1]); "
            "from tracer.cli.main import main; sys.argv = ['trace', '--model', sys.argv[2], '--static-only']; "
            "sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code, ROOT, str(directory)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --model {directory}: its weights are bitsandbytes 4-bit (quantization_config in config.json), "
        "which needs bitsandbytes, not installed: pip install bitsandbytes (or pip install -e '.[qlora]')"]


@needs_bnb
def test_a_4bit_checkpoint_through_the_cli_counts_values_and_names_the_quantization(tmp_path):
    directory = _checkpoint_dir(tmp_path, reloaded(models.builtin_model(), tmp_path / "full", **NF4))
    out = tmp_path / "static.json"
    result = subprocess.run([sys.executable, f"{ROOT}/bin/trace", "--model", str(directory), "--static-only",
                             "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["model"]["params_total"] == 311_936
    assert record["static"]["quantization"]["language_model"]["formats"] == ["nf4"]
    assert record["static"]["quantization"]["head"]["quantized"] is False
    assert "quantized   bitsandbytes: audio_encoder nf4" in result.stdout
