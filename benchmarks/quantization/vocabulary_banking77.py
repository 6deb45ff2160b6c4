"""What compacting the input embeddings costs: the fine-tuned agent with its vocabulary cut to the training tokens.

No retraining: the agent of ``finetune_banking77.py`` is evaluated on the test split as it is, then with its input
embeddings replaced by a :class:`~agent_lightning.quantization.CompactEmbedding` holding the rows of the tokens
of the training batches (and the special tokens), float or int8, with unseen tokens sent to their nearest kept row or
to ``[UNK]``. The same rows ``EmbeddingCompression`` would keep after one epoch. Then with the tokenizer's most
frequent tokens kept too (``EmbeddingCompression(frequent_tokens=N)``), as int8 and as int4 rows.

    python -m benchmarks.quantization.vocabulary_banking77 \\
        --teacher runs/finetune_banking77/version_0/checkpoints/best.ckpt
    python -m benchmarks.quantization.vocabulary_banking77 \\
        --teacher runs/teacher/version_0/checkpoints/<best>.ckpt --builtin

Writes benchmarks/quantization/results/vocabulary_banking77.{md,json} (or vocabulary_builtin.{md,json}).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.deployment.measure import saved_bytes  # noqa: E402
from agent_lightning.quantization.embedding import (  # noqa: E402
    compact_input_embeddings,
    frequent_token_ids,
    input_embeddings,
)
from benchmarks.common import DEFAULT_DATA, accuracy_on_test, banking77, command_line, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--builtin", action="store_true", help="the built-in assistant-actions data instead")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--frequent", type=int, default=4000, help="the tokenizer's most frequent tokens kept too (last two rows)"
    )
    args = parser.parse_args()
    agent = Agent.load_from_checkpoint(args.teacher, map_location="cpu").eval()
    if args.builtin:
        dm = TextClassificationDataModule(dataset="assistant-actions", tokenizer=agent.hparams.model, batch_size=32)
    else:
        dm = banking77(args.data_dir)
    dm.setup("fit")
    seen = {int(i) for batch in dm.train_dataloader() for i in batch["input_ids"].unique()}
    keep = sorted(seen | set(agent.tokenizer.all_special_ids))
    name, table = input_embeddings(agent)
    rows = {"full vocabulary, float (as trained)": {"test_acc": accuracy_on_test(agent, dm)}}
    rows["full vocabulary, float (as trained)"]["model_bytes"] = saved_bytes(agent.model, compressed=False)[0]
    for unseen in ("nearest", "fallback"):
        for weights in ("float", "int8"):
            compact = compact_input_embeddings(agent, keep, weights, unseen, agent.tokenizer.unk_token_id)
            target = "nearest row" if unseen == "nearest" else "[UNK]"
            label = f"{len(keep)} training tokens, {weights} rows, unseen -> {target}"
            rows[label] = {
                "test_acc": accuracy_on_test(agent, dm),
                "kept_tokens": compact.kept_tokens,
                "model_bytes": saved_bytes(agent.model, compressed=False)[0],
            }
            print(label, rows[label], flush=True)
            agent.set_submodule(name, table)  # back to the float table for the next variant
    with_frequent = sorted(set(keep) | set(frequent_token_ids(agent.tokenizer, args.frequent)))
    for weights in ("int8", "int4"):  # the recipe's default for classifiers: int4 rows, frequent tokens kept too
        compact = compact_input_embeddings(agent, with_frequent, weights, "nearest")
        label = (
            f"{len(keep)} training tokens + the {args.frequent} most frequent, {weights} rows, unseen -> nearest row"
        )
        rows[label] = {
            "test_acc": accuracy_on_test(agent, dm),
            "kept_tokens": compact.kept_tokens,
            "model_bytes": saved_bytes(agent.model, compressed=False)[0],
        }
        print(label, rows[label], flush=True)
        agent.set_submodule(name, table)
    output = args.output or RESULTS / ("vocabulary_builtin.md" if args.builtin else "vocabulary_banking77.md")
    base = rows["full vocabulary, float (as trained)"]
    lines = [
        f"# Compacting the fine-tuned agent's input embeddings ({'built-in' if args.builtin else 'BANKING77'} data)",
        "",
        "No retraining; tokens kept: those of the training batches plus the special tokens (the last two rows: plus "
        f"the tokenizer's {args.frequent} most frequent tokens). {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}.",
        f"Command: `{command_line()}`.",
        "",
        "| embeddings | test accuracy | Δ | model bytes (state dict) |",
        "|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {100 * row['test_acc']:.2f} % | {100 * (row['test_acc'] - base['test_acc']):+.2f} pt | "
            f"{row['model_bytes'] / 1e6:.1f} MB |"
        )
    write_results(output, lines, rows)


if __name__ == "__main__":
    main()
