"""A short GPU check for sessions lent an accelerator (one prepared script, under 5 minutes):

1. our classifier, bf16 autocast against fp32, units/s (ratio in the same process);
2. a BERT-base-sized encoder (hidden 768, 12 layers, 12 heads, FFN 3072) in our FusionClassifier at sequence
   length 512, bf16 autocast, TF32, SDPA attention, AdamW: samples/s and model FLOP utilisation (MFU:
   achieved model FLOP/s over the GPU's dense bf16 peak; target >= 40 %);
3. a 2-process DDP smoke test through `mmhealth.train.distributed.wrap` (NCCL on two GPUs; gloo on CUDA
   tensors when one GPU holds both ranks; gloo on CPU with --tiny): the ranks train on different batches
   and must end with identical weights.

    .venv/bin/python benchmarks/gpu_check.py            # -> benchmarks/results/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --tiny     # CPU self-test of the script itself (~1 min)

Model FLOPs per sample (training): 6 x non-embedding parameters x tokens + 12 x layers x length^2 x hidden
(attention scores and mixing, forward and backward), as in the usual MFU accounting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from mmhealth.core.config import from_config
from mmhealth.train.distributed import Processes, wrap
from mmhealth.train.models import ClassifierSpec, EncoderInit, FusionClassifier, new_encoder

# Dense bf16 peak TFLOP/s by device name (vendor data sheets, SXM parts where several exist).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 6000 Ada": 364.0, "A6000": 155.0, "V100": 125.0}


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    for key, value in BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def classifier(hidden: int, layers: int, vocab: int, length: int, heads: int | None = None,
               image: bool = True, intermediate: int | None = None) -> FusionClassifier:
    init = from_config(EncoderInit, hidden_size=hidden, num_layers=layers, num_heads=heads or max(1, hidden // 64),
                       intermediate_size=intermediate)
    encoders = {"text": new_encoder("text", init, 0.1, vocab_size=vocab, max_length=length)}
    if image:
        encoders["image"] = new_encoder("image", init, 0.1, image_shape=(3, 64, 64))
    spec = ClassifierSpec(task="gpu_check", modalities=list(encoders), classes=["0", "1"], fusion_dim=hidden)
    return FusionClassifier(spec, encoders)


def batch(units: int, rows: int, vocab: int, length: int, device: torch.device, image: bool = True) -> dict:
    n = units * rows
    index = torch.arange(units, device=device).repeat_interleave(rows)
    ids = torch.randint(5, vocab, (n, length), device=device)
    out = {"text": {"input_ids": ids, "attention_mask": torch.ones_like(ids), "bag_index": index}}
    if image:
        out["image"] = {"pixel_values": torch.randn(n, 3, 64, 64, device=device), "bag_index": index}
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def units_per_second(model: FusionClassifier, device: torch.device, dtype: torch.dtype | None, steps: int,
                     units: int, rows: int, vocab: int, length: int, image: bool = True) -> float:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = batch(units, rows, vocab, length, device, image)
    labels = torch.randint(0, 2, (units,), device=device)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            sync(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(inputs, units).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * units / (time.perf_counter() - started)


def bert_base(args, device: torch.device, name: str) -> dict:
    """Encoder samples/s and MFU at sequence length args.length, bf16 on a GPU (fp32 on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = classifier(args.bert_hidden, args.bert_layers, 30522, args.length, heads=args.bert_heads,
                       image=False, intermediate=4 * args.bert_hidden)
    encoder = model.encoders["text"]
    embedding = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" in n)
    params = sum(p.numel() for p in encoder.parameters()) - embedding
    dtype = torch.bfloat16 if device.type == "cuda" else None
    rate = units_per_second(model, device, dtype, args.bert_steps, args.bert_batch, 1, 30522, args.length,
                            image=False)
    flops = 6 * params * args.length + 12 * args.bert_layers * args.length ** 2 * args.bert_hidden
    achieved = rate * flops / 1e12
    peak = peak_tflops(name, args.peak_tflops) if device.type == "cuda" else None
    out = {"hidden": args.bert_hidden, "layers": args.bert_layers, "length": args.length, "batch": args.bert_batch,
           "dtype": "bf16" if dtype else "fp32", "non_embedding_params": params, "samples_per_s": round(rate, 2),
           "model_tflops": round(achieved, 3), "peak_bf16_tflops": peak,
           "mfu": round(achieved / peak, 3) if peak else None}
    if device.type == "cuda":
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def ddp_worker(rank: int, world: int, port: int, tiny: bool, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    gpus = torch.cuda.device_count() if not tiny else 0
    device = torch.device(f"cuda:{rank % gpus}") if gpus else torch.device("cpu")
    if gpus:
        torch.cuda.set_device(device)
    # NCCL refuses two ranks on one GPU; gloo reduces CUDA tensors too (slower, enough for a smoke test).
    dist.init_process_group("nccl" if gpus >= world else "gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
    hidden, length = (32, 16) if tiny else (256, 128)
    model = classifier(hidden, 2, 1000, length).to(device)
    trained = wrap(model, Processes(rank=rank, world=world, local_rank=rank, device_index=device.index or 0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(100 + rank)  # each rank its own batches
    units, steps = 8, 5
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        inputs = batch(units, 2, 1000, length, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = trained(inputs, units)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.randint(0, 2, (units,), device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    seconds = time.perf_counter() - started
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        Path(result_file).write_text(json.dumps({
            "backend": dist.get_backend(), "device": str(device), "processes": world,
            "weights_equal_across_ranks": all(torch.equal(gathered[0], g) for g in gathered[1:]),
            "units_per_s": round(world * units * steps / seconds, 1)}))
    dist.barrier()
    dist.destroy_process_group()


def ddp_smoke(tiny: bool, out_dir: Path) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result_file = out_dir / "gpu_check_ddp.json"
    result_file.unlink(missing_ok=True)
    mp.start_processes(ddp_worker, args=(2, port, tiny, str(result_file)), nprocs=2, start_method="spawn")
    return json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU self-test with small shapes")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--units", type=int, default=32, help="subjects per batch")
    parser.add_argument("--rows", type=int, default=4, help="rows per subject and modality")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--length", type=int, default=512, help="BERT-base sequence length")
    parser.add_argument("--bert-batch", type=int, default=32)
    parser.add_argument("--bert-steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = parser.parse_args(argv)
    args.bert_hidden, args.bert_layers, args.bert_heads = 768, 12, 12
    if args.tiny:
        args.hidden, args.layers, args.units, args.rows, args.steps = 32, 1, 4, 2, 2
        args.length, args.bert_batch, args.bert_steps = 64, 2, 2
        args.bert_hidden, args.bert_layers, args.bert_heads = 64, 2, 2
    started = time.perf_counter()
    shape = dict(units=args.units, rows=args.rows, vocab=4000, length=128 if not args.tiny else 16)
    result = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available(),
              "tiny": args.tiny}
    cpu = units_per_second(classifier(args.hidden, args.layers, 4000, 128), torch.device("cpu"), None,
                           max(2, args.steps // 5), **shape)
    result["cpu_fp32_units_per_s"] = round(cpu, 1)
    gpu = torch.device("cuda") if torch.cuda.is_available() and not args.tiny else None
    name = torch.cuda.get_device_name(0) if gpu is not None else platform.processor() or "cpu"
    if gpu is not None:
        result["gpu"], result["gpus"] = name, torch.cuda.device_count()
        fp32 = units_per_second(classifier(args.hidden, args.layers, 4000, 128), gpu, None, args.steps, **shape)
        bf16 = units_per_second(classifier(args.hidden, args.layers, 4000, 128), gpu, torch.bfloat16, args.steps,
                                **shape)
        result.update(gpu_fp32_units_per_s=round(fp32, 1), gpu_bf16_units_per_s=round(bf16, 1),
                      bf16_over_fp32=round(bf16 / fp32, 2), gpu_fp32_over_cpu=round(fp32 / cpu, 1))
    result["bert_base"] = bert_base(args, gpu or torch.device("cpu"), name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result["ddp"] = ddp_smoke(args.tiny or gpu is None, args.out.parent)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["ddp"]["weights_equal_across_ranks"]:
        raise SystemExit("DDP smoke test: ranks ended with different weights")


if __name__ == "__main__":
    main()
