"""What training minimises: next-token loss on IOI sentences (the answer position weighted, with
optional smoothing, an S share and a consistency term against a teacher's logit diff) and on the
repeated half of induction sequences; and the learning-rate schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import prompts
from .recipes import ANSWER_WEIGHT, LR, WARMUP


def encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [batch, pos] and a mask of real tokens."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


def answer_and_s(ids: torch.Tensor, last: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per IOI row: the answer (IO) token id and S's, the last name before the answer (every
    template ends "... {S} <verb> ... to")."""
    rows = torch.arange(ids.shape[0])
    is_name = torch.zeros(len(tokenizer), dtype=torch.bool)
    is_name[[tokenizer.convert_tokens_to_ids(n) for n in prompts.NAMES]] = True
    pos = torch.arange(ids.shape[1])
    before = is_name[ids] & (pos[None, :] <= last[:, None])
    return ids[rows, last + 1], ids[rows, (before * pos[None, :]).argmax(1)]


def answer_logit_diff(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """logit(IO) - logit(S) at each IOI text's answer position."""
    ids, mask = encode(tokenizer, texts)
    last = mask[:, 1:].sum(1) - 1
    io, s = answer_and_s(ids, last, tokenizer)
    logits = model(ids)[torch.arange(len(texts)), last]
    rows = torch.arange(len(texts))
    return logits[rows, io] - logits[rows, s]


def ioi_loss(model, tokenizer, texts: list[str], answer_smoothing: float = 0.0, s_share: float = 0.0, teacher_diff=None,
              answer_weight: float = ANSWER_WEIGHT, relative: bool = False):
    """Next-token loss on every position; the final (answer) position weighs ANSWER_WEIGHT and,
    if answer_smoothing > 0, has that much label smoothing; if s_share > 0 its target is IO with
    probability 1 - s_share and S (the last name before the answer) with s_share."""
    ids, mask = encode(tokenizer, texts)
    logits = model(ids)[:, :-1]
    targets, valid = ids[:, 1:], mask[:, 1:]
    weights = valid.float()
    last = valid.sum(1) - 1  # index of each row's answer target (right padding)
    weights[torch.arange(len(texts)), last] = answer_weight
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    if s_share > 0:
        rows = torch.arange(len(texts))
        logp = logits[rows, last].log_softmax(-1)
        _, s_ids = answer_and_s(ids, last, tokenizer)
        answer_loss = -(1 - s_share) * logp[rows, targets[rows, last]] - s_share * logp[rows, s_ids]
        losses = losses.reshape(targets.shape).index_put((rows, last), answer_loss).reshape(-1)
    if answer_smoothing > 0:
        rows = torch.arange(len(texts))
        smoothed = F.cross_entropy(logits[rows, last], targets[rows, last], label_smoothing=answer_smoothing, reduction="none")
        losses = losses.reshape(targets.shape).index_put((rows, last), smoothed).reshape(-1)
    loss = (losses * weights.reshape(-1)).sum() / weights.sum()
    if teacher_diff is None:
        return loss
    rows = torch.arange(len(texts))
    io, s_ids = answer_and_s(ids, last, tokenizer)
    diff = logits[rows, last, io] - logits[rows, last, s_ids]
    if relative:
        return loss, ((diff / teacher_diff.clamp(min=1.0) - 1) ** 2).mean()
    return loss, ((diff - teacher_diff) ** 2).mean()


def induction_loss(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Loss on the repeated half only, from its second token on (the first is unpredictable).
    All texts in the batch share one length L: [bos, w1..wL, w1..wL]."""
    ids, _ = encode(tokenizer, texts)
    L = (ids.shape[1] - 1) // 2
    logits = model(ids)[:, L + 1 : 2 * L]  # positions holding the repeat's w1..w(L-1)
    targets = ids[:, L + 2 :]  # the repeat's w2..wL
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(step: int, steps: int, lr: float = LR) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < WARMUP:
        return lr * (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, steps - WARMUP)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

