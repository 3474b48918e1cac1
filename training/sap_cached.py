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
   ``--token-weight`` adds per-token distillation on aligned words (each position learns
   the teacher's logits at the English word it stands for, :func:`token_targets`);
2. document-frequency cap: an English term the pivot puts in more than ``--df-cap`` of
   the training texts that do not say it has its decoder bias lowered until only that
   share does (splade-tiny spreads ``cancel``, ``murder``, ``lee`` over a third of all
   news lines, whatever they say; from Hindi lines the pivot spread ``dutch`` over 46%).
   The share is counted per source of running text (Tatoeba, NTREX, rows), on its
   English texts and on its texts of each language apart, so many short sentences do
   not outvote the fewer long lines, and not on interface strings, names or dictionary
   words, which are not what users index. A text that says the term (an English text
   holding its pieces, or a text whose English translation does) is not counted, so
   words common because texts say them ("said", "was") keep their weight. Like IDF, a
   term in most documents says little, and the model keeps the released layout and math
   (the cap is a bias);
3. echo: the LexEcho head learns which source tokens to echo, with InfoNCE over the
   batch (each non-English text must find its English translation), the pivot view
   frozen; positions of special tokens and punctuation-only pieces echo nothing
   (``MilcoConfig.echo_ignored_ids``);
4. with ``--dev``, the echo scale calibrated: the multiple of its trained value that
   ranks the dev pairs of running text best (:func:`calibrate_echo`).

    python training/sap_cached.py --config training/configs/milco-small.yaml \\
        --layers 6 --steps 1500 --echo-steps 300 --out runs/milco-small-lexical

The config gives the encoder, the teacher and the parallel sources with their
holdouts (held-out text never enters training). ``--dev N`` keeps the pairs of N English
texts out of training and reports, after each stage, their alignment overlap with the
teacher, their retrieval (each non-English text finding its English side among them) and
how sparse and how spread their pivot vectors are: the numbers to choose settings by,
without touching the held-out sets.

A training machine without the model hub or this repository's data can train from a
pack: ``--pack FILE`` writes the tokenized texts, the teacher's vectors and the model
(the encoder's embedding matrix cut to the pieces the texts use, fp16) and stops;
``--from-pack FILE --device cuda --parts-out FILE`` trains from it and writes the trained
parts (connector, English head, echo head); ``--parts FILE`` then puts them into the
full model here and saves it, without training.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from milco_os.models.base import tie_decoder_bias  # noqa: E402
from milco_os.models.files import save_safetensors  # noqa: E402
from milco_os.models.milco import MilcoConfig, MilcoModel  # noqa: E402
from milco_os.training.data import heldout_texts, load_parallel_sources  # noqa: E402
from milco_os.training.losses import score_matrix  # noqa: E402
from milco_os.training.noise import noise_ids  # noqa: E402

BLOCKED_BIAS = -1.0e4  # a decoder bias no state can overcome: the term never has weight


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--flops", type=float, default=0.0,
                        help="weight of a FLOPS penalty on the pivot vectors in alignment")
    parser.add_argument("--token-weight", type=float, default=0.0,
                        help="weight of per-token distillation on aligned words in alignment")
    parser.add_argument("--dev", type=int, default=0,
                        help="English texts whose pairs stay out of training, to measure on")
    parser.add_argument("--train-layers", type=int, default=0,
                        help="top encoder layers trained in alignment (states cached below)")
    parser.add_argument("--encoder-lr", type=float, default=1e-4)
    parser.add_argument("--init", type=Path,
                        help="start from these heads: a file --parts-out wrote, or a MILCO "
                             "folder of the same encoder (milco-os model path milco-small)")
    parser.add_argument("--freeze-decoder", action="store_true",
                        help="keep the English head's word vectors (its decoder matrix) as "
                             "they start")
    parser.add_argument("--decoder-rows", type=int, default=0,
                        help="train only the word vectors of the English terms in the most "
                             "teacher vectors, this many (0: every row)")
    parser.add_argument("--device", default="cpu")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path)
    source.add_argument("--from-pack", type=Path, help="train from a pack written by --pack")
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("--out", type=Path, help="the trained MILCO folder")
    output.add_argument("--pack", type=Path, help="write a pack (a folder) for --from-pack, stop")
    output.add_argument("--parts-out", type=Path, help="write only the trained parts")
    parser.add_argument("--parts", type=Path,
                        help="with --config and --out: the trained parts to save, no training")
    args = parser.parse_args(argv)
    if args.parts and not (args.config and args.out):
        parser.error("--parts needs --config and --out")
    if args.from_pack and args.pack:
        parser.error("--pack needs --config")
    if args.init and (args.pack or args.parts):
        parser.error("--init starts training; --pack and --parts do not train")
    if args.init and not args.init.exists():
        parser.error(f"--init {args.init}: no such file or folder")
    if not 0 <= args.train_layers <= args.layers:
        parser.error(f"--train-layers must be in 0..{args.layers} (--layers), "
                     f"got {args.train_layers}")
    if min(args.dev, args.flops, args.token_weight, args.decoder_rows) < 0:
        parser.error("--dev, --flops, --token-weight and --decoder-rows must not be negative")
    if args.decoder_rows and args.freeze_decoder:
        parser.error("--decoder-rows trains some of the rows --freeze-decoder keeps: "
                     "choose one")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    return args


