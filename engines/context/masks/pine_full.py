"""PINE as the paper runs it (Wang et al. 2024, Eliminating Position Bias of Language Models: A Mechanistic
Approach; the authors' released code): documents see each other both ways, and in every layer and head each
document, and each token of the question and answer, sees the documents placed by how much it attends to
them, the most attended closest to itself.

The layout is the authors': every document ends where the last one ends (E), so a document's own tokens sit
at E - length + offset; the question and answer follow at E, E + 1, ... (their cache indices). Importance is
attention without RoPE over the documents' tokens, summed per document and divided by its length; a
document leaves itself out and ranks itself first. A document ranked after others moves back by their
lengths. Keys stay rotated at their cache indices: the query is turned by the difference instead, per row,
head and document, which gives the same scores as rotating keys at the new places.
"""
from __future__ import annotations

import torch

from engines.config.kinds import register
from engines.context.masks import SUFFIX, segment_at
from engines.context.masks.pine import Pine, documents_both_ways


def document_layout(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each document's first cache index and length (documents 0..n-1 lie in order, back to back) and
    the index where the last one ends."""
    documents = segments[segments >= 0]
    lengths = torch.bincount(documents, minlength=int(documents.max()) + 1)
    starts = int((segments >= 0).nonzero()[0]) + lengths.cumsum(0) - lengths
    return starts, lengths, int(starts[-1] + lengths[-1])


def shifts(importance: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """How far back each document moves [..., n]: the summed lengths of the documents ranked above it
    (most important first; ties in document order, as the authors' stable sort)."""
    order = torch.argsort(importance, dim=-1, descending=True, stable=True)
    ranked = lengths[order]
    return torch.empty_like(ranked).scatter_(-1, order, ranked.cumsum(-1) - ranked)


class Repositioned:
    """The scores of one attention call under PINE: the rankings are made once per call, the scores a
    block of query rows at a time. query [b, h, q, d], key [b, kv_heads, kv, d] (rotated at their cache
    indices); `kept` keeps the documents' keys, without RoPE and stacked for the products, for the later
    calls of the run."""

    def __init__(self, segments, query, key, q_pos, inv_freq, scaling, kept: dict, block: int = 1024):
        from engines.attention.function import repeat_kv, rotate

        groups = query.shape[1] // key.shape[1]
        query = query * scaling  # scaled once here, not each block of scores
        self.query, self.q_pos, self.inv_freq = query, q_pos, inv_freq
        device, kv = query.device, key.shape[2]
        self.seg_q = segment_at(segments, q_pos)
        self.seg_k = segment_at(segments, torch.arange(kv, device=device))
        starts, lengths, end = document_layout(segments)
        self.starts, self.lengths, self.end = starts.tolist(), lengths.tolist(), end
        first, longest = self.starts[0], max(self.lengths)
        self.prefix_keys = repeat_kv(key[:, :, :first], groups).transpose(-1, -2)
        self.later_keys = repeat_kv(key[:, :, end:], groups).transpose(-1, -2)
        doc_of_key = self.seg_k[first:end]
        # where each document key's score lands in the flattened (document, offset) axes of one product
        self.document_columns = doc_of_key * longest + torch.arange(end - first, device=device) - (starts - first)[doc_of_key]
        held = kept.get((first, end))
        if held is None or held[0].shape[0] not in (1, query.shape[0]):
            # the documents' keys without RoPE, and stacked zero-padded [n, b, kv_heads, d, longest] for one
            # product per reading run: both the same for the whole run, one copy per key head
            region = key[:, :, first:end]
            padded = region.new_zeros(len(self.starts), *region.shape[:2], region.shape[-1], longest)
            for doc, (start, length) in enumerate(zip(self.starts, self.lengths)):
                padded[doc, ..., :length] = region[:, :, start - first:start - first + length].transpose(-1, -2)
            held = kept[first, end] = (rotate(region, -torch.arange(first, end, device=device), inv_freq), padded)
        raw_keys, self.document_keys = held
        b, h, n = query.shape[0], query.shape[1], len(self.starts)
        one_hot = torch.nn.functional.one_hot(doc_of_key, n).to(query.dtype)  # [keys, n]
        shift = torch.zeros(b, h, len(q_pos), n, dtype=torch.long, device=device)

        def importance(rows: torch.Tensor, leave_out_own: bool) -> torch.Tensor:
            """Mean attention without RoPE of the rows on each document's tokens [b, h, rows, n]; the query
            heads that share a key head are stacked as rows of one product."""
            raw = rotate(query[:, :, rows], -q_pos[rows], inv_freq)
            stacked = raw.reshape(raw.shape[0], key.shape[1], groups * len(rows), raw.shape[-1])
            scores = (stacked @ raw_keys.transpose(-1, -2)).reshape(*raw.shape[:3], end - first)
            if leave_out_own:
                scores.masked_fill_(doc_of_key[None, :] == self.seg_q[rows][:, None], float("-inf"))
            return (torch.softmax(scores, dim=-1) @ one_hot).float() / lengths  # in the query's dtype, as the authors'

        document_rows = (self.seg_q >= 0).nonzero()[:, 0]
        if len(document_rows) and n > 1:  # each document ranks the others by what its tokens give them, itself first
            given = torch.zeros(b, h, n, n, device=device)
            for part in document_rows.split(block):
                given.index_add_(2, self.seg_q[part], importance(part, leave_out_own=True))
            given.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
            shift[:, :, document_rows] = shifts(given, lengths)[:, :, self.seg_q[document_rows]]
        for part in (self.seg_q == SUFFIX).nonzero()[:, 0].split(block):  # each question or answer token ranks them
            shift[:, :, part] = shifts(importance(part, leave_out_own=False), lengths)
        # how much each row's query is turned to meet document j where that row sees it: the key's move back
        # (cache start - seen start) less the query's own (a document's rows sit at E - length + offset)
        doc = self.seg_q.clamp(min=0)
        own = torch.where(self.seg_q >= 0, starts[doc] - (end - lengths[doc]), 0)
        self.turns = starts - (end - lengths - shift) - own[:, None]
        self.prefix_turn = -own

    def scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Scores [b, h, rows, kv] of the query rows `rows` (the query's dtype), -inf where a key is not
        seen. Rows are taken a run of one segment at a time: a document's rows share their turns (one per
        head and document), and so do the prefix's (which sees no document), so those are turned once."""
        segments = self.seg_q[rows]
        runs, out, at = torch.unique_consecutive(segments, return_counts=True), [], 0
        for segment, count in zip(runs[0].tolist(), runs[1].tolist()):
            run = rows[at:at + count]
            at += count
            if segment != SUFFIX:
                out.append(self._run_scores(run, self.prefix_turn[run[:1]], self.turns[:, :, run[:1]]))
                continue
            for part in run.split(128):  # question and answer rows turn each their own way: a slice at a time
                out.append(self._run_scores(part, self.prefix_turn[part], self.turns[:, :, part]))
        scores = out[0] if len(out) == 1 else torch.cat(out, dim=2)
        q = self.q_pos[rows][:, None]
        k = torch.arange(len(self.seg_k), device=q.device)[None, :]
        seen = documents_both_ways(q, k, segments[:, None], self.seg_k[None, :])
        return scores.masked_fill_(~seen, float("-inf"))

    def _run_scores(self, rows, prefix_turn, turns):
        """Scores of rows against every key, the query turned by `prefix_turn` ([rows] or [1]) for the
        prefix and by `turns` ([b, h, rows or 1, n]) for each document; the rest at cache distance."""
        from engines.attention.function import rotate

        query = self.query[:, :, rows]
        parts = [rotate(query, prefix_turn, self.inv_freq) @ self.prefix_keys]
        turned = rotate(query[None], turns.permute(3, 0, 1, 2), self.inv_freq)  # [n, b, h, rows, d]
        n, b, h, r, d = turned.shape
        kv_heads = self.document_keys.shape[2]  # query heads that share a key head stacked as rows
        by_document = (turned.reshape(n, b, kv_heads, h // kv_heads * r, d) @ self.document_keys).view(n, b, h, r, -1)
        parts.append(by_document.permute(1, 2, 3, 0, 4).flatten(3)[..., self.document_columns])
        parts.append(query @ self.later_keys)
        return torch.cat(parts, dim=-1)


@register
class PineFull(Pine):
    name = "pine_full"
    description = ("PINE as the paper runs it: documents see each other both ways, and in every layer and head "
                   "each document, question and answer token sees the documents ordered by its attention to them, "
                   "the most attended closest (eager attention, slower)")
    settings = ()
    scores_itself = True

    def shares_positions(self, spec):
        return False

    def scorer(self, spec, segments, query, key, q_pos, inv_freq, scaling, kept):
        segments = segments[:key.shape[2]]  # a call that stops inside the documents ranks the ones it holds
        if not bool((segments >= 0).any()):  # no document yet: causal
            from engines.attention.function import repeat_kv

            key = repeat_kv(key, query.shape[1] // key.shape[1])
            later = torch.arange(key.shape[2], device=key.device)[None, :] > q_pos[:, None]
            return lambda rows: (query[:, :, rows] @ key.transpose(-1, -2) * scaling).masked_fill_(later[rows],
                                                                                                 float("-inf"))
        return Repositioned(segments, query, key, q_pos, inv_freq, scaling, kept).scores
