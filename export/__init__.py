"""The export stage: merge a LoRA adapter into its base, write GGUF and ONNX students, verify them
against the merged model, and publish those that pass in a `manifest.json` the daemon loads.

    merged -> converted (f16 GGUF, fp32 ONNX) -> quantized -> verified -> published

Heavy dependencies (torch, transformers, optimum, onnxruntime) load only inside the steps that
need them; `appliance.protocol.manifest` stays light so the daemon can read manifests cheaply.
"""