class StateCache:
    """Every text's encoder states (fp16, on the training device) from its token ids,
    computed once in length order, below the encoder's top ``trained`` layers; a batch
    runs those layers (with gradients where enabled) on the cached states."""

    def __init__(self, model: MilcoModel, ids: list[list[int]], pad_id: int,
                 device: torch.device, trained: int = 0) -> None:
        self.ids, self.pad_id, self.device = ids, pad_id, device
        layers = model.m_model.encoder.layer
        self.top = layers[len(layers) - trained:] if trained else []
        model.m_model.encoder.layer = layers[:len(layers) - trained]
        try:
            self._encode(model)
        finally:
            model.m_model.encoder.layer = layers

    def _encode(self, model: MilcoModel) -> None:
        ids, pad_id, device = self.ids, self.pad_id, self.device
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        started, done, budget = time.time(), 0, 8192 if device.type == "cpu" else 65536
        with torch.inference_mode():
            while done < len(order):
                width = len(ids[order[min(done + 1, len(order) - 1)]])
                batch = order[done:done + max(1, budget // max(width, 1))]
                tokens, mask = pad([ids[i] for i in batch], pad_id)
                hidden = model.encode_states(tokens.to(device), mask.to(device))
                for row, i in enumerate(batch):
                    self.states[i] = hidden[row, : len(ids[i])].half().clone()
                done += len(batch)
                if done // 20000 != (done - len(batch)) // 20000 or done == len(order):
                    print(f"encoded {done}/{len(order)} texts ({time.time() - started:.0f} s)",
                          flush=True)

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states [B, L, H] fp32, mask [B, L], token ids [B, L]) of texts ``rows``."""
        width = max(len(self.ids[r]) for r in rows)
        hidden = torch.zeros(len(rows), width, self.states[rows[0]].shape[-1],
                             device=self.device)
        ids, mask = pad([self.ids[r] for r in rows], self.pad_id, width)
        for row, r in enumerate(rows):
            hidden[row, : len(self.ids[r])] = self.states[r].float()
        mask = mask.to(self.device)
        if self.top:  # an additive mask, as XLM-R's eager and SDPA attention both take it
            additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(hidden.dtype).min
            for layer in self.top:
                hidden = layer(hidden, additive)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden, mask, ids.to(self.device)


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
    at_best = transformed[torch.arange(len(hidden), device=hidden.device).unsqueeze(1),
                          where[:, columns]]
    raw = (at_best * decoder.weight[columns]).sum(-1) + decoder.bias[columns]
    return raw, columns


def smse(raw: torch.Tensor, teacher: torch.Tensor, margin: float) -> torch.Tensor:
    """Squared error on the entries where the student or the teacher is positive."""
    target = torch.where(teacher > 0, torch.expm1(teacher), torch.full_like(teacher, -margin))
    active = (raw > 0) | (teacher > 0)
    return ((raw - target).pow(2) * active).sum() / active.sum().clamp(min=1)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def optimise(name: str, groups: list[dict], steps: int, warmup: int, seed: int,
             pairs: torch.Tensor, batch_size: int,
             batch_loss: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """AdamW with warmup and a cosine decay over ``steps`` batches of random pairs;
    ``groups``: parameter groups, each with its peak ``lr``."""
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    peaks = [group["lr"] for group in optimizer.param_groups]
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(steps):
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = peak * cosine_lr(step, steps, warmup)
        loss = batch_loss(pairs[torch.randint(len(pairs), (batch_size,), generator=generator)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.3f} ({time.time() - started:.0f} s)",
                  flush=True)


@dataclass
class TokenData:
    """What per-token distillation reads: the teacher (a ``BertForMaskedLM`` config and
    fp16 state), each English text's word-piece ids, and for each of its encoder positions
    the word-piece positions that cover the same characters."""

    teacher_config: dict
    teacher_state: dict[str, torch.Tensor]
    english_ids: list[list[int]]
    cover: list[torch.Tensor]  # per English text: rows of character_cover

    def teacher(self, device: torch.device) -> torch.nn.Module:
        from transformers import BertConfig, BertForMaskedLM

        teacher = BertForMaskedLM(BertConfig(**self.teacher_config))
        teacher.load_state_dict({k: v.float() for k, v in self.teacher_state.items()})
        return teacher.to(device).eval().requires_grad_(False)

    def to_pack(self) -> dict:
        """Plain tensors and lists (a pack must load without this module's classes); piece
        ids and positions in 16 bits where they fit."""
        id_type = torch.int16 if self.teacher_config["vocab_size"] <= 2**15 else torch.int32
        return {"teacher_config": self.teacher_config, "teacher_state": self.teacher_state,
                "english_ids": flatten([torch.tensor(ids, dtype=id_type)
                                        for ids in self.english_ids]),
                "cover": flatten([rows.short() for rows in self.cover])}

    @classmethod
    def from_pack(cls, packed: dict) -> TokenData:
        return cls(teacher_config=packed["teacher_config"],
                   teacher_state=packed["teacher_state"],
                   english_ids=[ids.tolist() for ids in unflatten(*packed["english_ids"])],
                   cover=[rows.int() for rows in unflatten(*packed["cover"])])


def flatten(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of varied lengths as (all rows concatenated, each row's length)."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    return torch.cat(rows) if rows else torch.empty(0), lengths


def unflatten(values: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(values, lengths.tolist()))


def character_cover(positions: list[tuple[int, int]], skipped: list[bool],
                    pieces: list[tuple[int, int]]) -> torch.Tensor:
    """Rows (encoder position, first piece, last piece): for each encoder position (a
    character span, not ``skipped``), the word pieces whose spans overlap it, which are
    consecutive; positions that no piece covers are left out.

    >>> character_cover([(0, 0), (0, 5), (5, 11)], [True, False, False],
    ...                 [(0, 0), (0, 3), (3, 5), (6, 11)]).tolist()
    [[1, 1, 2], [2, 3, 3]]
    """
    cover = []
    for i, (start, end) in enumerate(positions):
        if skipped[i] or end <= start:
            continue
        covering = [j for j, (s, e) in enumerate(pieces) if e > s and s < end and e > start]
        if covering:
            cover.append((i, covering[0], covering[-1]))
    return torch.tensor(cover, dtype=torch.int32).reshape(-1, 3)


def mutual_argmax(source: torch.Tensor, english: torch.Tensor) -> list[tuple[int, int]]:
    """Word alignment as SimAlign's arg-max rule: (i, j) where English position j is the
    most similar (cosine) to source position i and i is the most similar to j.

    >>> mutual_argmax(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]),
    ...               torch.tensor([[0.0, 1.0], [1.0, 0.1]]))
    [(0, 1), (1, 0)]
    """
    similarity = F.normalize(source, dim=-1) @ F.normalize(english, dim=-1).T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    return [(i, int(j)) for i, j in enumerate(forward.tolist()) if int(backward[j]) == i]


def token_targets(tokens: TokenData, teacher: torch.nn.Module, english_rows: list[int],
                  sides: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  ignored: torch.Tensor) -> list[tuple[list[int], list[int], torch.Tensor]]:
    """Per side (non-English, English): the batch rows and positions that have a target, and
    the teacher's raw MLM logits there (the max over the word pieces of the English word)."""
    ids, mask = pad([tokens.english_ids[r] for r in english_rows], 0)
    device = sides[0][0].device
    with torch.no_grad():
        logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    found: list[tuple[list[int], list[int], list[torch.Tensor]]] = [([], [], []), ([], [], [])]
    (source, source_mask, source_ids), (english, english_mask, _) = sides
    for row, english_row in enumerate(english_rows):
        at = {i: logits[row, first:last + 1].max(0).values
              for i, first, last in tokens.cover[english_row].tolist()}
        usable = (~torch.isin(source_ids[row], ignored)) & (source_mask[row] > 0)
        kept = usable.nonzero().squeeze(-1)
        english_at = torch.tensor(sorted(at), dtype=torch.long, device=device)
        for side, pairs in ((1, [(i, i) for i in sorted(at)]),
                            (0, [(int(kept[i]), int(english_at[j])) for i, j in mutual_argmax(
                                source[row, kept], english[row, english_at])]
                             if len(kept) and len(at) else [])):
            for position, english_position in pairs:
                found[side][0].append(row)
                found[side][1].append(position)
                found[side][2].append(at[english_position])
    return [(rows, positions, torch.stack(targets) if targets else torch.empty(0))
            for rows, positions, targets in found]


