"""PROJECTION (no GPU was used): the full study - LAION-400M (400M embeddings, dim 640) against the ~167k images of
the six benchmarks, with the ImageNet-train reference search first and similarity-gap margins - on one H200,
from rates measured on this CPU by gap_statistics.py and embed_throughput.py (their JSON outputs are the inputs).
Every assumption is a parameter and is printed. Prints one JSON object.

    python benchmarks/projection.py --gap gap.json [--embed embed.json] [--peak-tflops 790 --read-gbps 5 ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clipsim.search.scan import TILE_ELEMENTS

BENCHMARKS = {"imagenet-val": 50_000, "imagenet-v2": 10_000, "imagenet-sketch": 50_889, "imagenet-r": 30_000,
              "imagenet-a": 7_500, "objectnet": 18_574}  # standard sizes (PAPER.md)
IMAGENET_TRAIN = 1_281_167
# Bytes moved through HBM per element of the float32 product tile, counted from clipsim/search/scan.py and tiles.py: the
# product written (4) and read once for the bucket maxima R (4); everything else runs on R, 1/16 of the tile: the
# top-k's segment maxima, comparison and nonzero (~10 bytes per R element), the row maximum's amax, comparison and
# nonzero (~10), and for margins low(R) and high(R) minus the bucket offsets, their amax and comparison (~60); the
# gathered entries of candidate bucket-columns are a few per train row. (8 + 80/16 and 8 + 20/16, rounded up.)
# The tile (64 MB) does not stay in the 50 MB L2 cache, so each pass goes to HBM.
TILE_BYTES_PER_ELEMENT = 14.0
TILE_BYTES_NO_MARGIN = 10.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gap", required=True, help="JSON printed by benchmarks/gap_statistics.py")
    p.add_argument("--embed", help="JSON printed by benchmarks/embed_throughput.py (adds the embedding stage)")
    p.add_argument("--precision", default="bf16", help="which gap_statistics run gives the screen efficiency")
    p.add_argument("--recheck-precision", default="fp32",
                   help="which run gives re-check pairs per row (fp32: exact inputs, the closest bound to CUDA fp16)")
    p.add_argument("--train", type=int, default=400_000_000)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--tests", type=int, default=sum(BENCHMARKS.values()))
    p.add_argument("--reference-rows", type=int, default=IMAGENET_TRAIN)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--test-sets", type=int, default=len(BENCHMARKS), help="groups with their own per-row statistics")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="H200 dense fp16/bf16 tensor-core peak")
    p.add_argument("--matmul-efficiency", type=float,
                   help="fraction of peak the screen products reach (default: the one measured on this CPU)")
    p.add_argument("--hbm-tbps", type=float, default=4.8)
    p.add_argument("--hbm-efficiency", type=float, default=0.7, help="fraction of HBM bandwidth elementwise passes reach")
    p.add_argument("--tile-bytes-per-element", type=float, default=TILE_BYTES_PER_ELEMENT)
    p.add_argument("--read-gbps", type=float, default=5.0, help="disk / network filesystem read rate into the node")
    p.add_argument("--write-gbps", type=float, default=2.0, help="write rate of the per-row statistics")
    p.add_argument("--recheck-pairs-per-s", type=float, default=1e9,
                   help="float64 re-checks per second on the GPU: each gathers two dim-640 float16 rows (2.5 kB) "
                        "from HBM (4.8 TB/s / 2.5 kB = 1.9e9/s) and does 1280 FP64 flops (34 TFLOP/s: 2.6e10/s)")
    p.add_argument("--recheck-bound-scale", type=float, default=4.0,
                   help="the CUDA fp16 screen's bound is 4x the CPU fp32 one (tensor-core accumulation, 2^-22 vs "
                        "2^-24 per term): near-max candidates beyond the first per statistic scale with it")
    p.add_argument("--gpus", type=int, default=1, help="GPUs sharing the train shards (a search array of that size)")
    p.add_argument("--embed-model", default="ViT-B-16-plus-240")
    p.add_argument("--embed-image-size", type=int, default=240)
    p.add_argument("--embed-efficiency", type=float, default=0.4, help="fraction of peak a ViT fp16 forward reaches")
    p.add_argument("--cpu-cores-per-gpu", type=int, default=16, help="decode cores beside each GPU")
    p.add_argument("--image-kb", type=float, help="encoded bytes per web image (default: the generated JPEGs' mean)")
    return p.parse_args(argv)


def measured(gap: dict, embed: dict | None, args) -> dict:
    """The rates and fractions taken from the benchmark outputs."""
    run, rec = gap["runs"][args.precision], gap["runs"][args.recheck_precision]
    peak_key = "torch_bf16_matmul_gflops" if args.precision == "bf16" else "numpy_sgemm_gflops"
    out = {
        "cpu_matmul_peak_gflops": gap["peak"][peak_key],
        "cpu_screen_gflops": run["breakdown"]["screen_gflops"],
        "cpu_screen_efficiency": round(run["breakdown"]["screen_gflops"] / gap["peak"][peak_key], 3),
        "cpu_search_effective_gflops": run["effective_gflops"],
        "cpu_product_share_of_scan": run["breakdown"]["product_share"],
        "rechecked_pairs_per_train_row": rec["breakdown"]["rechecked_pairs_per_train_row"],
        "measured_tests": gap["config"]["tests"], "measured_dim": gap["config"]["dim"],
        "bytes_read_per_train_row": gap["web_bytes_per_row"],
        "exact": all(v == 0 for r in gap["runs"].values() for k, v in r["check"].items() if k.endswith("differ")),
        "gap_load_average_at_start": gap["machine"]["load_average_at_start"],
    }
    if embed:
        bare = embed["bare"]
        out.update({"embed_cpu_decode_ms_per_image": bare["decode_preprocess_ms_per_image"],
                    "embed_pipeline_best_ratio": embed["summary"]["best_ratio"],
                    "embed_mean_jpeg_kb": embed["data"]["mean_jpeg_kb"]})
    return out


def search_stage(rows: int, margins: bool, m: dict, args) -> dict:
    """Seconds of one search pass over `rows` train rows on one GPU, by component."""
    efficiency = args.matmul_efficiency if args.matmul_efficiency is not None else m["cpu_screen_efficiency"]
    elements = float(args.tests) * rows
    flops = 2.0 * elements * args.dim
    compute_s = flops / (args.peak_tflops * 1e12 * efficiency)
    bytes_read = rows * m["bytes_read_per_train_row"] * args.dim / m["measured_dim"]  # float16 rows scale with dim
    read_s = bytes_read / (args.read_gbps * 1e9)
    tile_bytes = args.tile_bytes_per_element if margins else min(args.tile_bytes_per_element, TILE_BYTES_NO_MARGIN)
    elementwise_s = elements * tile_bytes / (args.hbm_tbps * 1e12 * args.hbm_efficiency)
    base = 2.0 if margins else 1.0  # the row maximum (and the margin maximum) is re-checked once per row anyway
    extra = max(0.0, m["rechecked_pairs_per_train_row"] - 2.0) * args.tests / m["measured_tests"]
    pairs = rows * (base + extra * args.recheck_bound_scale)
    recheck_s = pairs / args.recheck_pairs_per_s
    stats_bytes = rows * args.test_sets * (16 if margins else 8)  # f32 max + i32 argmax (+ margin pair) per test set
    write_s = stats_bytes / (args.write_gbps * 1e9)
    total = max(compute_s, read_s) + elementwise_s + recheck_s + write_s
    return {"train_rows": rows, "product_flops": flops, "matmul_efficiency": efficiency,
            "compute_s": round(compute_s, 1), "read_gb": round(bytes_read / 1e9, 1), "read_s": round(read_s, 1),
            "elementwise_tile_s": round(elementwise_s, 1), "recheck_pairs": round(pairs), "recheck_s": round(recheck_s, 1),
            "stats_written_gb": round(stats_bytes / 1e9, 1), "write_s": round(write_s, 1),
            "total_s": round(total, 1),
            "total_without_elementwise_s": round(max(compute_s, read_s) + recheck_s + write_s, 1)}


def embed_stage(m: dict, args) -> dict:
    """Seconds to embed the web images with the paper's model: GPU forward, CPU decoding or reading, the slowest."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = open_clip.create_model(args.embed_model, pretrained=None).eval()  # random weights: FLOPs only
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net.encode_image(torch.zeros(1, 3, args.embed_image_size, args.embed_image_size))
    gflops = counter.get_total_flops() / 1e9
    gpu_rate = args.peak_tflops * 1e3 * args.embed_efficiency / gflops
    decode_rate = args.cpu_cores_per_gpu * 1e3 / m["embed_cpu_decode_ms_per_image"]
    kb = args.image_kb if args.image_kb is not None else m["embed_mean_jpeg_kb"]
    read_rate = args.read_gbps * 1e6 / kb
    rate, bound = min((gpu_rate, "gpu forward"), (decode_rate, "cpu decoding"), (read_rate, "reading"))
    return {"model": args.embed_model, "gflops_per_image": round(gflops, 2), "gpu_images_per_s": round(gpu_rate),
            "decode_images_per_s": round(decode_rate), "read_images_per_s": round(read_rate), "bound_by": bound,
            "images_per_s": round(rate), "total_s": round(args.train / rate, 1), "image_kb": kb}


