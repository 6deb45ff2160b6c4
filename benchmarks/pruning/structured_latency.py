"""CPU latency of structured pruning's shapes versus the dense MiniLM, measured round-robin in one process.

Latency depends on the layer shapes, not on the weight values, so this builds the shapes that
``Pruning(method="structured", sparsity=0.3, head_sparsity=0.25)`` leaves (in every block 30 % of the FFN neurons
and 3 of 12 heads removed) from the packaged model, and times both models alternately at batch 1 and 32.

    python -m benchmarks.pruning.structured_latency

Writes benchmarks/pruning/results/structured_latency.md.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

import agent_lightning  # noqa: E402, F401  (quiet third-party import noise)
from agent_lightning.backbone import default_backbone_path  # noqa: E402
from agent_lightning.deployment.measure import compare_latency, token_inputs  # noqa: E402
from agent_lightning.io import atomic_write_text  # noqa: E402
from agent_lightning.pruning.removal import remove_structure  # noqa: E402
from agent_lightning.targets import find_blocks  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurons", type=float, default=0.3, help="fraction of FFN neurons removed per block")
    parser.add_argument("--heads", type=float, default=0.25, help="fraction of heads removed per block")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "structured_latency.md")
    args = parser.parse_args()
    dense = AutoModelForSequenceClassification.from_pretrained(default_backbone_path(), num_labels=77)
    pruned = copy.deepcopy(dense)
    kept_neurons, kept_heads = {}, {}
    for block in find_blocks(pruned):
        width = pruned.get_submodule(block.ffn_in[0]).out_features
        kept_neurons[block.index] = torch.arange(width - round(args.neurons * width))
        kept_heads[block.index] = torch.arange(block.num_heads - round(args.heads * block.num_heads))
    remove_structure(pruned, kept_neurons, kept_heads)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("dense", dense), ("pruned", pruned))}
    lines = [
        "# Structured pruning: CPU latency versus dense (all-MiniLM-L6-v2, 77 labels)",
        "",
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, sequence 64, "
        f"median of {args.rounds} round-robin runs. Removed per block: {100 * args.neurons:.0f} % of FFN neurons, "
        f"{100 * args.heads:.0f} % of heads. Command: `python -m benchmarks.pruning.structured_latency`.",
        "",
        "| batch | dense | pruned | pruned / dense |",
        "|---|---|---|---|",
    ]
    for batch in (1, 32):
        result = compare_latency({"dense": dense, "pruned": pruned}, token_inputs(batch), rounds=args.rounds)
        ratio = result["pruned"] / result["dense"]
        lines.append(f"| {batch} | {1000 * result['dense']:.1f} ms | {1000 * result['pruned']:.1f} ms | {ratio:.2f}x |")
    lines += ["", f"Parameters: dense {params['dense'] / 1e6:.2f} M, pruned {params['pruned'] / 1e6:.2f} M."]
    atomic_write_text(args.output, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