def token_smse(model: MilcoModel, hidden: torch.Tensor, rows: list[int], positions: list[int],
               targets: torch.Tensor, margin: float) -> torch.Tensor:
    """SMSE between the student's raw logits at the aligned positions and the teacher's, on
    the columns where either is positive."""
    if not rows:
        return hidden.new_zeros(())
    transformed = model.mlm_head.predictions.transform(
        F.gelu(model.projector(hidden[rows, positions])))
    decoder = model.mlm_head.predictions.decoder
    with torch.no_grad():
        student = transformed @ decoder.weight.T + decoder.bias
        columns = ((student > 0) | (targets > 0)).any(0).nonzero().squeeze(-1)
    raw = transformed @ decoder.weight[columns].T + decoder.bias[columns]
    return smse(raw, torch.log1p(torch.relu(targets[:, columns])), margin)


def train_alignment(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
                    teacher: torch.Tensor, args: argparse.Namespace,
                    tokens: TokenData | None = None, ignored: torch.Tensor | None = None) -> None:
    if args.token_weight and tokens is None:
        raise SystemExit("--token-weight: this data has no English word pieces; write the "
                         "pack again with this version (--pack)")
    token_teacher = tokens.teacher(teacher.device) if args.token_weight else None

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        target = teacher.index_select(0, batch[:, 2].to(teacher.device)).to_dense()
        loss = torch.zeros((), device=target.device)
        sides = [cache.batch(batch[:, side].tolist()) for side in (0, 1)]
        aligned = token_targets(tokens, token_teacher, batch[:, 2].tolist(), sides,
                                ignored.to(target.device)) if token_teacher else None
        for side in (0, 1):  # the non-English text, then the English text
            hidden, mask, _ = sides[side]
            raw, columns = pooled_raw_active(model, hidden, mask, target)
            loss = loss + smse(raw, target[:, columns], args.margin)
            if args.flops:  # every term outside ``columns`` weighs 0 already
                loss = loss + args.flops * torch.log1p(torch.relu(raw)).mean(0).pow(2).sum()
            if aligned:
                loss = loss + args.token_weight * token_smse(model, hidden, *aligned[side],
                                                             args.margin)
        return loss

    decoder = model.mlm_head.predictions.decoder.weight
    head = [*model.projector.parameters(),
            *(p for p in model.mlm_head.parameters()
              if not (args.freeze_decoder and p is decoder))]
    encoder = [p for layer in cache.top for p in layer.parameters()]
    row_budget = None
    if args.decoder_rows:  # other rows get a zero gradient; without weight decay AdamW
        # then leaves them bit for bit as they start
        trained = torch.zeros(len(decoder), 1, device=decoder.device)
        trained[frequent_terms(teacher, pairs[:, 2].unique(), args.decoder_rows)] = 1
        row_budget = decoder.register_hook(lambda grad: grad * trained)
    try:
        optimise("alignment", [{"params": head, "lr": args.lr},
                               {"params": encoder, "lr": args.encoder_lr}],
                 args.steps, 50, args.seed, pairs, args.batch_size, batch_loss)
    finally:
        if row_budget is not None:
            row_budget.remove()


