"""`python -m edge_lorax.export.genai_builder ARGS`: onnxruntime-genai's model builder (`python -m
onnxruntime_genai.models.builder ARGS`) on either transformers line.

onnxruntime-genai 0.18's builder is written against transformers 5.x: at module level it imports model classes only
newer releases have (Qwen3.5: stand-ins here, reached only when building those models), and it reads
config.rope_parameters, which 4.57 configs (the optimum environment) lack: they hold rope_theta and rope_scaling
(None or a dict), folded here into rope_parameters as 5.x writes it; a 5.x config.json read by 4.57 carries
rope_parameters as written plus 4.57's default rope_scaling None, which is dropped. On 5.x neither step changes
anything, except for Gemma 3 (`gemma3_text`): 5.x writes rope_parameters per layer type ({"full_attention": ...,
"sliding_attention": ...}) while the builder's Gemma3Model reads one flat rope_parameters (the global layers') and
rope_local_base_freq (the sliding layers' theta, a 4.57 config field): the global layers' keys are added beside the
per-type ones (the same config object then loads the torch model, which reads the per-type ones) and
rope_local_base_freq is set; and for LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini), whose kind the builder reads from
4.x's key rope_parameters["type"], that key is added beside 5.x's "rope_type".
"""

import runpy

BUILDER = "onnxruntime_genai.models.builder"
MISSING = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")


def _rope_parameters(config):
    have = getattr(config, "__dict__", {})
    per_type = have.get("rope_parameters")
    if getattr(config, "model_type", None) == "gemma3_text" and isinstance(per_type, dict) and "full_attention" in per_type:
        config.rope_parameters = {**per_type, **per_type["full_attention"]}  # Gemma 3 on 5.x: one dict per layer type
        if "rope_local_base_freq" not in have:
            config.rope_local_base_freq = per_type.get("sliding_attention", per_type["full_attention"])["rope_theta"]
        return
    if "rope_parameters" in have and "rope_scaling" in have and config.rope_scaling is None:
        del config.rope_scaling  # a 5.x config.json read by 4.57 (its default rope_scaling None beside the 5.x key)
    elif "rope_scaling" in have and "rope_parameters" not in have and hasattr(config, "rope_theta"):
        scaling = config.rope_scaling or {}
        del config.rope_scaling
        config.rope_parameters = {"rope_type": scaling.get("rope_type", scaling.get("type", "default")),
                                  "rope_theta": config.rope_theta, **scaling}
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("rope_type") == "longrope" and "type" not in rope:
        rope["type"] = "longrope"  # the builder's Phi3MiniLongRoPEModel reads 4.x's key


def main():
    import transformers

    for name in MISSING:
        if not hasattr(transformers, name):
            setattr(transformers, name, type(name, (), {}))
    load = transformers.AutoConfig.from_pretrained

    def from_pretrained(*args, **kwargs):
        loaded = load(*args, **kwargs)
        _rope_parameters(loaded[0] if isinstance(loaded, tuple) else loaded)  # return_unused_kwargs=True: a tuple
        return loaded

    transformers.AutoConfig.from_pretrained = from_pretrained
    runpy.run_module(BUILDER, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
