"""A short GPU check for sessions lent an accelerator: bf16 vs fp32 training throughput of our classifier,
and the torchrun/DDP path, as ratios against a reference measured in the same process.

    .venv/bin/python benchmarks/gpu_check.py            # -> benchmarks/results/gpu_check.json

On a machine without CUDA it measures the CPU only (fp32) so the script itself stays tested; the figures
that matter come from a GPU run (record them in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from mmhealth.core.config import from_config
from mmhealth.train.models import ClassifierSpec, EncoderInit, FusionClassifier, new_encoder


def classifier(hidden: int, layers: int, vocab: int, length: int) -> FusionClassifier:
    init = from_config(EncoderInit, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64))
    encoders = {"text": new_encoder("text", init, 0.1, vocab_size=vocab, max_length=length),
                "image": new_encoder("image", init, 0.1, image_shape=(3, 64, 64))}
    spec = ClassifierSpec(task="gpu_check", modalities=["text", "image"], classes=["0", "1"], fusion_dim=hidden)
    return FusionClassifier(spec, encoders)


def batch(units: int, rows: int, vocab: int, length: int, device: torch.device) -> dict:
    n = units * rows
    index = torch.arange(units, device=device).repeat_interleave(rows)
    ids = torch.randint(5, vocab, (n, length), device=device)
    return {"text": {"input_ids": ids, "attention_mask": torch.ones_like(ids), "bag_index": index},
            "image": {"pixel_values": torch.randn(n, 3, 64, 64, device=device), "bag_index": index}}


def units_per_second(model: FusionClassifier, device: torch.device, dtype: torch.dtype | None, steps: int,
                     units: int, rows: int, vocab: int, length: int) -> float:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, labels = batch(units, rows, vocab, length, device), torch.randint(0, 2, (units,), device=device)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(inputs, units).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * units / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--units", type=int, default=32, help="subjects per batch")
    parser.add_argument("--rows", type=int, default=4, help="rows per subject and modality")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = parser.parse_args(argv)
    shape = dict(units=args.units, rows=args.rows, vocab=4000, length=128)
    result = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    cpu = units_per_second(classifier(args.hidden, args.layers, 4000, 128), torch.device("cpu"), None,
                           max(2, args.steps // 5), **shape)
    result["cpu_fp32_units_per_s"] = round(cpu, 1)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        result["gpu"] = torch.cuda.get_device_name(0)
        fp32 = units_per_second(classifier(args.hidden, args.layers, 4000, 128), gpu, None, args.steps, **shape)
        bf16 = units_per_second(classifier(args.hidden, args.layers, 4000, 128), gpu, torch.bfloat16, args.steps,
                                **shape)
        result.update(gpu_fp32_units_per_s=round(fp32, 1), gpu_bf16_units_per_s=round(bf16, 1),
                      bf16_over_fp32=round(bf16 / fp32, 2), gpu_fp32_over_cpu=round(fp32 / cpu, 1),
                      gpus=torch.cuda.device_count())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("DDP: tests/test_training.py::test_two_processes_under_torchrun_train_one_model runs the torchrun path;"
          " on several GPUs set finetune.gpus and compare training.jsonl's units_per_s.")


if __name__ == "__main__":
    main()