def frequent_terms(teacher: torch.Tensor, english_rows: torch.Tensor, count: int
                   ) -> torch.Tensor:
    """The ``count`` English terms in the most teacher vectors of ``english_rows``: the
    decoder rows a leg with ``--decoder-rows`` trains. The package ships the decoder as
    differences and git keeps every shipped version, so a leg that moved all 21,000 rows a
    batch touches would add 7 MB to the repository; the rows of common terms are where
    training them pays.

    >>> teacher = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 0.0]]).to_sparse()
    >>> frequent_terms(teacher, torch.tensor([0, 1]), 1).tolist()
    [1]
    """
    held = teacher.index_select(0, english_rows.to(teacher.device)).coalesce()
    documents = torch.bincount(held.indices()[1], minlength=held.shape[1])
    return documents.topk(min(count, len(documents))).indices


def round_to_half(layers: list[torch.nn.Module]) -> None:
    """Round the trained encoder layers to fp16 values: they ship in fp16
    (``named.pack_trained``), so the cap, echo, the dev reports and the saved model all see
    exactly what ships."""
    with torch.no_grad():
        for parameter in (p for layer in layers for p in layer.parameters()):
            parameter.copy_(parameter.half().float())


def cap_document_frequency(model: MilcoModel, cache: StateCache, groups: list[list[int]],
                           words: dict[int, torch.Tensor], cap: float, batch: int = 64
                           ) -> dict[int, float]:
    """Lower the decoder bias of each term that more than ``cap`` of the texts of any group
    (rows of ``cache``) hold without saying it (``words``: the English pieces of each row's
    text), so that at most ``cap`` of every group still does; returns the largest share
    each lowered term had. A text that says the term is not counted, so the cap falls on
    terms spread over texts about something else ("murder" over a third of all news
    lines) and spares words that are common because texts say them. Groups apart,
    because a source of many short sentences would otherwise outvote one of long
    passages."""
    groups = [rows for rows in groups if rows]
    bias = model.mlm_head.predictions.decoder.bias
    with torch.no_grad():
        shares = torch.stack([sum((logits > 0).sum(dim=0) for logits in
                                  _pooled_logits(model, cache, rows, batch, words)) / len(rows)
                              for rows in groups])
        hubs = (shares > cap).any(dim=0).nonzero().squeeze(-1)
        # A second pass keeps only the hubs' columns: all logits of every text at once
        # would be texts x 30,522 floats (5 GB for milco-small's 41,700 texts).
        if len(hubs):  # lowered by the k-th highest logit, k = the cap's share of a group
            lowered = torch.stack([
                torch.cat([logits[:, hubs] for logits in
                           _pooled_logits(model, cache, rows, batch, words)]
                          ).topk(max(1, int(cap * len(rows))), dim=0).values[-1]
                for rows in groups])
            bias[hubs] -= lowered.max(dim=0).values.clamp(min=0)
    return {int(t): float(shares[:, t].max()) for t in hubs}


def _pooled_logits(model: MilcoModel, cache: StateCache, rows: list[int], batch: int,
                   words: dict[int, torch.Tensor]) -> Iterator[torch.Tensor]:
    """Raw max-pooled pivot logits of ``rows``, batch by batch (of similar lengths), each
    text's own pieces (``words``) masked out, as if the text did not hold them."""
    rows = sorted(rows, key=lambda r: len(cache.ids[r]))
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        logits = model.pivot_from_states(*cache.batch(part)[:2])
        for row, r in enumerate(part):
            logits[row, words[r].long()] = -math.inf
        yield logits


def train_echo(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
               ignored: torch.Tensor, args: argparse.Namespace) -> None:
    """InfoNCE over the batch: pivot dot product (frozen) plus the echo score."""
    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        sides = []
        for side in (0, 1):
            with torch.no_grad():
                hidden, mask, ids = cache.batch(batch[:, side].tolist())
                pivot = torch.log1p(torch.relu(model.pivot_from_states(hidden, mask)))
            echo = model.echo_from_states(hidden, mask) * ~torch.isin(ids, ignored)
            sides.append((pivot, echo, ids))
        (q_pivot, q_echo, q_ids), (d_pivot, d_echo, d_ids) = sides
        scores = score_matrix(q_pivot, d_pivot, q_echo, q_ids, d_echo, d_ids)
        return F.cross_entropy(scores, torch.arange(len(batch), device=scores.device))

    optimise("echo", [{"params": [*model.echo.parameters(), model.scale], "lr": args.echo_lr}],
             args.echo_steps, 20, args.seed + 1, pairs, args.batch_size, batch_loss)


@dataclass
class Prepared:
    """What training reads: the model, every text's token ids, the pairs (non-English
    text, English text, teacher row), the teacher's vectors of the English texts, the
    texts the cap is set on (per source of running text and language) with the English
    pieces each of them says, the source pieces that echo nothing, the English pieces (to
    name terms), and what per-token distillation reads."""

    model: MilcoModel
    ids: list[list[int]]
    pad_id: int
    pairs: torch.Tensor
    teacher: torch.Tensor
    cap_groups: list[list[int]]
    cap_words: dict[int, torch.Tensor]
    ignored: torch.Tensor
    english_pieces: list[str]
    tokens: TokenData | None = None