def memory_gb(args) -> float:
    """GPU working set of the search, by search._log_memory's formula (queries, top-k, one block, three tiles)."""
    q = args.tests * args.dim * (2 + 4)
    return round((q + args.tests * args.k * 12 + 65536 * args.dim * 6 + TILE_ELEMENTS * 12) / 1e9, 2)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    gap = json.loads(Path(args.gap).read_text())
    embed = json.loads(Path(args.embed).read_text()) if args.embed else None
    m = measured(gap, embed, args)
    reference = search_stage(args.reference_rows, False, m, args)
    web = search_stage(args.train, True, m, args)
    report = {"label": "PROJECTION for one NVIDIA H200 from CPU measurements; no GPU was used",
              "assumptions": {k: v for k, v in vars(args).items() if k not in ("gap", "embed")},
              "inputs": {"gap": str(args.gap), "embed": args.embed}, "measured": m,
              "gpu_memory_gb": memory_gb(args), "reference_search": reference, "web_search": web}
    search_s = (reference["total_s"] + web["total_s"]) / args.gpus
    report["search_hours"] = round(search_s / 3600, 2)
    cpu_s = (web["product_flops"] + reference["product_flops"]) / (m["cpu_search_effective_gflops"] * 1e9)
    report["same_search_on_this_cpu_days"] = round(cpu_s / 86400, 1)
    if embed:
        report["embedding"] = embed_stage(m, args)
        report["embedding_hours"] = round(report["embedding"]["total_s"] / args.gpus / 3600, 2)
        report["total_hours"] = round(report["search_hours"] + report["embedding_hours"], 2)
    report["notes"] = NOTES
    return report


NOTES = [
    ("PROJECTION, not a measurement: no GPU was used. Search time per pass = max(product FLOPs / (peak x matmul "
    "efficiency), bytes read / read rate) + elementwise passes over the product tile through HBM + exact re-checks "
    "+ writing the per-row statistics; total_without_elementwise_s leaves the HBM term out."),
    ("matmul_efficiency defaults to the screen efficiency measured on this CPU (the scanner's own products / the "
    "machine's matmul peak); cuBLAS fp16 with float32 output on large tiles usually does better."),
    ("Re-check pairs per train row come from random data; real CLIP embeddings have denser neighbourhoods near each "
    "row's maximum, so scale --recheck-bound-scale up to test the sensitivity."),
    ("bytes read per train row = float16 npy bytes measured at the benchmark's dim, scaled to --dim (1280 B at 640: "
    "512 GB for 400M rows; the often-quoted 400 GB is 400M x 1 kB)."),
    ("Embedding: the model's matmul/conv FLOPs are counted with torch's FlopCounterMode (random weights); decoding "
    "cost per image is the one measured here at 224 px, on --cpu-cores-per-gpu cores."),
]


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
