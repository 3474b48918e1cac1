"""milco-small's CPU recipe: a frozen encoder cut to its first layers, states cached once.

Why cut the encoder: multilingual-e5-small was trained for mean pooling, so its LAST
layer's token states all carry the sentence and little of their own token. A head on
them learns a topic code (the earlier milco-small: "name", "car", "look" in most
vectors), and cannot even fit 32 training pairs (top-20 overlap with the teacher .24).
From layer 4 the same head fits them (.94): the middle layers still know their tokens
and already share one space across languages. The cut encoder is an ordinary XLM-R
encoder with fewer layers, so the model keeps the released MILCO layout and math (and
encodes in ``layers / 12`` of the time).

Stages, each on encoder states computed once (the encoder is frozen):

1. alignment (SAP): the connector and the English head learn the English teacher's
   vectors, from the non-English text and from the English text, with SMSE on the raw
   max-pooled logits (entries where the student or the teacher is positive; targets
   ``expm1`` of the teacher's weights, and ``-margin`` where the teacher has no term);
   special tokens and punctuation-only pieces of the English vocabulary are never
   targets, and their decoder bias is set far below zero, so no vector holds them;
2. document-frequency cap: an English term the pivot puts in more than ``--df-cap`` of
   the English training sentences (splade-tiny spreads ``you``, ``brothers``, ``murder``
   over a third of all texts, whatever they say) has its decoder bias lowered until only
   that share holds it; like IDF, a term in most documents says little, and the model
   keeps the released layout and math (it is a bias);
3. echo: the LexEcho head learns which source tokens to echo, with InfoNCE over the
   batch (each non-English text must find its English translation), the pivot view
   frozen; positions of special tokens and punctuation-only pieces echo nothing
   (``MilcoConfig.echo_ignored_ids``).

    python training/sap_cached.py --config training/configs/milco-small.yaml \\
        --layers 6 --steps 1500 --echo-steps 300 --out runs/milco-small-lexical

The config gives the encoder, the teacher and the parallel sources with their
holdouts (held-out text never enters training).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from milco_os.models.milco import MilcoModel  # noqa: E402
from milco_os.training.data import load_parallel_sources  # noqa: E402
from milco_os.training.losses import score_matrix  # noqa: E402
from milco_os.training.noise import noise_ids  # noqa: E402

BLOCKED_BIAS = -1.0e4  # a decoder bias no state can overcome: the term never has weight


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=6, help="encoder layers kept")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--echo-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--echo-lr", type=float, default=3e-3)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--df-cap", type=float, default=0.2,
                        help="most English training sentences a pivot term may be in (0: off)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


class StateCache:
    """Every text's encoder states (fp16) and token ids, computed once in length order."""

    def __init__(self, model: MilcoModel, tokenizer, texts: list[str], max_length: int) -> None:
        self.ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(self.ids[i]))
        started, done, budget = time.time(), 0, 8192
        with torch.inference_mode():
            while done < len(order):
                width = len(self.ids[order[min(done + 1, len(order) - 1)]])
                batch = order[done:done + max(1, budget // max(width, 1))]
                ids, mask = pad([self.ids[i] for i in batch], tokenizer.pad_token_id)
                hidden = model.encode_states(ids, mask)
                for row, i in enumerate(batch):
                    self.states[i] = hidden[row, : len(self.ids[i])].half().clone()
                done += len(batch)
                if done // 20000 != (done - len(batch)) // 20000 or done == len(order):
                    print(f"encoded {done}/{len(order)} texts ({time.time() - started:.0f} s)",
                          flush=True)

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states [B, L, H] fp32, mask [B, L], token ids [B, L]) of texts ``rows``."""
        width = max(len(self.ids[r]) for r in rows)
        hidden = torch.zeros(len(rows), width, self.states[rows[0]].shape[-1])
        ids, mask = pad([self.ids[r] for r in rows], 1, width)
        for row, r in enumerate(rows):
            hidden[row, : len(self.ids[r])] = self.states[r].float()
        return hidden, mask, ids


def pad(sequences: list[list[int]], pad_id: int, width: int | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def teacher_vectors(teacher_dir: str, texts: list[str], blocked: torch.Tensor,
                    max_length: int) -> torch.Tensor:
    """The English teacher's vectors (log1p(relu(max-pooled logits))) as a sparse matrix,
    blocked terms removed."""
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = BertForMaskedLM.from_pretrained(teacher_dir).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), 256):
            batch = tokenizer([texts[i] for i in order[start:start + 256]], truncation=True,
                              max_length=max_length, padding=True, return_tensors="pt")
            logits = teacher(**batch).logits * batch["attention_mask"].unsqueeze(-1)
            vectors = torch.log1p(torch.relu(logits.max(dim=1).values))
            vectors[:, blocked] = 0
            rows.append(vectors.to_sparse())
    return torch.cat(rows).index_select(0, torch.tensor(order).argsort())


def pooled_raw_active(model: MilcoModel, hidden: torch.Tensor, mask: torch.Tensor,
                      teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw max-pooled pivot logits on the columns that can carry loss (the teacher's
    terms, or positive in the student), with gradients; and those columns.

    The max over positions is found without gradients over the whole vocabulary; the
    gradient of a max reaches only its arg-max position, so recomputing the logit there
    for the active columns gives exactly the gradient of the full computation.
    """
    transformed = model.mlm_head.predictions.transform(F.gelu(model.projector(hidden)))
    decoder = model.mlm_head.predictions.decoder
    with torch.no_grad():
        logits = transformed @ decoder.weight.T + decoder.bias
        logits.masked_fill_(mask.unsqueeze(-1) == 0, -torch.inf)
        best, where = logits.max(dim=1)
        del logits
        columns = ((best > 0) | (teacher > 0)).any(dim=0).nonzero().squeeze(-1)
    at_best = transformed[torch.arange(len(hidden)).unsqueeze(1), where[:, columns]]
    raw = (at_best * decoder.weight[columns]).sum(-1) + decoder.bias[columns]
    return raw, columns


def smse(raw: torch.Tensor, teacher: torch.Tensor, margin: float) -> torch.Tensor:
    """Squared error on the entries where the student or the teacher is positive."""
    target = torch.where(teacher > 0, torch.expm1(teacher), torch.full_like(teacher, -margin))
    active = (raw > 0) | (teacher > 0)
    return ((raw - target).pow(2) * active).sum() / active.sum().clamp(min=1)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def optimise(name: str, parameters: list, lr: float, steps: int, warmup: int, seed: int,
             pairs: torch.Tensor, batch_size: int,
             batch_loss: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """AdamW with warmup and a cosine decay over ``steps`` batches of random pairs."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_lr(step, steps, warmup)
        loss = batch_loss(pairs[torch.randint(len(pairs), (batch_size,), generator=generator)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.3f} ({time.time() - started:.0f} s)",
                  flush=True)


def train_alignment(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
                    teacher: torch.Tensor, args: argparse.Namespace) -> None:
    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        target = teacher.index_select(0, batch[:, 2]).to_dense()
        loss = torch.zeros(())
        for side in (0, 1):  # the non-English text, then the English text
            hidden, mask, _ = cache.batch(batch[:, side].tolist())
            raw, columns = pooled_raw_active(model, hidden, mask, target)
            loss = loss + smse(raw, target[:, columns], args.margin)
        return loss

    optimise("alignment", [*model.projector.parameters(), *model.mlm_head.parameters()],
             args.lr, args.steps, 50, args.seed, pairs, args.batch_size, batch_loss)


def cap_document_frequency(model: MilcoModel, cache: StateCache, rows: list[int],
                           cap: float, batch: int = 64) -> dict[int, float]:
    """Lower the decoder bias of each term that more than ``cap`` of the texts ``rows``
    hold, by the ``1 - cap`` quantile of its raw pooled logit, so that at most ``cap`` of
    them still hold it; returns the share each lowered term had."""
    rows = sorted(rows, key=lambda r: len(cache.ids[r]))  # batches of similar length
    batches = [rows[start:start + batch] for start in range(0, len(rows), batch)]
    bias = model.mlm_head.predictions.decoder.bias
    with torch.no_grad():
        def pooled(part: list[int]) -> torch.Tensor:
            return model.pivot_from_states(*cache.batch(part)[:2])

        holding = sum((pooled(part) > 0).sum(dim=0) for part in batches)
        hubs = (holding > cap * len(rows)).nonzero().squeeze(-1)
        if len(hubs):
            logits = torch.cat([pooled(part)[:, hubs] for part in batches])
            bias[hubs] -= torch.quantile(logits, 1 - cap, dim=0).clamp(min=0)
    return {int(t): float(holding[t]) / len(rows) for t in hubs}


def train_echo(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
               ignored: torch.Tensor, args: argparse.Namespace) -> None:
    """InfoNCE over the batch: pivot dot product (frozen) plus the echo score."""
    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        sides = []
        for side in (0, 1):
            hidden, mask, ids = cache.batch(batch[:, side].tolist())
            with torch.no_grad():
                pivot = torch.log1p(torch.relu(model.pivot_from_states(hidden, mask)))
            echo = model.echo_from_states(hidden, mask) * ~torch.isin(ids, ignored)
            sides.append((pivot, echo, ids))
        (q_pivot, q_echo, q_ids), (d_pivot, d_echo, d_ids) = sides
        scores = score_matrix(q_pivot, d_pivot, q_echo, q_ids, d_echo, d_ids)
        return F.cross_entropy(scores, torch.arange(len(batch)))

    optimise("echo", [*model.echo.parameters(), model.scale], args.echo_lr, args.echo_steps,
             20, args.seed + 1, pairs, args.batch_size, batch_loss)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.chdir(REPO)
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    encoder_dir = os.path.expanduser(config["model"]["encoder"])
    teacher_dir = os.path.expanduser(config["teacher"])
    model = MilcoModel.from_backbones(encoder_dir, os.path.expanduser(config["model"]["head"]),
                                      echo=True, encoder_layers=args.layers)
    model.eval()
    from transformers import AutoTokenizer

    m_tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    en_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    blocked = noise_ids(en_tokenizer)
    ignored = noise_ids(m_tokenizer)
    with torch.no_grad():
        model.mlm_head.predictions.decoder.bias[blocked] = BLOCKED_BIAS
    model.config.echo_ignored_ids = ignored.tolist()
    rows, heldout = load_parallel_sources(config["data"]["parallel"])
    texts = sorted({r["english"] for r in rows} | {r["non_english"] for r in rows})
    english = sorted({r["english"] for r in rows})
    index = {t: i for i, t in enumerate(texts)}
    english_row = {t: i for i, t in enumerate(english)}
    pairs = torch.tensor([[index[r["non_english"]], index[r["english"]],
                           english_row[r["english"]]] for r in rows])
    print(f"{len(rows)} pairs ({heldout} left out: held-out text), {len(texts)} texts; "
          f"encoder cut to {args.layers} layers; "
          f"{len(blocked)} English and {len(ignored)} source pieces are noise", flush=True)
    teacher = teacher_vectors(teacher_dir, english, blocked, args.max_length)
    cache = StateCache(model, m_tokenizer, texts, args.max_length)
    model.train()
    train_alignment(model, cache, pairs, teacher, args)
    if args.df_cap:
        sentences = [index[t] for t in english if len(t.split()) >= 5]
        capped = cap_document_frequency(model, cache, sentences, args.df_cap)
        print(f"df cap {args.df_cap} over {len(sentences)} English sentences lowered "
              + ", ".join(f"{en_tokenizer.convert_ids_to_tokens(t)} ({share:.0%})"
                          for t, share in sorted(capped.items(), key=lambda x: -x[1])),
              flush=True)
    train_echo(model, cache, pairs, ignored, args)
    model.eval()
    model.tokenizer_dirs = {"m": Path(encoder_dir), "en": Path(teacher_dir)}
    out = model.save_pretrained(args.out)
    print(f"saved {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