def build_model(config: dict, layers: int) -> MilcoModel:
    """The fresh MILCO of ``config``: its encoder cut to ``layers``, noise blocked."""
    from transformers import AutoTokenizer

    encoder_dir = os.path.expanduser(config["model"]["encoder"])
    teacher_dir = os.path.expanduser(config["teacher"])
    model = MilcoModel.from_backbones(encoder_dir, os.path.expanduser(config["model"]["head"]),
                                      echo=True, encoder_layers=layers)
    with torch.no_grad():
        model.mlm_head.predictions.decoder.bias[noise_ids(AutoTokenizer.from_pretrained(
            teacher_dir))] = BLOCKED_BIAS
    model.config.echo_ignored_ids = noise_ids(AutoTokenizer.from_pretrained(encoder_dir)).tolist()
    model.tokenizer_dirs = {"m": Path(encoder_dir), "en": Path(teacher_dir)}
    return model.eval()


def prepare(config: dict, args: argparse.Namespace) -> Prepared:
    """Read the config's parallel sources, tokenize every text and compute the teacher."""
    from transformers import AutoTokenizer

    model = build_model(config, args.layers)
    m_tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_dirs["m"])
    en_tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_dirs["en"])
    blocked = noise_ids(en_tokenizer)
    rows, heldout = load_parallel_sources(config["data"]["parallel"])
    texts = sorted({r["english"] for r in rows} | {r["non_english"] for r in rows})
    english = sorted({r["english"] for r in rows})
    index = {t: i for i, t in enumerate(texts)}
    english_row = {t: i for i, t in enumerate(english)}
    pairs = torch.tensor([[index[r["non_english"]], index[r["english"]],
                           english_row[r["english"]]] for r in rows])
    print(f"{len(rows)} pairs ({heldout} left out: held-out text), {len(texts)} texts; "
          f"encoder cut to {args.layers} layers", flush=True)
    encoded = m_tokenizer(texts, truncation=True, max_length=args.max_length,
                          return_offsets_mapping=True)
    ignored = torch.tensor(model.config.echo_ignored_ids)
    cap_text = running_text(config["data"]["parallel"])
    cap_groups = [sorted(index[t] for t in group) for group in cap_text]
    says = {index[t]: english for group in cap_text for t, english in group.items()}
    cap_rows = sorted(says)
    return Prepared(
        model=model, ids=encoded["input_ids"],
        pad_id=m_tokenizer.pad_token_id, pairs=pairs,
        teacher=teacher_vectors(str(model.tokenizer_dirs["en"]), english, blocked,
                                args.max_length),
        cap_groups=cap_groups,
        cap_words=dict(zip(cap_rows, said_pieces(en_tokenizer, [says[r] for r in cap_rows],
                                                 args.max_length), strict=True)),
        ignored=ignored,
        english_pieces=en_tokenizer.convert_ids_to_tokens(list(range(len(en_tokenizer)))),
        # only where read: a pack may train with it elsewhere, a run here only if asked
        tokens=token_data(str(model.tokenizer_dirs["en"]), english,
                          [encoded[index[t]] for t in english], ignored, blocked,
                          args.max_length) if args.token_weight or args.pack else None)


def token_data(teacher_dir: str, english: list[str], encoded: list, ignored: torch.Tensor,
               blocked: torch.Tensor, max_length: int) -> TokenData:
    """The teacher (its noise terms blocked, as the student's are), the English texts' word
    pieces, and which pieces cover each encoder position of those texts."""
    from transformers import AutoTokenizer, BertForMaskedLM

    from milco_os.models.files import config_fields

    teacher = BertForMaskedLM.from_pretrained(teacher_dir)
    state = {k: v.half() for k, v in teacher.state_dict().items()}
    for key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        if key in state:
            state[key][blocked] = BLOCKED_BIAS
    pieces = AutoTokenizer.from_pretrained(teacher_dir)(
        english, truncation=True, max_length=max_length, return_offsets_mapping=True)
    skipped = set(ignored.tolist())
    cover = [character_cover(text.offsets, [i in skipped for i in text.ids],
                             pieces[row].offsets) for row, text in enumerate(encoded)]
    return TokenData(teacher_config=config_fields(teacher.config.to_dict()),
                     teacher_state=state, english_ids=pieces["input_ids"], cover=cover)


RUNNING_TEXT = ("tatoeba", "ntrex", "rows")  # sentences and passages, not labels or words


def running_text(specs: list[dict]) -> list[dict[str, str]]:
    """The texts the cap is set on, in groups: per source of running text, its English
    texts, and its texts of each language; each text with the English text that says
    what it says (itself, or its translation). The labels and words of interface
    strings, CLDR names and dictionaries index nothing, so they are left out."""
    groups, held = [], heldout_texts(specs)  # every source's held-out text, not one's
    for spec in specs:
        if spec.get("kind", "rows") not in RUNNING_TEXT:
            continue
        rows, _ = load_parallel_sources([spec], held)
        groups.append({row["english"]: row["english"] for row in rows})
        for language in spec.get("languages") or [None]:  # a rows file: its languages mixed
            part = rows if language is None else load_parallel_sources(
                [{**spec, "languages": [language]}], held)[0]
            groups.append({row["non_english"]: row["english"] for row in part})
    return [group for group in groups if group]


def said_pieces(tokenizer: Any, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """The distinct English pieces of each text (what the cap does not count)."""
    ids = tokenizer(texts, add_special_tokens=False, truncation=True,
                    max_length=max_length)["input_ids"]
    return [torch.tensor(sorted(set(pieces)), dtype=torch.int32) for pieces in ids]


def recap(model: MilcoModel, config: dict, args: argparse.Namespace) -> None:
    """The document-frequency cap of ``model`` set again on the config's running text."""
    from transformers import AutoTokenizer

    groups = running_text(config["data"]["parallel"])
    says = {text: english for group in groups for text, english in group.items()}
    texts = sorted(says)
    index = {text: row for row, text in enumerate(texts)}
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_dirs["m"])
    ids = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    cache = StateCache(model, ids, tokenizer.pad_token_id, torch.device(args.device))
    english = AutoTokenizer.from_pretrained(model.tokenizer_dirs["en"])
    words = dict(enumerate(said_pieces(english, [says[t] for t in texts], args.max_length)))
    rows = [sorted(index[t] for t in group) for group in groups]
    capped = cap_document_frequency(model, cache, rows, words, args.df_cap)
    report_cap(capped, english.convert_ids_to_tokens, args.df_cap)


def report_cap(capped: dict[int, float], piece: Callable[[int], str], cap: float) -> None:
    print(f"df cap {cap} lowered " + ", ".join(
        f"{piece(t)} ({share:.0%})" for t, share in sorted(capped.items(), key=lambda x: -x[1])),
        flush=True)


ENCODER_EMBEDDINGS = "m_model.embeddings.word_embeddings.weight"
PACK_REST = "rest.pt"
PACK_TOKENS = "tokens.pt"  # what per-token distillation reads, when the pack has it
PACK_SHARD_ROWS = 65536  # embeddings-<n>.pt: 48 MiB each at 384 dimensions in fp16


def save_pack(prepared: Prepared, folder: Path) -> None:
    """Write ``prepared`` compactly into files of ``folder`` that can travel apart: the
    encoder's embedding matrix cut to the pieces the texts use (ids renumbered) in shards,
    and the rest: the encoder and head in fp16, the teacher as terms per row, int16 columns
    (for English vocabularies of up to 32,768 pieces) and fp16 weights."""
    kept = sorted({i for ids in prepared.ids for i in ids} | {prepared.pad_id}
                  | set(prepared.ignored.tolist()))
    renumber = torch.full((max(kept) + 1,), -1, dtype=torch.int32)
    renumber[kept] = torch.arange(len(kept), dtype=torch.int32)
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in prepared.model.state_dict().items()}
    embeddings = state.pop(ENCODER_EMBEDDINGS)[kept]
    config = prepared.model.config.to_dict()
    config["m_vocab_size"] = config["m_encoder_config"]["vocab_size"] = len(kept)
    config["echo_ignored_ids"] = renumber[prepared.ignored].tolist()
    teacher = prepared.teacher.coalesce()
    rows, columns = teacher.indices()
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(embeddings), PACK_SHARD_ROWS)):
        torch.save(embeddings[start:start + PACK_SHARD_ROWS].clone(),
                   folder / f"embeddings-{shard}.pt")
    torch.save({"config": config, "state": state,
                "ids": renumber[torch.tensor([i for ids in prepared.ids for i in ids])],
                "lengths": torch.tensor([len(ids) for ids in prepared.ids], dtype=torch.int32),
                "pad_id": int(renumber[prepared.pad_id]), "pairs": prepared.pairs,
                "teacher": (torch.bincount(rows, minlength=teacher.shape[0]).int(),
                            columns.short() if teacher.shape[1] <= 2**15 else columns.int(),
                            teacher.values().half(), tuple(teacher.shape)),
                "cap_groups": prepared.cap_groups, "cap_words": prepared.cap_words,
                "english_pieces": prepared.english_pieces},
               folder / PACK_REST)
    if prepared.tokens:  # a file of its own: a machine call carries at most 64 MiB
        torch.save(prepared.tokens.to_pack(), folder / PACK_TOKENS)
    sizes = ", ".join(f"{path.name} {path.stat().st_size / 2**20:.1f} MiB"
                      for path in sorted(folder.glob("*.pt")))
    print(f"pack {folder}: {len(prepared.ids)} texts, {len(kept)} encoder pieces; {sizes}",
          flush=True)


def load_pack(folder: Path) -> Prepared:
    pack = torch.load(folder / PACK_REST, weights_only=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in pack["state"].items()}
    shards = sorted(folder.glob("embeddings-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    state[ENCODER_EMBEDDINGS] = torch.cat([torch.load(p) for p in shards]).float()
    with torch.device("meta"):
        model = MilcoModel(MilcoConfig.from_dict(pack["config"]))
    model.load_released_state(state)
    counts, columns, weights, shape = pack["teacher"]  # terms per row, then the rows' terms
    rows = torch.repeat_interleave(torch.arange(shape[0]), counts.long())
    teacher = torch.sparse_coo_tensor(torch.stack([rows, columns.long()]), weights.float(),
                                      shape, is_coalesced=True, check_invariants=True)
    ids = pack["ids"].tolist()
    offsets = [0, *torch.cumsum(pack["lengths"], 0).tolist()]
    return Prepared(model=model.eval(),
                    ids=[ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)],
                    pad_id=pack["pad_id"], pairs=pack["pairs"], teacher=teacher,
                    cap_groups=pack["cap_groups"], cap_words=pack["cap_words"],
                    ignored=torch.tensor(model.config.echo_ignored_ids),
                    english_pieces=pack["english_pieces"],
                    tokens=TokenData.from_pack(torch.load(folder / PACK_TOKENS))
                    if (folder / PACK_TOKENS).is_file() else None)


HEAD_PARTS = ("projector.", "mlm_head.", "echo.", "scale")


def trained_prefixes(model: MilcoModel, train_layers: int) -> tuple[str, ...]:
    """The state-dict prefixes training changes: the heads and the top encoder layers."""
    count = len(model.m_model.encoder.layer)
    return HEAD_PARTS + tuple(f"m_model.encoder.layer.{i}." for i in
                              range(count - train_layers, count))


def trained_parts(model: MilcoModel, train_layers: int = 0) -> dict[str, torch.Tensor]:
    prefixes = trained_prefixes(model, train_layers)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith(prefixes)}


def load_trained_parts(model: MilcoModel, path: Path) -> None:
    """Put the parts ``--parts-out`` wrote into ``model``; every trained part must be there.
    A MILCO folder (``--init``) gives its heads."""
    from safetensors.torch import load_file

    parts = (trained_parts(MilcoModel.from_pretrained(path)) if path.is_dir()
             else load_file(str(path)))
    layers = {k.split(".")[3] for k in parts if k.startswith("m_model.encoder.layer.")}
    wanted = {k for k in model.state_dict() if k.startswith(HEAD_PARTS + tuple(
        f"m_model.encoder.layer.{i}." for i in layers))}
    if set(parts) != wanted:
        raise SystemExit(f"--parts {path}: missing {sorted(wanted - set(parts))}, "
                         f"unexpected {sorted(set(parts) - wanted)}")
    model.load_state_dict(parts, strict=False)
    tie_decoder_bias(model.mlm_head)


def split_dev(pairs: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training pairs, dev pairs): the pairs of ``count`` English texts drawn at random."""
    english = pairs[:, 2].unique()
    generator = torch.Generator().manual_seed(seed)
    dev = english[torch.randperm(len(english), generator=generator)[:count]]
    is_dev = torch.isin(pairs[:, 2], dev)
    if is_dev.all():
        raise SystemExit(f"--dev {count}: that is every English text ({len(english)}); "
                         "no pair would be left to train on")
    return pairs[~is_dev], pairs[is_dev]


def first_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """One pair per English text (the first), so each English text is one candidate."""
    first = {}
    for row in pairs.tolist():
        first.setdefault(row[2], row)
    return torch.tensor(list(first.values()))


def dev_vectors(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
                ignored: torch.Tensor) -> dict[int, list[tuple[torch.Tensor, ...]]]:
    """Per side of ``pairs`` (0: non-English, 1: English), batches of (pivot, echo, ids)."""
    vectors = {}
    with torch.no_grad():
        for side in (0, 1):
            parts = []
            for start in range(0, len(pairs), 64):
                hidden, mask, ids = cache.batch(pairs[start:start + 64, side].tolist())
                pivot = torch.log1p(torch.relu(model.pivot_from_states(hidden, mask)))
                echo = model.echo_from_states(hidden, mask) * ~torch.isin(ids, ignored)
                parts.append((pivot, echo, ids))
            vectors[side] = parts
    return vectors


def both_scores(vectors: dict[int, list[tuple[torch.Tensor, ...]]], echo_factor: float = 1.0
                ) -> torch.Tensor:
    """Pivot + echo scores of every non-English text against every English text, the echo
    weights of both sides multiplied by ``echo_factor``."""
    return torch.cat([
        torch.cat([score_matrix(qp, dp, qe * echo_factor, qi, de * echo_factor, di)
                   for dp, de, di in vectors[1]], dim=1)
        for qp, qe, qi in vectors[0]])


def dev_report(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
               teacher: torch.Tensor, ignored: torch.Tensor, top: int = 20) -> dict[str, float]:
    """On ``pairs`` (one per English text): top-20 overlap of the non-English text's pivot
    with the teacher's English vector; Success@1 and MRR of each non-English text finding
    its English side among all their English texts (pivot, pivot + echo, and the encoder
    used densely); distinct pivot terms and the largest share of texts one term is in."""
    pairs = first_pairs(pairs)
    vectors = dev_vectors(model, cache, pairs, ignored)
    with torch.no_grad():
        source = torch.cat([p for p, _, _ in vectors[0]])
        target = teacher.index_select(0, pairs[:, 2].to(teacher.device)).to_dense()
        student_top, teacher_top = top_terms(source, top, -1), top_terms(target, top, -2)
        overlap = (student_top.unsqueeze(2) == teacher_top.unsqueeze(1)).any(2).sum(1) / top
        english = torch.cat([p for p, _, _ in vectors[1]])
        report = {"pairs": len(pairs), "overlap": overlap.mean().item()}
        report |= rank_report("pivot", source @ english.T)
        if model.has_echo:
            report |= rank_report("both", both_scores(vectors))
        report |= rank_report("dense", dense_scores(cache, pairs))
        holding = (source > 0).float().mean(0)
        report |= {"terms per text": (source > 0).sum(1).float().mean().item(),
                   "distinct terms": int((holding > 0).sum()), "top share": holding.max().item()}
    return report


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length mean of the states over each text's positions (the dense reference)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1), dim=-1)


def dense_scores(cache: StateCache, pairs: torch.Tensor) -> torch.Tensor:
    """Cosines of the mean-pooled encoder states (the encoder used densely, the reference
    the sparse views are measured against) of every non-English text against every English
    text of ``pairs``."""
    sides = []
    with torch.no_grad():
        for side in (0, 1):
            sides.append(torch.cat([mean_pooled(*cache.batch(pairs[start:start + 64, side]
                                                             .tolist())[:2])
                                    for start in range(0, len(pairs), 64)]))
    return sides[0] @ sides[1].T


# Multipliers of the trained echo scale tried on the dev pairs of running text
ECHO_FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)


def calibrate_echo(model: MilcoModel, cache: StateCache, pairs: torch.Tensor,
                   ignored: torch.Tensor) -> tuple[float, dict[float, float]]:
    """Set the echo scale to the multiple of its trained value (``ECHO_FACTORS``) whose
    pivot + echo MRR is best on ``pairs`` (dev pairs of running text), and return that
    factor and every factor's MRR. Echo learns its scale against the other texts of one
    batch, mostly labels and words; against a corpus of sentences, a source piece that is
    also an English piece (Turkish "at", "so", "hi") matches many documents, so the best
    scale is lower. The scale is one number of the released layout: the math is unchanged."""
    vectors = dev_vectors(model, cache, first_pairs(pairs), ignored)
    with torch.no_grad():
        mrr = {factor: rank_report("both", both_scores(vectors, factor))["both MRR"]
               for factor in ECHO_FACTORS}
        best = max(ECHO_FACTORS, key=lambda factor: (mrr[factor], -abs(factor - 1)))
        model.scale.mul_(best)
    return best, mrr


def top_terms(vectors: torch.Tensor, top: int, missing: int) -> torch.Tensor:
    """Each row's ``top`` heaviest term ids, ``missing`` where fewer terms have weight."""
    weights, terms = vectors.topk(top)
    return terms.masked_fill(weights <= 0, missing)


def rank_report(name: str, scores: torch.Tensor) -> dict[str, float]:
    """Success@1 and MRR of row i finding column i; a tie ranks the right column last, so
    that texts with empty vectors (all scores 0) count as failures, not successes."""
    rank = (scores >= scores.diagonal().unsqueeze(1)).sum(1)
    return {f"{name} S@1": (rank == 1).float().mean().item(),
            f"{name} MRR": (1 / rank.float()).mean().item()}


def print_dev(stage: str, report: dict[str, float]) -> None:
    print(f"dev after {stage}: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()),
        flush=True)


def train(prepared: Prepared, args: argparse.Namespace) -> None:
    """Alignment, the cap and echo on ``prepared``, in place; dev reports when asked."""
    device = torch.device(args.device)
    model = prepared.model.to(device)
    teacher, ignored = prepared.teacher.to(device), prepared.ignored.to(device)
    cache = StateCache(model, prepared.ids, prepared.pad_id, device, args.train_layers)
    pairs, dev = split_dev(prepared.pairs, args.dev, args.seed)
    model.train()
    train_alignment(model, cache, pairs, teacher, args, prepared.tokens, ignored)
    round_to_half(cache.top)
    if args.df_cap:
        held = set(dev[:, :2].flatten().tolist())  # both sides of the dev pairs
        capped = cap_document_frequency(
            model, cache, [[r for r in group if r not in held] for group in prepared.cap_groups],
            prepared.cap_words, args.df_cap)
        report_cap(capped, prepared.english_pieces.__getitem__, args.df_cap)
    if args.dev:  # how well it fits pairs it trained on, and pairs it did not
        seen = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))]
        print_dev("alignment and cap, training pairs",
                  dev_report(model.eval(), cache, seen[:args.dev], teacher, ignored))
        print_dev("alignment and cap", dev_report(model, cache, dev, teacher, ignored))
    model.train()
    train_echo(model, cache, pairs, ignored, args)
    model.eval()
    if args.dev:
        print_dev("echo", dev_report(model, cache, dev, teacher, ignored))
        running = torch.tensor(sorted({r for group in prepared.cap_groups for r in group}))
        prose = dev[torch.isin(dev[:, 1], running)]
        if not len(prose):
            raise SystemExit(f"--dev {args.dev}: no dev pair is running text (Tatoeba, "
                             "NTREX, rows); the echo scale cannot be calibrated")
        factor, mrr = calibrate_echo(model, cache, prose, ignored)
        print(f"echo scale x{factor} (now {model.echo_scale():.4g}), pivot + echo MRR on "
              f"{len(first_pairs(prose))} dev pairs of running text by factor: "
              + ", ".join(f"x{f} {m:.3f}" for f, m in mrr.items()), flush=True)
        print_dev("echo calibration", dev_report(model, cache, dev, teacher, ignored))
    prepared.model = model.cpu()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.chdir(REPO)
    if args.parts:
        config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
        model = build_model(config, args.layers)
        load_trained_parts(model, args.parts)
        if args.df_cap:
            recap(model, config, args)
        return model.save_pretrained(args.out)
    if args.from_pack:
        prepared = load_pack(args.from_pack)
    else:
        prepared = prepare(yaml.safe_load(args.config.read_text(encoding="utf-8")), args)
        if args.pack:
            save_pack(prepared, args.pack)
            return args.pack
    if args.init:
        load_trained_parts(prepared.model, args.init)
    train(prepared, args)
    if args.parts_out:
        save_safetensors(trained_parts(prepared.model, args.train_layers), args.parts_out)
        print(f"saved {args.parts_out}", flush=True)
        return args.parts_out
    out = prepared.model.save_pretrained(args.out)
    print(f"saved {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
